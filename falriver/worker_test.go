package falriver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// The retry schedule: 15 s doubling to an hour, ±10%, about four hours
// over DefaultMaxAttempts.
func TestRetryDelay(t *testing.T) {
	want := []time.Duration{15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute,
		8 * time.Minute, 16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour, time.Hour}
	var total time.Duration
	for i, w := range want {
		n := i + 1
		if got := retryDelay(n, 0.5); got != w {
			t.Errorf("after attempt %d: %v, want %v", n, got, w)
		}
		if lo, hi := retryDelay(n, 0), retryDelay(n, 0.999999); lo != w*9/10 || hi <= w*109/100 || hi > w*11/10 {
			t.Errorf("after attempt %d: jitter range [%v, %v], want [%v, %v)", n, lo, hi, w*9/10, w*11/10)
		}
		total += w
	}
	if len(want) != DefaultMaxAttempts-1 {
		t.Fatalf("schedule has %d retries, DefaultMaxAttempts %d", len(want), DefaultMaxAttempts)
	}
	if total < 3*time.Hour || total > 5*time.Hour {
		t.Fatalf("retries span %v, want about four hours", total)
	}
	if got := retryDelay(100, 0.5); got != time.Hour {
		t.Fatalf("after attempt 100: %v, want the hour ceiling", got)
	}
	w := NewWorker(func(context.Context, *river.Job[Args], *falwebhook.Event) error { return nil })
	if w.Timeout(nil) != DefaultTimeout {
		t.Fatalf("Timeout %v, want %v", w.Timeout(nil), DefaultTimeout)
	}
	job := &river.Job[Args]{JobRow: &rivertype.JobRow{Attempt: 3}}
	if d := time.Until(w.NextRetry(job)); d < 50*time.Second || d > 70*time.Second {
		t.Fatalf("NextRetry after attempt 3 is %v away, want about a minute", d)
	}
}

// A stored body that does not parse, or is another request's, cancels the
// job without calling the work function.
func TestWorkerCancelsBadBodies(t *testing.T) {
	called := 0
	w := NewWorker(func(context.Context, *river.Job[Args], *falwebhook.Event) error { called++; return nil })
	for name, a := range map[string]Args{
		"not json":      {RequestID: "a", Body: []byte("{")},
		"not an event":  {RequestID: "a", Body: []byte(`{"request_id":"a"}`)},
		"other request": {RequestID: "a", Body: []byte(`{"request_id":"b","status":"OK"}`)},
	} {
		err := w.Work(context.Background(), &river.Job[Args]{JobRow: &rivertype.JobRow{}, Args: a})
		var cancel *rivertype.JobCancelError
		if !errors.As(err, &cancel) {
			t.Errorf("%s: %v, want a JobCancel error", name, err)
		}
	}
	if called != 0 {
		t.Fatalf("work function called %d times for bad bodies", called)
	}
	if err := w.Work(context.Background(), &river.Job[Args]{JobRow: &rivertype.JobRow{}, Args: Args{RequestID: "a", Body: []byte(`{"request_id":"a","status":"OK"}`)}}); err != nil || called != 1 {
		t.Fatalf("good body: %v, %d calls", err, called)
	}
}
