package falwebhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// ---- the middleware ----

// syncBuffer is a bytes.Buffer for a logger shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dedupeFixture is a verifier with dedupe around a handler that counts its
// calls and does what each call's behaviour says.
type dedupeFixture struct {
	t      *testing.T
	signer *faltest.Signer
	clock  *testClock
	store  *memoryStore
	d      *Dedupe
	logs   *syncBuffer
	calls  atomic.Int64
	h      http.Handler
	// handle is the handler's behaviour on its n-th call (from 1).
	handle func(n int64, w http.ResponseWriter, r *http.Request)
}

// newDedupeFixture returns a fixture whose Dedupe uses store (nil: an
// in-memory store on the fixture's clock), configured further by configure.
// Its background retries advance the clock instead of sleeping.
func newDedupeFixture(t *testing.T, store DedupeStore, configure ...func(*Dedupe)) *dedupeFixture {
	f := &dedupeFixture{t: t, signer: faltest.SignerFromName("dedupe"), clock: newTestClock(), logs: &syncBuffer{}}
	if store == nil {
		f.store = newMemStore(f.clock, 0)
		store = f.store
	}
	f.d = &Dedupe{Store: store, Clock: f.clock.Now, wait: func(_ context.Context, d time.Duration) error {
		f.clock.Advance(d)
		return nil
	}}
	for _, c := range configure {
		c(f.d)
	}
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	v := NewVerifier(
		WithKeys(StaticKeys(f.signer.PublicKey())),
		WithClock(f.clock.Now),
		WithLogger(slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	)
	f.h = v.Middleware(f.d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.calls.Add(1)
		if _, ok := EventFromContext(r.Context()); !ok {
			t.Error("the handler got no event")
		}
		f.handle(n, w, r)
	})))
	return f
}

// deliver sends one freshly signed copy of the delivery with request id id
// and returns the response.
func (f *dedupeFixture) deliver(id string) *httptest.ResponseRecorder {
	req := f.signer.NewRequest("/fal/webhook", faltest.Delivery{RequestID: id, Time: f.clock.Now(), Body: faltest.OKBody(id, map[string]any{"seed": 42})})
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	f.settle()
	return w
}

// settle waits for the background bookkeeping.
func (f *dedupeFixture) settle() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.d.Shutdown(ctx); err != nil {
		f.t.Fatalf("background bookkeeping did not finish: %v", err)
	}
}

func (f *dedupeFixture) wantStatus(w *httptest.ResponseRecorder, code int, dup string) {
	f.t.Helper()
	if w.Code != code {
		f.t.Fatalf("status %d, want %d (body %q)", w.Code, code, w.Body.String())
	}
	if got := w.Header().Get(HeaderDuplicate); got != dup {
		f.t.Fatalf("%s: %q, want %q", HeaderDuplicate, got, dup)
	}
}

func (f *dedupeFixture) wantCalls(n int64) {
	f.t.Helper()
	if got := f.calls.Load(); got != n {
		f.t.Fatalf("handler ran %d times, want %d", got, n)
	}
}

func TestDedupeDuplicateAnswered200(t *testing.T) {
	f := newDedupeFixture(t, nil)
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.clock.Advance(30 * time.Second) // fal's retry, freshly signed
	w := f.deliver("req-1")
	f.wantStatus(w, http.StatusOK, "completed")
	f.wantCalls(1)
	if !strings.Contains(w.Body.String(), "duplicate") {
		t.Errorf("duplicate response body %q does not say so", w.Body.String())
	}
	f.wantStatus(f.deliver("req-2"), http.StatusNoContent, "")
	f.wantCalls(2)
	if !strings.Contains(f.logs.String(), "duplicate delivery") {
		t.Errorf("the duplicate was not logged:\n%s", f.logs)
	}
}

func TestDedupeInProgressAnswered409(t *testing.T) {
	f := newDedupeFixture(t, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
	}
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- f.deliver("req-1") }()
	<-entered
	w := f.deliver("req-1")
	f.wantStatus(w, http.StatusConflict, "in-progress")
	if w.Header().Get("Retry-After") == "" {
		t.Error("409 without Retry-After")
	}
	close(release)
	f.wantStatus(<-done, http.StatusOK, "")
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(1)
}

// TestDedupeConcurrentCopies sends 50 copies of one delivery at once; the
// handler holds the first until the other 49 have been answered.
func TestDedupeConcurrentCopies(t *testing.T) {
	f := newDedupeFixture(t, nil)
	const copies = 50
	others := make(chan int, copies)
	release := make(chan struct{})
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	}
	reqs := make([]*http.Request, copies)
	for i := range reqs {
		reqs[i] = f.signer.NewRequest("/fal/webhook", faltest.Delivery{RequestID: "req-1", Time: f.clock.Now().Add(time.Duration(i) * time.Second), Body: faltest.OKBody("req-1", nil)})
	}
	codes := make(chan int, copies)
	for _, req := range reqs {
		go func() {
			w := httptest.NewRecorder()
			f.h.ServeHTTP(w, req)
			codes <- w.Code
			if w.Code != http.StatusNoContent {
				others <- w.Code
			}
		}()
	}
	count := map[int]int{}
	timeout := time.After(10 * time.Second)
	for range copies - 1 {
		select {
		case c := <-others:
			count[c]++
		case <-timeout:
			close(release)
			t.Fatalf("only %d copies answered while the first was held; answered: %v, handler ran %d times", len(count), count, f.calls.Load())
		}
	}
	close(release)
	for range copies {
		<-codes
	}
	f.wantCalls(1)
	if count[http.StatusConflict] != copies-1 {
		t.Fatalf("the other copies got %v, want %d × 409", count, copies-1)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(1)
}

func TestDedupeHandlerStatus(t *testing.T) {
	for _, tc := range []struct {
		name      string
		write     func(w http.ResponseWriter)
		completed bool
	}{
		{"200", func(w http.ResponseWriter) { w.WriteHeader(200) }, true},
		{"201", func(w http.ResponseWriter) { w.WriteHeader(201) }, true},
		{"204", func(w http.ResponseWriter) { w.WriteHeader(204) }, true},
		{"299", func(w http.ResponseWriter) { w.WriteHeader(299) }, true},
		{"nothing written", func(http.ResponseWriter) {}, true},
		{"body only", func(w http.ResponseWriter) { io.WriteString(w, "ok") }, true},
		{"flush first", func(w http.ResponseWriter) { w.(http.Flusher).Flush(); w.WriteHeader(500) }, true},
		{"103 then 204", func(w http.ResponseWriter) { w.WriteHeader(103); w.WriteHeader(204) }, true},
		{"103 then 500", func(w http.ResponseWriter) { w.WriteHeader(103); w.WriteHeader(500) }, false},
		{"301", func(w http.ResponseWriter) { w.WriteHeader(301) }, false},
		{"400", func(w http.ResponseWriter) { w.WriteHeader(400) }, false},
		{"409", func(w http.ResponseWriter) { w.WriteHeader(409) }, false},
		{"500", func(w http.ResponseWriter) { http.Error(w, "boom", 500) }, false},
		{"503 then 200", func(w http.ResponseWriter) { w.WriteHeader(503); w.WriteHeader(200) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newDedupeFixture(t, nil)
			f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
				if n == 1 {
					tc.write(w)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}
			f.deliver("req-1")
			w := f.deliver("req-1")
			if tc.completed {
				f.wantStatus(w, http.StatusOK, "completed")
				f.wantCalls(1)
				return
			}
			// Released: fal's retry runs the handler, which succeeds now.
			f.wantStatus(w, http.StatusNoContent, "")
			f.wantCalls(2)
			f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
			f.wantCalls(2)
		})
	}
}

func TestDedupeHandlerFailureReleases(t *testing.T) {
	f := newDedupeFixture(t, nil)
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n < 3 {
			http.Error(w, "database down", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusInternalServerError, "")
	f.wantStatus(f.deliver("req-1"), http.StatusInternalServerError, "")
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(3)
	if !strings.Contains(f.logs.String(), "released the delivery (the handler failed: the handler answered 500)") {
		t.Errorf("the release was not logged:\n%s", f.logs)
	}
}

func TestDedupePanicReleasesAndRepanics(t *testing.T) {
	f := newDedupeFixture(t, nil)
	boom := errors.New("handler bug")
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusOK) // a 2xx before the panic does not count
			panic(boom)
		}
		w.WriteHeader(http.StatusNoContent)
	}
	func() {
		defer func() {
			if got := recover(); got != boom {
				t.Fatalf("recovered %v, want the handler's own panic value", got)
			}
		}()
		f.deliver("req-1")
		t.Fatal("the panic did not reach the caller")
	}()
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2)
	if !strings.Contains(f.logs.String(), "the handler panicked") {
		t.Errorf("the release after the panic was not logged:\n%s", f.logs)
	}
}

func TestDedupePanicOverRealServer(t *testing.T) {
	// net/http recovers the panic, logs it and drops the connection; the
	// retry must then run the handler.
	f := newDedupeFixture(t, nil)
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			panic(http.ErrAbortHandler)
		}
		// The real connection's features stay reachable through Unwrap.
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetWriteDeadline through the dedupe writer: %v", err)
		}
		w.WriteHeader(http.StatusNoContent)
	}
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	send := func() (int, error) {
		req, err := f.signer.NewClientRequest(context.Background(), srv.URL, faltest.Delivery{RequestID: "req-1", Time: f.clock.Now(), Body: faltest.OKBody("req-1", nil)})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := send(); err == nil {
		t.Fatalf("a panicking handler answered %d", code)
	}
	if code, err := send(); err != nil || code != http.StatusNoContent {
		t.Fatalf("retry after the panic: %d, %v; want 204", code, err)
	}
	f.wantCalls(2)
}

func TestDedupeLeaseExpiry(t *testing.T) {
	const lease = 30 * time.Second
	f := newDedupeFixture(t, nil, func(d *Dedupe) { d.Lease = lease })
	entered, release := make(chan struct{}), make(chan struct{})
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 1 { // a replica that hangs, as good as dead
			close(entered)
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	}
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- f.deliver("req-1") }()
	<-entered
	f.clock.Advance(lease - time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusConflict, "in-progress")
	f.clock.Advance(time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "") // the lease ran out: a retry runs it
	f.wantCalls(2)
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")

	close(release) // the hung run finishes late
	f.wantStatus(<-done, http.StatusNoContent, "")
	if !strings.Contains(f.logs.String(), "outlived its dedupe lease") {
		t.Errorf("the lost claim was not logged:\n%s", f.logs)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(2)
}

func TestDedupeLeaseOverrunWithoutRivalIsCompleted(t *testing.T) {
	const lease = 30 * time.Second
	f := newDedupeFixture(t, nil, func(d *Dedupe) { d.Lease = lease })
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		f.clock.Advance(lease + time.Second) // a slow run no retry interrupted
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(1)
	if !strings.Contains(f.logs.String(), "raise Dedupe.Lease") {
		t.Errorf("the overrun was not logged:\n%s", f.logs)
	}
}

func TestDedupeTTL(t *testing.T) {
	f := newDedupeFixture(t, nil, func(d *Dedupe) { d.TTL = time.Hour })
	f.deliver("req-1")
	f.clock.Advance(time.Hour - time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.clock.Advance(time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2)
}

func TestDedupeUsesSignedHeaderID(t *testing.T) {
	f := newDedupeFixture(t, nil)
	// A body naming another request than the signed header never reaches
	// the dedupe layer.
	req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "header-id", Time: f.clock.Now(), Body: faltest.OKBody("body-id", nil)})
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	f.wantStatus(w, http.StatusBadRequest, "")
	f.wantCalls(0)
	mustClaim(t, f.store, dedupeKey(faltest.DefaultUserID, "header-id"), time.Minute, ClaimAcquired)

	// A header map built by hand with a non-canonical key.
	req = f.signer.NewRequest("/", faltest.Delivery{RequestID: "lower-id", Time: f.clock.Now(), Body: faltest.OKBody("lower-id", nil)})
	delete(req.Header, HeaderRequestID)
	req.Header["x-fal-webhook-request-id"] = []string{"lower-id"}
	f.h.ServeHTTP(httptest.NewRecorder(), req)
	mustClaim(t, f.store, dedupeKey(faltest.DefaultUserID, "lower-id"), time.Minute, ClaimCompleted)
}

func TestDedupeKeepsFlusher(t *testing.T) {
	f := newDedupeFixture(t, nil)
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) {
		if _, ok := w.(http.Flusher); !ok {
			t.Error("the handler's writer lost http.Flusher")
		}
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
	}
	w := f.deliver("req-1")
	if !w.Flushed {
		t.Error("the flush did not reach the underlying writer")
	}
}

// faultyStore is a DedupeStore whose operations fail as configured. Its
// Complete and Release fail their first failures calls, or always when
// failures is 0; a failure may hide a success (applied).
type faultyStore struct {
	*memoryStore
	claimErr, completeErr, releaseErr error
	state                             ClaimState // when set, Claim returns it without a store call
	failures                          int        // how many Complete/Release calls fail; 0: all
	applied                           bool       // a failing call still applies, as when its reply is lost

	mu    sync.Mutex // guards calls
	calls int
}

func (s *faultyStore) Claim(ctx context.Context, id string, lease time.Duration) (ClaimState, string, error) {
	if s.claimErr != nil {
		return 0, "", s.claimErr
	}
	if s.state != 0 {
		return s.state, "", nil
	}
	return s.memoryStore.Claim(ctx, id, lease)
}

// fail reports whether this Complete or Release call should fail.
func (s *faultyStore) fail(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return err != nil && (s.failures == 0 || s.calls <= s.failures)
}

func (s *faultyStore) Complete(ctx context.Context, id, token string, ttl time.Duration) error {
	if s.fail(s.completeErr) {
		if s.applied {
			_ = s.memoryStore.Complete(ctx, id, token, ttl)
		}
		return s.completeErr
	}
	return s.memoryStore.Complete(ctx, id, token, ttl)
}

func (s *faultyStore) Release(ctx context.Context, id, token string) error {
	if s.fail(s.releaseErr) {
		if s.applied {
			_ = s.memoryStore.Release(ctx, id, token)
		}
		return s.releaseErr
	}
	return s.memoryStore.Release(ctx, id, token)
}

var errStoreDown = errors.New("connection refused")

func TestDedupeStoreErrorFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store *faultyStore
	}{
		{"claim error", &faultyStore{memoryStore: newMemStore(nil, 0), claimErr: errStoreDown}},
		{"unknown state", &faultyStore{memoryStore: newMemStore(nil, 0), state: 7}},
		{"full", &faultyStore{memoryStore: newMemStore(nil, 0), claimErr: errStoreFull}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newDedupeFixture(t, tc.store)
			w := f.deliver("req-1")
			f.wantStatus(w, http.StatusServiceUnavailable, "")
			if w.Header().Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			f.wantCalls(0)
			if !strings.Contains(f.logs.String(), "dedupe store failed") {
				t.Errorf("the store failure was not logged:\n%s", f.logs)
			}
		})
	}
}

func TestDedupeStoreErrorFailOpen(t *testing.T) {
	f := newDedupeFixture(t, &faultyStore{memoryStore: newMemStore(nil, 0), claimErr: errStoreDown}, func(d *Dedupe) { d.FailOpen = true })
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2) // fail open gives up exactly-once while the store is down
	if !strings.Contains(f.logs.String(), "fail open") {
		t.Errorf("running the handler without dedupe was not logged:\n%s", f.logs)
	}
}

// TestDedupeCompleteErrorKeepsClaim checks a store that keeps failing: the
// handler's answer stands, Complete is retried until shortly before the
// lease runs out, then the failure is logged and the claim left to expire.
func TestDedupeCompleteErrorKeepsClaim(t *testing.T) {
	store := &faultyStore{completeErr: errStoreDown}
	f := newDedupeFixture(t, store, func(d *Dedupe) { d.Lease = time.Minute })
	store.memoryStore = newMemStore(f.clock, 0)
	start := f.clock.Now()
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "") // the handler's answer stands
	if !strings.Contains(f.logs.String(), "could not complete the delivery") || !strings.Contains(f.logs.String(), "gave up marking the delivery completed") {
		t.Errorf("the failed Complete was not logged:\n%s", f.logs)
	}
	if took := f.clock.Now().Sub(start); took < 50*time.Second || took > time.Minute {
		t.Errorf("retries went on for %s, want until a tenth of the 1m lease before it runs out", took)
	}
	if store.calls < 10 {
		t.Errorf("Complete tried %d times, want retries with backoff", store.calls)
	}
	f.clock.Advance(start.Sub(f.clock.Now())) // back inside the lease
	mustClaim(t, store.memoryStore, dedupeKey(faltest.DefaultUserID, "req-1"), time.Minute, ClaimInProgress)
}

// TestDedupeCompleteRetriedThroughAnOutage checks that a store outage
// shorter than the lease does not let a retry run the handler again: the
// bookkeeping is retried in the background until it lands, also when a
// failed attempt had in fact been applied.
func TestDedupeCompleteRetriedThroughAnOutage(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprint("applied=", applied), func(t *testing.T) {
			store := &faultyStore{completeErr: errStoreDown, failures: 4, applied: applied}
			f := newDedupeFixture(t, store)
			store.memoryStore = newMemStore(f.clock, 0)
			f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
			f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
			f.wantCalls(1)
			if store.calls != 5 {
				t.Errorf("Complete called %d times, want 4 failures then 1 success", store.calls)
			}
			if !strings.Contains(f.logs.String(), "marked the delivery completed after 4 retries") {
				t.Errorf("the late completion was not logged:\n%s", f.logs)
			}
			if strings.Contains(f.logs.String(), "level=ERROR") {
				t.Errorf("a recovered outage was logged as an error:\n%s", f.logs)
			}
		})
	}
}

// TestDedupeReleaseRetried checks that a failed Release is retried, so a
// failed run does not block fal's retries until the lease runs out.
func TestDedupeReleaseRetried(t *testing.T) {
	store := &faultyStore{releaseErr: errStoreDown, failures: 2}
	f := newDedupeFixture(t, store)
	store.memoryStore = newMemStore(f.clock, 0)
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusBadGateway, "")
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2)
}

func TestDedupeReleaseErrorLogged(t *testing.T) {
	store := &faultyStore{releaseErr: errStoreDown}
	f := newDedupeFixture(t, store)
	store.memoryStore = newMemStore(f.clock, 0)
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }
	start := f.clock.Now()
	f.wantStatus(f.deliver("req-1"), http.StatusBadGateway, "")
	if !strings.Contains(f.logs.String(), "could not release") || !strings.Contains(f.logs.String(), "gave up releasing") {
		t.Errorf("the failed Release was not logged:\n%s", f.logs)
	}
	f.clock.Advance(start.Sub(f.clock.Now())) // back to the start, inside the lease
	f.wantStatus(f.deliver("req-1"), http.StatusConflict, "in-progress")
}

// TestDedupeAnswersBeforeBookkeeping checks that the handler's answer is
// sent before Complete runs, so a slow store never holds up fal.
func TestDedupeAnswersBeforeBookkeeping(t *testing.T) {
	gate := make(chan struct{})
	store := &blockingStore{memoryStore: newMemStore(nil, 0), gate: gate}
	f := newDedupeFixture(t, store)
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	defer close(gate)
	req, err := f.signer.NewClientRequest(context.Background(), srv.URL, faltest.Delivery{RequestID: "req-1", Time: f.clock.Now(), Body: faltest.OKBody("req-1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := srv.Client().Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("the answer waited for the store: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("status %d, want 204", resp.StatusCode)
	}
}

// blockingStore's Complete waits for gate to close.
type blockingStore struct {
	*memoryStore
	gate chan struct{}
}

func (s *blockingStore) Complete(ctx context.Context, id, token string, ttl time.Duration) error {
	<-s.gate
	return s.memoryStore.Complete(ctx, id, token, ttl)
}

func TestDedupeClientGoneStillCompletes(t *testing.T) {
	f := newDedupeFixture(t, nil)
	req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "req-1", Time: f.clock.Now(), Body: faltest.OKBody("req-1", nil)})
	ctx, cancel := context.WithCancel(req.Context())
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) {
		cancel() // fal hung up (its 15 s timeout) while the handler ran
		w.WriteHeader(http.StatusNoContent)
	}
	f.h.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx))
	mustClaim(t, f.store, dedupeKey(faltest.DefaultUserID, "req-1"), time.Minute, ClaimCompleted)
}

func TestDedupeClientGoneBeforeClaim(t *testing.T) {
	f := newDedupeFixture(t, nil, func(d *Dedupe) { d.FailOpen = true })
	req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "req-1", Time: f.clock.Now(), Body: faltest.OKBody("req-1", nil)})
	ctx, cancel := context.WithCancel(req.Context())
	cancel()
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req.WithContext(ctx))
	f.wantStatus(w, http.StatusServiceUnavailable, "")
	f.wantCalls(0) // not even with fail open: there is no one to answer
	if !strings.Contains(f.logs.String(), "client went away") {
		t.Errorf("the early hang-up was not logged as such:\n%s", f.logs)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
}

func TestDedupeDefaults(t *testing.T) {
	d := &Dedupe{Lease: -1}
	if d.lease() != 2*time.Minute || d.ttl() != 24*time.Hour {
		t.Fatalf("defaults: lease %s, ttl %s", d.lease(), d.ttl())
	}
	// The zero Dedupe works, in memory.
	for i, want := range []ClaimState{ClaimAcquired, ClaimCompleted} {
		state, err := d.Do(context.Background(), doEvent("req-1"), func(context.Context) error { return nil })
		if state != want || err != nil {
			t.Fatalf("call %d: %d, %v; want %d", i, state, err, want)
		}
	}
}

// TestDedupeMiddlewareRefusesUnverified checks that Dedupe.Middleware
// without a Verifier in front never runs the handler.
func TestDedupeMiddlewareRefusesUnverified(t *testing.T) {
	logs := &syncBuffer{}
	d := &Dedupe{Logger: slog.New(slog.NewTextHandler(logs, nil))}
	ran := false
	h := d.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true }))
	s := faltest.SignerFromName("x")
	req := s.NewRequest("/", faltest.Delivery{Body: faltest.OKBody("req-1", nil)})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if ran || w.Code != http.StatusInternalServerError {
		t.Fatalf("unverified request: handler ran %v, status %d; want not run, 500", ran, w.Code)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "no Verifier checked") {
		t.Errorf("not logged loudly:\n%s", logs)
	}

	// Behind a Verifier it works.
	at := time.Unix(1_700_000_000, 0)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return at }))
	h = v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { ran = true })))
	for i := range 2 {
		ran = false
		w := httptest.NewRecorder()
		h.ServeHTTP(w, s.NewRequest("/", faltest.Delivery{RequestID: "req-1", Time: at, Body: faltest.OKBody("req-1", nil)}))
		if w.Code != http.StatusOK || ran != (i == 0) {
			t.Fatalf("delivery %d: status %d, handler ran %v", i, w.Code, ran)
		}
	}
}

// TestDedupeDo checks the function form: what ran, what did not, and the
// status each outcome maps to.
func TestDedupeDo(t *testing.T) {
	clk := newTestClock()
	store := &faultyStore{memoryStore: newMemStore(clk, 0)}
	d := &Dedupe{Store: store, Clock: clk.Now}
	ctx := context.Background()
	runs := 0
	ok := func(context.Context) error { runs++; return nil }
	boom := errors.New("boom")
	fail := func(context.Context) error { runs++; return boom }

	if state, err := d.Do(ctx, doEvent("a"), fail); state != ClaimAcquired || !errors.Is(err, boom) {
		t.Fatalf("failing fn: %d, %v", state, err)
	}
	if state, err := d.Do(ctx, doEvent("a"), ok); state != ClaimAcquired || err != nil {
		t.Fatalf("retry after a failure: %d, %v; want it to run", state, err)
	}
	if state, err := d.Do(ctx, doEvent("a"), ok); state != ClaimCompleted || err != nil || StatusCode(err) != http.StatusOK {
		t.Fatalf("duplicate: %d, %v", state, err)
	}
	if runs != 2 {
		t.Fatalf("fn ran %d times, want 2", runs)
	}

	// In progress: fn holds the claim while another copy arrives.
	inner := ClaimState(-1)
	_, _ = d.Do(ctx, doEvent("b"), func(ctx context.Context) error {
		inner, _ = d.Do(ctx, doEvent("b"), ok)
		return nil
	})
	if inner != ClaimInProgress {
		t.Fatalf("concurrent copy: %d, want ClaimInProgress", inner)
	}

	// The store fails: fn does not run; the answer is 503.
	store.claimErr = errStoreDown
	runs = 0
	state, err := d.Do(ctx, doEvent("c"), ok)
	if state != 0 || !errors.Is(err, ErrDedupeStore) || !errors.Is(err, errStoreDown) || StatusCode(err) != http.StatusServiceUnavailable || runs != 0 {
		t.Fatalf("store down: %d, %v (status %d), ran %d", state, err, StatusCode(err), runs)
	}
	d2 := &Dedupe{Store: store, FailOpen: true}
	if state, err := d2.Do(ctx, doEvent("c"), ok); state != ClaimAcquired || err != nil || runs != 1 {
		t.Fatalf("store down, fail open: %d, %v, ran %d", state, err, runs)
	}
}

// TestDedupePanicInDoReleases checks the function form releases on panic.
func TestDedupePanicInDoReleases(t *testing.T) {
	d := &Dedupe{}
	func() {
		defer func() { _ = recover() }()
		_, _ = d.Do(context.Background(), doEvent("a"), func(context.Context) error { panic("bug") })
	}()
	if state, _ := d.Do(context.Background(), doEvent("a"), func(context.Context) error { return nil }); state != ClaimAcquired {
		t.Fatalf("after a panic: %d, want the claim released and acquired again", state)
	}
}

// ---- benchmarks ----

// BenchmarkMiddlewareDedupe and BenchmarkRatioDedupe are in bench_test.go.

// BenchmarkMiddlewareDuplicate measures answering a duplicate of a
// completed delivery.
func BenchmarkMiddlewareDuplicate(b *testing.B) {
	s := faltest.SignerFromName("bench-1")
	at := time.Unix(1_700_000_000, 0)
	body := faltest.OKBody("bench-request", nil)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return at }))
	h := v.Middleware((&Dedupe{}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })))
	req := s.NewRequest("/webhook", faltest.Delivery{RequestID: "bench-request", Time: at, Body: body})
	rb := &rewindBody{}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rb.Reset(body)
		req.Body = rb
		w := &benchWriter{h: http.Header{}}
		h.ServeHTTP(w, req)
		if want := http.StatusOK; w.code != want && !(i == 0 && w.code == http.StatusNoContent) {
			b.Fatalf("status %d, want %d", w.code, want)
		}
	}
}

// BenchmarkDedupeOverhead measures the dedupe layer alone, without
// verification: claim a new request id in the in-memory store, run a
// handler that answers 204, complete. Its ns/op divided by
// BenchmarkMiddleware's is the share dedupe adds to a delivery, without the
// noise of two full middleware benchmarks.
func BenchmarkDedupeOverhead(b *testing.B) {
	d := &Dedupe{}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	ids := make([]verified, b.N)
	for i := range ids {
		ids[i] = verified{ev: &Event{}, requestID: fmt.Sprintf("bench-%08d", i), userID: "bench-user"}
	}
	req := httptest.NewRequest(http.MethodPost, "/webhook", nil)
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.code = 0
		d.serve(w, req, &ids[i], next, nil, nil)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.code)
		}
	}
}

// doEvent returns a verified-looking event of request id for Dedupe.Do.
func doEvent(id string) *Event {
	return &Event{RequestID: id, UserID: faltest.DefaultUserID, Status: StatusOK}
}

// TestDedupeKeyedByUser checks that the claim names the user as well as the
// request id: another fal account's delivery with the same request id
// neither finds ours done nor marks it done.
func TestDedupeKeyedByUser(t *testing.T) {
	f := newDedupeFixture(t, nil)
	send := func(user string) *httptest.ResponseRecorder {
		req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "req-1", UserID: user, Time: f.clock.Now(), Body: faltest.OKBody("req-1", nil)})
		w := httptest.NewRecorder()
		f.h.ServeHTTP(w, req)
		f.settle()
		return w
	}
	f.wantStatus(send("theirs"), http.StatusNoContent, "")
	f.wantStatus(send("mine"), http.StatusNoContent, "")
	f.wantStatus(send("mine"), http.StatusOK, "completed")
	f.wantCalls(2)
	mustClaim(t, f.store, dedupeKey("mine", "req-1"), time.Minute, ClaimCompleted)
	mustClaim(t, f.store, dedupeKey("theirs", "req-1"), time.Minute, ClaimCompleted)
	mustClaim(t, f.store, "req-1", time.Minute, ClaimAcquired)

	// The key cannot be confused by a separator inside an id.
	if dedupeKey("a:b", "c") == dedupeKey("a", "b:c") {
		t.Error("user a:b request c and user a request b:c share a key")
	}
	if got := dedupeKey("u-1", "req-9"); got != "3:u-1:req-9" {
		t.Errorf("dedupeKey = %q, want the documented 3:u-1:req-9", got)
	}

	// Do refuses an event that no Verifier returned.
	d := &Dedupe{}
	ran := false
	state, err := d.Do(context.Background(), &Event{RequestID: "req-1", Status: StatusOK}, func(context.Context) error { ran = true; return nil })
	if ran || state != 0 || !errors.Is(err, ErrUnverifiedEvent) {
		t.Errorf("Do with an unverified event: ran %v, %d, %v; want not run, ErrUnverifiedEvent", ran, state, err)
	}
}
