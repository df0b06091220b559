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

// ---- MemoryStore ----

func mustClaim(t *testing.T, s DedupeStore, id string, lease time.Duration, want ClaimState) ClaimResult {
	t.Helper()
	res, err := s.Claim(context.Background(), id, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", id, err)
	}
	if res.State != want {
		t.Fatalf("Claim(%q) = %s, want %s", id, res.State, want)
	}
	if (res.Token != "") != (want == ClaimAcquired) {
		t.Fatalf("Claim(%q) = %s with token %q: a token must come with, and only with, an acquired claim", id, res.State, res.Token)
	}
	return res
}

func TestMemoryStoreLifecycle(t *testing.T) {
	clk := newTestClock()
	s := NewMemoryStore(WithMemoryClock(clk.Now))
	ctx := context.Background()
	const lease, ttl = time.Minute, time.Hour

	c := mustClaim(t, s, "a", lease, ClaimAcquired)
	mustClaim(t, s, "a", lease, ClaimInProgress)
	mustClaim(t, s, "b", lease, ClaimAcquired) // other ids are independent
	if err := s.Complete(ctx, "a", c.Token, ttl); err != nil {
		t.Fatalf("Complete by the owner: %v", err)
	}
	mustClaim(t, s, "a", lease, ClaimCompleted)
	clk.Advance(ttl - time.Nanosecond)
	mustClaim(t, s, "a", lease, ClaimCompleted)
	clk.Advance(time.Nanosecond)
	c2 := mustClaim(t, s, "a", lease, ClaimAcquired) // the completed record expired
	if c2.Token == c.Token {
		t.Fatalf("a new claim reused token %q", c.Token)
	}
}

func TestMemoryStoreRelease(t *testing.T) {
	s := NewMemoryStore()
	ctx := context.Background()
	c := mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	if err := s.Release(ctx, "a", "not-the-token"); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Release with a foreign token = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, ClaimInProgress) // the foreign release changed nothing
	if err := s.Release(ctx, "a", c.Token); err != nil {
		t.Fatalf("Release by the owner: %v", err)
	}
	if err := s.Release(ctx, "a", c.Token); err != nil {
		t.Fatalf("second Release of an absent record = %v, want nil", err)
	}
	c = mustClaim(t, s, "a", time.Minute, ClaimAcquired) // released: the retry gets it
	if err := s.Complete(ctx, "a", c.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "a", c.Token); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Release of a completed record = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, ClaimCompleted)
}

func TestMemoryStoreLeaseExpiry(t *testing.T) {
	clk := newTestClock()
	s := NewMemoryStore(WithMemoryClock(clk.Now))
	ctx := context.Background()
	const lease = time.Minute

	old := mustClaim(t, s, "a", lease, ClaimAcquired)
	clk.Advance(lease)
	cur := mustClaim(t, s, "a", lease, ClaimAcquired) // the dead claim's lease ran out
	if err := s.Complete(ctx, "a", old.Token, time.Hour); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Complete with a stale token = %v, want ErrClaimLost", err)
	}
	if err := s.Release(ctx, "a", old.Token); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Release with a stale token = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", lease, ClaimInProgress) // the stale owner changed nothing
	if err := s.Complete(ctx, "a", cur.Token, time.Hour); err != nil {
		t.Fatalf("Complete by the current owner: %v", err)
	}
	if err := s.Complete(ctx, "a", old.Token, time.Hour); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("Complete of a record completed by another claim = %v, want ErrClaimLost", err)
	}

	// A lease that ran out with no one claiming since: the work was done,
	// so Complete records it.
	late := mustClaim(t, s, "b", lease, ClaimAcquired)
	clk.Advance(2 * lease)
	if err := s.Complete(ctx, "b", late.Token, time.Hour); err != nil {
		t.Fatalf("Complete after the lease ran out, unclaimed since: %v", err)
	}
	mustClaim(t, s, "b", lease, ClaimCompleted)

	// Releasing an expired claim is a no-op.
	gone := mustClaim(t, s, "c", lease, ClaimAcquired)
	clk.Advance(lease)
	if err := s.Release(ctx, "c", gone.Token); err != nil {
		t.Fatalf("Release after the lease ran out = %v, want nil", err)
	}
	mustClaim(t, s, "c", lease, ClaimAcquired)
}

func TestMemoryStoreEvictsOldestCompleted(t *testing.T) {
	clk := newTestClock()
	s := NewMemoryStore(WithMemoryClock(clk.Now), WithMemoryMaxEntries(3))
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		c := mustClaim(t, s, id, time.Minute, ClaimAcquired)
		if err := s.Complete(ctx, id, c.Token, time.Hour); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	mustClaim(t, s, "d", time.Minute, ClaimAcquired)
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d after a fourth claim, want the bound 3", n)
	}
	mustClaim(t, s, "b", time.Minute, ClaimCompleted)
	mustClaim(t, s, "c", time.Minute, ClaimCompleted)
	mustClaim(t, s, "d", time.Minute, ClaimInProgress)
	// "a", the oldest completion, was evicted; claiming it evicts "b".
	mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	mustClaim(t, s, "c", time.Minute, ClaimCompleted)
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
}

func TestMemoryStoreFullOfLiveClaims(t *testing.T) {
	clk := newTestClock()
	s := NewMemoryStore(WithMemoryClock(clk.Now), WithMemoryMaxEntries(2))
	ctx := context.Background()
	a := mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	clk.Advance(time.Second)
	mustClaim(t, s, "b", time.Minute, ClaimAcquired)
	if _, err := s.Claim(ctx, "c", time.Minute); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Claim on a store full of live claims = %v, want ErrStoreFull", err)
	}
	mustClaim(t, s, "a", time.Minute, ClaimInProgress)
	mustClaim(t, s, "b", time.Minute, ClaimInProgress)

	// A completed record is evicted before any live claim.
	if err := s.Complete(ctx, "a", a.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	mustClaim(t, s, "c", time.Minute, ClaimAcquired)
	mustClaim(t, s, "b", time.Minute, ClaimInProgress)
	if _, err := s.Claim(ctx, "a", time.Minute); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Claim with only live claims left = %v, want ErrStoreFull", err)
	}

	// An expired claim is evicted: "b"'s lease runs out first.
	clk.Advance(time.Minute - 2*time.Second)
	mustClaim(t, s, "b", time.Minute, ClaimInProgress)
	clk.Advance(time.Second)
	mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	mustClaim(t, s, "c", time.Minute, ClaimInProgress)
	if n := s.Len(); n != 2 {
		t.Fatalf("Len = %d, want the bound 2", n)
	}
}

func TestMemoryStoreSweepsExpired(t *testing.T) {
	clk := newTestClock()
	s := NewMemoryStore(WithMemoryClock(clk.Now))
	ctx := context.Background()
	for i := range 10 {
		id := fmt.Sprint("old-", i)
		c := mustClaim(t, s, id, time.Minute, ClaimAcquired)
		if i%2 == 0 {
			if err := s.Complete(ctx, id, c.Token, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	clk.Advance(2 * time.Hour)
	for i := range 10 {
		mustClaim(t, s, fmt.Sprint("new-", i), time.Hour, ClaimAcquired)
	}
	if n := s.Len(); n != 10 {
		t.Fatalf("Len = %d after the old records expired and 10 new claims, want 10", n)
	}
}

func TestMemoryStoreCancelledContext(t *testing.T) {
	s := NewMemoryStore()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Claim(ctx, "a", time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("Claim with a cancelled context = %v, want context.Canceled", err)
	}
	if s.Len() != 0 {
		t.Fatal("a cancelled Claim left a record")
	}
}

func TestMemoryStoreConcurrent(t *testing.T) {
	const max = 64
	s := NewMemoryStore(WithMemoryMaxEntries(max))
	ctx := context.Background()
	var acquired atomic.Int64
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Claim(ctx, "same", time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if res.State == ClaimAcquired {
				acquired.Add(1)
			}
			for i := range 200 {
				id := fmt.Sprintf("g%d-%d", g, i)
				res, err := s.Claim(ctx, id, time.Hour)
				if errors.Is(err, ErrStoreFull) {
					continue
				}
				if err != nil || res.State != ClaimAcquired {
					t.Errorf("Claim(%q) = %v, %v", id, res.State, err)
					return
				}
				if i%3 == 0 {
					err = s.Release(ctx, id, res.Token)
				} else {
					err = s.Complete(ctx, id, res.Token, time.Hour)
				}
				if err != nil && !errors.Is(err, ErrStoreFull) {
					t.Errorf("finishing %q: %v", id, err)
				}
				if n := s.Len(); n > max {
					t.Errorf("Len = %d, above the bound %d", n, max)
				}
			}
		}()
	}
	wg.Wait()
	if n := acquired.Load(); n != 1 {
		t.Fatalf("50 concurrent claims of one id: %d acquired, want exactly 1", n)
	}
}

func TestClaimStateString(t *testing.T) {
	for s, want := range map[ClaimState]string{
		ClaimAcquired: "acquired", ClaimInProgress: "in-progress", ClaimCompleted: "completed", 0: "ClaimState(0)",
	} {
		if got := s.String(); got != want {
			t.Errorf("ClaimState(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

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
	store  *MemoryStore
	logs   *syncBuffer
	calls  atomic.Int64
	h      http.Handler
	// handle is the handler's behaviour on its n-th call (from 1).
	handle func(n int64, w http.ResponseWriter, r *http.Request)
}

func newDedupeFixture(t *testing.T, store DedupeStore, opts ...DedupeOption) *dedupeFixture {
	f := &dedupeFixture{t: t, signer: faltest.SignerFromName("dedupe"), clock: newTestClock(), logs: &syncBuffer{}}
	if store == nil {
		f.store = NewMemoryStore(WithMemoryClock(f.clock.Now))
		store = f.store
	}
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	v := NewVerifier(
		WithKeys(f.signer.PublicKey()),
		WithClock(f.clock.Now),
		WithLogger(slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		WithDedupe(store, opts...),
	)
	f.h = v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.calls.Add(1)
		if _, ok := EventFromContext(r.Context()); !ok {
			t.Error("the handler got no event")
		}
		f.handle(n, w, r)
	}))
	return f
}

// deliver sends one freshly signed copy of the delivery with request id id
// and returns the response.
func (f *dedupeFixture) deliver(id string) *httptest.ResponseRecorder {
	req := f.signer.NewRequest("/fal/webhook", faltest.Delivery{RequestID: id, Time: f.clock.Now(), Body: faltest.OKBody(id, map[string]any{"seed": 42})})
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	return w
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
	if !strings.Contains(f.logs.String(), "released the delivery after the handler answered 500") {
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
	f := newDedupeFixture(t, nil, WithDedupeLease(lease))
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
	f := newDedupeFixture(t, nil, WithDedupeLease(lease))
	f.handle = func(n int64, w http.ResponseWriter, _ *http.Request) {
		f.clock.Advance(lease + time.Second) // a slow run no retry interrupted
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.wantCalls(1)
	if !strings.Contains(f.logs.String(), "raise the lease") {
		t.Errorf("the overrun was not logged:\n%s", f.logs)
	}
}

func TestDedupeTTL(t *testing.T) {
	f := newDedupeFixture(t, nil, WithDedupeTTL(time.Hour))
	f.deliver("req-1")
	f.clock.Advance(time.Hour - time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusOK, "completed")
	f.clock.Advance(time.Second)
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2)
}

func TestDedupeUsesSignedHeaderID(t *testing.T) {
	f := newDedupeFixture(t, nil)
	body := faltest.OKBody("body-id", nil)
	send := func() *httptest.ResponseRecorder {
		req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "header-id", Time: f.clock.Now(), Body: body})
		w := httptest.NewRecorder()
		f.h.ServeHTTP(w, req)
		return w
	}
	send()
	f.wantStatus(send(), http.StatusOK, "completed")
	mustClaim(t, f.store, "header-id", time.Minute, ClaimCompleted)
	mustClaim(t, f.store, "body-id", time.Minute, ClaimAcquired)

	// A header map built by hand with a non-canonical key.
	req := f.signer.NewRequest("/", faltest.Delivery{RequestID: "lower-id", Time: f.clock.Now(), Body: body})
	delete(req.Header, HeaderRequestID)
	req.Header["x-fal-webhook-request-id"] = []string{"lower-id"}
	f.h.ServeHTTP(httptest.NewRecorder(), req)
	mustClaim(t, f.store, "lower-id", time.Minute, ClaimCompleted)
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

// faultyStore is a DedupeStore whose operations fail as configured.
type faultyStore struct {
	*MemoryStore
	claimErr, completeErr, releaseErr error
	state                             ClaimState // when set, Claim returns it without a store call
}

func (s *faultyStore) Claim(ctx context.Context, id string, lease time.Duration) (ClaimResult, error) {
	if s.claimErr != nil {
		return ClaimResult{}, s.claimErr
	}
	if s.state != 0 {
		return ClaimResult{State: s.state}, nil
	}
	return s.MemoryStore.Claim(ctx, id, lease)
}

func (s *faultyStore) Complete(ctx context.Context, id, token string, ttl time.Duration) error {
	if s.completeErr != nil {
		return s.completeErr
	}
	return s.MemoryStore.Complete(ctx, id, token, ttl)
}

func (s *faultyStore) Release(ctx context.Context, id, token string) error {
	if s.releaseErr != nil {
		return s.releaseErr
	}
	return s.MemoryStore.Release(ctx, id, token)
}

var errStoreDown = errors.New("connection refused")

func TestDedupeStoreErrorFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store *faultyStore
	}{
		{"claim error", &faultyStore{MemoryStore: NewMemoryStore(), claimErr: errStoreDown}},
		{"unknown state", &faultyStore{MemoryStore: NewMemoryStore(), state: 7}},
		{"full", &faultyStore{MemoryStore: NewMemoryStore(), claimErr: ErrStoreFull}},
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
	f := newDedupeFixture(t, &faultyStore{MemoryStore: NewMemoryStore(), claimErr: errStoreDown}, WithDedupeFailOpen())
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "")
	f.wantCalls(2) // fail open gives up exactly-once while the store is down
	if !strings.Contains(f.logs.String(), "fail open") {
		t.Errorf("running the handler without dedupe was not logged:\n%s", f.logs)
	}
}

func TestDedupeCompleteErrorKeepsClaim(t *testing.T) {
	clk := newTestClock()
	mem := NewMemoryStore(WithMemoryClock(clk.Now))
	store := &faultyStore{MemoryStore: mem, completeErr: errStoreDown}
	f := newDedupeFixture(t, store, WithDedupeLease(time.Minute))
	f.clock = clk
	f.wantStatus(f.deliver("req-1"), http.StatusNoContent, "") // the handler's answer stands
	if !strings.Contains(f.logs.String(), "could not mark the delivery completed") {
		t.Errorf("the failed Complete was not logged:\n%s", f.logs)
	}
	mustClaim(t, mem, "req-1", time.Minute, ClaimInProgress) // not completed: it was not recorded
}

func TestDedupeReleaseErrorLogged(t *testing.T) {
	store := &faultyStore{MemoryStore: NewMemoryStore(), releaseErr: errStoreDown}
	f := newDedupeFixture(t, store)
	f.handle = func(_ int64, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }
	f.wantStatus(f.deliver("req-1"), http.StatusBadGateway, "")
	if !strings.Contains(f.logs.String(), "could not release") {
		t.Errorf("the failed Release was not logged:\n%s", f.logs)
	}
	f.wantStatus(f.deliver("req-1"), http.StatusConflict, "in-progress")
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
	mustClaim(t, f.store, "req-1", time.Minute, ClaimCompleted)
}

func TestDedupeClientGoneBeforeClaim(t *testing.T) {
	f := newDedupeFixture(t, nil, WithDedupeFailOpen())
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

func TestWithDedupeNilStoreDisables(t *testing.T) {
	s := faltest.SignerFromName("dedupe")
	v := NewVerifier(WithKeys(s.PublicKey()), WithDedupe(NewMemoryStore()), WithDedupe(nil))
	if v.mw.dedupe != nil {
		t.Fatal("WithDedupe(nil) left dedupe on")
	}
	v = NewVerifier(WithDedupe(NewMemoryStore(), WithDedupeLease(-1), WithDedupeTTL(0), nil))
	if c := v.mw.dedupe; c.lease != DefaultDedupeLease || c.ttl != DefaultDedupeTTL || c.failOpen {
		t.Fatalf("defaults: lease %s, ttl %s, failOpen %v", c.lease, c.ttl, c.failOpen)
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
	v := NewVerifier(WithKeys(s.PublicKey()), WithClock(func() time.Time { return at }), WithDedupe(NewMemoryStore()))
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
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
// verification: claim a new request id in a MemoryStore, run a handler
// that answers 204, complete. Its ns/op divided by BenchmarkMiddleware's is
// the share dedupe adds to a delivery, without the noise of two full
// middleware benchmarks.
func BenchmarkDedupeOverhead(b *testing.B) {
	v := NewVerifier(WithKeys(), WithDedupe(NewMemoryStore()))
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	reqs := make([]*http.Request, b.N)
	for i := range reqs {
		hs := Headers{RequestID: fmt.Sprintf("bench-%08d", i), UserID: "u", Timestamp: "1700000000", Signature: strings.Repeat("0", 128)}
		reqs[i] = httptest.NewRequest(http.MethodPost, "/webhook", nil)
		hs.Set(reqs[i].Header)
	}
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.code = 0
		v.serveDedupe(w, reqs[i], reqs[i].Header[HeaderRequestID][0], next)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.code)
		}
	}
}
