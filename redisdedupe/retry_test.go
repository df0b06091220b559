//go:build unix

package redisdedupe_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/redisdedupe"
	"github.com/redis/go-redis/v9"
)

// lossyTimeout is the read timeout of replyLoser's client: how long an
// attempt waits for the paused Redis before go-redis gives up on it and
// retries.
const lossyTimeout = 500 * time.Millisecond

// replyLoser makes go-redis lose the reply of an attempt that went
// through, on a Redis of the test's own: it pauses Redis (SIGSTOP), so the
// attempt is sent and read times out; when go-redis dials to retry, it
// resumes Redis (SIGCONT) and waits until the paused attempt has been
// applied before letting the dial proceed, so the retry finds the first
// attempt's work done.
type replyLoser struct {
	r      *serverRedis
	client *redis.Client // the client under test: one connection, retries
	admin  *redis.Client // for looking at keys

	mu      sync.Mutex  // guards the fields below
	t       *testing.T  // the test lose runs for
	applied func() bool // set while lose runs
	resumed bool        // a retry's dial resumed Redis
	seen    bool        // applied reported true before the retry's dial
}

func newReplyLoser(t *testing.T) *replyLoser {
	r := startRedis(t)
	l := &replyLoser{r: r}
	l.client = redis.NewClient(&redis.Options{
		Addr:        r.addr,
		ReadTimeout: lossyTimeout,
		MaxRetries:  2,
		PoolSize:    1, // the retry must dial, since the timed-out connection is dropped
	})
	l.client.AddHook(l)
	l.admin = redis.NewClient(&redis.Options{Addr: r.addr})
	t.Cleanup(func() {
		l.client.Close()
		l.admin.Close()
	})
	return l
}

// DialHook resumes Redis before the dial of a retry while lose runs.
func (l *replyLoser) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		l.mu.Lock()
		if l.applied != nil && !l.resumed {
			l.resumed = true
			if err := l.r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				l.t.Errorf("resuming redis-server: %v", err)
			}
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if l.applied() {
					l.seen = true
					break
				}
			}
		}
		l.mu.Unlock()
		return next(ctx, network, addr)
	}
}

func (l *replyLoser) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (l *replyLoser) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// lose runs op with Redis paused, as described at replyLoser; applied
// reports whether op's first attempt has reached Redis. It fails the test
// unless the scenario played out: go-redis timed out, Redis applied the
// first attempt, and go-redis retried on a new connection. It returns op's
// error.
func (l *replyLoser) lose(t *testing.T, applied func() bool, op func() error) error {
	t.Helper()
	l.mu.Lock()
	l.t, l.applied, l.resumed, l.seen = t, applied, false, false
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.applied = nil
		l.mu.Unlock()
	}()

	if err := l.r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.r.cmd.Process.Signal(syscall.SIGCONT) })
	l.r.waitStopped(t)
	done := make(chan error, 1)
	go func() { done <- op() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		l.r.cmd.Process.Signal(syscall.SIGCONT)
		t.Fatal("the operation did not return within 10 s of pausing Redis")
	}
	l.r.cmd.Process.Signal(syscall.SIGCONT) // in case go-redis never retried
	l.mu.Lock()
	resumed, seen := l.resumed, l.seen
	l.mu.Unlock()
	if !resumed {
		t.Fatalf("go-redis did not retry on a new connection (result %v): the lost reply was not reproduced", err)
	}
	if !seen {
		t.Fatalf("the attempt sent while Redis was paused was not applied within 2 s of resuming it (result %v): the lost reply was not reproduced", err)
	}
	return err
}

// waitStopped waits until the kernel reports r's process stopped, where
// /proc tells (Linux), for at most a second, so that nothing sent after
// SIGSTOP is answered.
func (r *serverRedis) waitStopped(t *testing.T) {
	stat := fmt.Sprintf("/proc/%d/stat", r.cmd.Process.Pid)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(stat)
		if err != nil {
			return // no /proc: SIGSTOP takes effect long before a command arrives
		}
		// The state follows the command name in parentheses: "pid (comm) T ...".
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
			return
		}
	}
	t.Fatal("redis-server did not stop within 1 s of SIGSTOP")
}

// TestLostReplies pauses a real Redis while an operation is in flight, so
// that go-redis's read times out after Redis received the command; Redis
// then applies it, and go-redis retries it. The retry must report what
// the first attempt did.
func TestLostReplies(t *testing.T) {
	l := newReplyLoser(t)
	s := redisdedupe.New(l.client, redisdedupe.WithPrefix("test:"))
	ctx := context.Background()
	get := func(id string) string { return l.admin.Get(ctx, s.Key(id)).Val() }
	// Load the scripts into Redis and a connection into the pool, so that
	// the paused attempts are the operations' scripts.
	for _, id := range []string{"warm-1", "warm-2"} {
		res, err := s.ClaimResult(ctx, id, time.Minute)
		if err != nil || res.State != falwebhook.ClaimAcquired {
			t.Fatalf("Claim = %d, %v", res.State, err)
		}
		end := s.Release
		if id == "warm-1" {
			end = func(ctx context.Context, id, token string) error { return s.Complete(ctx, id, token, time.Minute) }
		}
		if err := end(ctx, id, res.Token); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Claim", func(t *testing.T) {
		var res redisdedupe.Claimed
		err := l.lose(t, func() bool { return get("a") != "" }, func() (err error) {
			res, err = s.ClaimResult(ctx, "a", time.Minute)
			return err
		})
		if err != nil {
			t.Fatalf("Claim with its reply lost: %v", err)
		}
		if res.State != falwebhook.ClaimAcquired {
			t.Fatalf("Claim with its reply lost = %d, want acquired: the delivery is blocked by its own claim for the lease", res.State)
		}
		if v := get("a"); v != "inprogress:"+res.Token {
			t.Fatalf("claimed key holds %q, want inprogress:%s", v, res.Token)
		}
	})

	t.Run("Complete", func(t *testing.T) {
		claim, err := s.ClaimResult(ctx, "b", time.Minute)
		if err != nil || claim.State != falwebhook.ClaimAcquired {
			t.Fatalf("Claim = %d, %v", claim.State, err)
		}
		err = l.lose(t, func() bool { v := get("b"); return v != "" && v != "inprogress:"+claim.Token }, func() error {
			return s.Complete(ctx, "b", claim.Token, time.Hour)
		})
		if err != nil {
			t.Fatalf("Complete with its reply lost = %v, want nil (a false claim-lost: the handler ran once)", err)
		}
		if v := get("b"); v != "done:"+claim.Token {
			t.Fatalf("completed key holds %q, want done:%s", v, claim.Token)
		}
	})

	t.Run("Release", func(t *testing.T) {
		claim, err := s.ClaimResult(ctx, "c", time.Minute)
		if err != nil || claim.State != falwebhook.ClaimAcquired {
			t.Fatalf("Claim = %d, %v", claim.State, err)
		}
		err = l.lose(t, func() bool { return get("c") == "" }, func() error {
			return s.Release(ctx, "c", claim.Token)
		})
		if err != nil {
			t.Fatalf("Release with its reply lost = %v, want nil", err)
		}
		if res, err := s.ClaimResult(ctx, "c", time.Minute); err != nil || res.State != falwebhook.ClaimAcquired {
			t.Fatalf("Claim after the release = %d, %v; want acquired", res.State, err)
		}
	})
}
