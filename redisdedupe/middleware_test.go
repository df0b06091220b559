package redisdedupe_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/falwebhook/falwebhook/redisdedupe"
	"github.com/redis/go-redis/v9"
)

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

// replica is one instance of a webhook receiver: its own Redis client,
// store, verifier and logs.
type replica struct {
	store *redisdedupe.Store
	d     *falwebhook.Dedupe
	h     http.Handler
	logs  *syncBuffer
}

// fleet is a service of several replicas sharing one Redis, with one
// handler that counts its runs.
type fleet struct {
	t        *testing.T
	signer   *faltest.Signer
	replicas []*replica
	calls    atomic.Int64
	// handle is the handler's behaviour on its n-th run (from 1), on
	// replica i. Set it before sending.
	handle func(n int64, i int, w http.ResponseWriter, r *http.Request)
}

// newFleet starts one replica per client, all with key prefix prefix; each
// replica's dedupe options are opts[i] when given.
func newFleet(t *testing.T, clients []redis.UniversalClient, prefix string, lease ...time.Duration) *fleet {
	f := &fleet{t: t, signer: faltest.SignerFromName("redisdedupe")}
	f.handle = func(_ int64, _ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	for i, c := range clients {
		rep := &replica{store: redisdedupe.New(c, redisdedupe.WithPrefix(prefix)), logs: &syncBuffer{}}
		d := &falwebhook.Dedupe{Store: rep.store}
		rep.d = d
		if i < len(lease) {
			d.Lease = lease[i]
		}
		v := falwebhook.NewVerifier(
			falwebhook.WithKeys(falwebhook.StaticKeys(f.signer.PublicKey())),
			falwebhook.WithLogger(slog.New(slog.NewTextHandler(rep.logs, nil))),
		)
		rep.h = v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.handle(f.calls.Add(1), i, w, r)
		})))
		f.replicas = append(f.replicas, rep)
	}
	return f
}

// request returns a freshly signed copy of the delivery with request id id,
// as fal sends on each retry.
func (f *fleet) request(id string) *http.Request {
	return f.signer.NewRequest("/fal/webhook", faltest.Delivery{RequestID: id, Body: faltest.OKBody(id, map[string]any{"seed": 42})})
}

// deliver sends a copy of the delivery to replica i.
func (f *fleet) deliver(i int, id string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	f.replicas[i].h.ServeHTTP(w, f.request(id))
	return w
}

func (f *fleet) wantStatus(w *httptest.ResponseRecorder, code int, dup string) {
	f.t.Helper()
	if w.Code != code {
		f.t.Fatalf("status %d, want %d (body %q)", w.Code, code, w.Body.String())
	}
	if got := w.Header().Get(falwebhook.HeaderDuplicate); got != dup {
		f.t.Fatalf("%s: %q, want %q", falwebhook.HeaderDuplicate, got, dup)
	}
}

func (f *fleet) wantCalls(n int64) {
	f.t.Helper()
	if got := f.calls.Load(); got != n {
		f.t.Fatalf("handler ran %d times, want %d", got, n)
	}
}

func clients(t *testing.T, n int) []redis.UniversalClient {
	var cs []redis.UniversalClient
	for range n {
		cs = append(cs, connect(t))
	}
	return cs
}

// TestReplicasRunOnce sends 50 concurrent copies of one delivery to two
// replicas; the handler holds its run until the other 49 are answered.
func TestReplicasRunOnce(t *testing.T) {
	cs := clients(t, 2)
	f := newFleet(t, cs, testPrefix(t, cs[0]))
	const copies = 50
	release := make(chan struct{})
	f.handle = func(n int64, _ int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	}
	reqs := make([]*http.Request, copies)
	for i := range reqs {
		reqs[i] = f.request("req-1")
	}
	type answer struct {
		code int
		dup  string
	}
	others := make(chan answer, copies)
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			f.replicas[i%2].h.ServeHTTP(w, req)
			if w.Code != http.StatusNoContent {
				others <- answer{w.Code, w.Header().Get(falwebhook.HeaderDuplicate)}
			}
		}()
	}
	count := map[answer]int{}
	timeout := time.After(20 * time.Second)
	for range copies - 1 {
		select {
		case a := <-others:
			count[a]++
		case <-timeout:
			close(release)
			t.Fatalf("only some copies answered while the first run was held: %v; handler ran %d times", count, f.calls.Load())
		}
	}
	close(release)
	wg.Wait()
	f.wantCalls(1)
	if n := count[answer{http.StatusConflict, "in-progress"}]; n != copies-1 {
		t.Fatalf("the other copies got %v, want %d × 409 in-progress", count, copies-1)
	}
	f.wantStatus(f.deliver(0, "req-1"), http.StatusOK, "completed")
	f.wantStatus(f.deliver(1, "req-1"), http.StatusOK, "completed")
	f.wantCalls(1)
}

// TestReplicasConcurrentCopies races 50 copies with a handler that does
// not wait: every copy is answered by the run, a 409 or a 200-duplicate.
func TestReplicasConcurrentCopies(t *testing.T) {
	cs := clients(t, 2)
	f := newFleet(t, cs, testPrefix(t, cs[0]))
	const copies = 50
	reqs := make([]*http.Request, copies)
	for i := range reqs {
		reqs[i] = f.request("req-1")
	}
	codes := make([]int, copies)
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			f.replicas[i%2].h.ServeHTTP(w, req)
			codes[i] = w.Code
		}()
	}
	wg.Wait()
	f.wantCalls(1)
	for i, c := range codes {
		if c != http.StatusNoContent && c != http.StatusOK && c != http.StatusConflict {
			t.Errorf("copy %d answered %d, want 204, 200 or 409", i, c)
		}
	}
}

func TestReplicasFailedHandlerRetried(t *testing.T) {
	cs := clients(t, 2)
	f := newFleet(t, cs, testPrefix(t, cs[0]))
	f.handle = func(n int64, _ int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			http.Error(w, "database down", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver(0, "req-1"), http.StatusInternalServerError, "")
	f.wantStatus(f.deliver(1, "req-1"), http.StatusNoContent, "") // fal's retry, on the other replica
	f.wantStatus(f.deliver(0, "req-1"), http.StatusOK, "completed")
	f.wantCalls(2)
}

// TestReplicaDiesMidHandler: replica 0 claims the delivery and hangs; once
// its lease runs out, a retry on replica 1 runs the handler. When replica
// 0's run finally returns, its stale claim cannot complete.
func TestReplicaDiesMidHandler(t *testing.T) {
	cs := clients(t, 2)
	const lease = time.Minute
	f := newFleet(t, cs, testPrefix(t, cs[0]),
		lease, lease)
	entered, release := make(chan struct{}), make(chan struct{})
	f.handle = func(n int64, _ int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			close(entered)
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	}
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- f.deliver(0, "req-1") }()
	<-entered
	c := cs[0].(*redis.Client)
	key := f.replicas[0].store.Key(strconv.Itoa(len(faltest.DefaultUserID)) + ":" + faltest.DefaultUserID + ":req-1")
	if ttl := c.PTTL(context.Background(), key).Val(); ttl <= 0 || ttl > lease {
		t.Fatalf("the claim's TTL is %s, want the lease %s", ttl, lease)
	}
	f.wantStatus(f.deliver(1, "req-1"), http.StatusConflict, "in-progress")
	expire(t, c, key) // the lease runs out
	f.wantStatus(f.deliver(1, "req-1"), http.StatusNoContent, "")
	f.wantCalls(2)
	f.wantStatus(f.deliver(0, "req-1"), http.StatusOK, "completed")

	close(release) // the hung run comes back
	<-done
	if logs := f.replicas[0].logs.String(); !strings.Contains(logs, "outlived its dedupe lease") || !strings.Contains(logs, "claim lost") {
		t.Errorf("replica 0 did not log its lost claim:\n%s", logs)
	}
	if v := c.Get(context.Background(), key).Val(); !strings.HasPrefix(v, "done:") {
		t.Fatalf("key holds %q after both runs, want done:<token>", v)
	}
	f.wantCalls(2)
}
