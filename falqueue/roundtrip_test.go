package falqueue_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falqueue"
	"github.com/falwebhook/falwebhook/faltest"
)

var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// app is a user's service: a webhook receiver behind falwebhook's verifier,
// and the code that processes each finished request, once.
type app struct {
	mu        sync.Mutex
	processed map[string][]*falwebhook.Event // by request id, in order
	via       map[string]string              // "webhook" or "poll"
	down      atomic.Bool                    // the receiver answers 503
	srv       *httptest.Server
}

func newApp(t *testing.T, signer *faltest.Signer, clock *faltest.Clock) *app {
	a := &app{processed: map[string][]*falwebhook.Event{}, via: map[string]string{}}
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())), falwebhook.WithClock(clock.Now))
	h := v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) { a.process(ev, "webhook") })
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// process processes ev unless its request was processed already.
func (a *app) process(ev *falwebhook.Event, via string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, done := a.via[ev.RequestID]; !done {
		a.via[ev.RequestID] = via
	}
	a.processed[ev.RequestID] = append(a.processed[ev.RequestID], ev)
}

func (a *app) seen(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.processed[id]) > 0
}

const bigSeed = `{"images": [{"url": "https://v3.fal.media/files/x.jpeg"}], "seed": 17454220438242315174}`

// TestRoundTrip submits requests to a fake queue, lets webhooks arrive,
// fail or go missing, and recovers the missing ones by polling, the way a
// backstop does: every result is processed exactly once and none is lost
// that fal still had.
func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	signer := faltest.SignerFromName("round trip")
	clock := faltest.NewClock(start)
	q := faltest.NewQueue(signer, clock)
	defer q.Close()
	a := newApp(t, signer, clock)
	q.SetPlanner(func(r faltest.QueueRequest) faltest.Plan {
		var in struct{ Kind string }
		_ = json.Unmarshal(r.Input, &in)
		p := faltest.Plan{InQueue: 2 * time.Second, InProgress: 5 * time.Second, Output: faltest.OKOutput(json.RawMessage(bigSeed))}
		switch in.Kind {
		case "dropped":
			p.Webhook.Drop = true
		case "invalid":
			p.Output = faltest.ValidationErrorOutput()
		case "invalid, dropped":
			p.Output, p.Webhook.Drop = faltest.ValidationErrorOutput(), true
		case "twice":
			p.Webhook.Duplicates = 1
		case "large, dropped":
			p.Output = faltest.OKOutput(map[string]string{"image": strings.Repeat("A", faltest.LargeResultBytes)})
			p.Webhook.Drop = true
		}
		return p
	})
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, Clock: clock}

	kinds := []string{"ok", "dropped", "invalid", "invalid, dropped", "twice", "large, dropped"}
	reqs := map[string]*falqueue.Request{}
	for _, k := range kinds {
		req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]string{"kind": k}, a.srv.URL+"/fal/webhook")
		if err != nil {
			t.Fatal(err)
		}
		// A Request survives storage (a River job's arguments).
		b, _ := json.Marshal(req)
		var stored falqueue.Request
		if err := json.Unmarshal(b, &stored); err != nil || stored != *req {
			t.Fatalf("Request does not survive JSON: %s", b)
		}
		reqs[k] = &stored
	}

	// While queued, polling says so and Result refuses.
	st, err := qc.Status(ctx, reqs["ok"])
	if err != nil || st.State != falqueue.StateInQueue || st.QueuePosition != 0 {
		t.Fatalf("status right after submit: %+v, %v", st, err)
	}
	if _, err := qc.Result(ctx, reqs["ok"]); !errors.Is(err, falqueue.ErrNotReady) {
		t.Fatalf("result while queued: %v, want ErrNotReady", err)
	}

	// The webhooks come; the receiver is down for the first minute, so fal
	// retries (15 s, 30 s, 60 s after the first attempt).
	a.down.Store(true)
	if err := q.Advance(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	a.down.Store(false)
	if err := q.Advance(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	// The backstop: poll what no webhook brought, rate limited at first.
	q.FailNext(faltest.OpStatus, 2, http.StatusTooManyRequests, "2")
	sleptBefore := len(clock.Sleeps())
	for _, k := range kinds {
		req := reqs[k]
		if a.seen(req.ID) {
			continue
		}
		st, err := qc.Status(ctx, req)
		if err != nil {
			t.Fatalf("%s: status: %v", k, err)
		}
		if !st.Completed() {
			t.Fatalf("%s: %s after 3 minutes", k, st.State)
		}
		ev, err := qc.Result(ctx, req)
		if k == "large, dropped" {
			// Its result was 10 KB: fal kept it 6 minutes, and it is
			// still there at 3; it is fetched like the others.
			if err != nil {
				t.Fatalf("large result within 6 minutes: %v", err)
			}
		} else if err != nil {
			t.Fatalf("%s: result: %v", k, err)
		}
		a.process(ev, "poll")
	}
	// The waits are the larger of Retry-After (2 s) and the backoff (1 s,
	// then 2 s, each ±25%).
	if got := clock.Sleeps()[sleptBefore:]; len(got) != 2 || got[0] != 2*time.Second || got[1] < 2*time.Second || got[1] > 2500*time.Millisecond {
		t.Errorf("the client waited %v for the 429s, want 2 s, then 2 to 2.5 s", got)
	}

	want := map[string]string{"ok": "webhook", "dropped": "poll", "invalid": "webhook", "invalid, dropped": "poll", "twice": "webhook", "large, dropped": "poll"}
	for k, via := range want {
		id := reqs[k].ID
		evs := a.processed[id]
		n := len(evs)
		if k == "twice" {
			n-- // fal delivered it twice; dedupe (falwebhook.Dedupe) would drop the second
		}
		if n != 1 || a.via[id] != via {
			t.Errorf("%s: processed %d times, first via %s; want once via %s", k, len(evs), a.via[id], via)
		}
		ev := evs[0]
		switch {
		case strings.HasPrefix(k, "invalid"):
			var re *falwebhook.RequestError
			if !errors.As(ev.Err(), &re) || re.Detail == nil || re.Detail.String() != "body.prompt: field required (value_error.missing)" {
				t.Errorf("%s: Err() = %v, want the validation failure", k, ev.Err())
			}
			if got, want := ev.Err().Error(), "falwebhook: request "+id+" failed: Invalid status code: 422: body.prompt: field required (value_error.missing)"; got != want {
				t.Errorf("%s: %s, want %s", k, got, want)
			}
		case k == "large, dropped":
			if ev.Err() != nil || len(ev.Payload) < faltest.LargeResultBytes {
				t.Errorf("%s: %v, %d bytes", k, ev.Err(), len(ev.Payload))
			}
		default:
			if ev.Err() != nil || string(ev.Payload) != bigSeed {
				t.Errorf("%s: payload %s, %v; want %s exactly", k, ev.Payload, ev.Err(), bigSeed)
			}
		}
	}

	// A fetched result is the event the webhook would have carried.
	polled, err := qc.Result(ctx, reqs["ok"])
	if err != nil {
		t.Fatal(err)
	}
	hooked := a.processed[reqs["ok"].ID][0]
	if polled.RequestID != hooked.RequestID || polled.Status != hooked.Status || string(polled.Payload) != string(hooked.Payload) || polled.Error != hooked.Error {
		t.Errorf("polled %+v, webhook %+v", polled, hooked)
	}

	// Counts for assertions: no result was fetched for a request whose
	// webhook came, the key was always right.
	for _, k := range []string{"ok", "invalid", "twice"} {
		info, _ := q.Request(reqs[k].ID)
		served := info.ResultsServed
		if k == "ok" {
			served-- // the comparison above
		}
		if served != 0 || info.Webhook != faltest.WebhookDelivered {
			t.Errorf("%s: %d results fetched although its webhook came (%s)", k, served, info.Webhook)
		}
	}
	if info, _ := q.Request(reqs["ok"].ID); len(info.Attempts) != 4 || info.Attempts[3].StatusCode != 200 {
		t.Errorf("ok: webhook attempts %+v, want 3 failures then 200", info.Attempts)
	}
	if n := q.Unauthorized(); n != 0 {
		t.Errorf("%d calls with a wrong key", n)
	}

	// After 6 minutes the large result is gone; after an hour all are.
	if err := q.Advance(ctx, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := qc.Result(ctx, reqs["large, dropped"]); !errors.Is(err, falqueue.ErrResultGone) {
		t.Errorf("large result after 7 minutes: %v, want ErrResultGone", err)
	}
	if _, err := qc.Result(ctx, reqs["dropped"]); err != nil {
		t.Errorf("small result after 7 minutes: %v", err)
	}
	if err := q.Advance(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := qc.Result(ctx, reqs["dropped"]); !errors.Is(err, falqueue.ErrResultGone) {
		t.Errorf("small result after an hour: %v, want ErrResultGone", err)
	}
}

func TestRoundTripWrongKey(t *testing.T) {
	q := faltest.NewQueue(faltest.SignerFromName("k"), faltest.NewClock(start))
	defer q.Close()
	qc := &falqueue.Client{Key: "someone:else's-key", BaseURL: q.URL}
	_, err := qc.Submit(context.Background(), "fal-ai/flux/dev", nil, "")
	if !errors.Is(err, falqueue.ErrUnauthorized) {
		t.Fatalf("submit with a wrong key: %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), "else's-key") {
		t.Errorf("error shows the key: %v", err)
	}
	if q.Unauthorized() != 1 {
		t.Errorf("Unauthorized() = %d", q.Unauthorized())
	}
}

func TestRoundTripCancel(t *testing.T) {
	ctx := context.Background()
	clock := faltest.NewClock(start)
	q := faltest.NewQueue(faltest.SignerFromName("c"), clock)
	defer q.Close()
	q.SetPlanner(func(faltest.QueueRequest) faltest.Plan { return faltest.Plan{InQueue: time.Minute} })
	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, Clock: clock}
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := qc.Cancel(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := qc.Cancel(ctx, req); !errors.Is(err, falqueue.ErrAlreadyCompleted) {
		t.Errorf("second cancel: %v, want ErrAlreadyCompleted", err)
	}
	ev, err := qc.Result(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var re *falwebhook.RequestError
	if !errors.As(ev.Err(), &re) || re.ErrorType != "client_cancelled" {
		t.Errorf("cancelled request's event %+v, want a client_cancelled failure", ev)
	}
}
