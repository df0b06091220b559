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

// Defaults of the dedupe layer. See WithDedupe.
const (
	// DefaultDedupeLease is how long a claim on a delivery lasts while its
	// handler runs: 2 minutes, eight times fal's 15 second delivery timeout.
	DefaultDedupeLease = 2 * time.Minute

	// DefaultDedupeTTL is how long a completed delivery is remembered: 24
	// hours, well past fal's retry window (about 1 to 2 hours).
	DefaultDedupeTTL = 24 * time.Hour

	// DefaultMemoryStoreMaxEntries is how many request ids a MemoryStore
	// holds at most.
	DefaultMemoryStoreMaxEntries = 100_000
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
	// another claim took the request id, or the request id was completed
	// meanwhile. The handler that held it may have run twice.
	ErrClaimLost = errors.New("falwebhook: dedupe claim lost")

	// ErrStoreFull is returned by MemoryStore.Claim when every entry is a
	// live claim, so none can be evicted without risking a second run.
	ErrStoreFull = errors.New("falwebhook: dedupe store full")
)

// errDedupeStore is wrapped around a DedupeStore's errors in the
// middleware's logs.
var errDedupeStore = errors.New("falwebhook: dedupe store")

// ClaimState is the outcome of DedupeStore.Claim.
type ClaimState int

// The outcomes of a claim. The zero ClaimState is not valid; the middleware
// treats it as a store error.
const (
	// ClaimAcquired: the caller now holds the request id, under the
	// returned token, until it completes or releases it or the lease runs
	// out.
	ClaimAcquired ClaimState = iota + 1

	// ClaimInProgress: another claim holds the request id and its lease has
	// not run out.
	ClaimInProgress

	// ClaimCompleted: the request id was completed and its record has not
	// expired.
	ClaimCompleted
)

// String returns "acquired", "in-progress", "completed" or
// "ClaimState(n)".
func (s ClaimState) String() string {
	switch s {
	case ClaimAcquired:
		return "acquired"
	case ClaimInProgress:
		return "in-progress"
	case ClaimCompleted:
		return "completed"
	}
	return "ClaimState(" + strconv.Itoa(int(s)) + ")"
}

// ClaimResult is what DedupeStore.Claim returns.
type ClaimResult struct {
	State ClaimState
	Token string // identifies the claim when State is ClaimAcquired; empty otherwise
}

// A DedupeStore records which deliveries are being processed and which are
// done, keyed by request id, for WithDedupe. Its three operations must each
// be atomic with respect to each other, also across processes when
// replicas share the store. A store may be built on any database with a
// compare-and-set: in SQL, a table (request_id primary key, token, done,
// expires_at) where Claim is an INSERT … ON CONFLICT DO UPDATE … WHERE
// expires_at <= now, and Complete and Release are UPDATE and DELETE with
// WHERE token = $token.
//
// A record is live until its expiry time; an expired record counts as
// absent. The middleware passes positive durations only.
//
// Implementations: MemoryStore for one process, and the Redis store in the
// module github.com/falwebhook/falwebhook/redisdedupe for replicas.
type DedupeStore interface {
	// Claim atomically looks up requestID. With no live record it creates
	// an in-progress record with a fresh token that no other claim ever
	// had, expiring after lease, and returns ClaimAcquired and the token.
	// Otherwise it changes nothing and returns ClaimInProgress or
	// ClaimCompleted.
	Claim(ctx context.Context, requestID string, lease time.Duration) (ClaimResult, error)

	// Complete records requestID as completed, expiring after ttl, when
	// the claim with token still holds it or when it has no live record
	// (the lease ran out and no one claimed it since; the work was done all
	// the same). When another claim holds it, or it is already completed,
	// Complete changes nothing and returns an error wrapping ErrClaimLost.
	Complete(ctx context.Context, requestID, token string, ttl time.Duration) error

	// Release deletes requestID's record when the claim with token holds
	// it, so that the next delivery is processed. It returns nil when the
	// record is absent or expired, and an error wrapping ErrClaimLost,
	// changing nothing, when another claim holds it or it is completed.
	Release(ctx context.Context, requestID, token string) error
}

// A DedupeOption configures WithDedupe.
type DedupeOption func(*dedupeConfig)

// WithDedupeLease sets how long a claim lasts (default DefaultDedupeLease,
// 2 minutes). The lease must cover the longest run of the handler: when it
// runs out while the handler still runs, the next retry of the delivery
// runs the handler a second time, concurrently. It must not be much longer
// than needed either: a replica that dies mid-handler holds the delivery
// until the lease runs out, and fal's retries in the meantime are answered
// 409. Note that fal gives up on an attempt after 15 s and retries, so a
// handler that takes longer than that is retried anyway. Zero or less
// restores the default.
func WithDedupeLease(d time.Duration) DedupeOption {
	return func(c *dedupeConfig) { c.lease = d }
}

// WithDedupeTTL sets how long a completed delivery is remembered and
// answered as a duplicate (default DefaultDedupeTTL, 24 hours). It should
// exceed fal's retry window, about 1 to 2 hours. Zero or less restores the
// default.
func WithDedupeTTL(d time.Duration) DedupeOption {
	return func(c *dedupeConfig) { c.ttl = d }
}

// WithDedupeFailOpen makes the middleware call the handler when the store
// cannot be asked (Claim returns an error), as if there were no dedupe. By
// default it fails closed: it answers 503 with Retry-After and fal retries
// the delivery later. Failing open keeps deliveries flowing while the store
// is down, at the cost of exactly-once: during the outage every retry runs
// the handler.
func WithDedupeFailOpen() DedupeOption {
	return func(c *dedupeConfig) { c.failOpen = true }
}

// dedupeConfig is the middleware's dedupe layer, set by WithDedupe.
type dedupeConfig struct {
	store    DedupeStore
	lease    time.Duration
	ttl      time.Duration
	failOpen bool
}

// WithDedupe makes the middleware run the handler once per request id,
// turning fal's at-least-once delivery into exactly-once processing, also
// across replicas that share store. A nil store turns dedupe off.
//
// After a delivery is verified, the middleware claims its request id (the
// signed X-Fal-Webhook-Request-Id header) in store:
//
//   - already completed: it answers 200 with HeaderDuplicate "completed"
//     and does not call the handler;
//   - being processed right now, by this or another replica: it answers
//     409 Conflict with Retry-After and HeaderDuplicate "in-progress", so
//     that fal tries again later (409 rather than 503, so that it shows in
//     logs and metrics as a conflict, not as an outage);
//   - claimed: it calls the handler. When the handler's status is 2xx
//     (including writing nothing, which net/http answers 200) the request
//     id is completed and remembered for the TTL. On any other status, or
//     when the handler panics, the claim is released so that fal's next
//     retry processes the delivery; a panic then goes on to net/http
//     unchanged.
//
// The store is asked with the request's context for Claim and with
// context.WithoutCancel of it for Complete and Release, so a client that
// hangs up does not leave a claim behind. A store should bound its own
// operations (the Redis client does, with its timeouts).
//
// When Claim fails the middleware answers 503 with Retry-After (fail
// closed) unless WithDedupeFailOpen is given. When Complete or Release
// fails, the response has already been decided by the handler; the
// failure is logged (see WithLogger) and the claim stays until its lease
// runs out, after which a retry is processed again. When the handler
// outlived its lease and another claim took the request id, Complete fails
// with ErrClaimLost and the handler may have run twice: give it a longer
// lease (WithDedupeLease).
//
// Responses the dedupe layer writes itself do not go through the handler
// set by WithErrorHandler. Exactly-once holds as far as the store keeps
// its records: a store that loses them (a Redis restart without
// persistence, a failover) lets a later retry run the handler again.
func WithDedupe(store DedupeStore, opts ...DedupeOption) Option {
	return func(v *Verifier) {
		if store == nil {
			v.mw.dedupe = nil
			return
		}
		c := &dedupeConfig{store: store}
		for _, opt := range opts {
			if opt != nil {
				opt(c)
			}
		}
		if c.lease <= 0 {
			c.lease = DefaultDedupeLease
		}
		if c.ttl <= 0 {
			c.ttl = DefaultDedupeTTL
		}
		v.mw.dedupe = c
	}
}

// serveDedupe runs next for a verified delivery at most once per request
// id, the signed X-Fal-Webhook-Request-Id, as described at WithDedupe.
func (v *Verifier) serveDedupe(w http.ResponseWriter, r *http.Request, id string, next http.Handler) {
	d := v.mw.dedupe
	ctx := r.Context()
	res, err := d.store.Claim(ctx, id, d.lease)
	if err == nil && res.State != ClaimAcquired && res.State != ClaimInProgress && res.State != ClaimCompleted {
		err = fmt.Errorf("claim returned state %s", res.State)
	}
	if err != nil {
		err = fmt.Errorf("%w: claim: %w", errDedupeStore, err)
		if ctx.Err() != nil {
			v.logDedupe(r, slog.LevelWarn, "falwebhook: the client went away before the delivery was claimed", id, err)
			writeStatus(w, http.StatusServiceUnavailable, v.mw.retryAfter)
			return
		}
		if d.failOpen {
			v.logDedupe(r, slog.LevelError, "falwebhook: dedupe store failed; running the handler (fail open)", id, err)
			next.ServeHTTP(w, r)
			return
		}
		v.logDedupe(r, slog.LevelError, "falwebhook: dedupe store failed; asking fal to retry", id, err)
		writeStatus(w, http.StatusServiceUnavailable, v.mw.retryAfter)
		return
	}
	switch res.State {
	case ClaimCompleted:
		v.logDedupe(r, slog.LevelInfo, "falwebhook: duplicate delivery of a completed request", id, nil)
		h := w.Header()
		h.Set(HeaderDuplicate, "completed")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("OK (duplicate delivery, already processed)\n"))
		return
	case ClaimInProgress:
		v.logDedupe(r, slog.LevelInfo, "falwebhook: duplicate delivery of a request in progress; asking fal to retry", id, nil)
		w.Header().Set(HeaderDuplicate, "in-progress")
		writeStatus(w, http.StatusConflict, v.mw.retryAfter)
		return
	}

	var start time.Time
	if v.mw.logger != nil {
		start = v.now() // only to log a lease overrun
	}
	sw := &statusWriter{ResponseWriter: w}
	returned := false
	defer func() {
		if !returned { // the handler panicked or called runtime.Goexit
			v.releaseClaim(r, d, id, res.Token, "the handler panicked")
		}
	}()
	next.ServeHTTP(sw, r)
	returned = true

	code := sw.code
	if code == 0 {
		code = http.StatusOK
	}
	if code < 200 || code > 299 {
		v.releaseClaim(r, d, id, res.Token, "the handler answered "+strconv.Itoa(code))
		return
	}
	err = d.store.Complete(context.WithoutCancel(ctx), id, res.Token, d.ttl)
	switch {
	case errors.Is(err, ErrClaimLost):
		v.logDedupe(r, slog.LevelError, "falwebhook: the handler outlived its dedupe lease and the delivery was claimed again; it may have run twice (raise the lease)", id, err)
	case err != nil:
		v.logDedupe(r, slog.LevelError, "falwebhook: could not mark the delivery completed; a retry after the lease runs out will run the handler again", id, fmt.Errorf("%w: complete: %w", errDedupeStore, err))
	case v.mw.logger != nil:
		if took := v.now().Sub(start); took > d.lease {
			v.logDedupe(r, slog.LevelWarn, "falwebhook: the handler outlived its dedupe lease ("+took.String()+" > "+d.lease.String()+"); raise the lease", id, nil)
		}
	}
}

// releaseClaim releases the claim after a failed run and logs why.
func (v *Verifier) releaseClaim(r *http.Request, d *dedupeConfig, id, token, why string) {
	err := d.store.Release(context.WithoutCancel(r.Context()), id, token)
	switch {
	case errors.Is(err, ErrClaimLost):
		v.logDedupe(r, slog.LevelError, "falwebhook: released after "+why+", but the handler outlived its dedupe lease (raise the lease)", id, err)
	case err != nil:
		v.logDedupe(r, slog.LevelError, "falwebhook: could not release the delivery after "+why+"; retries get 409 until the lease runs out", id, fmt.Errorf("%w: release: %w", errDedupeStore, err))
	default:
		v.logDedupe(r, slog.LevelInfo, "falwebhook: released the delivery after "+why+"; fal's next retry runs it", id, nil)
	}
}

// logDedupe logs one event of the dedupe layer when a logger is set.
func (v *Verifier) logDedupe(r *http.Request, level slog.Level, msg, id string, err error) {
	l := v.mw.logger
	if l == nil || !l.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{slog.String("request_id", id)}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	l.LogAttrs(r.Context(), level, msg, attrs...)
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

// MemoryStore is a DedupeStore in process memory, for a single replica.
// It is bounded: it holds at most its maximum number of request ids
// (DefaultMemoryStoreMaxEntries unless WithMemoryMaxEntries), and when full
// it drops an expired claim or else the oldest completed record. It never
// evicts a live claim, since that would let a retry run the handler while
// it still runs: when every entry is a live claim, Claim fails with
// ErrStoreFull and the middleware answers 503 (fal retries). Records expire
// lazily, on lookup or eviction; a few expired ones are dropped on each
// Claim.
//
// Evicting a completed record before its TTL means a later retry of that
// delivery runs the handler again; size the store for the deliveries of a
// TTL (100,000 fits a sustained rate of about one a second for 24 hours).
// Tokens are unique within the store.
//
// A MemoryStore is safe for concurrent use by multiple goroutines.
type MemoryStore struct {
	now func() time.Time
	max int

	mu      sync.Mutex // guards the fields below
	entries map[string]*memEntry
	claims  memList // live or expired claims, in claim order
	done    memList // completed records, in completion order
	seq     uint64  // the last token issued
}

// memEntry is a record of a MemoryStore, on one of its lists.
type memEntry struct {
	id         string
	token      string // the claim's token; empty when done
	done       bool
	expires    time.Time
	prev, next *memEntry
}

// memList is a doubly linked list of entries, oldest first.
type memList struct{ head, tail *memEntry }

func (l *memList) pushBack(e *memEntry) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *memList) remove(e *memEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// A MemoryStoreOption configures NewMemoryStore.
type MemoryStoreOption func(*MemoryStore)

// WithMemoryMaxEntries sets how many request ids the store holds at most
// (default DefaultMemoryStoreMaxEntries, 100,000). Zero or less restores the
// default.
func WithMemoryMaxEntries(n int) MemoryStoreOption {
	return func(s *MemoryStore) { s.max = n }
}

// WithMemoryClock sets the function the store reads the current time from
// (default time.Now), for tests.
func WithMemoryClock(now func() time.Time) MemoryStoreOption {
	return func(s *MemoryStore) { s.now = now }
}

// NewMemoryStore returns an empty MemoryStore configured by opts.
func NewMemoryStore(opts ...MemoryStoreOption) *MemoryStore {
	s := &MemoryStore{now: time.Now, max: DefaultMemoryStoreMaxEntries}
	for _, opt := range opts {
		if opt != nil {
			opt(s)
		}
	}
	if s.max <= 0 {
		s.max = DefaultMemoryStoreMaxEntries
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.entries = make(map[string]*memEntry)
	return s
}

// Len returns the number of records held, including expired ones not yet
// dropped.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Claim implements DedupeStore. It fails with ErrStoreFull when the store
// is full of live claims, and with ctx's error when ctx is done.
func (s *MemoryStore) Claim(ctx context.Context, requestID string, lease time.Duration) (ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return ClaimResult{}, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[requestID]; e != nil {
		if now.Before(e.expires) {
			if e.done {
				return ClaimResult{State: ClaimCompleted}, nil
			}
			return ClaimResult{State: ClaimInProgress}, nil
		}
		s.drop(e)
	}
	s.sweep(now)
	if len(s.entries) >= s.max && !s.evict(now) {
		return ClaimResult{}, fmt.Errorf("%w: %d live claims", ErrStoreFull, len(s.entries))
	}
	s.seq++
	e := &memEntry{id: requestID, token: strconv.FormatUint(s.seq, 10), expires: now.Add(lease)}
	s.entries[requestID] = e
	s.claims.pushBack(e)
	return ClaimResult{State: ClaimAcquired, Token: e.token}, nil
}

// Complete implements DedupeStore. Recording a request id that has no
// record fails with ErrStoreFull when the store is full of live claims.
func (s *MemoryStore) Complete(ctx context.Context, requestID, token string, ttl time.Duration) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[requestID]
	if e != nil && now.Before(e.expires) && (e.done || e.token != token) {
		if e.done {
			return fmt.Errorf("%w: request %s was completed by another claim", ErrClaimLost, requestID)
		}
		return fmt.Errorf("%w: request %s is held by another claim", ErrClaimLost, requestID)
	}
	switch {
	case e != nil && !e.done:
		s.claims.remove(e) // reused below: no allocation on the hot path
	case e != nil:
		s.done.remove(e)
	case len(s.entries) >= s.max && !s.evict(now):
		return fmt.Errorf("%w: %d live claims", ErrStoreFull, len(s.entries))
	default:
		e = &memEntry{id: requestID}
		s.entries[requestID] = e
	}
	e.token, e.done, e.expires = "", true, now.Add(ttl)
	s.done.pushBack(e)
	return nil
}

// Release implements DedupeStore.
func (s *MemoryStore) Release(ctx context.Context, requestID, token string) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[requestID]
	switch {
	case e == nil:
		return nil
	case !now.Before(e.expires):
		s.drop(e)
		return nil
	case e.done:
		return fmt.Errorf("%w: request %s was completed by another claim", ErrClaimLost, requestID)
	case e.token != token:
		return fmt.Errorf("%w: request %s is held by another claim", ErrClaimLost, requestID)
	}
	s.drop(e)
	return nil
}

// drop removes e from the store. s.mu must be held.
func (s *MemoryStore) drop(e *memEntry) {
	if e.done {
		s.done.remove(e)
	} else {
		s.claims.remove(e)
	}
	delete(s.entries, e.id)
}

// sweep drops a few expired records from the heads of the lists, so that
// the store shrinks when traffic drops. s.mu must be held.
func (s *MemoryStore) sweep(now time.Time) {
	for range 2 {
		if e := s.claims.head; e != nil && !now.Before(e.expires) {
			s.drop(e)
		}
		if e := s.done.head; e != nil && !now.Before(e.expires) {
			s.drop(e)
		}
	}
}

// evict makes room for one record by dropping the oldest claim if it has
// expired, or else the oldest completed record. It reports whether it
// dropped one. s.mu must be held.
func (s *MemoryStore) evict(now time.Time) bool {
	if e := s.claims.head; e != nil && !now.Before(e.expires) {
		s.drop(e)
		return true
	}
	if e := s.done.head; e != nil {
		s.drop(e)
		return true
	}
	return false
}
