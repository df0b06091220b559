//go:build unix

package redisdedupe_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/redis/go-redis/v9"
)

// serverRedis is a redis-server process of the test's own, which it can
// stop and kill.
type serverRedis struct {
	addr string
	cmd  *exec.Cmd
}

// startRedis starts a redis-server on a free loopback port, without
// persistence, and kills it at the end of the test.
func startRedis(t *testing.T) *serverRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server is not installed (apt-get install -y redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	r := &serverRedis{addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
	c := redis.NewClient(&redis.Options{Addr: r.addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING", r.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// quickClient returns a client of r that gives up fast, as a receiver
// should configure it so that an outage becomes a quick 503.
func quickClient(t *testing.T, r *serverRedis) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:          r.addr,
		DialTimeout:   200 * time.Millisecond,
		ReadTimeout:   200 * time.Millisecond,
		WriteTimeout:  200 * time.Millisecond,
		MaxRetries:    -1,
		DialerRetries: 1,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRedisOutage stops Redis (SIGSTOP: it hangs) mid-test, then resumes
// and kills it: while it is out, every delivery is answered 503 without
// running the handler, and nothing is marked completed that did not
// complete.
func TestRedisOutage(t *testing.T) {
	r := startRedis(t)
	cs := []redis.UniversalClient{quickClient(t, r), quickClient(t, r)}
	admin := redis.NewClient(&redis.Options{Addr: r.addr})
	defer admin.Close()
	f := newFleet(t, cs, "falwebhook:dedupe:")
	ctx := context.Background()

	entered, release := make(chan struct{}), make(chan struct{})
	f.handle = func(n int64, _ int, w http.ResponseWriter, req *http.Request) {
		ev, _ := falwebhook.EventFromContext(req.Context())
		if ev.RequestID == "req-2" {
			close(entered)
			<-release
			http.Error(w, "failed during the outage", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	f.wantStatus(f.deliver(0, "req-1"), http.StatusNoContent, "")

	done := make(chan int)
	go func() { done <- f.deliver(0, "req-2").Code }()
	<-entered
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	close(release) // req-2 fails while Redis is out: its release fails too
	if code := <-done; code != http.StatusInternalServerError {
		t.Fatalf("req-2 answered %d, want the handler's 500", code)
	}
	if logs := f.replicas[0].logs.String(); !strings.Contains(logs, "could not release") {
		t.Errorf("the failed release was not logged:\n%s", logs)
	}
	calls := f.calls.Load()
	for _, id := range []string{"req-1", "req-3"} {
		for i := range f.replicas {
			w := f.deliver(i, id)
			f.wantStatus(w, http.StatusServiceUnavailable, "")
			if w.Header().Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
		}
	}
	f.wantCalls(calls)

	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if got := admin.Get(ctx, "falwebhook:dedupe:12:faltest-user:req-1").Val(); !strings.HasPrefix(got, "done:") {
		t.Errorf("after the outage req-1 holds %q, want done:<token>", got)
	}
	if got := admin.Get(ctx, "falwebhook:dedupe:12:faltest-user:req-3").Val(); got != "" {
		t.Errorf("after the outage req-3 holds %q, want nothing", got)
	}
	// req-2's release, which failed during the outage, is retried in the
	// background and lands now that Redis is back.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.replicas[0].d.Shutdown(sctx); err != nil {
		t.Fatalf("the release of req-2 was not retried to the end: %v", err)
	}
	if got := admin.Get(ctx, "falwebhook:dedupe:req-2").Val(); got != "" {
		t.Errorf("req-2, whose release failed during the outage, holds %q, want it released once Redis is back", got)
	}
	f.wantStatus(f.deliver(1, "req-3"), http.StatusNoContent, "") // back: the retry runs it
	f.wantStatus(f.deliver(1, "req-1"), http.StatusOK, "completed")

	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	r.cmd.Wait()
	calls = f.calls.Load()
	for i := range f.replicas {
		f.wantStatus(f.deliver(i, "req-4"), http.StatusServiceUnavailable, "")
		f.wantStatus(f.deliver(i, "req-1"), http.StatusServiceUnavailable, "")
	}
	f.wantCalls(calls)
}

// TestRedisStallDuringHandler pauses Redis while a handler runs, as in a
// failover or a long fork: the handler's answer goes out at once, the
// Complete that fails during the stall is retried in the background, and
// once Redis is back fal's retries, on any replica, are answered as
// duplicates. The handler runs once.
func TestRedisStallDuringHandler(t *testing.T) {
	r := startRedis(t)
	cs := []redis.UniversalClient{quickClient(t, r), quickClient(t, r), quickClient(t, r)}
	f := newFleet(t, cs, "falwebhook:dedupe:")
	entered, release := make(chan struct{}), make(chan struct{})
	f.handle = func(n int64, _ int, w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		w.WriteHeader(http.StatusNoContent)
	}
	done := make(chan int)
	go func() { done <- f.deliver(0, "req-1").Code }()
	<-entered
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer resume()
	close(release)
	select {
	case code := <-done:
		if code != http.StatusNoContent {
			t.Fatalf("answer %d, want the handler's 204", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's answer waited for the stalled Redis")
	}
	// Wait (bounded) until the first Complete has failed, then resume.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(f.replicas[0].logs.String(), "could not complete the delivery") {
		if time.Now().After(deadline) {
			t.Fatalf("Complete did not fail during the stall:\n%s", f.replicas[0].logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resume()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.replicas[0].d.Shutdown(ctx); err != nil {
		t.Fatalf("the retried Complete did not land: %v\n%s", err, f.replicas[0].logs)
	}
	for i := range f.replicas {
		f.wantStatus(f.deliver(i, "req-1"), http.StatusOK, "completed")
	}
	f.wantCalls(1)
	if logs := f.replicas[0].logs.String(); strings.Contains(logs, "level=ERROR") {
		t.Errorf("a recovered stall was logged as an error:\n%s", logs)
	}
}
