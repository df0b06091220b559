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

func mustClaim(t *testing.T, s *redisdedupe.Store, id string, lease time.Duration, want falwebhook.ClaimState) redisdedupe.Claimed {
	t.Helper()
	res, err := s.ClaimResult(context.Background(), id, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", id, err)
	}
	if res.State != want {
		t.Fatalf("Claim(%q) = %d, want %d", id, res.State, want)
	}
	if (res.Token != "") != (want == falwebhook.ClaimAcquired) {
		t.Fatalf("Claim(%q) = %d with token %q: a token must come with, and only with, an acquired claim", id, res.State, res.Token)
	}
	return res
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
	if v := c.Get(ctx, key).Val(); v != "done:"+claim.Token {
		t.Fatalf("completed key holds %q, want done:<token>", v)
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
	if err := s.Release(ctx, "a", "not-the-token"); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Release of a key completed by another claim = %v, want ErrClaimLost", err)
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
	ctx := context.Background()
	for _, v := range []string{"something else", "done", "done-ish", "inprogress", "DONE:x", ""} {
		c.Set(ctx, s.Key("a"), v, time.Minute)
		if _, err := s.ClaimResult(ctx, "a", time.Minute); err == nil || !strings.Contains(err.Error(), "not a dedupe record") {
			t.Errorf("Claim over the foreign value %q = %v, want a not-a-dedupe-record error", v, err)
		}
		for op, err := range map[string]error{
			"Complete": s.Complete(ctx, "a", "tok", time.Hour),
			"Release":  s.Release(ctx, "a", "tok"),
		} {
			if err == nil || errors.Is(err, falwebhook.ErrClaimLost) || !strings.Contains(err.Error(), "not a dedupe record") {
				t.Errorf("%s over the foreign value %q = %v, want a not-a-dedupe-record error, not ErrClaimLost", op, v, err)
			}
		}
		if got := c.Get(ctx, s.Key("a")).Val(); got != v {
			t.Errorf("the foreign value %q became %q", v, got)
		}
	}
}

// TestStoreClaimRetried sends a claim's attempt again with its token, as
// go-redis does when it lost the reply of an attempt that went through:
// the retry finds its own claim and must report it acquired, not in
// progress.
func TestStoreClaimRetried(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	ctx := context.Background()
	for attempt := 1; attempt <= 2; attempt++ {
		res, err := s.ClaimWithToken(ctx, "a", "T1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if res.State != falwebhook.ClaimAcquired || res.Token != "T1" {
			t.Fatalf("attempt %d of one claim = %d with token %q, want acquired with T1: the claim is blocked by itself", attempt, res.State, res.Token)
		}
	}
	if v := c.Get(ctx, s.Key("a")).Val(); v != "inprogress:T1" {
		t.Fatalf("claimed key holds %q, want inprogress:T1", v)
	}
	if res, err := s.ClaimWithToken(ctx, "a", "T2", time.Minute); err != nil || res.State != falwebhook.ClaimInProgress || res.Token != "" {
		t.Fatalf("another claim = %d with token %q, %v; want in-progress without a token", res.State, res.Token, err)
	}
	if err := s.Complete(ctx, "a", "T1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if res, err := s.ClaimWithToken(ctx, "a", "T1", time.Minute); err != nil || res.State != falwebhook.ClaimCompleted {
		t.Fatalf("the claim's token over its own done record = %d, %v; want completed", res.State, err)
	}
}

// TestStoreCompleteRetried runs Complete twice with one token, as go-redis
// does when it lost the reply of the first: both succeed.
func TestStoreCompleteRetried(t *testing.T) {
	c := connect(t)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(t, c)))
	ctx := context.Background()
	key := s.Key("a")
	claim := mustClaim(t, s, "a", time.Minute, falwebhook.ClaimAcquired)
	if err := s.Complete(ctx, "a", claim.Token, time.Hour); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	ttl := c.PTTL(ctx, key).Val()
	if err := s.Complete(ctx, "a", claim.Token, 2*time.Hour); err != nil {
		t.Fatalf("Complete retried with the claim's own token = %v, want nil: a false claim-lost", err)
	}
	if v := c.Get(ctx, key).Val(); v != "done:"+claim.Token {
		t.Fatalf("completed key holds %q, want done:<token>", v)
	}
	if got := c.PTTL(ctx, key).Val(); got > ttl {
		t.Fatalf("the retried Complete changed the TTL from %s to %s, want it unchanged", ttl, got)
	}
	if err := s.Complete(ctx, "a", "not-the-token", time.Hour); !errors.Is(err, falwebhook.ErrClaimLost) {
		t.Fatalf("Complete with another token after done = %v, want ErrClaimLost", err)
	}

	// Release after the claim's own Complete: completed, not lost.
	err := s.Release(ctx, "a", claim.Token)
	if err == nil || errors.Is(err, falwebhook.ErrClaimLost) || !redisdedupe.IsCompletedByClaim(err) {
		t.Fatalf("Release of a key completed by the same claim = %v, want the completed-by-this-claim error, not ErrClaimLost", err)
	}
	if v := c.Get(ctx, key).Val(); v != "done:"+claim.Token {
		t.Fatalf("Release changed the completed key to %q", v)
	}
	if err := s.Release(ctx, "a", "not-the-token"); !errors.Is(err, falwebhook.ErrClaimLost) || redisdedupe.IsCompletedByClaim(err) {
		t.Fatalf("Release with another token after done = %v, want ErrClaimLost", err)
	}
	mustClaim(t, s, "a", time.Minute, falwebhook.ClaimCompleted)
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
			res, err := stores[i%2].ClaimResult(context.Background(), "same", time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if res.State == falwebhook.ClaimAcquired {
				acquired.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := acquired.Load(); n != 1 {
		t.Fatalf("50 concurrent claims over two clients: %d acquired, want exactly 1", n)
	}
}
