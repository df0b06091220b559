package falwebhook

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// claimed is a Claim's result.
type claimed struct {
	State ClaimState
	Token string
}

func mustClaim(t *testing.T, s DedupeStore, id string, lease time.Duration, want ClaimState) claimed {
	t.Helper()
	state, token, err := s.Claim(context.Background(), id, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", id, err)
	}
	if state != want {
		t.Fatalf("Claim(%q) = %d, want %d", id, state, want)
	}
	if (token != "") != (want == ClaimAcquired) {
		t.Fatalf("Claim(%q) = %d with token %q: a token must come with, and only with, an acquired claim", id, state, token)
	}
	return claimed{state, token}
}

// newMemStore returns an in-memory store reading clk (nil: time.Now) and
// holding at most max entries (0: the default).
func newMemStore(clk *testClock, max int) *memoryStore {
	s := NewMemoryStore(max).(*memoryStore)
	if clk != nil {
		s.now = clk.Now
	}
	return s
}

func (s *memoryStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

func TestMemoryStoreLifecycle(t *testing.T) {
	clk := newTestClock()
	s := newMemStore(clk, 0)
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
	s := newMemStore(nil, 0)
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
	s := newMemStore(clk, 0)
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
	if err := s.Complete(ctx, "a", cur.Token, time.Hour); err != nil {
		t.Fatalf("Complete repeated by the owner (a retry after a lost reply) = %v, want nil", err)
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
	s := newMemStore(clk, 3)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		c := mustClaim(t, s, id, time.Minute, ClaimAcquired)
		if err := s.Complete(ctx, id, c.Token, time.Hour); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	mustClaim(t, s, "d", time.Minute, ClaimAcquired)
	if n := s.len(); n != 3 {
		t.Fatalf("Len = %d after a fourth claim, want the bound 3", n)
	}
	mustClaim(t, s, "b", time.Minute, ClaimCompleted)
	mustClaim(t, s, "c", time.Minute, ClaimCompleted)
	mustClaim(t, s, "d", time.Minute, ClaimInProgress)
	// "a", the oldest completion, was evicted; claiming it evicts "b".
	mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	mustClaim(t, s, "c", time.Minute, ClaimCompleted)
	if n := s.len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
}

func TestMemoryStoreFullOfLiveClaims(t *testing.T) {
	clk := newTestClock()
	s := newMemStore(clk, 2)
	ctx := context.Background()
	a := mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	clk.Advance(time.Second)
	mustClaim(t, s, "b", time.Minute, ClaimAcquired)
	if _, _, err := s.Claim(ctx, "c", time.Minute); !errors.Is(err, errStoreFull) {
		t.Fatalf("Claim on a store full of live claims = %v, want errStoreFull", err)
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
	if _, _, err := s.Claim(ctx, "a", time.Minute); !errors.Is(err, errStoreFull) {
		t.Fatalf("Claim with only live claims left = %v, want errStoreFull", err)
	}

	// An expired claim is evicted: "b"'s lease runs out first.
	clk.Advance(time.Minute - 2*time.Second)
	mustClaim(t, s, "b", time.Minute, ClaimInProgress)
	clk.Advance(time.Second)
	mustClaim(t, s, "a", time.Minute, ClaimAcquired)
	mustClaim(t, s, "c", time.Minute, ClaimInProgress)
	if n := s.len(); n != 2 {
		t.Fatalf("Len = %d, want the bound 2", n)
	}
}

func TestMemoryStoreSweepsExpired(t *testing.T) {
	clk := newTestClock()
	s := newMemStore(clk, 0)
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
	if n := s.len(); n != 10 {
		t.Fatalf("Len = %d after the old records expired and 10 new claims, want 10", n)
	}
}

func TestMemoryStoreCancelledContext(t *testing.T) {
	s := newMemStore(nil, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Claim(ctx, "a", time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("Claim with a cancelled context = %v, want context.Canceled", err)
	}
	if s.len() != 0 {
		t.Fatal("a cancelled Claim left a record")
	}
}

func TestMemoryStoreConcurrent(t *testing.T) {
	const max = 64
	s := newMemStore(nil, max)
	ctx := context.Background()
	var acquired atomic.Int64
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			state, _, err := s.Claim(ctx, "same", time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if state == ClaimAcquired {
				acquired.Add(1)
			}
			for i := range 200 {
				id := fmt.Sprintf("g%d-%d", g, i)
				state, token, err := s.Claim(ctx, id, time.Hour)
				if errors.Is(err, errStoreFull) {
					continue
				}
				if err != nil || state != ClaimAcquired {
					t.Errorf("Claim(%q) = %v, %v", id, state, err)
					return
				}
				if i%3 == 0 {
					err = s.Release(ctx, id, token)
				} else {
					err = s.Complete(ctx, id, token, time.Hour)
				}
				if err != nil && !errors.Is(err, errStoreFull) {
					t.Errorf("finishing %q: %v", id, err)
				}
				if n := s.len(); n > max {
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
