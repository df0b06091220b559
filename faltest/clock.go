package faltest

import (
	"context"
	"slices"
	"sync"
	"time"
)

// A Clock is a fake clock for tests: time stands still until Advance or
// Sleep moves it. A Queue runs on one; give the same Clock to the code under
// test (falqueue.Client's Clock field, falwebhook.WithClock(clock.Now)) so
// that everything agrees on the time and nothing waits for real.
//
// A Clock is safe for concurrent use by multiple goroutines.
type Clock struct {
	mu     sync.Mutex      // guards the fields below
	now    time.Time       // the current time
	sleeps []time.Duration // every Sleep's duration, in order
}

// NewClock returns a Clock that reads start until moved. A zero start means
// the current time, to the second, so that signatures made by it also pass
// a verifier on the real clock until the test moves the clock more than the
// verifier's tolerance (5 minutes by default).
func NewClock(start time.Time) *Clock {
	if start.IsZero() {
		start = time.Now().Truncate(time.Second)
	}
	return &Clock{now: start}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d; a d of 0 or less does nothing. It
// does not deliver a Queue's webhooks: Queue.Advance does.
func (c *Clock) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Sleep returns ctx's error at once if ctx is done, and otherwise moves the
// clock forward by d (as if the caller had slept that long) and returns nil
// without waiting. Every sleeper moves the time for everyone: with
// concurrent sleepers, time runs faster than any one of them slept.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	if d > 0 {
		c.now = c.now.Add(d)
	}
	c.mu.Unlock()
	return nil
}

// Sleeps returns the durations Sleep was called with, in order: how long a
// client under test waited between its retries.
func (c *Clock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sleeps)
}

// moveTo moves the clock forward to t, if t is later.
func (c *Clock) moveTo(t time.Time) {
	c.mu.Lock()
	if t.After(c.now) {
		c.now = t
	}
	c.mu.Unlock()
}
