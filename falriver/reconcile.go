package falriver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falqueue"
	"github.com/riverqueue/river"
)

// TrackKind is the River job kind of a tracked request (TrackArgs.Kind).
const TrackKind = "falwebhook.track"

// Phase is the step of a tracked request's reconciliation.
type Phase string

const (
	// PhasePoll polls the request's status until it completes.
	PhasePoll Phase = "poll"

	// PhaseFetch runs Grace after completion: unless the webhook came,
	// it fetches the result and stores it as a delivery.
	PhaseFetch Phase = "fetch"
)

// TrackArgs is the job that tracks one submitted request (Track). It is
// unique by request id and phase, in every state.
type TrackArgs struct {
	RequestID string           `json:"request_id" river:"unique"`
	Phase     Phase            `json:"phase" river:"unique"`
	Request   falqueue.Request `json:"request"`
}

// Kind returns TrackKind.
func (TrackArgs) Kind() string { return TrackKind }

// InsertOpts makes a tracked request unique by request id and phase, in
// every state, with 20 attempts (failed calls to fal; polls that find the
// request unfinished snooze and use none).
func (TrackArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		MaxAttempts: 20,
		UniqueOpts:  river.UniqueOpts{ByArgs: true, ByState: allStates},
	}
}

// ErrInvalidRequest is returned by Track and TrackTx for a Request without
// an id, status URL or response URL.
var ErrInvalidRequest = errors.New("falriver: request cannot be tracked")

func trackArgs(req *falqueue.Request) (TrackArgs, error) {
	switch {
	case req == nil:
		return TrackArgs{}, fmt.Errorf("%w: nil request", ErrInvalidRequest)
	case req.ID == "", req.StatusURL == "", req.ResponseURL == "":
		return TrackArgs{}, fmt.Errorf("%w: request %q needs its id, status URL and response URL", ErrInvalidRequest, req.ID)
	}
	return TrackArgs{RequestID: req.ID, Phase: PhasePoll, Request: *req}, nil
}

// Track durably records a request submitted to fal's queue, so that the
// Reconciler fetches its result should its webhook not come. Tracking a
// request twice is harmless.
func Track[TTx any](ctx context.Context, c *river.Client[TTx], req *falqueue.Request) error {
	args, err := trackArgs(req)
	if err != nil {
		return err
	}
	if _, err := c.Insert(ctx, args, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	return nil
}

// TrackTx is Track in the caller's transaction, so that the tracking
// commits with the caller's own row for the request.
func TrackTx[TTx any](ctx context.Context, c *river.Client[TTx], tx TTx, req *falqueue.Request) error {
	args, err := trackArgs(req)
	if err != nil {
		return err
	}
	if _, err := c.InsertTx(ctx, tx, args, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	return nil
}

// Defaults of ReconcileOptions, from fal's figures: a result of 10 KB or
// more is kept 6 minutes after completion, a smaller one an hour; fal's
// first webhook attempt waits 15 s for an answer and the next ones come
// about a minute apart. A request is polled 10 s after submission and then
// every 30 s; its result is fetched a minute after completion if no
// webhook came by then: at most about 1.5 minutes into a large result's 6.
const (
	DefaultFirstPoll    = 10 * time.Second
	DefaultPollInterval = 30 * time.Second
	DefaultGrace        = time.Minute
	DefaultMaxAge       = 24 * time.Hour
)

// ReconcileOptions configures NewReconciler. Zero durations take the
// defaults.
type ReconcileOptions struct {
	// FirstPoll is how long after submission the first status call is
	// made (default 10 s).
	FirstPoll time.Duration

	// PollInterval is the wait between status calls of an unfinished
	// request (default 30 s).
	PollInterval time.Duration

	// Grace is how long after the request is seen completed the webhook
	// may still come before the result is fetched (default 1 min). Keep
	// PollInterval + Grace well inside fal's 6 minutes.
	Grace time.Duration

	// MaxAge is how long a request is tracked before it is given up,
	// counted from Track (default 24 h): for requests that never finish.
	MaxAge time.Duration

	// Logger receives an Error for each result lost (expired before it
	// could be fetched, or given up), and a Warn for each result fetched
	// because its webhook did not come. Default slog.Default().
	Logger *slog.Logger

	// Stats, when set, counts what the reconciler did.
	Stats *ReconcileStats
}

// ReconcileStats counts a Reconciler's work. Read the fields with Load.
type ReconcileStats struct {
	StatusCalls atomic.Int64 // status calls made to fal
	ResultCalls atomic.Int64 // result calls made to fal
	Delivered   atomic.Int64 // requests whose webhook came: nothing fetched
	Recovered   atomic.Int64 // results fetched and stored as deliveries
	Expired     atomic.Int64 // results fal no longer had: lost
	Abandoned   atomic.Int64 // requests given up after MaxAge
}

// reconciler is the worker of TrackArgs jobs.
type reconciler[TTx any] struct {
	river.WorkerDefaults[TrackArgs]
	qc   *falqueue.Client
	opts ReconcileOptions
}

// NewReconciler returns the River worker of tracked requests. For each
// request: it polls fal's status, FirstPoll after submission and then
// every PollInterval, until the request completes; then it waits Grace for
// the webhook; if by then no delivery job exists for the request id, it
// fetches the result and stores it as a delivery (Source SourceReconcile),
// with the same unique key as the webhook's, so that the webhook and the
// backstop together process each request once. Before every call to fal
// it checks whether the delivery arrived, and makes no call if it did.
//
// A result fal no longer has (ErrResultGone: fal keeps results an hour,
// six minutes when 10 KB or larger) is lost: it is logged at Error and
// counted in Stats.Expired. Failed calls are retried by River; a
// Retry-After from fal is honoured.
//
// TTx is the client's transaction type, as for river.ClientFromContext:
// register the worker on the client that stores the deliveries. A stored
// delivery's UserID is empty on this path: fal's queue does not say it.
func NewReconciler[TTx any](qc *falqueue.Client, opts ReconcileOptions) river.Worker[TrackArgs] {
	if qc == nil {
		panic("falriver: NewReconciler with a nil falqueue.Client")
	}
	opts.FirstPoll = positive(opts.FirstPoll, DefaultFirstPoll)
	opts.PollInterval = positive(opts.PollInterval, DefaultPollInterval)
	opts.Grace = positive(opts.Grace, DefaultGrace)
	opts.MaxAge = positive(opts.MaxAge, DefaultMaxAge)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Stats == nil {
		opts.Stats = new(ReconcileStats)
	}
	return &reconciler[TTx]{qc: qc, opts: opts}
}

func positive(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Timeout bounds one attempt: a result fetch of up to falqueue's size
// limit, with its retries.
func (*reconciler[TTx]) Timeout(*river.Job[TrackArgs]) time.Duration { return 3 * time.Minute }

// NextRetry retries a failed call after PollInterval.
func (r *reconciler[TTx]) NextRetry(*river.Job[TrackArgs]) time.Time {
	return time.Now().Add(r.opts.PollInterval)
}

func (r *reconciler[TTx]) Work(ctx context.Context, job *river.Job[TrackArgs]) error {
	c := river.ClientFromContext[TTx](ctx)
	req := &job.Args.Request
	if req.ID != job.Args.RequestID {
		return river.JobCancel(fmt.Errorf("%w: job of %q holds request %q", ErrInvalidRequest, job.Args.RequestID, req.ID))
	}
	done, err := delivered(ctx, c, req.ID)
	if err != nil {
		return err
	}
	if done {
		r.opts.Stats.Delivered.Add(1)
		return nil
	}
	if age := time.Since(job.CreatedAt); age > r.opts.MaxAge {
		r.opts.Stats.Abandoned.Add(1)
		r.opts.Logger.LogAttrs(ctx, slog.LevelError, "falriver: request given up: not completed within MaxAge",
			slog.String("request_id", req.ID), slog.String("endpoint", req.Endpoint), slog.Duration("age", age))
		return river.JobCancel(fmt.Errorf("falriver: request %q not completed after %v", req.ID, age))
	}
	switch job.Args.Phase {
	case PhasePoll:
		return r.poll(ctx, c, job)
	case PhaseFetch:
		return r.fetch(ctx, c, job)
	default:
		return river.JobCancel(fmt.Errorf("%w: unknown phase %q", ErrInvalidRequest, job.Args.Phase))
	}
}

// poll checks the status; once completed, it schedules the fetch phase
// Grace later.
func (r *reconciler[TTx]) poll(ctx context.Context, c *river.Client[TTx], job *river.Job[TrackArgs]) error {
	req := &job.Args.Request
	if wait := time.Until(job.CreatedAt.Add(r.opts.FirstPoll)); wait > 0 {
		return river.JobSnooze(wait)
	}
	r.opts.Stats.StatusCalls.Add(1)
	st, err := r.qc.Status(ctx, req)
	if err != nil {
		return r.failed(ctx, req, err)
	}
	if !st.Completed() {
		return river.JobSnooze(r.opts.PollInterval)
	}
	// The fetch phase waits Grace from its creation, by snoozing (as the
	// first poll does), so that its schedule is the job's own.
	next := TrackArgs{RequestID: req.ID, Phase: PhaseFetch, Request: *req}
	if _, err := c.Insert(ctx, next, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	return nil
}

// fetch fetches the result of a completed request whose webhook did not
// come, and stores it as a delivery.
func (r *reconciler[TTx]) fetch(ctx context.Context, c *river.Client[TTx], job *river.Job[TrackArgs]) error {
	req := &job.Args.Request
	if wait := time.Until(job.CreatedAt.Add(r.opts.Grace)); wait > 0 {
		return river.JobSnooze(wait)
	}
	r.opts.Stats.ResultCalls.Add(1)
	ev, err := r.qc.Result(ctx, req)
	if err != nil {
		return r.failed(ctx, req, err)
	}
	b, err := webhookBody(req.ID, ev)
	if err != nil {
		return river.JobCancel(err)
	}
	res, err := Enqueue(ctx, c, Args{RequestID: req.ID, Body: b, ReceivedAt: time.Now().UTC(), Source: SourceReconcile})
	if err != nil {
		return err
	}
	if res.UniqueSkippedAsDuplicate {
		r.opts.Stats.Delivered.Add(1) // the webhook came while we fetched
		return nil
	}
	r.opts.Stats.Recovered.Add(1)
	r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "falriver: result fetched from fal's queue: its webhook did not come",
		slog.String("request_id", req.ID), slog.String("endpoint", req.Endpoint))
	return nil
}

// failed turns a failed call to fal into the job's outcome: a result that
// is gone is lost and ends the job; a Retry-After is a snooze; anything
// else is an error for River to retry.
func (r *reconciler[TTx]) failed(ctx context.Context, req *falqueue.Request, err error) error {
	if errors.Is(err, falqueue.ErrResultGone) {
		r.opts.Stats.Expired.Add(1)
		r.opts.Logger.LogAttrs(ctx, slog.LevelError, "falriver: result lost: fal no longer has it and no webhook came",
			slog.String("request_id", req.ID), slog.String("endpoint", req.Endpoint), slog.String("err", err.Error()))
		return river.JobCancel(err)
	}
	var apiErr *falqueue.APIError
	if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
		return river.JobSnooze(apiErr.RetryAfter)
	}
	return err
}

// delivered reports whether a delivery job exists for the request id, in
// any state.
func delivered[TTx any](ctx context.Context, c *river.Client[TTx], id string) (bool, error) {
	p := river.NewJobListParams().Kinds(Kind).First(1).States(allStates...)
	if c.Driver().DatabaseName() == "sqlite" {
		p = p.Where("args ->> '$.request_id' = @request_id", river.NamedArgs{"request_id": id})
	} else {
		frag, _ := json.Marshal(map[string]string{"request_id": id})
		p = p.Where("args @> @fragment::jsonb", river.NamedArgs{"fragment": string(frag)})
	}
	res, err := c.JobList(ctx, p)
	if err != nil {
		return false, fmt.Errorf("falriver: looking up the delivery of %q: %w", id, err)
	}
	return len(res.Jobs) > 0, nil
}

// webhookBody returns the body of the webhook fal would have sent for ev:
// request_id, gateway_request_id, status, error, error_type, and payload
// (its bytes verbatim) or payload_error.
func webhookBody(id string, ev *falwebhook.Event) ([]byte, error) {
	var b bytes.Buffer
	str := func(k, v string) {
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(v)
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('{')
	str("request_id", id)
	if ev.GatewayRequestID != "" {
		str("gateway_request_id", ev.GatewayRequestID)
	}
	str("status", string(ev.Status))
	if ev.Error != "" {
		str("error", ev.Error)
	}
	if ev.ErrorType != "" {
		str("error_type", ev.ErrorType)
	}
	if ev.PayloadError != "" {
		str("payload_error", ev.PayloadError)
	}
	if ev.Payload != nil {
		if !json.Valid(ev.Payload) {
			return nil, fmt.Errorf("falriver: result of %q: payload is not JSON", id)
		}
		b.WriteString(`,"payload":`)
		b.Write(ev.Payload)
	}
	b.WriteByte('}')
	if _, err := falwebhook.ParseEvent(b.Bytes()); err != nil {
		return nil, fmt.Errorf("falriver: result of %q: %w", id, err)
	}
	return b.Bytes(), nil
}
