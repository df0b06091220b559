package falqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// leaks reports whether s shows the key or its secret part.
func leaks(s string) bool { return strings.Contains(s, testKey) || strings.Contains(s, testSecret) }

// formsOf returns err as every verb a log line might use.
func formsOf(err error) []string {
	return []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), fmt.Sprintf("%s", err), fmt.Sprintf("%q", err)}
}

// TestKeyNeverInErrors answers every operation, in every way that fails, with
// an echo of the Authorization header (a hostile or misconfigured server,
// or a proxy that reflects requests), and checks that no error, no event
// and no formatting of them shows the key.
func TestKeyNeverInErrors(t *testing.T) {
	type answer struct {
		code   int
		header func(auth string) http.Header
		body   func(base, auth string) string
	}
	plain := func(code int, body string) answer {
		return answer{code: code, body: func(_, auth string) string { return strings.ReplaceAll(body, "AUTH", auth) }}
	}
	answers := []answer{
		plain(200, `not json AUTH`),
		plain(200, `{"status": 7, "request_id": "AUTH"}`),
		plain(200, `{"status": "COMPLETED", "request_id": "AUTH"}`),
		plain(200, `{"status": "IN_QUEUE", "queue_position": "AUTH"}`),
		plain(200, `{"request_id": "AUTH"}`),
		plain(200, `{"request_id": "AUTH", "status_url": "https://127.0.0.2:9/AUTH", "response_url": "https://127.0.0.2:9/AUTH", "cancel_url": "https://127.0.0.2:9/AUTH"}`),
		plain(202, `{"status": "AUTH"}`),
		plain(400, `{"detail": "AUTH"}`),
		plain(400, `{"status": "IN_PROGRESS", "request_id": "r", "x": "AUTH"}`),
		plain(401, `{"detail": "bad key AUTH"}`),
		plain(403, `AUTH`),
		plain(404, `{"detail": [{"loc": ["AUTH"], "msg": "AUTH", "type": "AUTH"}]}`),
		plain(410, `{"message": "AUTH"}`),
		plain(422, `{"detail": "AUTH"}`),
		plain(422, `AUTH not json`),
		plain(500, `<html>AUTH</html>`),
		plain(502, `{"status": "AUTH"}`),
		{code: 503, header: func(auth string) http.Header { return http.Header{"X-Fal-Error-Type": {auth}} }, body: func(_, auth string) string { return `{"detail":"` + auth + `"}` }},
		{code: 429, header: func(string) http.Header { return http.Header{"Retry-After": {"9999"}} }, body: func(_, auth string) string { return auth }},
		{code: 302, header: func(auth string) http.Header { return http.Header{"Location": {"/moved/" + auth}} }, body: func(_, auth string) string { return auth }},
	}
	ops := []Op{OpSubmit, OpStatus, OpResult, OpCancel}
	for i, a := range answers {
		for _, op := range ops {
			t.Run(strconv.Itoa(i)+"/"+string(op)+"/"+strconv.Itoa(a.code), func(t *testing.T) {
				var s *server
				s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
					auth := r.Header.Get("Authorization")
					if a.header != nil {
						for k, v := range a.header(auth) {
							w.Header()[k] = v
						}
					}
					writeJSON(w, a.code, a.body(s.URL, auth))
				})
				c, _ := s.client(0.5)
				ctx := context.Background()
				var (
					err  error
					evt  string
					outs []string
				)
				switch op {
				case OpSubmit:
					var req *Request
					req, err = c.Submit(ctx, "fal-ai/flux", nil, "")
					if req != nil {
						outs = append(outs, fmt.Sprintf("%+v", req))
					}
				case OpStatus:
					var st *Status
					st, err = c.Status(ctx, s.request("r"))
					if st != nil {
						outs = append(outs, fmt.Sprintf("%+v", st))
					}
				case OpResult:
					ev, rerr := c.Result(ctx, s.request("r"))
					err = rerr
					if ev != nil {
						evt = fmt.Sprintf("%+v %s %s", ev, ev.Payload, ev.ErrorType)
						if e := ev.Err(); e != nil {
							outs = append(outs, formsOf(e)...)
						}
					}
				case OpCancel:
					err = c.Cancel(ctx, s.request("r"))
				}
				if err != nil {
					outs = append(outs, formsOf(err)...)
				}
				var ae *APIError
				if errors.As(err, &ae) {
					outs = append(outs, ae.Error(), ae.Detail, ae.ErrorType, fmt.Sprintf("%#v", *ae))
				}
				for _, o := range append(outs, evt) {
					if leaks(o) {
						t.Errorf("the key shows in %s", o)
					}
				}
			})
		}
	}
}

// TestScrubbedErrorsStillMatch checks that an error whose text had the key
// removed still matches its sentinel and its *APIError.
func TestScrubbedErrorsStillMatch(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		u := "https://127.0.0.2:9/" + r.Header.Get("Authorization")
		writeJSON(w, 200, `{"request_id": "r", "status_url": "`+u+`", "response_url": "`+u+`", "cancel_url": "`+u+`"}`)
	})
	c, _ := s.client(0.5)
	_, err := c.Submit(context.Background(), "fal-ai/flux", nil, "")
	if !errors.Is(err, ErrUntrustedURL) {
		t.Errorf("scrubbed error %v does not match ErrUntrustedURL", err)
	}
	if !strings.Contains(err.Error(), redacted) {
		t.Errorf("error %q was not scrubbed", err)
	}
	s2 := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("X-Fal-Error-Type", r.Header.Get("Authorization"))
		writeJSON(w, 503, `{}`)
	})
	c2, _ := s2.client(0.5)
	_, err = c2.Status(context.Background(), s2.request("r"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || !errors.Is(err, ErrServerError) || leaks(ae.Error()) {
		t.Errorf("error %v: want a 503 *APIError without the key", err)
	}
}

func TestSubmitRefusesAnAnswerQuotingTheKey(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		writeJSON(w, 200, submitAnswerFor(s.URL, "id-"+strings.TrimPrefix(r.Header.Get("Authorization"), "Key ")))
	})
	c, _ := s.client(0.5)
	req, err := c.Submit(context.Background(), "fal-ai/flux", nil, "")
	if !errors.Is(err, ErrInvalidResponse) || req != nil {
		t.Errorf("an answer quoting the key: %+v, %v; want ErrInvalidResponse", req, err)
	}
}

func TestKeyNotInConfigErrors(t *testing.T) {
	for _, key := range []string{testKey + "\n", testKey + " x", "é" + testKey} {
		c := &Client{Key: key}
		_, err := c.Submit(context.Background(), "fal-ai/flux", nil, "")
		if !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("key %q accepted: %v", key, err)
		}
		for _, f := range formsOf(err) {
			if leaks(f) {
				t.Errorf("config error shows the key: %s", f)
			}
		}
	}
}

func TestKeyNotInNetworkErrors(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(hangUp))
	defer s.Close()
	clk := newTestClock()
	c := &Client{Key: testKey, BaseURL: s.URL, Clock: clk}
	_, err := c.Status(context.Background(), &Request{ID: "r", StatusURL: s.URL + "/x/" + testKey + "/status"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, f := range formsOf(err) {
		if leaks(f) {
			t.Errorf("network error shows the key: %s", f)
		}
	}
}

func TestClientFormatsHideKey(t *testing.T) {
	c := Client{Key: testKey, BaseURL: "https://queue.fal.run"}
	var forms []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T", "%10.3v"} {
		forms = append(forms, fmt.Sprintf(verb, c), fmt.Sprintf(verb, &c), fmt.Sprintf(verb, []any{c, &c}))
	}
	forms = append(forms, fmt.Sprint(c), fmt.Sprintln(&c), fmt.Sprintf("%v", struct{ C *Client }{&c}), fmt.Sprintf("%+v", struct{ C Client }{c}))
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("client", "c", c, "p", &c)
		l.Info("client", slog.Any("c", c))
	}
	forms = append(forms, buf.String())
	for _, f := range forms {
		if leaks(f) {
			t.Errorf("the key shows in %s", f)
		}
	}
	if got, want := c.String(), `falqueue.Client{BaseURL: "https://queue.fal.run", Key: [REDACTED]}`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	if !strings.Contains(buf.String(), `"base_url":"https://queue.fal.run"`) {
		t.Errorf("slog output lacks the base URL: %s", buf.String())
	}
	if got := (Client{}).String(); got != `falqueue.Client{BaseURL: "https://queue.fal.run", Key: ""}` {
		t.Errorf("zero Client String() = %s", got)
	}
}

func TestRedact(t *testing.T) {
	c := &Client{Key: testKey}
	for in, want := range map[string]string{
		"x " + testKey + " y":    "x [REDACTED] y",
		"Key " + testKey:         "Key [REDACTED]",
		"secret " + testSecret:   "secret [REDACTED]",
		"no key here: 0b1c2d3e-": "no key here: 0b1c2d3e-",
	} {
		if got := c.redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
	if got := (&Client{Key: "id:short"}).redact("a short word"); got != "a short word" {
		t.Errorf("a short secret part is redacted alone: %q", got)
	}
	if got := c.redactBytes([]byte(`{"a":"b"}`)); string(got) != `{"a":"b"}` {
		t.Errorf("redactBytes changed a body without the key: %s", got)
	}
}
