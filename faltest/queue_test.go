package faltest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// hook is a webhook receiver that records deliveries and answers with
// answer(n) for the nth (from 0).
type hook struct {
	*httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(n int) int
}

type received struct {
	header http.Header
	body   []byte
}

func newHook(t *testing.T, answer func(n int) int) *hook {
	h := &hook{answer: answer}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		n := len(h.got)
		h.got = append(h.got, received{r.Header.Clone(), b})
		h.mu.Unlock()
		code := 200
		if h.answer != nil {
			code = h.answer(n)
		}
		if code >= 300 && code < 400 {
			w.Header().Set("Location", "/moved") // on loopback: a mutant that follows redirects stays here
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hook) deliveries() []received {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]received(nil), h.got...)
}

// qcall makes a call to the queue with its key.
func qcall(t *testing.T, q *Queue, method, url string, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Key "+q.Key())
	resp, err := q.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

type submitted struct {
	RequestID   string `json:"request_id"`
	StatusURL   string `json:"status_url"`
	ResponseURL string `json:"response_url"`
	CancelURL   string `json:"cancel_url"`
}

func submit(t *testing.T, q *Queue, endpoint, input, webhook string) submitted {
	t.Helper()
	url := q.URL + "/" + endpoint
	if webhook != "" {
		url += "?fal_webhook=" + webhook
	}
	code, _, b := qcall(t, q, http.MethodPost, url, input)
	if code != 200 {
		t.Fatalf("submit answered %d: %s", code, b)
	}
	var s submitted
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func newTestQueue(t *testing.T) (*Queue, *Signer) {
	signer := SignerFromName("queue")
	q := NewQueue(signer, NewClock(t0))
	t.Cleanup(q.Close)
	return q, signer
}

func TestQueueAuthorization(t *testing.T) {
	q, _ := newTestQueue(t)
	for _, auth := range []string{"", "Key wrong", "Bearer " + DefaultQueueKey, "key " + DefaultQueueKey, DefaultQueueKey} {
		req, _ := http.NewRequest(http.MethodPost, q.URL+"/fal-ai/flux/dev", strings.NewReader(`{}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q answered %d, want 401", auth, resp.StatusCode)
		}
	}
	if n := q.Unauthorized(); n != 5 {
		t.Errorf("Unauthorized() = %d, want 5", n)
	}
	if len(q.Requests()) != 0 {
		t.Error("an unauthorized submit created a request")
	}
	q.SetKey("other:key")
	if s := submit(t, q, "fal-ai/flux/dev", `{}`, ""); s.RequestID == "" {
		t.Error("the new key was refused")
	}
}

func TestQueueURLsDropTheSubPath(t *testing.T) {
	q, _ := newTestQueue(t)
	s := submit(t, q, "fal-ai/flux/dev", `{"prompt":"dog"}`, "")
	base := q.URL + "/fal-ai/flux/requests/" + s.RequestID
	if s.RequestID != "00000000-0000-4000-8000-000000000001" || s.ResponseURL != base || s.StatusURL != base+"/status" || s.CancelURL != base+"/cancel" {
		t.Fatalf("submit answer %+v, want URLs under %s", s, base)
	}
	wf := submit(t, q, "workflows/me/flow/run", `{}`, "")
	if !strings.HasPrefix(wf.StatusURL, q.URL+"/workflows/me/flow/requests/") {
		t.Errorf("workflow status URL %s keeps more than namespace/owner/app", wf.StatusURL)
	}
	// A client that rebuilds the URL with the sub-path finds nothing.
	if code, _, _ := qcall(t, q, http.MethodGet, q.URL+"/fal-ai/flux/dev/requests/"+s.RequestID+"/status", ""); code != 404 {
		t.Errorf("status at the rebuilt URL answered %d, want 404", code)
	}
	if code, _, _ := qcall(t, q, http.MethodGet, q.URL+"/fal-ai/flux/requests/nope/status", ""); code != 404 {
		t.Errorf("status of an unknown request answered %d, want 404", code)
	}
	if code, _, _ := qcall(t, q, http.MethodPost, s.StatusURL, ""); code != 405 {
		t.Errorf("POST to the status URL answered %d, want 405", code)
	}
	if code, _, _ := qcall(t, q, http.MethodGet, s.CancelURL, ""); code != 405 {
		t.Errorf("GET of the cancel URL answered %d, want 405", code)
	}
	if code, _, _ := qcall(t, q, http.MethodPost, q.URL+"/flux", `{}`); code != 404 {
		t.Errorf("submit to an endpoint without an owner answered %d, want 404", code)
	}
}

func TestQueueLifecycle(t *testing.T) {
	q, _ := newTestQueue(t)
	q.SetPlanner(func(r QueueRequest) Plan { return Plan{InQueue: 10 * time.Second, InProgress: 20 * time.Second} })
	a := submit(t, q, "fal-ai/flux/dev", `{"n": 1}`, "")
	b := submit(t, q, "fal-ai/flux/dev", `{"n": 2}`, "")
	status := func(s submitted) (int, map[string]any) {
		code, _, body := qcall(t, q, http.MethodGet, s.StatusURL, "")
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("status body %s: %v", body, err)
		}
		return code, m
	}
	if code, m := status(a); code != 202 || m["status"] != "IN_QUEUE" || m["queue_position"] != 0.0 || m["request_id"] != a.RequestID {
		t.Errorf("first request: %d %v, want 202 IN_QUEUE at 0", code, m)
	}
	if code, m := status(b); code != 202 || m["queue_position"] != 1.0 {
		t.Errorf("second request: %d %v, want position 1", code, m)
	}
	if code, _, body := qcall(t, q, http.MethodGet, a.ResponseURL, ""); code != 202 || !bytes.Contains(body, []byte(`"IN_QUEUE"`)) {
		t.Errorf("result while queued: %d %s, want 202 with the status", code, body)
	}
	q.Clock().Advance(10 * time.Second)
	if code, m := status(a); code != 202 || m["status"] != "IN_PROGRESS" {
		t.Errorf("after 10 s: %d %v, want IN_PROGRESS", code, m)
	}
	q.Clock().Advance(20*time.Second - time.Nanosecond)
	if _, m := status(a); m["status"] != "IN_PROGRESS" {
		t.Errorf("just before 30 s: %v, want IN_PROGRESS", m)
	}
	q.Clock().Advance(time.Nanosecond)
	code, m := status(a)
	if code != 200 || m["status"] != "COMPLETED" || m["metrics"].(map[string]any)["inference_time"] != 20.0 {
		t.Errorf("at 30 s: %d %v, want 200 COMPLETED with 20 s of inference", code, m)
	}
	code, h, body := qcall(t, q, http.MethodGet, a.ResponseURL, "")
	if code != 200 || string(body) != `{"n": 1}` || h.Get("X-Fal-Request-Id") != a.RequestID {
		t.Errorf("result: %d %s, want 200 with the input echoed", code, body)
	}
	info, _ := q.Request(a.RequestID)
	if info.StatusCalls != 4 || info.ResultCalls != 2 || info.ResultsServed != 1 || info.State != "COMPLETED" ||
		!info.CompletedAt.Equal(t0.Add(30*time.Second)) || !info.ExpiresAt.Equal(t0.Add(30*time.Second+time.Hour)) || info.Webhook != WebhookNone {
		t.Errorf("request info %+v", info)
	}
}

func TestQueueResultExpires(t *testing.T) {
	for _, tt := range []struct {
		name string
		size int
		keep time.Duration
	}{
		{"small", LargeResultBytes - 100, time.Hour},
		{"10 KB", LargeResultBytes, 6 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := newTestQueue(t)
			input := `{"x":"` + strings.Repeat("a", tt.size-8) + `"}`
			s := submit(t, q, "fal-ai/flux/dev", input, "")
			q.Clock().Advance(tt.keep - time.Second)
			if code, _, _ := qcall(t, q, http.MethodGet, s.ResponseURL, ""); code != 200 {
				t.Errorf("result a second before expiry answered %d", code)
			}
			q.Clock().Advance(time.Second)
			if code, _, _ := qcall(t, q, http.MethodGet, s.ResponseURL, ""); code != 404 {
				t.Errorf("result at expiry answered %d, want 404", code)
			}
			if code, _, _ := qcall(t, q, http.MethodGet, s.StatusURL, ""); code != 200 {
				t.Errorf("status after expiry answered %d, want 200 (the request is still known)", code)
			}
			if info, _ := q.Request(s.RequestID); !info.Expired || info.ResultsServed != 1 {
				t.Errorf("info %+v, want expired after one served result", info)
			}
		})
	}
	q, _ := newTestQueue(t)
	s := submit(t, q, "fal-ai/flux/dev", `{}`, "")
	if err := q.Expire(s.RequestID); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := qcall(t, q, http.MethodGet, s.ResponseURL, ""); code != 404 {
		t.Errorf("result after Expire answered %d, want 404", code)
	}
	if q.Expire("nope") == nil {
		t.Error("Expire of an unknown request succeeded")
	}
}

func TestQueueFailure(t *testing.T) {
	q, signer := newTestQueue(t)
	h := newHook(t, nil)
	q.SetPlanner(func(r QueueRequest) Plan {
		if strings.Contains(string(r.Input), "timeout") {
			return Plan{Output: ErrorOutput(504, "Request timed out", "request_timeout")}
		}
		return Plan{Output: ValidationErrorOutput()}
	})
	s := submit(t, q, "fal-ai/flux/dev", `{}`, h.URL)
	code, hd, body := qcall(t, q, http.MethodGet, s.ResponseURL, "")
	if code != 422 || string(body) != `{"detail": `+validationDetail+`}` || hd.Get("X-Fal-Error-Type") != "" {
		t.Errorf("failed result: %d %s", code, body)
	}
	_, _, st := qcall(t, q, http.MethodGet, s.StatusURL, "")
	if !bytes.Contains(st, []byte(`"error": "Invalid status code: 422"`)) || bytes.Contains(st, []byte("error_type")) {
		t.Errorf("status of a failed request: %s", st)
	}
	if err := q.Deliver(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := h.deliveries(); len(got) != 1 || !bytes.Equal(got[0].body, ValidationErrorBody(s.RequestID)) {
		t.Fatalf("webhook bodies %q, want ValidationErrorBody", got)
	}
	checkSigned(t, signer, h.deliveries()[0], s.RequestID, t0)

	s2 := submit(t, q, "fal-ai/flux/dev", `{"timeout": true}`, "")
	code, hd, body = qcall(t, q, http.MethodGet, s2.ResponseURL, "")
	if code != 504 || hd.Get("X-Fal-Error-Type") != "request_timeout" || string(body) != `{"detail": "Request timed out"}` {
		t.Errorf("infrastructure failure: %d %v %s", code, hd, body)
	}
	_, _, st = qcall(t, q, http.MethodGet, s2.StatusURL, "")
	if !bytes.Contains(st, []byte(`"error_type": "request_timeout"`)) {
		t.Errorf("status lacks the error type: %s", st)
	}
}

// checkSigned checks a delivery's headers and signature with crypto/ed25519.
func checkSigned(t *testing.T, s *Signer, d received, id string, at time.Time) {
	t.Helper()
	ts := strconv.FormatInt(at.Unix(), 10)
	if d.header.Get(HeaderRequestID) != id || d.header.Get(HeaderUserID) != DefaultUserID || d.header.Get(HeaderTimestamp) != ts {
		t.Errorf("delivery headers %v, want request %s at %s", d.header, id, ts)
	}
	sig, err := hex.DecodeString(d.header.Get(HeaderSignature))
	if err != nil || !ed25519.Verify(s.PublicKey(), Message(id, DefaultUserID, ts, d.body), sig) {
		t.Errorf("delivery of %s does not verify", id)
	}
}

func TestQueueWebhookDelivered(t *testing.T) {
	q, signer := newTestQueue(t)
	h := newHook(t, nil)
	s := submit(t, q, "fal-ai/flux/dev", `{"prompt": "dog", "seed": 18446744073709551615}`, h.URL+"/fal/webhook?x=1")
	if got := h.deliveries(); len(got) != 0 {
		t.Fatal("a webhook went out before Deliver")
	}
	if err := q.Deliver(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := h.deliveries()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	if want := OKBody(s.RequestID, json.RawMessage(`{"prompt": "dog", "seed": 18446744073709551615}`)); !bytes.Equal(got[0].body, want) {
		t.Errorf("body\n got %s\nwant %s", got[0].body, want)
	}
	checkSigned(t, signer, got[0], s.RequestID, t0)
	if info, _ := q.Request(s.RequestID); info.Webhook != WebhookDelivered || info.Deliveries != 1 || len(info.Attempts) != 1 || info.Attempts[0].StatusCode != 200 {
		t.Errorf("info %+v", info)
	}
	if err := q.Advance(context.Background(), 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if len(h.deliveries()) != 1 {
		t.Error("a delivered webhook was sent again")
	}
}

func TestQueueWebhookRetrySchedule(t *testing.T) {
	q, signer := newTestQueue(t)
	h := newHook(t, func(n int) int {
		if n < 4 {
			return 503
		}
		return 204
	})
	s := submit(t, q, "fal-ai/flux/dev", `{}`, h.URL)
	if err := q.Advance(context.Background(), time.Hour); err != nil {
		t.Fatal(err)
	}
	info, _ := q.Request(s.RequestID)
	wantAt := []time.Duration{0, 15 * time.Second, 45 * time.Second, 105 * time.Second, 225 * time.Second}
	if len(info.Attempts) != len(wantAt) || info.Webhook != WebhookDelivered {
		t.Fatalf("attempts %+v (%s), want %d ending delivered", info.Attempts, info.Webhook, len(wantAt))
	}
	for i, a := range info.Attempts {
		if !a.Time.Equal(t0.Add(wantAt[i])) {
			t.Errorf("attempt %d at %v, want %v", i, a.Time.Sub(t0), wantAt[i])
		}
		checkSigned(t, signer, h.deliveries()[i], s.RequestID, t0.Add(wantAt[i]))
	}
	if !q.Clock().Now().Equal(t0.Add(time.Hour)) {
		t.Errorf("clock after Advance(1h) = %v", q.Clock().Now().Sub(t0))
	}
}

func TestQueueWebhookGivesUp(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		answer   int
		attempts int
		state    WebhookState
	}{
		{"small result: all 31 retries", 10, 500, WebhookMaxRetries + 1, WebhookExhausted},
		{"large result: until it expires at 6 min", LargeResultBytes, 500, 6, WebhookExpired},
		{"3xx is permanent", 10, 308, 1, WebhookRedirected},
		{"4xx is retried", LargeResultBytes, 401, 6, WebhookExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := newTestQueue(t)
			h := newHook(t, func(int) int { return tt.answer })
			s := submit(t, q, "fal-ai/flux/dev", `{"x":"`+strings.Repeat("a", tt.size)+`"}`, h.URL)
			if tt.state == WebhookExpired {
				// The attempt at 345 s fails and the next would come at
				// 465 s, after the result expires at 6 minutes: fal stops
				// then, not at 465 s.
				if err := q.Advance(context.Background(), 350*time.Second); err != nil {
					t.Fatal(err)
				}
				if info, _ := q.Request(s.RequestID); info.Webhook != WebhookExpired || !info.NextAttempt.IsZero() {
					t.Errorf("at 350 s: webhook %s, next attempt %v; want expired, none", info.Webhook, info.NextAttempt)
				}
			}
			if err := q.Advance(context.Background(), 3*time.Hour); err != nil {
				t.Fatal(err)
			}
			info, _ := q.Request(s.RequestID)
			if len(info.Attempts) != tt.attempts || info.Webhook != tt.state || !info.NextAttempt.IsZero() {
				t.Errorf("%d attempts, state %s; want %d, %s", len(info.Attempts), info.Webhook, tt.attempts, tt.state)
			}
			if n := len(h.deliveries()); n != tt.attempts {
				t.Errorf("the receiver got %d requests, want %d (redirects are not followed)", n, tt.attempts)
			}
			if last := info.Attempts[len(info.Attempts)-1].Time; !last.Before(info.ExpiresAt) {
				t.Errorf("an attempt at %v came after the result expired at %v", last.Sub(t0), info.ExpiresAt.Sub(t0))
			}
		})
	}
}

func TestQueueWebhookNetworkError(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, nil)
	url := h.URL
	h.Close() // nothing listens
	s := submit(t, q, "fal-ai/flux/dev", `{"x":"`+strings.Repeat("a", LargeResultBytes)+`"}`, url)
	if err := q.Advance(context.Background(), time.Hour); err != nil {
		t.Fatal(err)
	}
	info, _ := q.Request(s.RequestID)
	if len(info.Attempts) != 6 || info.Attempts[0].Err == "" || info.Attempts[0].StatusCode != 0 || info.Webhook != WebhookExpired {
		t.Errorf("attempts %+v, state %s", info.Attempts, info.Webhook)
	}
}

func TestQueueWebhookFaults(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, nil)
	q.SetPlanner(func(r QueueRequest) Plan {
		switch string(r.Input) {
		case `"drop"`:
			return Plan{Webhook: WebhookPlan{Drop: true}}
		case `"late"`:
			return Plan{InProgress: 5 * time.Second, Webhook: WebhookPlan{Delay: 10 * time.Minute}}
		case `"twice"`:
			return Plan{Webhook: WebhookPlan{Duplicates: 2}}
		case `"never"`:
			return Plan{Webhook: WebhookPlan{Delay: 2 * time.Hour}}
		}
		return Plan{}
	})
	drop := submit(t, q, "a/b", `"drop"`, h.URL)
	late := submit(t, q, "a/b", `"late"`, h.URL)
	twice := submit(t, q, "a/b", `"twice"`, h.URL)
	never := submit(t, q, "a/b", `"never"`, h.URL)
	if err := q.Advance(context.Background(), 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if info, _ := q.Request(late.RequestID); len(info.Attempts) != 0 || info.Webhook != WebhookPending || !info.NextAttempt.Equal(t0.Add(10*time.Minute+5*time.Second)) {
		t.Errorf("late webhook early: %+v", info)
	}
	if err := q.Advance(context.Background(), 3*time.Hour); err != nil {
		t.Fatal(err)
	}
	if info, _ := q.Request(drop.RequestID); len(info.Attempts) != 0 || info.Webhook != WebhookDropped {
		t.Errorf("dropped webhook: %+v", info)
	}
	if info, _ := q.Request(late.RequestID); len(info.Attempts) != 1 || !info.Attempts[0].Time.Equal(t0.Add(10*time.Minute+5*time.Second)) {
		t.Errorf("late webhook: %+v", info.Attempts)
	}
	info, _ := q.Request(twice.RequestID)
	if info.Deliveries != 3 || len(info.Attempts) != 3 || info.Attempts[0].Duplicate || !info.Attempts[1].Duplicate || !info.Attempts[2].Duplicate {
		t.Errorf("duplicated webhook: %+v", info.Attempts)
	}
	if info, _ := q.Request(never.RequestID); len(info.Attempts) != 0 || info.Webhook != WebhookExpired {
		t.Errorf("a webhook due after expiry: %+v, %s", info.Attempts, info.Webhook)
	}
	var bodies int
	for _, d := range h.deliveries() {
		if d.header.Get(HeaderRequestID) == twice.RequestID {
			bodies++
		}
	}
	if bodies != 3 {
		t.Errorf("receiver got %d deliveries of the duplicated request, want 3", bodies)
	}
}

func TestQueueWebhookNotJSON(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, nil)
	q.SetPlanner(func(QueueRequest) Plan { return Plan{Output: Output{Payload: json.RawMessage("PNG\x00")}} })
	s := submit(t, q, "a/b", `{}`, h.URL)
	if err := q.Deliver(context.Background()); err != nil {
		t.Fatal(err)
	}
	d := h.deliveries()[0]
	var ev map[string]any
	if err := json.Unmarshal(d.body, &ev); err != nil {
		t.Fatalf("body %q: %v", d.body, err)
	}
	if ev["payload"] != nil || ev["payload_error"] == nil || ev["status"] != "OK" || ev["request_id"] != s.RequestID {
		t.Errorf("body %s, want a null payload with a payload_error", d.body)
	}
}

func TestQueueFailedDuplicateNotRetried(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, func(n int) int {
		if n == 0 {
			return 200
		}
		return 500
	})
	q.SetPlanner(func(QueueRequest) Plan { return Plan{Webhook: WebhookPlan{Duplicates: 2}} })
	s := submit(t, q, "a/b", `{}`, h.URL)
	if err := q.Advance(context.Background(), time.Hour); err != nil {
		t.Fatal(err)
	}
	info, _ := q.Request(s.RequestID)
	if len(info.Attempts) != 3 || info.Deliveries != 1 || info.Webhook != WebhookDelivered {
		t.Errorf("%d attempts, %d delivered, %s; want 3 attempts (the duplicates fail, unretried), 1 delivered", len(info.Attempts), info.Deliveries, info.Webhook)
	}
}

func TestQueueIDsUniqueWhilePlanning(t *testing.T) {
	q, _ := newTestQueue(t)
	second := make(chan struct{})
	var calls sync.Mutex
	n := 0
	q.SetPlanner(func(QueueRequest) Plan {
		calls.Lock()
		n++
		first := n == 1
		calls.Unlock()
		if first {
			select { // the first submit is still planning when the second gets its id
			case <-second:
			case <-time.After(10 * time.Second):
				t.Error("the second submit never reached its planner")
			}
		} else {
			close(second)
		}
		return Plan{}
	})
	ids := make(chan string, 2)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids <- submit(t, q, "a/b", `{}`, "").RequestID
		}()
	}
	wg.Wait()
	close(ids)
	if a, b := <-ids, <-ids; a == b {
		t.Errorf("two requests got the id %s", a)
	}
}

func TestQueueHoldAndComplete(t *testing.T) {
	q, _ := newTestQueue(t)
	q.SetPlanner(func(QueueRequest) Plan { return Plan{InQueue: time.Second, Hold: true} })
	s := submit(t, q, "a/b", `{}`, "")
	q.Clock().Advance(time.Hour)
	if info, _ := q.Request(s.RequestID); info.State != "IN_PROGRESS" {
		t.Errorf("held request is %s", info.State)
	}
	if err := q.Complete(s.RequestID, OKOutput(map[string]int{"seed": 7})); err != nil {
		t.Fatal(err)
	}
	if code, _, b := qcall(t, q, http.MethodGet, s.ResponseURL, ""); code != 200 || string(b) != `{"seed": 7}` {
		t.Errorf("completed result: %d %s", code, b)
	}
	if q.Complete(s.RequestID, Output{}) == nil || q.Complete("nope", Output{}) == nil {
		t.Error("Complete of a completed or unknown request succeeded")
	}
}

func TestQueueCancel(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, nil)
	q.SetPlanner(func(QueueRequest) Plan { return Plan{InQueue: time.Minute} })
	s := submit(t, q, "a/b", `{}`, h.URL)
	code, _, b := qcall(t, q, http.MethodPut, s.CancelURL, "")
	if code != 202 || !bytes.Contains(b, []byte("CANCELLATION_REQUESTED")) {
		t.Errorf("cancel: %d %s", code, b)
	}
	code, hd, b := qcall(t, q, http.MethodGet, s.ResponseURL, "")
	if code != 499 || hd.Get("X-Fal-Error-Type") != "client_cancelled" {
		t.Errorf("result of a cancelled request: %d %s", code, b)
	}
	if code, _, b := qcall(t, q, http.MethodPut, s.CancelURL, ""); code != 400 || !bytes.Contains(b, []byte("ALREADY_COMPLETED")) {
		t.Errorf("second cancel: %d %s", code, b)
	}
	if err := q.Advance(context.Background(), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	info, _ := q.Request(s.RequestID)
	if !info.Cancelled || info.CancelCalls != 2 || info.Deliveries != 1 || !bytes.Contains(h.deliveries()[0].body, []byte(`"status": "ERROR"`)) {
		t.Errorf("cancelled request %+v", info)
	}
}

func TestQueueFailNext(t *testing.T) {
	q, _ := newTestQueue(t)
	s := submit(t, q, "a/b", `{}`, "")
	q.FailNext(OpStatus, 2, 429, "3")
	for i := 0; i < 2; i++ {
		if code, h, _ := qcall(t, q, http.MethodGet, s.StatusURL, ""); code != 429 || h.Get("Retry-After") != "3" {
			t.Errorf("call %d: %d, Retry-After %q", i, code, h.Get("Retry-After"))
		}
	}
	if code, _, _ := qcall(t, q, http.MethodGet, s.StatusURL, ""); code != 200 {
		t.Errorf("third status: %d", code)
	}
	q.FailNext(OpResult, 1, 503, "")
	if code, h, _ := qcall(t, q, http.MethodGet, s.ResponseURL, ""); code != 503 || h.Get("Retry-After") != "" {
		t.Errorf("result: %d", code)
	}
	q.FailNext(OpSubmit, 1, 502, "")
	if code, _, _ := qcall(t, q, http.MethodPost, q.URL+"/a/b", `{}`); code != 502 {
		t.Errorf("submit: %d", code)
	}
	if n := len(q.Requests()); n != 1 {
		t.Errorf("a failed submit created a request: %d requests", n)
	}
	info, _ := q.Request(s.RequestID)
	if info.StatusCalls != 3 || info.ResultCalls != 1 || info.ResultsServed != 0 {
		t.Errorf("counts %+v", info)
	}
	defer func() {
		if recover() == nil {
			t.Error("FailNext with status 200 did not panic")
		}
	}()
	q.FailNext(OpStatus, 1, 200, "")
}

func TestClock(t *testing.T) {
	c := NewClock(t0)
	if !c.Now().Equal(t0) {
		t.Fatal(c.Now())
	}
	c.Advance(-time.Hour)
	if !c.Now().Equal(t0) {
		t.Error("Advance went back in time")
	}
	if err := c.Sleep(context.Background(), 3*time.Second); err != nil || !c.Now().Equal(t0.Add(3*time.Second)) {
		t.Errorf("Sleep: %v, now %v", err, c.Now())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Sleep(ctx, time.Hour); err == nil || !c.Now().Equal(t0.Add(3*time.Second)) {
		t.Errorf("Sleep with a done context: %v, now %v", err, c.Now())
	}
	if got := c.Sleeps(); len(got) != 1 || got[0] != 3*time.Second {
		t.Errorf("Sleeps() = %v", got)
	}
	if now := NewClock(time.Time{}).Now(); time.Since(now) > time.Minute || now.Nanosecond() != 0 {
		t.Errorf("NewClock(zero) = %v, want now to the second", now)
	}
}

func TestWebhookRetryDelay(t *testing.T) {
	var total time.Duration
	for n := 1; n <= WebhookMaxRetries; n++ {
		total += WebhookRetryDelay(n)
	}
	if total >= ResultRetention || total < 55*time.Minute {
		t.Errorf("31 retries span %v, want just under an hour", total)
	}
	for n, want := range map[int]time.Duration{0: 15 * time.Second, 1: 15 * time.Second, 2: 30 * time.Second, 4: 2 * time.Minute, 40: 2 * time.Minute} {
		if got := WebhookRetryDelay(n); got != want {
			t.Errorf("WebhookRetryDelay(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestQueueConcurrent(t *testing.T) {
	q, _ := newTestQueue(t)
	h := newHook(t, nil)
	q.SetPlanner(func(QueueRequest) Plan { return Plan{InProgress: time.Second} })
	var wg sync.WaitGroup
	ids := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := submit(t, q, "a/b", `{}`, h.URL)
			qcall(t, q, http.MethodGet, s.StatusURL, "")
			ids <- s.RequestID
		}()
	}
	go q.Advance(context.Background(), time.Second)
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("id %s given twice", id)
		}
		seen[id] = true
	}
	if err := q.Advance(context.Background(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := len(h.deliveries()); n != 20 {
		t.Errorf("%d deliveries, want 20", n)
	}
}
