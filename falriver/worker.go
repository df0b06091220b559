package falriver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/riverqueue/river"
)

// DefaultTimeout is how long one attempt of a delivery job may run before
// its context is cancelled: media work (downloading a video from fal's CDN,
// uploading it elsewhere) takes minutes, not River's default of one minute.
// It also bounds how long a job held by a process that died waits for
// River's rescuer, which leaves a running job alone until its timeout has
// passed: set RescueStuckJobsAfter just above it (see the package doc).
const DefaultTimeout = 5 * time.Minute

// ErrRequestIDMismatch is the error of a delivery job whose stored body is
// not an event of the job's request id. Such a job is cancelled, not
// retried, and the work function is not called.
var ErrRequestIDMismatch = errors.New("falriver: stored body is not an event of the job's request id")

// worker is the River worker of delivery jobs that NewWorker returns.
type worker struct {
	river.WorkerDefaults[Args]
	fn func(ctx context.Context, job *river.Job[Args], ev *falwebhook.Event) error
}

// NewWorker returns the worker that processes delivery jobs: it parses the
// stored body into the same *falwebhook.Event the middleware gives (payload
// bytes exact) and calls fn. When fn returns an error River retries the job
// on the Worker's schedule (NextRetry), up to the job's MaxAttempts; return
// river.JobCancel(err) for a delivery that will never succeed. A body that
// does not parse, or is not the job's request, cancels the job without
// calling fn.
//
// fn learns how the delivery came from job.Args.Source. For exactly-once
// database side effects, make fn's writes and river.JobCompleteTx one
// transaction (see the package example).
//
// Each attempt may run DefaultTimeout. To change that or the retry
// schedule, embed the returned worker in a struct of your own that defines
// Timeout or NextRetry. NewWorker panics if fn is nil.
func NewWorker(fn func(ctx context.Context, job *river.Job[Args], ev *falwebhook.Event) error) river.Worker[Args] {
	if fn == nil {
		panic("falriver: NewWorker with a nil function")
	}
	return &worker{fn: fn}
}

// Work parses the delivery and calls the work function.
func (w *worker) Work(ctx context.Context, job *river.Job[Args]) error {
	ev, err := falwebhook.ParseEvent(job.Args.Body)
	if err != nil {
		return river.JobCancel(fmt.Errorf("falriver: delivery %q: %w", job.Args.RequestID, err))
	}
	if ev.RequestID != job.Args.RequestID {
		return river.JobCancel(fmt.Errorf("%w: job %q, body %q", ErrRequestIDMismatch, job.Args.RequestID, ev.RequestID))
	}
	return w.fn(ctx, job, ev)
}

// Timeout returns DefaultTimeout.
func (*worker) Timeout(*river.Job[Args]) time.Duration { return DefaultTimeout }

// NextRetry schedules the next attempt 15 s after the first failure,
// doubling each time up to an hour, with 10% jitter: with
// DefaultMaxAttempts the retries span about four hours, well past fal's own
// hour of redeliveries, where River's default of 25 attempts spans weeks.
func (*worker) NextRetry(job *river.Job[Args]) time.Time {
	return time.Now().Add(retryDelay(job.Attempt, rand.Float64()))
}

// retryDelay is the wait after attempt n (n ≥ 1) failed, for r in [0, 1).
func retryDelay(n int, r float64) time.Duration {
	const base, ceiling = 15 * time.Second, time.Hour
	d := ceiling
	if n >= 1 && n <= 9 { // 15 s << 8 is 64 min, above the ceiling
		d = min(base<<(n-1), ceiling)
	}
	return time.Duration(float64(d) * (0.9 + 0.2*r))
}
