package falriver

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Errors of the inbox.
var (
	// ErrStore is returned, wrapping the database's error, when a delivery
	// could not be stored: the database is down, or did not commit within
	// the insert timeout. The inbox answers 503 with Retry-After, so that
	// fal delivers again later.
	ErrStore = errors.New("falriver: storing the delivery failed")

	// ErrOverloaded is returned when more deliveries wait to be stored than
	// WithMaxPending allows. The inbox answers 503 with Retry-After.
	ErrOverloaded = errors.New("falriver: too many deliveries waiting to be stored")

	// ErrInvalidArgs is returned by Enqueue and EnqueueTx for Args that are
	// not a delivery: an empty request id, a body that is not an event of
	// that request id, or an unknown Source. Nothing is stored.
	ErrInvalidArgs = errors.New("falriver: invalid delivery")

	// ErrNotVerified is returned by ArgsFromRequest for a request that did
	// not pass through a Verifier's Middleware.
	ErrNotVerified = errors.New("falriver: request not verified by falwebhook's middleware")
)

// Defaults of the inbox's options.
const (
	DefaultInsertTimeout   = 5 * time.Second
	DefaultMaxPending      = 4096
	DefaultMaxPendingBytes = 256 << 20

	// maxBatch is the most deliveries one transaction inserts.
	maxBatch = 256

	// retryAfter is the Retry-After, in seconds, of the inbox's 503.
	retryAfter = 30
)

// An Option configures NewInbox.
type Option func(*inboxConfig)

type inboxConfig struct {
	timeout         time.Duration
	logger          *slog.Logger
	now             func() time.Time
	maxPending      int
	maxPendingBytes int64
}

// WithInsertTimeout bounds how long a delivery waits for its insert to
// commit, from when it is handed to the inbox (default 5 s; fal waits 15 s
// for the first answer). Past it the inbox answers 503; the insert may
// still commit, and fal's next delivery is then a duplicate, answered 200.
// d must be positive.
func WithInsertTimeout(d time.Duration) Option {
	return func(c *inboxConfig) { c.timeout = d }
}

// WithLogger logs, at Error level, the deliveries that could not be stored.
func WithLogger(l *slog.Logger) Option {
	return func(c *inboxConfig) { c.logger = l }
}

// WithClock sets the clock of Args.ReceivedAt (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(c *inboxConfig) { c.now = now }
}

// WithMaxPending bounds the deliveries waiting for their insert, in number
// and in body bytes (defaults 4096 and 256 MiB). A delivery past either
// bound is answered 503 at once. Both must be positive.
func WithMaxPending(n int, bytes int64) Option {
	return func(c *inboxConfig) { c.maxPending, c.maxPendingBytes = n, bytes }
}

// NewInbox returns the handler of a durable inbox: it verifies each
// request with v.Middleware (everything v enforces: user pinning, body
// limits and budget, read timeout; rejections answer as v answers them),
// then inserts the delivery as a unique Args job through c, and answers 200
// only once the insert has committed, or when a job for the request id
// already exists (200 with falwebhook.HeaderDuplicate "completed"). When the
// database fails or does not commit in time, or too many deliveries wait,
// it answers 503 with Retry-After so that fal delivers again: nothing is
// acknowledged that is not stored.
//
// Concurrent deliveries are inserted together, up to 256 in one
// transaction (group commit), and each is answered once that transaction
// commits. c may be an insert-only client (no Queues): the workers can run
// in other processes.
//
// Give v no dedupe: the job's uniqueness is the dedupe. NewInbox panics if
// v or c is nil or an option is out of range.
func NewInbox[TTx any](v *falwebhook.Verifier, c *river.Client[TTx], opts ...Option) http.Handler {
	if v == nil || c == nil {
		panic("falriver: NewInbox with a nil Verifier or Client")
	}
	cfg := inboxConfig{
		timeout:         DefaultInsertTimeout,
		now:             time.Now,
		maxPending:      DefaultMaxPending,
		maxPendingBytes: DefaultMaxPendingBytes,
	}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.timeout <= 0:
		panic("falriver: WithInsertTimeout needs a positive duration")
	case cfg.maxPending <= 0 || cfg.maxPendingBytes <= 0:
		panic("falriver: WithMaxPending needs positive bounds")
	case cfg.now == nil:
		panic("falriver: WithClock with a nil clock")
	}
	in := &inbox[TTx]{cfg: cfg, client: c, flushers: flushersFor(c.Driver().DatabaseName())}
	return v.Middleware(in)
}

// inbox is the handler behind the Verifier's middleware.
type inbox[TTx any] struct {
	cfg      inboxConfig
	client   *river.Client[TTx]
	flushers int // at most this many transactions at once

	mu       sync.Mutex
	queue    []*pending
	bytes    int64 // body bytes in queue
	flushing int   // flush goroutines running
}

// flushersFor returns how many insert transactions the inbox runs at once
// on a database: one on SQLite, which has one writer; several on Postgres,
// whose commits overlap.
func flushersFor(database string) int {
	if database == "sqlite" {
		return 1
	}
	return 4
}

// pending is one delivery waiting for its insert.
type pending struct {
	args Args
	done chan outcome // buffered: the flusher never blocks on it
}

type outcome struct {
	duplicate bool
	err       error
}

func (in *inbox[TTx]) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	args, err := ArgsFromRequest(r)
	if err != nil {
		in.fail(w, r, "", err)
		return
	}
	args.ReceivedAt = in.cfg.now().UTC()
	dup, err := in.store(r.Context(), args)
	if err != nil {
		in.fail(w, r, args.RequestID, err)
		return
	}
	if dup {
		w.Header().Set(falwebhook.HeaderDuplicate, "completed")
		http.Error(w, "OK (duplicate delivery, already stored)", http.StatusOK)
		return
	}
	http.Error(w, "OK (stored)", http.StatusOK)
}

// fail logs err and answers: 400 for a delivery that is not one
// (ErrInvalidArgs), 500 for a request the middleware did not pass (which
// cannot happen behind it), and otherwise 503 with Retry-After.
func (in *inbox[TTx]) fail(w http.ResponseWriter, r *http.Request, id string, err error) {
	if l := in.cfg.logger; l != nil {
		l.LogAttrs(r.Context(), slog.LevelError, "falriver: delivery not stored",
			slog.String("request_id", id), slog.String("err", err.Error()))
	}
	code := http.StatusServiceUnavailable
	switch {
	case errors.Is(err, ErrInvalidArgs):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNotVerified):
		code = http.StatusInternalServerError
	default:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	http.Error(w, http.StatusText(code), code)
}

// store hands args to the flusher and waits for its transaction, the
// insert timeout, or ctx.
func (in *inbox[TTx]) store(ctx context.Context, args Args) (duplicate bool, err error) {
	p := &pending{args: args, done: make(chan outcome, 1)}
	size := int64(len(args.Body))
	in.mu.Lock()
	if len(in.queue) >= in.cfg.maxPending || in.bytes+size > in.cfg.maxPendingBytes {
		in.mu.Unlock()
		return false, ErrOverloaded
	}
	in.queue = append(in.queue, p)
	in.bytes += size
	if in.flushing < in.flushers {
		in.flushing++
		go in.flush()
	}
	in.mu.Unlock()

	t := time.NewTimer(in.cfg.timeout)
	defer t.Stop()
	select {
	case o := <-p.done:
		return o.duplicate, o.err
	case <-t.C:
		return false, fmt.Errorf("%w: not committed within %v", ErrStore, in.cfg.timeout)
	case <-ctx.Done():
		return false, fmt.Errorf("%w: %w", ErrStore, context.Cause(ctx))
	}
}

// flush inserts what waits, a batch at a time, until nothing does.
func (in *inbox[TTx]) flush() {
	for {
		in.mu.Lock()
		n := min(len(in.queue), maxBatch)
		if n == 0 {
			in.flushing--
			in.queue = nil
			in.mu.Unlock()
			return
		}
		batch := slices.Clone(in.queue[:n])
		clear(in.queue[:n])
		in.queue = in.queue[n:]
		for _, p := range batch {
			in.bytes -= int64(len(p.args.Body))
		}
		in.mu.Unlock()
		in.insert(batch)
	}
}

// insert stores batch in one transaction and tells each waiter the outcome.
// Deliveries of one request id in the batch become one row; the rows go in
// request id order, so that concurrent batches on replicas take the unique
// index's locks in one order.
func (in *inbox[TTx]) insert(batch []*pending) {
	slices.SortStableFunc(batch, func(a, b *pending) int { return cmp.Compare(a.args.RequestID, b.args.RequestID) })
	params := make([]river.InsertManyParams, 0, len(batch))
	row := make([]int, len(batch)) // batch[i]'s index in params
	for i, p := range batch {
		if i > 0 && p.args.RequestID == batch[i-1].args.RequestID {
			row[i] = row[i-1]
			continue
		}
		row[i] = len(params)
		params = append(params, river.InsertManyParams{Args: p.args})
	}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.timeout)
	defer cancel()
	res, err := in.client.InsertMany(ctx, params)
	if err == nil && len(res) != len(params) {
		err = fmt.Errorf("river returned %d results for %d jobs", len(res), len(params))
	}
	for i, p := range batch {
		switch {
		case err != nil:
			p.done <- outcome{err: fmt.Errorf("%w: %w", ErrStore, err)}
		case i > 0 && row[i] == row[i-1]: // the same request id again: its row is the one before
			p.done <- outcome{duplicate: true}
		default:
			p.done <- outcome{duplicate: res[row[i]].UniqueSkippedAsDuplicate}
		}
	}
}

// ArgsFromRequest returns the delivery job of a request that a Verifier's
// Middleware accepted: its signed request and user ids and its body, with
// Source SourceWebhook and ReceivedAt unset. It reads r.Body, the fresh
// body the middleware set. It is for handlers that insert the job
// themselves, with Enqueue or in their own transaction with EnqueueTx.
// A request the middleware did not accept gives ErrNotVerified.
func ArgsFromRequest(r *http.Request) (Args, error) {
	ev, ok := falwebhook.EventFromContext(r.Context())
	if !ok {
		return Args{}, ErrNotVerified
	}
	hs, err := falwebhook.ParseHeaders(r.Header)
	if err != nil {
		return Args{}, fmt.Errorf("%w: headers changed after verification", ErrNotVerified)
	}
	if hs.RequestID != ev.RequestID {
		return Args{}, fmt.Errorf("%w: body of request %q delivered as %q", ErrInvalidArgs, ev.RequestID, hs.RequestID)
	}
	var body bytes.Buffer
	body.Grow(int(max(r.ContentLength, 0)) + bytes.MinRead) // the middleware set it exactly: one allocation
	if _, err := body.ReadFrom(r.Body); err != nil {
		return Args{}, fmt.Errorf("%w: reading the verified body: %w", ErrNotVerified, err)
	}
	return Args{RequestID: hs.RequestID, UserID: hs.UserID, Body: body.Bytes(), Source: SourceWebhook}, nil
}

// check returns an ErrInvalidArgs error if args is not a delivery.
func (args *Args) check() error {
	if args.Source != SourceWebhook && args.Source != SourceReconcile {
		return fmt.Errorf("%w: unknown source %q", ErrInvalidArgs, args.Source)
	}
	ev, err := falwebhook.ParseEvent(args.Body)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgs, err)
	}
	if ev.RequestID != args.RequestID {
		return fmt.Errorf("%w: body of request %q in the job of %q", ErrInvalidArgs, ev.RequestID, args.RequestID)
	}
	return nil
}

// Enqueue inserts a delivery job, for code with its own handler: one insert
// and one commit per call, without the inbox's group commit. The result's
// UniqueSkippedAsDuplicate reports a request id already stored. Only once
// Enqueue returns without error may the delivery be acknowledged.
func Enqueue[TTx any](ctx context.Context, c *river.Client[TTx], args Args) (*rivertype.JobInsertResult, error) {
	if err := args.check(); err != nil {
		return nil, err
	}
	res, err := c.Insert(ctx, args, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	return res, nil
}

// EnqueueTx is Enqueue in the caller's transaction: the delivery is stored
// when tx commits, with whatever else tx writes.
func EnqueueTx[TTx any](ctx context.Context, c *river.Client[TTx], tx TTx, args Args) (*rivertype.JobInsertResult, error) {
	if err := args.check(); err != nil {
		return nil, err
	}
	res, err := c.InsertTx(ctx, tx, args, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	return res, nil
}
