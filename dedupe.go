package falwebhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// HeaderDuplicate marks a response the dedupe layer wrote instead of
// calling the handler: "completed" on the 200 answering a delivery that was
// already processed, "in-progress" on the 409 answering one whose handler is
// running right now. Responses from the handler never carry it.
const HeaderDuplicate = "Falwebhook-Duplicate"

// Errors of the dedupe layer.
var (
	// ErrClaimLost is returned by a DedupeStore's Complete or Release when
	// the claim named by the token is no longer held: its lease ran out and
	// another claim took the request id, or another claim completed it. The
	// handler that held it may have run twice.
	ErrClaimLost = errors.New("falwebhook: dedupe claim lost")

	// ErrUnverifiedEvent is returned by Dedupe.Do for an event that Verify
	// or VerifyRequest did not return, and answered 500 by Dedupe.Middleware
	// for a request no Verifier's middleware checked: the dedupe layer must
	// come after verification.
	ErrUnverifiedEvent = errors.New("falwebhook: dedupe without verification")

	// ErrDedupeStore is returned by Dedupe.Do, wrapping the store's error,
	// when the request id could not be claimed: the store is down or full.
	// The handler did not run; answer 503 so that fal retries.
	ErrDedupeStore = errors.New("falwebhook: dedupe store failed")
)

// ClaimState is the outcome of DedupeStore.Claim, and what Dedupe.Do did.
type ClaimState int

// The outcomes of a claim. The zero ClaimState is not valid.
const (
	// ClaimAcquired: the caller now holds the request id, under the
	// returned token, until it completes or releases it or the lease runs
	// out. From Dedupe.Do: the function ran.
	ClaimAcquired ClaimState = iota + 1

	// ClaimInProgress: another claim holds the request id and its lease has
	// not run out. From Dedupe.Do: the function did not run; answer 409 (or
	// any non-2xx) so that fal retries later.
	ClaimInProgress

	// ClaimCompleted: the request id was completed and its record has not
	// expired. From Dedupe.Do: the function did not run; answer 200.
	ClaimCompleted
)

// A DedupeStore records which deliveries are being processed and which are
// done, for Dedupe. Each record is named by a key that Dedupe makes from the
// delivery's signed user id and request id, so that another fal account's
// delivery can never mark one of yours done: the length of the user id in
// decimal, ":", the user id, ":", the request id (user "u-1" and request
// "req-9" make "3:u-1:req-9"). Stores treat it as an opaque string. Its three operations must each be
// atomic with respect to each other, also across processes when replicas
// share the store. A store may be built on any database with a
// compare-and-set: in SQL, a table (key primary key, token, done,
// expires_at) where Claim is an INSERT … ON CONFLICT DO UPDATE … WHERE
// expires_at <= now, and Complete and Release are UPDATE and DELETE with
// WHERE token = $token.
//
// A record is live until its expiry time; an expired record counts as
// absent. Dedupe passes positive durations only, and may call Complete or
// Release more than once with the same token (it retries them when they
// fail, and a failure may hide a success): each must then report what the
// first call did.
//
// Implementations: NewMemoryStore for one process, and the Redis store in
// the module github.com/falwebhook/falwebhook/redisdedupe for replicas.
type DedupeStore interface {
	// Claim atomically looks up key. With no live record it creates
	// an in-progress record with a fresh token that no other claim ever
	// had, expiring after lease, and returns ClaimAcquired and the token.
	// Otherwise it changes nothing and returns ClaimInProgress or
	// ClaimCompleted.
	Claim(ctx context.Context, key string, lease time.Duration) (state ClaimState, token string, err error)

	// Complete records key as completed, expiring after ttl, when
	// the claim with token still holds it or when it has no live record
	// (the lease ran out and no one claimed it since; the work was done all
	// the same), and returns nil when it was already completed under token.
	// When another claim holds it or completed it, Complete changes nothing
	// and returns an error wrapping ErrClaimLost.
	Complete(ctx context.Context, key, token string, ttl time.Duration) error

	// Release deletes key's record when the claim with token holds
	// it, so that the next delivery is processed. It returns nil when the
	// record is absent or expired, and an error wrapping ErrClaimLost,
	// changing nothing, when another claim holds it or it is completed.
	Release(ctx context.Context, key, token string) error
}

// Dedupe runs a handler once per delivery (a request id of a fal user),
// turning fal's at-least-once delivery into exactly-once processing, also
// across replicas that share its Store. It comes after verification, in one
// of two shapes: its Middleware as the handler a Verifier's middleware
// wraps, v.Middleware(d.Middleware(h)), or Do, around a function, with the
// event from Verify or VerifyRequest. Set the fields, then use it; they
// must not change after first use. A zero field means its default.
//
// For each verified delivery it claims the signed user id and request id
// (X-Fal-Webhook-User-Id and X-Fal-Webhook-Request-Id) in the store:
//
//   - already completed: the handler does not run; the answer is 200 with
//     HeaderDuplicate "completed";
//   - being processed right now, by this or another replica: the handler
//     does not run; the answer is 409 Conflict with Retry-After and
//     HeaderDuplicate "in-progress", so that fal tries again later (409
//     rather than 503, so that it shows as a conflict, not an outage);
//   - claimed: the handler runs. When it succeeds (Do: fn returns nil;
//     Middleware: the status is 2xx, including writing nothing) the request
//     id is completed and remembered for TTL. When it fails or panics the
//     claim is released so that fal's next retry processes the delivery; a
//     panic then goes on unchanged.
//   - the store fails: the answer is 503 with Retry-After (fail closed),
//     unless FailOpen.
//
// The answer goes to fal as soon as the handler's outcome is known; the
// store's bookkeeping (Complete or Release) follows. When it fails it is
// retried in the background with backoff while the claim is still ours
// (until a tenth of the lease before it runs out), so a short store outage
// does not make a retry run the handler again. Shutdown waits for those
// retries.
//
// What exactly-once promises: the handler runs to success at most once per
// request id while the store keeps its records, and a failed run is retried
// by fal. It cannot hold when the store loses records (a Redis restart
// without persistence, a failover), when the bookkeeping keeps failing
// until the lease runs out, or when a handler outlives its lease and a
// retry claims the id again (logged at Error level with ErrClaimLost). The
// handler's side effects are not transactional with the store: a process
// that dies after the side effect but before Complete lands leaves the
// claim to expire, and fal's next retry runs the handler again. Handlers
// that must never repeat a side effect should also key it by request id.
//
// A Dedupe is safe for concurrent use by multiple goroutines.
type Dedupe struct {
	// Store keeps the claims (default: an in-memory store for this process
	// only, NewMemoryStore(0)). Replicas need a shared store.
	Store DedupeStore

	// Lease is how long a claim lasts (default 2 minutes). It must cover
	// the longest run of the handler: when it runs out while the handler
	// still runs, the next retry of the delivery runs the handler again,
	// concurrently. It should not be much longer than needed either: a
	// replica that dies mid-handler holds the delivery until the lease runs
	// out, and fal's retries meanwhile are answered 409. fal gives up on an
	// attempt after 15 s and retries, so a handler that takes longer is
	// retried anyway.
	Lease time.Duration

	// TTL is how long a completed delivery is remembered and answered as a
	// duplicate (default 24 hours). It should exceed fal's retry window,
	// about 1 to 2 hours.
	TTL time.Duration

	// FailOpen runs the handler when the store cannot be asked, as if there
	// were no dedupe. By default Dedupe fails closed: it answers 503 and fal
	// retries later. Failing open keeps deliveries flowing while the store
	// is down, at the cost of exactly-once: during the outage every retry
	// runs the handler.
	FailOpen bool

	// Logger receives duplicates and store failures (default: the logger
	// of the Verifier whose middleware wraps Middleware directly, otherwise
	// no logging).
	Logger *slog.Logger

	// Clock returns the current time (default time.Now). It times leases
	// for the retries of the bookkeeping and for the overrun warning.
	Clock func() time.Time

	init  sync.Once
	store DedupeStore

	bookkeeping sync.WaitGroup // background retries of Complete and Release

	// wait is what the background retries wait with; tests replace it.
	wait func(context.Context, time.Duration) error
}

const (
	defaultDedupeLease = 2 * time.Minute
	defaultDedupeTTL   = 24 * time.Hour
)

func (d *Dedupe) setup() {
	d.init.Do(func() {
		d.store = d.Store
		if d.store == nil {
			d.store = NewMemoryStore(0)
		}
		if d.wait == nil {
			d.wait = sleepCtx
		}
	})
}

func (d *Dedupe) now() time.Time {
	if d.Clock != nil {
		return d.Clock()
	}
	return time.Now()
}

func (d *Dedupe) lease() time.Duration {
	if d.Lease <= 0 {
		return defaultDedupeLease
	}
	return d.Lease
}

func (d *Dedupe) ttl() time.Duration {
	if d.TTL <= 0 {
		return defaultDedupeTTL
	}
	return d.TTL
}

// Do runs fn at most once per delivery, as described at Dedupe, for code
// that does not use net/http middleware (gin, echo or fiber handlers, AWS
// Lambda). ev must come from Verify or VerifyRequest, which set its UserID
// and RequestID from the signed headers; an event without a UserID (from
// ParseEvent) is refused with an error wrapping ErrUnverifiedEvent, and fn
// does not run.
//
// It reports what happened: ClaimAcquired when fn ran (the error is fn's),
// ClaimCompleted or ClaimInProgress when it did not (answer 200, or 409 so
// that fal retries later), and 0 with an error wrapping ErrDedupeStore when
// the store failed (answer 503: StatusCode and WriteError do). fn receives
// ctx.
func (d *Dedupe) Do(ctx context.Context, ev *Event, fn func(ctx context.Context) error) (ClaimState, error) {
	if ev == nil || ev.UserID == "" || ev.RequestID == "" {
		return 0, fmt.Errorf("%w: Dedupe.Do needs the event Verify or VerifyRequest returned", ErrUnverifiedEvent)
	}
	return d.do(ctx, dedupeKey(ev.UserID, ev.RequestID), ev.RequestID, fn, doHooks{}, d.Logger)
}

// dedupeKey names a delivery in a DedupeStore; see DedupeStore.
func dedupeKey(userID, requestID string) string {
	return strconv.Itoa(len(userID)) + ":" + userID + ":" + requestID
}

// Middleware returns a handler that runs next once per delivery (the
// signed X-Fal-Webhook-User-Id and X-Fal-Webhook-Request-Id), reading the
// verified delivery from the request context. It must sit behind a
// Verifier's Middleware:
//
//	v.Middleware(d.Middleware(handler))
//
// Wrapped directly like that, the Verifier's Observer is told the claim's
// outcome ("duplicate", "in_progress", "store_error") and the Verifier's
// logger is the default Logger. Without a verified event in the context it
// refuses loudly, answering 500 and logging at Error level (to
// slog.Default when Logger is nil), and never runs next.
func (d *Dedupe) Middleware(next http.Handler) http.Handler {
	return &dedupeHandler{d: d, next: next}
}

// dedupeHandler is Dedupe.Middleware's handler. A Verifier's middleware
// wrapping one directly runs it with its observer and logger.
type dedupeHandler struct {
	d    *Dedupe
	next http.Handler
}

func (h *dedupeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d, next := h.d, h.next
	{
		vd, ok := r.Context().Value(eventKey).(*verified)
		if !ok || vd.ev == nil {
			l := d.Logger
			if l == nil {
				l = slog.Default()
			}
			l.ErrorContext(r.Context(), "falwebhook: Dedupe.Middleware got a request that no Verifier checked; refusing it (wrap it in Verifier.Middleware)",
				slog.String("path", r.URL.Path), slog.String("remote", r.RemoteAddr))
			write(w, 0, ErrUnverifiedEvent)
			return
		}
		d.serve(w, r, vd, next, nil, nil)
	}
}

// Shutdown waits until the background bookkeeping of deliveries already
// answered is done, or ctx is done. Call it after http.Server.Shutdown has
// returned, so that no completion is lost to an exit. It does not stop d.
func (d *Dedupe) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		d.bookkeeping.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serve is the middleware of d, with logger as the default logger; claimed,
// if not nil, is told the claim's outcome before the handler runs.
func (d *Dedupe) serve(w http.ResponseWriter, r *http.Request, vd *verified, next http.Handler, logger *slog.Logger, claimed func(ClaimState, error)) {
	if d.Logger != nil {
		logger = d.Logger
	}
	sw := &statusWriter{ResponseWriter: w}
	run := func(context.Context) error {
		next.ServeHTTP(sw, r)
		if code := sw.status(); code < 200 || code > 299 {
			return errors.New("the handler answered " + strconv.Itoa(code))
		}
		return nil
	}
	// Send the handler's answer before the bookkeeping, so that a slow
	// store never holds up fal.
	answered := func() { _ = http.NewResponseController(sw).Flush() }
	state, err := d.do(r.Context(), dedupeKey(vd.userID, vd.requestID), vd.requestID, run, doHooks{claimed: claimed, answered: answered}, logger)
	if state == ClaimCompleted || state == ClaimInProgress || state == 0 && err != nil {
		write(w, state, err)
	}
}

// doHooks are told how Dedupe.do goes; nil hooks are skipped.
type doHooks struct {
	claimed  func(ClaimState, error) // the claim's outcome, before fn runs
	answered func()                  // fn has returned; the bookkeeping follows
}

// do is Do for the delivery named key in the store, with request id id,
// calling hooks and logging to logger.
func (d *Dedupe) do(ctx context.Context, key, id string, fn func(context.Context) error, hooks doHooks, logger *slog.Logger) (ClaimState, error) {
	d.setup()
	lg := dedupeLog{l: logger, ctx: ctx, id: id}
	lease := d.lease()
	start := d.now()
	state, token, err := d.store.Claim(ctx, key, lease)
	if err == nil && state != ClaimAcquired && state != ClaimInProgress && state != ClaimCompleted {
		err = fmt.Errorf("claim returned state %d", state)
	}
	claimed := func(state ClaimState, err error) {
		if hooks.claimed != nil {
			hooks.claimed(state, err)
		}
	}
	if err != nil {
		err = fmt.Errorf("%w: claim: %w", ErrDedupeStore, err)
		switch {
		case ctx.Err() != nil:
			lg.log(slog.LevelWarn, "falwebhook: the client went away before the delivery was claimed", err)
		case d.FailOpen:
			lg.log(slog.LevelError, "falwebhook: dedupe store failed; running the handler (fail open)", err)
			claimed(ClaimAcquired, nil)
			return ClaimAcquired, fn(ctx)
		default:
			lg.log(slog.LevelError, "falwebhook: dedupe store failed; asking fal to retry", err)
		}
		claimed(0, err)
		return 0, err
	}
	claimed(state, nil)
	switch state {
	case ClaimCompleted:
		lg.log(slog.LevelInfo, "falwebhook: duplicate delivery of a completed request", nil)
		return state, nil
	case ClaimInProgress:
		lg.log(slog.LevelInfo, "falwebhook: duplicate delivery of a request in progress; asking fal to retry", nil)
		return state, nil
	}

	c := claim{d: d, key: key, token: token, deadline: start.Add(lease - lease/10), log: lg}
	defer func() {
		if c.outcome == "" { // fn panicked or called runtime.Goexit
			c.outcome = "the handler panicked"
			c.finish(ctx, false)
		}
	}()
	ferr := fn(ctx)
	c.outcome = "the handler succeeded"
	if ferr != nil {
		c.outcome = "the handler failed: " + ferr.Error()
	}
	if hooks.answered != nil {
		hooks.answered()
	}
	if took := d.now().Sub(start); took > lease {
		lg.log(slog.LevelWarn, "falwebhook: the handler outlived its dedupe lease ("+took.String()+" > "+lease.String()+"); raise Dedupe.Lease", nil)
	}
	c.finish(ctx, ferr == nil)
	return ClaimAcquired, ferr
}

// claim is one acquired claim whose bookkeeping is pending.
type claim struct {
	d          *Dedupe
	key, token string
	deadline   time.Time // by d's clock: retry the bookkeeping until then
	outcome    string    // why it is completed or released, for logs
	log        dedupeLog
}

// finish completes the claim (ok) or releases it. A first attempt runs now;
// when it fails for a reason other than a lost claim, retries run in the
// background.
func (c *claim) finish(ctx context.Context, ok bool) {
	ctx = context.WithoutCancel(ctx)
	if c.attempt(ctx, ok, 0) {
		return
	}
	c.d.bookkeeping.Add(1)
	go func() {
		defer c.d.bookkeeping.Done()
		backoff := 50 * time.Millisecond
		for n := 1; ; n++ {
			left := c.deadline.Sub(c.d.now())
			if left <= 0 {
				c.gaveUp(ok, n)
				return
			}
			if err := c.d.wait(ctx, min(backoff, left)); err != nil {
				c.gaveUp(ok, n)
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			if c.attempt(ctx, ok, n) {
				return
			}
		}
	}()
}

// attempt runs Complete or Release once and logs what happened. It reports
// whether the bookkeeping is over (done, or impossible).
func (c *claim) attempt(ctx context.Context, ok bool, retry int) (over bool) {
	var err error
	op := "release"
	if ok {
		op = "complete"
		err = c.d.store.Complete(ctx, c.key, c.token, c.d.ttl())
	} else {
		err = c.d.store.Release(ctx, c.key, c.token)
	}
	after := ""
	if retry > 0 {
		after = " after " + strconv.Itoa(retry) + " retries"
	}
	switch {
	case err == nil && ok:
		if retry > 0 {
			c.log.log(slog.LevelInfo, "falwebhook: marked the delivery completed"+after, nil)
		}
		return true
	case err == nil:
		c.log.log(slog.LevelInfo, "falwebhook: released the delivery ("+c.outcome+")"+after+"; fal's next retry runs it", nil)
		return true
	case errors.Is(err, ErrClaimLost):
		c.log.log(slog.LevelError, "falwebhook: could not "+op+" the delivery ("+c.outcome+"): the handler outlived its dedupe lease and the delivery was claimed again; it may have run twice (raise Dedupe.Lease)", err)
		return true
	}
	if retry == 0 {
		c.log.log(slog.LevelWarn, "falwebhook: could not "+op+" the delivery ("+c.outcome+"); retrying in the background", fmt.Errorf("%w: %s: %w", ErrDedupeStore, op, err))
	}
	return false
}

func (c *claim) gaveUp(ok bool, attempts int) {
	msg := "falwebhook: gave up releasing the delivery after " + strconv.Itoa(attempts) + " attempts; fal's retries get 409 until the lease runs out"
	if ok {
		msg = "falwebhook: gave up marking the delivery completed after " + strconv.Itoa(attempts) + " attempts; a retry after the lease runs out will run the handler again"
	}
	c.log.log(slog.LevelError, msg, nil)
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dedupeLog logs the dedupe layer's events about one request id.
type dedupeLog struct {
	l   *slog.Logger
	ctx context.Context
	id  string
}

func (g dedupeLog) log(level slog.Level, msg string, err error) {
	if g.l == nil || !g.l.Enabled(g.ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("request_id", g.id)}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	g.l.LogAttrs(g.ctx, level, msg, attrs...)
}

// statusWriter records the final status the handler writes. It keeps
// http.Flusher, and everything else reachable through
// http.ResponseController, by Unwrap.
type statusWriter struct {
	http.ResponseWriter
	code int // the first status >= 200 written, or 200 on the first Write or Flush; 0 until then
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Flush flushes the underlying writer when it supports flushing.
func (w *statusWriter) Flush() {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the handler's status: 200 when it wrote nothing, as net/http
// answers then.
func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
