package redisdedupe_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/redisdedupe"
	"github.com/redis/go-redis/v9"
)

// These tests need a real Redis: the one at FALWEBHOOK_REDIS_ADDR (default
// 127.0.0.1:6379), and for the outage test a redis-server binary they start
// themselves. Without them they skip, except under CI=true where they fail.
// .ci/redis.sh installs and starts Redis and runs them.

const startHint = "start one with: redis-server --port 6379 --save '' --appendonly no (or set FALWEBHOOK_REDIS_ADDR)"

// unavailable fails the test under CI and skips it elsewhere.
func unavailable(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s; CI must provide Redis (see .ci/redis.sh)", msg)
	}
	tb.Skipf("%s; %s", msg, startHint)
}

// redisAddr returns the address of the shared test Redis.
func redisAddr() string {
	if a := os.Getenv("FALWEBHOOK_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// connect returns a client of the shared test Redis, closed at the end of
// the test.
func connect(tb testing.TB) *redis.Client {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", redisAddr(), 2*time.Second)
	if err != nil {
		unavailable(tb, fmt.Sprintf("no Redis at %s: %v", redisAddr(), err))
	}
	conn.Close()
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), DialTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		unavailable(tb, fmt.Sprintf("no Redis at %s: %v", redisAddr(), err))
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// testPrefix returns a key prefix no other test or run uses, and deletes
// its keys at the end of the test.
func testPrefix(tb testing.TB, c redis.UniversalClient) string {
	p := "falwebhook:test:" + tb.Name() + ":" + rand.Text()[:8] + ":"
	tb.Cleanup(func() {
		ctx := context.Background()
		keys, _ := c.Keys(ctx, p+"*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return p
}

// claimed is a Claim's result.
type claimed struct {
	State falwebhook.ClaimState
	Token string
}

func mustClaim(t *testing.T, s *redisdedupe.Store, id string, lease time.Duration, want falwebhook.ClaimState) claimed {
	t.Helper()
	state, token, err := s.Claim(context.Background(), id, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", id, err)
	}
	if state != want {
		t.Fatalf("Claim(%q) = %d, want %d", id, state, want)
	}
	if (token != "") != (want == falwebhook.ClaimAcquired) {
		t.Fatalf("Claim(%q) = %d with token %q: a token must come with, and only with, an acquired claim", id, state, token)
	}
	return claimed{state, token}
}

// expire makes the key's lease run out now, as if the lease had passed.
func expire(t *testing.T, c *redis.Client, key string) {
	t.Helper()
	ctx := context.Background()
	if err := c.PExpire(ctx, key, time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Exists(ctx, key).Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not expire", key)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestKeyLayout(t *testing.T) {
	if got, want := redisdedupe.New(nil).Key("5057fca7"), "falwebhook:dedupe:5057fca7"; got != want {
		t.Errorf("default key %q, want %q", got, want)
	}
	if got, want := redisdedupe.New(nil, redisdedupe.WithPrefix("svc:")).Key("r1"), "svc:r1"; got != want {
		t.Errorf("prefixed key %q, want %q", got, want)
	}
}

func TestStoreLifecycle(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	ctx := context.Background()
	key := s.Key("a")

	claim := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if v := c.Get(ctx, key).Val(); v != "inprogress:"+claim.Token {
		t.Fatalf("claimed key holds %q, want inprogress:<token>", v)
	}
	if ttl := c.PTTL(ctx, key).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("claimed key's TTL %s, want the lease (1m)", ttl)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimInProgress)
	mustClaim(t, s, "b", time.Minute, falwebhook.ClaimAcquired)
	if err := s.Complete(ctx, "a", claim.Token, time.Hour); err != nil {
		t.Fatalf("Complete by the owner: %v", err)
	}
	if v := c.Get(ctx, key).Val(); v != "done" {
		t.Fatalf("completed key holds %q, want done", v)
	}
	if ttl := c.PTTL(ctx, key).Val(); ttl <= time.Minute || ttl > time.Hour {
		t.Fatalf("completed key's TTL %s, want the TTL (1h)", ttl)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimCompleted)
	expire(t, c, key) // the completed record's TTL ran out
	again := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if again.Token == claim.Token {
		t.Fatal("a new claim reused the token")
	}
}

func TestStoreRelease(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	ctx := context.Background()
	claim := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if err := s.Release(ctx, "a", "not-the-token"); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Release with a foreign token = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimInProgress)
	if err := s.Release(ctx, "a", claim.Token); err != nil {
		t.Fatalf("Release by the owner: %v", err)
	}
	if err := s.Release(ctx, "a", claim.Token); err != nil {
		t.Fatalf("Release of an absent key = %v, want nil", err)
	}
	claim = mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if err := s.Complete(ctx, "a", claim.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "a", claim.Token); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Release of a completed key = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimCompleted)
}

func TestStoreLeaseExpiry(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	ctx := context.Background()

	old := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	expire(t, c, s.Key("a"))
	cur := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if err := s.Complete(ctx, "a", old.Token, time.Hour); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Complete with a stale token = %v, want ErrClaimLost", err)
	}
	if err := s.Release(ctx, "a", old.Token); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Release with a stale token = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimInProgress)
	if err := s.Complete(ctx, "a", cur.Token, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "a", old.Token, time.Hour); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Complete of a key completed by another claim = %v, want ErrClaimLost", err)
	}

	// The lease ran out and no one claimed since: the work was done.
	late := mustClaim(t, s, "b", time.Minute, falwebhook.ClaimAcquired)
	expire(t, c, s.Key("b"))
	if err := s.Complete(ctx, "b", late.Token, time.Hour); err != nil {
		t.Fatalf("Complete after the lease ran out, unclaimed since: %v", err)
	}
	mustClaim(t, s, "b", time.Minute, falwebhook.ClaimCompleted)
}

func TestStoreForeignValue(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	c.Set(context.Background(), s.Key("a"), "something else", time.Minute)
	if _, _, err := s.Claim(context.Background(), "a", time.Minute); err == nil || !strings.Contains(err.Error(), "not a dedupe record") {
		t.Fatalf("Claim over a foreign value = %v, want an error", err)
	}
}

func TestStoreConcurrentClaims(t *testing.T) {
	c1, c2 := connect(t), connect(t)
	prefix := testPrefix(t, c1)
	stores := []*redisdedupe.Store{redisdedupe.New(c1, redisdedupe.WithPrefix(prefix)), redisdedupe.New(c2, redisdedupe.WithPrefix(prefix))}
	var acquired atomic.Int64
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			state, _, err := stores[i%2].Claim(context.Background(), "same", time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if state == falwebhook.ClaimAcquired {
				acquired.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := acquired.Load(); n != 1 {
		t.Fatalf("50 concurrent claims over two clients: %d acquired, want exactly 1", n)
	}
}
