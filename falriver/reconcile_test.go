package falriver_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falqueue"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// The scenario runs fal's queue (faltest.Queue) on a fake clock advanced a
// fifty times faster than real time (at most), so the reconciler's
// durations are fal's figures divided by 50: first poll 200 ms (10 s),
// polls every 600 ms (30 s), grace 1.2 s (one minute); a large result's six
// minutes last 7.2 s.
const scale = 50

var scaled = falriver.ReconcileOptions{
	FirstPoll:    falriver.DefaultFirstPoll / scale,
	PollInterval: falriver.DefaultPollInterval / scale,
	Grace:        falriver.DefaultGrace / scale,
}

// The groups of the scenario, by what happens to the request's webhook.
type group struct {
	name   string
	n      int
	plan   faltest.Plan
	down   bool // the receiver answers 503 to these deliveries throughout
	expire bool // the result is gone right after completion
}

// large is a payload of more than 10 KB, which fal keeps six minutes.
func large(tag string) any {
	return map[string]any{"seed": json.Number("9007199254740993"), "tag": tag, "blob": strings.Repeat("x", 12_000)}
}

var groups = []group{
	{name: "on time", n: 10, plan: faltest.Plan{InQueue: 5 * time.Second, InProgress: 10 * time.Second}},
	{name: "twice", n: 2, plan: faltest.Plan{InQueue: 5 * time.Second, InProgress: 5 * time.Second, Webhook: faltest.WebhookPlan{Duplicates: 1}}},
	{name: "late within grace", n: 2, plan: faltest.Plan{InProgress: 20 * time.Second, Webhook: faltest.WebhookPlan{Delay: 3 * time.Second}}},
	{name: "dropped", n: 6, plan: faltest.Plan{InProgress: 15 * time.Second, Webhook: faltest.WebhookPlan{Drop: true}}},
	{name: "receiver down", n: 6, plan: faltest.Plan{InProgress: 30 * time.Second}, down: true},
	{name: "failed, dropped", n: 2, plan: faltest.Plan{InProgress: 5 * time.Second, Output: faltest.ValidationErrorOutput(), Webhook: faltest.WebhookPlan{Drop: true}}},
	{name: "expired first", n: 4, plan: faltest.Plan{Hold: true, Webhook: faltest.WebhookPlan{Drop: true}}, expire: true},
}

// Every tracked request is processed exactly once, whether its webhook
// came on time, late, twice or never, or its receiver was down past fal's
// retries, with a restart of the workers midway; results that expired
// before anyone could fetch them are counted and logged, not processed;
// no result is fetched for a request whose webhook came.
func TestReconcileScenario(t *testing.T) {
	both(t, scenario[*sql.Tx], scenario[pgx.Tx])
}

func scenario[TTx any](t *testing.T, b *backend[TTx]) {
	ctx := context.Background()
	signer := faltest.SignerFromName("fal")
	q := faltest.NewQueue(signer, faltest.NewClock(time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)))
	defer q.Close()
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, HTTPClient: q.Client(), Clock: faltest.NewClock(time.Time{})}

	plans := map[string]group{}
	var plansMu sync.Mutex
	q.SetPlanner(func(r faltest.QueueRequest) faltest.Plan {
		var in struct{ Group string }
		_ = json.Unmarshal(r.Input, &in)
		plansMu.Lock()
		defer plansMu.Unlock()
		g := plans[in.Group]
		p := g.plan
		if p.Output.StatusCode == 0 && p.Output.Payload == nil {
			p.Output = faltest.OKOutput(large(in.Group))
		}
		return p
	})

	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())), falwebhook.WithUserIDs(faltest.DefaultUserID), falwebhook.WithClock(q.Clock().Now))
	rec := newRecorder()
	stats := new(falriver.ReconcileStats)
	var logs syncBuffer
	opts := scaled
	opts.Stats = stats
	opts.Logger = newTextLogger(&logs)
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		rec.add(job, ev)
		return nil
	}))
	river.AddWorker(workers, falriver.NewReconciler[TTx](qc, opts))
	cfg := func() *river.Config {
		return &river.Config{FetchCooldown: 5 * time.Millisecond, FetchPollInterval: 20 * time.Millisecond,
			Queues: map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 16}}}
	}
	c := b.client(t, workers, cfg())

	var down sync.Map // request ids whose deliveries the receiver refuses
	inbox := falriver.NewInbox(v, c)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := down.Load(r.Header.Get(faltest.HeaderRequestID)); ok {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		inbox.ServeHTTP(w, r)
	}))

	// Submit and track every request.
	byGroup := map[string][]string{}
	var all []string
	for _, g := range groups {
		plansMu.Lock()
		plans[g.name] = g
		plansMu.Unlock()
		for i := range g.n {
			req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{"Group": g.name, "i": i}, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			if g.down {
				down.Store(req.ID, true)
			}
			if err := falriver.Track(ctx, c, req); err != nil {
				t.Fatal(err)
			}
			byGroup[g.name] = append(byGroup[g.name], req.ID)
			all = append(all, req.ID)
		}
	}

	// Run fal's clock; expire the "expired first" results as they
	// complete; restart the workers once, midway.
	// fal rate-limits a few calls: falqueue retries them.
	q.FailNext(faltest.OpStatus, 3, http.StatusTooManyRequests, "1")
	q.FailNext(faltest.OpResult, 2, http.StatusTooManyRequests, "")
	expired := map[string]bool{}
	restarted := false
	// fal's time runs up to fifty times faster than real time, a
	// step at a time, each once River has done what was due: a slow
	// machine slows fal's clock rather than making it jump past a
	// result's retention.
	fakeStart := q.Clock().Now()
	last := time.Now()
	deadline := last.Add(90 * time.Second)
	for {
		step := min(time.Since(last)*scale, 2*time.Second)
		last = time.Now()
		if err := q.Advance(ctx, step); err != nil {
			t.Fatal(err)
		}
		if q.Clock().Now().Sub(fakeStart) > 20*time.Second {
			for _, id := range byGroup["expired first"] {
				if !expired[id] {
					if err := q.Complete(id, faltest.OKOutput(large("expired first"))); err != nil {
						t.Fatal(err)
					}
					if err := q.Expire(id); err != nil {
						t.Fatal(err)
					}
					expired[id] = true
				}
			}
		}
		if !restarted && q.Clock().Now().Sub(fakeStart) > 90*time.Second {
			restarted = true
			stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := c.Stop(stopCtx); err != nil {
				t.Fatal(err)
			}
			cancel()
			c = b.client(t, workers, cfg())
			last = time.Now() // fal's clock stood still while the workers restarted
		}
		if tracked(t, c) == 0 && restarted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tracking not done after 90 s: %d jobs left", tracked(t, c))
		}
		quiet(t, c)
		time.Sleep(20 * time.Millisecond)
	}
	pollFor(10*time.Second, func() bool { return rec.total() >= len(all)-len(byGroup["expired first"]) })

	// Exactly once for each request that was not lost; nothing for those lost.
	var lost []string
	for _, g := range groups {
		for _, id := range byGroup[g.name] {
			n := rec.count(id)
			switch {
			case g.expire && n != 0:
				t.Errorf("%s (%s): processed %d times, but its result expired unfetched", id, g.name, n)
			case g.expire:
				lost = append(lost, id)
			case n != 1:
				t.Errorf("%s (%s): processed %d times, want once", id, g.name, n)
			}
		}
	}
	if got := stats.Expired.Load(); got != int64(len(byGroup["expired first"])) {
		t.Errorf("Stats.Expired %d, want %d", got, len(byGroup["expired first"]))
	}
	for _, id := range lost {
		if !strings.Contains(logs.String(), id) {
			t.Errorf("lost result %s not logged", id)
		}
	}
	// The path each took, and fal's counts.
	statusCalls, fetchedOnTime, onTime := 0, 0, 0
	for _, g := range groups {
		for _, id := range byGroup[g.name] {
			info, _ := q.Request(id)
			statusCalls += info.StatusCalls
			webhookCame := !g.down && !g.plan.Webhook.Drop
			rec.mu.Lock()
			src := rec.source[id]
			evs := rec.events[id]
			rec.mu.Unlock()
			if webhookCame && g.plan.Webhook.Delay > 0 {
				// Late but within the grace: by webhook or backstop,
				// depending on the machine's speed; exactly once either way.
				continue
			}
			if webhookCame {
				onTime++
				if info.ResultCalls > 0 {
					fetchedOnTime++
				}
				if src != falriver.SourceWebhook {
					t.Errorf("%s (%s): came by %q, want the webhook", id, g.name, src)
				}
			} else if !g.expire {
				if src != falriver.SourceReconcile {
					t.Errorf("%s (%s): came by %q, want the backstop", id, g.name, src)
				}
				if g.plan.Output.StatusCode != 0 && (len(evs) != 1 || evs[0].Err() == nil) {
					t.Errorf("%s (%s): a failed request must come as a failed event", id, g.name)
				}
				if g.plan.Output.StatusCode == 0 && len(evs) == 1 && !strings.Contains(string(evs[0].Payload), "9007199254740993") {
					t.Errorf("%s (%s): payload not exact: %.80s", id, g.name, evs[0].Payload)
				}
			}
		}
	}
	if fetchedOnTime*10 > onTime {
		t.Errorf("results fetched for %d of %d requests whose webhook came, want at most a tenth", fetchedOnTime, onTime)
	}
	t.Logf("%d requests tracked: %d processed exactly once (%d by webhook, %d by the backstop), %d lost to expiry and counted; "+
		"%.2f status calls per request; results fetched for %d of %d requests whose webhook came; stats: status %d, results %d, delivered %d, recovered %d, expired %d",
		len(all), rec.total(), onTime, rec.total()-onTime, len(lost), float64(statusCalls)/float64(len(all)), fetchedOnTime, onTime,
		stats.StatusCalls.Load(), stats.ResultCalls.Load(), stats.Delivered.Load(), stats.Recovered.Load(), stats.Expired.Load())
}

// quiet waits, up to 5 s, until the jobs that were due or running when it
// was called are done or snoozed.
func quiet[TTx any](t testing.TB, c *river.Client[TTx]) {
	t.Helper()
	var why string
	defer func() {
		if why != "" {
			t.Logf("quiet timeout: %s", why)
		}
	}()
	t0 := time.Now()
	pollFor(5*time.Second, func() bool {
		res, err := c.JobList(context.Background(), river.NewJobListParams().First(10000).
			States(rivertype.JobStateAvailable, rivertype.JobStateRunning))
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range res.Jobs {
			running := j.State == rivertype.JobStateRunning && j.AttemptedAt != nil && j.AttemptedAt.Before(t0)
			if running || (j.State == rivertype.JobStateAvailable && j.ScheduledAt.Before(t0)) {
				why = fmt.Sprintf("%s %s %v attempt %d", j.Kind, j.State, time.Since(j.ScheduledAt), j.Attempt)
				return false
			}
		}
		why = ""
		return true
	})
}

// tracked counts the tracking jobs not yet finalized.
func tracked[TTx any](t testing.TB, c *river.Client[TTx]) int {
	t.Helper()
	res, err := c.JobList(context.Background(), river.NewJobListParams().Kinds(falriver.TrackKind).First(10000).
		States(rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable, rivertype.JobStateRunning, rivertype.JobStateScheduled))
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Jobs)
}

// Track refuses requests it cannot poll, and tracking twice is one job.
func TestTrack(t *testing.T) {
	b := newSQLite(t)
	c := b.client(t, nil, nil)
	ctx := context.Background()
	for _, req := range []*falqueue.Request{nil, {}, {ID: "x", StatusURL: "s"}, {ID: "x", ResponseURL: "r"}} {
		if err := falriver.Track(ctx, c, req); !errors.Is(err, falriver.ErrInvalidRequest) {
			t.Errorf("Track(%+v): %v, want ErrInvalidRequest", req, err)
		}
	}
	req := &falqueue.Request{ID: "r1", Endpoint: "fal-ai/flux/dev", StatusURL: "https://queue.fal.run/s", ResponseURL: "https://queue.fal.run/r"}
	for range 2 {
		if err := falriver.Track(ctx, c, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := tracked(t, c); n != 1 {
		t.Fatalf("%d tracking jobs after tracking twice, want 1", n)
	}
}

// A Retry-After longer than the poll interval is honoured: the job waits
// that long rather than calling again.
func TestReconcileHonoursRetryAfter(t *testing.T) {
	b := newSQLite(t)
	ctx := context.Background()
	q := faltest.NewQueue(faltest.SignerFromName("fal"), nil)
	defer q.Close()
	q.SetPlanner(func(faltest.QueueRequest) faltest.Plan { return faltest.Plan{Hold: true} })
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, HTTPClient: q.Client(), Clock: faltest.NewClock(time.Time{})}
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewReconciler[*sql.Tx](qc, falriver.ReconcileOptions{FirstPoll: time.Millisecond, PollInterval: 10 * time.Millisecond}))
	c := b.client(t, workers, &river.Config{FetchCooldown: time.Millisecond, FetchPollInterval: 5 * time.Millisecond})
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{}, "")
	if err != nil {
		t.Fatal(err)
	}
	q.FailNext(faltest.OpStatus, 100, http.StatusTooManyRequests, "3600")
	if err := falriver.Track(ctx, c, req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a status call", func() bool { info, _ := q.Request(req.ID); return info.StatusCalls > 0 })
	waitFor(t, "the job snoozed", func() bool {
		res, err := c.JobList(ctx, river.NewJobListParams().Kinds(falriver.TrackKind).States(rivertype.JobStateScheduled))
		return err == nil && len(res.Jobs) == 1 && time.Until(res.Jobs[0].ScheduledAt) > 50*time.Minute
	})
	info, _ := q.Request(req.ID)
	if info.StatusCalls > 6 {
		t.Fatalf("%d status calls despite a Retry-After of an hour", info.StatusCalls)
	}
}

// After seeing the request completed, the reconciler waits Grace for the
// webhook before fetching anything.
func TestReconcileWaitsGraceBeforeFetching(t *testing.T) {
	b := newSQLite(t)
	ctx := context.Background()
	q := faltest.NewQueue(faltest.SignerFromName("fal"), nil)
	defer q.Close()
	q.SetPlanner(func(faltest.QueueRequest) faltest.Plan {
		return faltest.Plan{Output: faltest.OKOutput(map[string]int{"n": 1}), Webhook: faltest.WebhookPlan{Drop: true}}
	})
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, HTTPClient: q.Client(), Clock: faltest.NewClock(time.Time{})}
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewReconciler[*sql.Tx](qc, falriver.ReconcileOptions{FirstPoll: time.Millisecond, Grace: time.Hour}))
	c := b.client(t, workers, &river.Config{FetchCooldown: time.Millisecond, FetchPollInterval: 5 * time.Millisecond})
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Deliver(ctx); err != nil { // completes it
		t.Fatal(err)
	}
	if err := falriver.Track(ctx, c, req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fetch phase waiting an hour", func() bool {
		res, err := c.JobList(ctx, river.NewJobListParams().Kinds(falriver.TrackKind).States(rivertype.JobStateScheduled))
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range res.Jobs {
			var a falriver.TrackArgs
			_ = json.Unmarshal(j.EncodedArgs, &a)
			if a.Phase == falriver.PhaseFetch && time.Until(j.ScheduledAt) > 50*time.Minute {
				return true
			}
		}
		return false
	})
	if info, _ := q.Request(req.ID); info.ResultCalls != 0 || info.StatusCalls != 1 {
		t.Fatalf("%d result calls and %d status calls, want none and one", info.ResultCalls, info.StatusCalls)
	}
}

// The first status call waits FirstPoll from tracking.
func TestReconcileFirstPollWaits(t *testing.T) {
	b := newSQLite(t)
	ctx := context.Background()
	q := faltest.NewQueue(faltest.SignerFromName("fal"), nil)
	defer q.Close()
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, HTTPClient: q.Client(), Clock: faltest.NewClock(time.Time{})}
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewReconciler[*sql.Tx](qc, falriver.ReconcileOptions{FirstPoll: time.Hour}))
	c := b.client(t, workers, &river.Config{FetchCooldown: time.Millisecond, FetchPollInterval: 5 * time.Millisecond})
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := falriver.Track(ctx, c, req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first poll waiting an hour", func() bool {
		res, err := c.JobList(ctx, river.NewJobListParams().Kinds(falriver.TrackKind).States(rivertype.JobStateScheduled))
		return err == nil && len(res.Jobs) == 1 && time.Until(res.Jobs[0].ScheduledAt) > 50*time.Minute
	})
	if info, _ := q.Request(req.ID); info.StatusCalls != 0 {
		t.Fatalf("%d status calls before FirstPoll", info.StatusCalls)
	}
}
