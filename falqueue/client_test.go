package falqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"

	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
)

// testKey is an id:secret key like fal's; its secret part alone must never
// show either.
const (
	testKey    = "0b1c2d3e-key-id:5ec7e75ec7e75ec7e7"
	testSecret = "5ec7e75ec7e75ec7e7"
)

// testClock is a Clock whose Sleep records the wait and moves the time.
type testClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newTestClock() *testClock { return &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *testClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// server is a test queue: each call is answered by handle, and counted.
type server struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []*http.Request
	bodies [][]byte
	handle func(w http.ResponseWriter, r *http.Request, n int) // n counts the calls from 0
}

func newServer(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, n int)) *server {
	t.Helper()
	s := &server{handle: handle}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		n := len(s.calls)
		s.calls = append(s.calls, r)
		s.bodies = append(s.bodies, b)
		s.mu.Unlock()
		s.handle(w, r, n)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func (s *server) call(i int) (*http.Request, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[i], s.bodies[i]
}

// client returns a Client for s with a test clock and a fixed jitter of
// r (0.5 is no jitter).
func (s *server) client(r float64) (*Client, *testClock) {
	clk := newTestClock()
	return &Client{Key: testKey, BaseURL: s.URL, Clock: clk, jitter: func() float64 { return r }}, clk
}

// request returns a Request whose URLs are on s, as fal's would be for
// fal-ai/flux/dev.
func (s *server) request(id string) *Request {
	base := s.URL + "/fal-ai/flux/requests/" + id
	return &Request{ID: id, Endpoint: "fal-ai/flux/dev", StatusURL: base + "/status", ResponseURL: base, CancelURL: base + "/cancel"}
}

func writeJSON(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// submitAnswer returns fal's submit answer for id with URLs on base.
func submitAnswerFor(base, id string) string {
	u := base + "/fal-ai/flux/requests/" + id
	return fmt.Sprintf(`{"request_id": %q, "response_url": %q, "status_url": %q, "cancel_url": %q, "queue_position": 0}`, id, u, u+"/status", u+"/cancel")
}

func TestSubmit(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 200, submitAnswerFor(s.URL, "req-1"))
	})
	c, clk := s.client(0.5)
	input := map[string]any{"prompt": "a <dog> & cat", "seed": uint64(18446744073709551615)}
	req, err := c.Submit(context.Background(), "fal-ai/flux/dev", input, "https://example.com/fal/webhook?tenant=a&x=1")
	if err != nil {
		t.Fatal(err)
	}
	r, body := s.call(0)
	if r.Method != http.MethodPost || r.URL.Path != "/fal-ai/flux/dev" {
		t.Errorf("submitted with %s %s, want POST /fal-ai/flux/dev", r.Method, r.URL.Path)
	}
	if got := r.URL.Query()["fal_webhook"]; len(got) != 1 || got[0] != "https://example.com/fal/webhook?tenant=a&x=1" {
		t.Errorf("fal_webhook = %q, want the webhook URL verbatim", got)
	}
	if len(r.URL.Query()) != 1 {
		t.Errorf("query %q has more than fal_webhook", r.URL.RawQuery)
	}
	if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Key "+testKey {
		t.Errorf("Authorization = %q, want one %q", got, "Key "+testKey)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if want := `{"prompt":"a <dog> & cat","seed":18446744073709551615}`; string(body) != want {
		t.Errorf("body = %s, want %s", body, want)
	}
	want := &Request{
		ID:          "req-1",
		Endpoint:    "fal-ai/flux/dev",
		StatusURL:   s.URL + "/fal-ai/flux/requests/req-1/status",
		ResponseURL: s.URL + "/fal-ai/flux/requests/req-1",
		CancelURL:   s.URL + "/fal-ai/flux/requests/req-1/cancel",
		WebhookURL:  "https://example.com/fal/webhook?tenant=a&x=1",
		SubmittedAt: clk.Now(),
	}
	if *req != *want {
		t.Errorf("Request\n got %+v\nwant %+v", req, want)
	}
}

func TestSubmitWithoutWebhookHasNoQuery(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 200, submitAnswerFor(s.URL, "req-1"))
	})
	c, _ := s.client(0.5)
	if _, err := c.Submit(context.Background(), "fal-ai/fast-sdxl", nil, ""); err != nil {
		t.Fatal(err)
	}
	r, body := s.call(0)
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		t.Errorf("submit without a webhook has a query %q", r.URL.RawQuery)
	}
	if string(body) != "{}" {
		t.Errorf("nil input sent %q, want {}", body)
	}
}

func TestSubmitBaseURLPath(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 200, submitAnswerFor(s.URL, "req-1"))
	})
	c, _ := s.client(0.5)
	c.BaseURL = s.URL + "/proxy/fal/"
	if _, err := c.Submit(context.Background(), "fal-ai/flux/dev", json.RawMessage(`{"prompt":"x"}`), ""); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.call(0); r.URL.Path != "/proxy/fal/fal-ai/flux/dev" {
		t.Errorf("path = %q, want /proxy/fal/fal-ai/flux/dev", r.URL.Path)
	}
}

func TestSubmitAnswerValidation(t *testing.T) {
	tests := []struct {
		name    string
		answer  func(base string) string
		wantErr error
	}{
		{"not JSON", func(string) string { return `<html>` }, ErrInvalidResponse},
		{"an array", func(string) string { return `[]` }, ErrInvalidResponse},
		{"empty", func(string) string { return `` }, ErrInvalidResponse},
		{"no request_id", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"request_id": "r"`, `"x": 1`, 1)
		}, ErrInvalidResponse},
		{"empty request_id", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"request_id": "r"`, `"request_id": ""`, 1)
		}, ErrInvalidResponse},
		{"numeric request_id", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"request_id": "r"`, `"request_id": 7`, 1)
		}, ErrInvalidResponse},
		{"request_id with a newline", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"request_id": "r"`, `"request_id": "r\n"`, 1)
		}, ErrInvalidResponse},
		{"no status_url", func(b string) string {
			return fmt.Sprintf(`{"request_id":"r","response_url":"%s/a","cancel_url":"%s/a"}`, b, b)
		}, ErrInvalidResponse},
		{"no response_url", func(b string) string {
			return fmt.Sprintf(`{"request_id":"r","status_url":"%s/a","cancel_url":"%s/a"}`, b, b)
		}, ErrInvalidResponse},
		{"no cancel_url", func(b string) string {
			return fmt.Sprintf(`{"request_id":"r","status_url":"%s/a","response_url":"%s/a"}`, b, b)
		}, ErrInvalidResponse},
		{"null cancel_url", func(b string) string {
			return fmt.Sprintf(`{"request_id":"r","status_url":"%s/a","response_url":"%s/a","cancel_url":null}`, b, b)
		}, ErrInvalidResponse},
		{"status_url on another host", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"status_url": "`+b, `"status_url": "https://127.0.0.2:9`, 1)
		}, ErrUntrustedURL},
		{"response_url on another port", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"response_url": "`+b, `"response_url": "`+b[:strings.LastIndex(b, ":")]+":1", 1)
		}, ErrUntrustedURL},
		{"cancel_url on https", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"cancel_url": "http:`, `"cancel_url": "https:`, 1)
		}, ErrUntrustedURL},
		{"status_url with user info", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"status_url": "http://`, `"status_url": "http://u:p@`, 1)
		}, ErrUntrustedURL},
		{"relative response_url", func(b string) string {
			return strings.Replace(submitAnswerFor(b, "r"), `"response_url": "`+b, `"response_url": "`, 1)
		}, ErrUntrustedURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s *server
			s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, tt.answer(s.URL)) })
			c, _ := s.client(0.5)
			req, err := c.Submit(context.Background(), "fal-ai/flux/dev", nil, "")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Submit error = %v, want %v", err, tt.wantErr)
			}
			if req != nil {
				t.Errorf("Submit returned a Request with the error: %+v", req)
			}
		})
	}
}

func TestSubmitUnknownEndpoint(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 404, `{"detail": "Application not found"}`)
	})
	c, _ := s.client(0.5)
	_, err := c.Submit(context.Background(), "fal-ai/no-such-app", nil, "")
	if !errors.Is(err, ErrRejected) || errors.Is(err, ErrResultGone) {
		t.Errorf("submit to an unknown endpoint: %v, want ErrRejected (nothing was gone)", err)
	}
}

func TestSubmitArgumentsCheckedBeforeSending(t *testing.T) {
	tests := []struct {
		name     string
		endpoint string
		input    any
		webhook  string
	}{
		{"empty endpoint", "", nil, ""},
		{"one segment", "flux", nil, ""},
		{"leading slash", "/fal-ai/flux", nil, ""},
		{"trailing slash", "fal-ai/flux/", nil, ""},
		{"dot dot", "fal-ai/../admin", nil, ""},
		{"dot", "fal-ai/./flux", nil, ""},
		{"query", "fal-ai/flux?x=1", nil, ""},
		{"fragment", "fal-ai/flux#x", nil, ""},
		{"space", "fal-ai/flux dev", nil, ""},
		{"percent", "fal-ai/flux%2Fdev", nil, ""},
		{"input an array", "fal-ai/flux", []int{1}, ""},
		{"input a string", "fal-ai/flux", "prompt", ""},
		{"input raw not an object", "fal-ai/flux", json.RawMessage(`"x"`), ""},
		{"input raw invalid", "fal-ai/flux", json.RawMessage(`{`), ""},
		{"input unmarshalable", "fal-ai/flux", map[string]any{"c": make(chan int)}, ""},
		{"webhook relative", "fal-ai/flux", nil, "/fal/webhook"},
		{"webhook ftp", "fal-ai/flux", nil, "ftp://example.com/x"},
		{"webhook no host", "fal-ai/flux", nil, "https:///x"},
		{"webhook unparsable", "fal-ai/flux", nil, "https://exa mple.com/\x00"},
	}
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 500, `{}`) })
	c, _ := s.client(0.5)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Submit(context.Background(), tt.endpoint, tt.input, tt.webhook)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Submit(%q, %v, %q) error = %v, want ErrInvalidArgument", tt.endpoint, tt.input, tt.webhook, err)
			}
		})
	}
	if n := s.Calls(); n != 0 {
		t.Errorf("invalid arguments sent %d calls to fal", n)
	}
	for _, ep := range []string{"fal-ai/flux", "fal-ai/flux/dev", "fal-ai/flux-pro/v1.1-ultra", "workflows/me/my_flow", "a/b/c/d~e"} {
		if err := checkEndpoint(ep); err != nil {
			t.Errorf("endpoint %q refused: %v", ep, err)
		}
	}
}

// noNetwork is an HTTP client that sends nothing anywhere and counts what
// it was asked to send: a misconfigured Client must not reach it, and a
// mutant that lets one through must not reach the network.
type noNetwork struct{ n atomic.Int32 }

func (nn *noNetwork) RoundTrip(*http.Request) (*http.Response, error) {
	nn.n.Add(1)
	return nil, errors.New("noNetwork: nothing is sent from this test")
}

func TestConfigChecked(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, `{"status":"COMPLETED"}`) })
	nn := &noNetwork{}
	tests := []struct {
		name string
		c    *Client
	}{
		{"nil", nil},
		{"no key", &Client{BaseURL: s.URL}},
		{"key with a newline", &Client{Key: "id:sec\nret", BaseURL: s.URL}},
		{"key with a space", &Client{Key: "id: secret", BaseURL: s.URL}},
		{"key not ASCII", &Client{Key: "id:sécret", BaseURL: s.URL}},
		{"http on a public host", &Client{Key: testKey, BaseURL: "http://queue.fal.run"}},
		{"http on a private address", &Client{Key: testKey, BaseURL: "http://10.0.0.1:8080"}},
		{"ftp", &Client{Key: testKey, BaseURL: "ftp://queue.fal.run"}},
		{"relative", &Client{Key: testKey, BaseURL: "queue.fal.run"}},
		{"user info", &Client{Key: testKey, BaseURL: "https://u:p@queue.fal.run"}},
		{"query", &Client{Key: testKey, BaseURL: "https://queue.fal.run/?x=1"}},
		{"fragment", &Client{Key: testKey, BaseURL: "https://queue.fal.run/#x"}},
		{"unparsable", &Client{Key: testKey, BaseURL: "https://queue.fal.run/%zz"}},
		{"negative MaxResultBytes", &Client{Key: testKey, BaseURL: s.URL, MaxResultBytes: -1}},
	}
	for _, tt := range tests {
		if tt.c != nil {
			tt.c.HTTPClient, tt.c.Clock = &http.Client{Transport: nn}, newTestClock()
		}
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, err1 := tt.c.Submit(ctx, "fal-ai/flux", nil, "")
			_, err2 := tt.c.Status(ctx, s.request("r"))
			_, err3 := tt.c.Result(ctx, s.request("r"))
			err4 := tt.c.Cancel(ctx, s.request("r"))
			for i, err := range []error{err1, err2, err3, err4} {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Errorf("call %d: error = %v, want ErrInvalidConfig", i, err)
				}
			}
		})
	}
	if n := s.Calls() + int(nn.n.Load()); n != 0 {
		t.Errorf("a misconfigured client sent %d calls", n)
	}
	for _, base := range []string{"", "https://queue.fal.run", "http://127.0.0.1:1", "http://localhost:8080", "http://[::1]:9", "https://queue.fal.run/prefix/"} {
		if _, err := (&Client{Key: testKey, BaseURL: base}).config(); err != nil {
			t.Errorf("BaseURL %q refused: %v", base, err)
		}
	}
}

func TestStoredRequestChecked(t *testing.T) {
	other := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, `{"status":"COMPLETED"}`) })
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, `{"status":"COMPLETED"}`) })
	c, _ := s.client(0.5)
	foreign := other.request("r")
	tests := []struct {
		name    string
		req     *Request
		wantErr error
	}{
		{"nil", nil, ErrInvalidArgument},
		{"no id", &Request{StatusURL: s.URL + "/a", ResponseURL: s.URL + "/a", CancelURL: s.URL + "/a"}, ErrInvalidArgument},
		{"no URLs", &Request{ID: "r"}, ErrInvalidArgument},
		{"URLs on another host", foreign, ErrUntrustedURL},
		{"URLs on another scheme", &Request{ID: "r", StatusURL: "https" + strings.TrimPrefix(s.URL, "http"), ResponseURL: "https" + strings.TrimPrefix(s.URL, "http"), CancelURL: "https" + strings.TrimPrefix(s.URL, "http")}, ErrUntrustedURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, err1 := c.Status(ctx, tt.req)
			_, err2 := c.Result(ctx, tt.req)
			err3 := c.Cancel(ctx, tt.req)
			for i, err := range []error{err1, err2, err3} {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("call %d: error = %v, want %v", i, err, tt.wantErr)
				}
			}
		})
	}
	if other.Calls() != 0 || s.Calls() != 0 {
		t.Errorf("a bad stored Request was sent: %d calls to the other host, %d to the queue", other.Calls(), s.Calls())
	}
	// Each operation checks the URL it uses.
	mixed := s.request("r")
	mixed.ResponseURL = foreign.ResponseURL
	if _, err := c.Status(context.Background(), mixed); err != nil {
		t.Errorf("Status with a good status_url: %v", err)
	}
	if _, err := c.Result(context.Background(), mixed); !errors.Is(err, ErrUntrustedURL) {
		t.Errorf("Result with a foreign response_url: %v, want ErrUntrustedURL", err)
	}
	if other.Calls() != 0 {
		t.Errorf("the foreign response_url got %d calls", other.Calls())
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name    string
		code    int
		body    string
		want    Status
		wantErr error
	}{
		{name: "in queue", code: 202, body: `{"status": "IN_QUEUE", "request_id": "r", "queue_position": 3, "response_url": "x"}`, want: Status{State: StateInQueue, RequestID: "r", QueuePosition: 3}},
		{name: "in progress", code: 202, body: `{"status": "IN_PROGRESS", "request_id": "r", "logs": null}`, want: Status{State: StateInProgress, RequestID: "r", QueuePosition: -1}},
		{name: "completed", code: 200, body: `{"status": "COMPLETED", "request_id": "r", "logs": null, "metrics": {"inference_time": 1.52}}`, want: Status{State: StateCompleted, RequestID: "r", QueuePosition: -1, Metrics: json.RawMessage(`{"inference_time": 1.52}`)}},
		{name: "completed with an error", code: 200, body: `{"status": "COMPLETED", "error": "Invalid status code: 422", "error_type": null}`, want: Status{State: StateCompleted, RequestID: "r", QueuePosition: -1, Error: "Invalid status code: 422"}},
		{name: "error type", code: 200, body: `{"status": "COMPLETED", "error": "Request timed out", "error_type": "request_timeout"}`, want: Status{State: StateCompleted, RequestID: "r", QueuePosition: -1, Error: "Request timed out", ErrorType: "request_timeout"}},
		{name: "unknown state kept", code: 202, body: `{"status": "PAUSED"}`, want: Status{State: "PAUSED", RequestID: "r", QueuePosition: -1}},
		{name: "null position", code: 202, body: `{"status": "IN_QUEUE", "queue_position": null}`, want: Status{State: StateInQueue, RequestID: "r", QueuePosition: -1}},
		{name: "no status", code: 200, body: `{"request_id": "r"}`, wantErr: ErrInvalidResponse},
		{name: "empty status", code: 200, body: `{"status": ""}`, wantErr: ErrInvalidResponse},
		{name: "status a number", code: 200, body: `{"status": 200}`, wantErr: ErrInvalidResponse},
		{name: "another request", code: 200, body: `{"status": "COMPLETED", "request_id": "someone-else"}`, wantErr: ErrInvalidResponse},
		{name: "position fractional", code: 202, body: `{"status": "IN_QUEUE", "queue_position": 1.5}`, wantErr: ErrInvalidResponse},
		{name: "position negative", code: 202, body: `{"status": "IN_QUEUE", "queue_position": -1}`, wantErr: ErrInvalidResponse},
		{name: "position a string", code: 202, body: `{"status": "IN_QUEUE", "queue_position": "3"}`, wantErr: ErrInvalidResponse},
		{name: "error an object", code: 200, body: `{"status": "COMPLETED", "error": {}}`, wantErr: ErrInvalidResponse},
		{name: "not JSON", code: 200, body: `OK`, wantErr: ErrInvalidResponse},
		{name: "404", code: 404, body: `{"detail": "Request not found"}`, wantErr: ErrResultGone},
		{name: "410", code: 410, body: ``, wantErr: ErrResultGone},
		{name: "401", code: 401, body: `{"detail": "No key"}`, wantErr: ErrUnauthorized},
		{name: "403", code: 403, body: `{"detail": "Forbidden"}`, wantErr: ErrUnauthorized},
		{name: "400", code: 400, body: `{"detail": "bad"}`, wantErr: ErrRejected},
		{name: "501", code: 501, body: ``, wantErr: ErrServerError},
		{name: "204", code: 204, body: ``, wantErr: ErrUnexpectedStatus},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, tt.code, tt.body) })
			c, _ := s.client(0.5)
			st, err := c.Status(context.Background(), s.request("r"))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Status error = %v, want %v", err, tt.wantErr)
				}
				if s.Calls() != 1 {
					t.Errorf("%d calls, want 1 (not retried)", s.Calls())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r, _ := s.call(0); r.Method != http.MethodGet || r.URL.Path != "/fal-ai/flux/requests/r/status" || r.Header.Get("Authorization") != "Key "+testKey {
				t.Errorf("status asked with %s %s, Authorization %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
			}
			if st.State != tt.want.State || st.RequestID != tt.want.RequestID || st.QueuePosition != tt.want.QueuePosition ||
				st.Error != tt.want.Error || st.ErrorType != tt.want.ErrorType || !bytes.Equal(st.Metrics, tt.want.Metrics) {
				t.Errorf("Status\n got %+v\nwant %+v", st, tt.want)
			}
			if st.Completed() != (tt.want.State == StateCompleted) {
				t.Errorf("Completed() = %v for state %s", st.Completed(), st.State)
			}
		})
	}
}

// realResult is a result with a seed above 2^53 and Python's spacing and a
// trailing newline, which must all survive byte for byte.
const realResult = `{"images": [{"url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024, "height": 1024, "content_type": "image/jpeg"}], "timings": {"inference": 2.107286686077714}, "seed": 17454220438242315174, "has_nsfw_concepts": [false], "prompt": "dog"}` + "\n"

func TestResultOK(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, 200, realResult) })
	c, _ := s.client(0.5)
	ev, err := c.Result(context.Background(), s.request("r"))
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := s.call(0); r.Method != http.MethodGet || r.URL.Path != "/fal-ai/flux/requests/r" {
		t.Errorf("result fetched with %s %s", r.Method, r.URL.Path)
	}
	if ev.RequestID != "r" || ev.Status != falwebhook.StatusOK || ev.Error != "" || ev.PayloadError != "" || ev.ErrorType != "" {
		t.Errorf("event = %+v, want request r, OK", ev)
	}
	if string(ev.Payload) != realResult {
		t.Errorf("payload changed:\n got %q\nwant %q", ev.Payload, realResult)
	}
	if err := ev.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err != nil {
		t.Fatal(err)
	}
	if out.Seed != 17454220438242315174 {
		t.Errorf("seed = %d, want 17454220438242315174", out.Seed)
	}
}

func TestResultOutcomes(t *testing.T) {
	validation := `{"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}`
	type want struct {
		status    falwebhook.Status
		message   string
		errorType string
		payload   string // "-" for nil
		payErr    bool
		errText   string // of ev.Err()
	}
	tests := []struct {
		name    string
		code    int
		header  http.Header
		body    string
		want    want
		wantErr error
		calls   int // 0 means 1
	}{
		{name: "422 validation", code: 422, body: validation, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 422", payload: validation,
			errText: "falwebhook: request r failed: Invalid status code: 422: body.prompt: field required (value_error.missing)",
		}},
		{name: "422 with X-Fal-Error-Type", code: 422, header: http.Header{"X-Fal-Error-Type": {"validation_error"}}, body: validation, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 422", errorType: "validation_error", payload: validation,
			errText: "falwebhook: request r failed: Invalid status code: 422 [validation_error]: body.prompt: field required (value_error.missing)",
		}},
		{name: "504 request timeout is the request's, not retried", code: 504, header: http.Header{"X-Fal-Error-Type": {"request_timeout"}}, body: `{"detail": "Request timed out", "error_type": "request_timeout"}`, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 504", errorType: "request_timeout", payload: `{"detail": "Request timed out", "error_type": "request_timeout"}`,
			errText: "falwebhook: request r failed: Invalid status code: 504 [request_timeout]: Request timed out",
		}},
		{name: "504 user start timeout, not retried", code: 504, header: http.Header{"X-Fal-Request-Timeout-Type": {"user"}}, body: `{"detail": "Request timed out before starting"}`, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 504", payload: `{"detail": "Request timed out before starting"}`,
			errText: "falwebhook: request r failed: Invalid status code: 504: Request timed out before starting",
		}},
		{name: "404 marked as the request's", code: 404, header: http.Header{"X-Fal-Error-Type": {"not_found"}}, body: `{"detail": "model says no"}`, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 404", errorType: "not_found", payload: `{"detail": "model says no"}`,
			errText: "falwebhook: request r failed: Invalid status code: 404 [not_found]: model says no",
		}},
		{name: "400 with a body that is not JSON", code: 400, body: `bad input`, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 400", payload: "null", payErr: true,
		}},
		{name: "400 with an empty body", code: 400, body: ``, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 400", payload: "-",
			errText: "falwebhook: request r failed: Invalid status code: 400",
		}},
		{name: "400 with another request's status is a failure", code: 400, body: `{"status": "IN_PROGRESS", "request_id": "other"}`, want: want{
			status: falwebhook.StatusError, message: "Invalid status code: 400", payload: `{"status": "IN_PROGRESS", "request_id": "other"}`,
		}},
		{name: "200 not JSON", code: 200, body: `PNG...`, want: want{
			status: falwebhook.StatusOK, payload: "null", payErr: true,
		}},
		{name: "202", code: 202, body: `{"status": "IN_QUEUE", "queue_position": 2}`, wantErr: ErrNotReady},
		{name: "202 without a body", code: 202, body: ``, wantErr: ErrNotReady},
		{name: "400 with this request's IN_PROGRESS status", code: 400, body: `{"status": "IN_PROGRESS", "request_id": "r"}`, wantErr: ErrNotReady},
		{name: "200 with this request's IN_QUEUE status", code: 200, body: `{"status": "IN_QUEUE", "request_id": "r", "queue_position": 0}`, wantErr: ErrNotReady},
		{name: "404", code: 404, body: `{"detail": "Request not found"}`, wantErr: ErrResultGone},
		{name: "410", code: 410, body: ``, wantErr: ErrResultGone},
		{name: "401", code: 401, body: `{"detail": "Unauthorized"}`, wantErr: ErrUnauthorized},
		{name: "403", code: 403, body: ``, wantErr: ErrUnauthorized},
		{name: "429 after the retries", code: 429, body: ``, wantErr: ErrRateLimited, calls: 6},
		{name: "503 after the retries", code: 503, body: `{"detail": "Service Unavailable"}`, wantErr: ErrServerError, calls: 6},
		{name: "500 after the retries", code: 500, body: ``, wantErr: ErrServerError, calls: 6},
		{name: "501 unmarked is not the request's failure", code: 501, body: ``, wantErr: ErrServerError},
		{name: "redirect not followed", code: 302, header: http.Header{"Location": {"/steal"}}, body: ``, wantErr: ErrUnexpectedStatus},
		{name: "204", code: 204, body: ``, wantErr: ErrUnexpectedStatus},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
				for k, v := range tt.header {
					w.Header()[k] = v
				}
				writeJSON(w, tt.code, tt.body)
			})
			c, _ := s.client(0.5)
			ev, err := c.Result(context.Background(), s.request("r"))
			calls := max(tt.calls, 1)
			if s.Calls() != calls {
				t.Errorf("%d calls, want %d", s.Calls(), calls)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Result error = %v, want %v", err, tt.wantErr)
				}
				if ev != nil {
					t.Errorf("Result returned an event with its error: %+v", ev)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := tt.want
			if ev.RequestID != "r" || ev.Status != w.status || ev.Error != w.message || ev.ErrorType != w.errorType {
				t.Errorf("event = %+v, want %+v", ev, w)
			}
			if w.payload == "-" && ev.Payload != nil || w.payload != "-" && string(ev.Payload) != w.payload {
				t.Errorf("payload = %q, want %q", ev.Payload, w.payload)
			}
			if (ev.PayloadError != "") != w.payErr {
				t.Errorf("payload_error = %q", ev.PayloadError)
			}
			failure := ev.Err()
			if failure == nil {
				t.Fatalf("Err() = nil for %+v; the request did not succeed", ev)
			}
			if !errors.Is(failure, falwebhook.ErrRequestFailed) {
				t.Errorf("Err() = %v, want ErrRequestFailed", failure)
			}
			if w.errText != "" && failure.Error() != w.errText {
				t.Errorf("Err() text\n got %s\nwant %s", failure, w.errText)
			}
		})
	}
}

func TestResultRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		http.Redirect(w, r, other.URL+"/x", http.StatusTemporaryRedirect)
	})
	for _, hc := range []*http.Client{nil, {}} { // the default client, and one that follows redirects
		c, _ := s.client(0.5)
		c.HTTPClient = hc
		if _, err := c.Result(context.Background(), s.request("r")); !errors.Is(err, ErrUnexpectedStatus) {
			t.Errorf("redirected result: %v, want ErrUnexpectedStatus", err)
		}
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect was followed %d times", n)
	}
}

func TestResultTooLarge(t *testing.T) {
	big := `{"x":"` + strings.Repeat("a", 1000) + `"}`
	for _, chunked := range []bool{false, true} {
		s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
			if chunked {
				w.WriteHeader(200)
				io.WriteString(w, big[:500])
				w.(http.Flusher).Flush()
				io.WriteString(w, big[500:])
				return
			}
			writeJSON(w, 200, big)
		})
		c, _ := s.client(0.5)
		c.MaxResultBytes = int64(len(big)) - 1
		if _, err := c.Result(context.Background(), s.request("r")); !errors.Is(err, ErrResponseTooLarge) {
			t.Errorf("chunked %v: result over the limit: %v, want ErrResponseTooLarge", chunked, err)
		}
		if s.Calls() != 1 {
			t.Errorf("chunked %v: a too large answer was retried: %d calls", chunked, s.Calls())
		}
		c.MaxResultBytes = int64(len(big))
		if ev, err := c.Result(context.Background(), s.request("r")); err != nil || string(ev.Payload) != big {
			t.Errorf("chunked %v: result at the limit: %v", chunked, err)
		}
	}
	// Status answers are bounded too.
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 202, `{"status":"IN_QUEUE","logs":"`+strings.Repeat("x", maxAnswerBytes)+`"}`)
	})
	c, _ := s.client(0.5)
	if _, err := c.Status(context.Background(), s.request("r")); !errors.Is(err, ErrResponseTooLarge) {
		t.Errorf("status answer over 1 MiB: %v, want ErrResponseTooLarge", err)
	}
}

func TestCancel(t *testing.T) {
	tests := []struct {
		name    string
		code    int
		body    string
		wantErr error
	}{
		{"accepted", 202, `{"status": "CANCELLATION_REQUESTED"}`, nil},
		{"ok", 200, ``, nil},
		{"already completed", 400, `{"status": "ALREADY_COMPLETED"}`, ErrAlreadyCompleted},
		{"other 400", 400, `{"detail": "nope"}`, ErrRejected},
		{"gone", 404, ``, ErrResultGone},
		{"unauthorized", 401, ``, ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { writeJSON(w, tt.code, tt.body) })
			c, _ := s.client(0.5)
			err := c.Cancel(context.Background(), s.request("r"))
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Cancel error = %v, want %v", err, tt.wantErr)
			}
			if r, _ := s.call(0); r.Method != http.MethodPut || r.URL.Path != "/fal-ai/flux/requests/r/cancel" {
				t.Errorf("cancelled with %s %s, want PUT …/cancel", r.Method, r.URL.Path)
			}
			var ae *APIError
			if err != nil && (!errors.As(err, &ae) || ae.StatusCode != tt.code || ae.Op != OpCancel || ae.RequestID != "r") {
				t.Errorf("error %v is not an *APIError for status %d", err, tt.code)
			}
		})
	}
}

func TestAPIErrorText(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Retry-After", "120")
		writeJSON(w, 429, `{"detail": "rate limit\nexceeded"}`)
	})
	c, _ := s.client(0.5)
	_, err := c.Status(context.Background(), s.request("1234"))
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an *APIError", err)
	}
	want := "falqueue: status of request 1234 (fal-ai/flux/dev): 429 Too Many Requests: rate limit exceeded (retry after 2m0s)"
	if err.Error() != want {
		t.Errorf("error text\n got %s\nwant %s", err, want)
	}
	if ae.RetryAfter != 2*time.Minute || ae.Attempts != 1 || ae.Detail != "rate limit exceeded" || ae.Endpoint != "fal-ai/flux/dev" {
		t.Errorf("APIError fields: %+v", ae)
	}
}

func TestAPIErrorDetail(t *testing.T) {
	tests := []struct{ body, want string }{
		{`{"detail": "Request not found"}`, "Request not found"},
		{`{"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}`, "body.prompt: field required (value_error.missing)"},
		{`{"detail": {"odd": true}}`, `{"odd": true}`},
		{`{"message": "Internal error"}`, "Internal error"},
		{`{"status": "ALREADY_COMPLETED"}`, "ALREADY_COMPLETED"},
		{`<html><body>502 Bad Gateway</body></html>`, "<html><body>502 Bad Gateway</body></html>"},
		{``, ""},
		{strings.Repeat("x", 5000), strings.Repeat("x", 197) + "..."},
	}
	for _, tt := range tests {
		if got := detail([]byte(tt.body)); got != tt.want {
			t.Errorf("detail(%.40q) = %q, want %q", tt.body, got, tt.want)
		}
	}
}

func newTLSServer(t *testing.T) *httptest.Server {
	s := httptest.NewUnstartedServer(http.HandlerFunc(completed))
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is the point
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}
