package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// listener is a listen command running in a goroutine.
type listener struct {
	url    string // http://127.0.0.1:PORT
	hook   string // url + "/fal/webhook", the default --path
	admin  string // http://127.0.0.1:PORT of the admin listener
	stdout *syncBuffer
	stderr *syncBuffer
	cancel context.CancelFunc // sends the "signal"
	done   chan int           // receives run's exit code
}

// startListen runs "falwebhook listen --addr 127.0.0.1:0 --admin-addr
// 127.0.0.1:0 args..." and waits for its addresses. The listener is
// stopped when the test ends.
func startListen(t *testing.T, args ...string) *listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{stdout: newSyncBuffer(), stderr: newSyncBuffer(), cancel: cancel, done: make(chan int, 1)}
	go func() {
		l.done <- run(ctx, append([]string{"listen", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, args...), strings.NewReader(""), l.stdout, l.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		<-l.done
	})

	wctx := waitCtx(t)
	for {
		lines := strings.SplitAfterN(l.stdout.String(), "\n", 3)
		if len(lines) >= 2 && strings.HasSuffix(lines[1], "\n") {
			var j struct{ Listening, Admin string }
			first, second := strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
			if u, ok := strings.CutPrefix(first, "listening on "); ok {
				l.url = u
			} else if json.Unmarshal([]byte(first), &j) == nil && j.Listening != "" {
				l.url = j.Listening
			} else {
				t.Fatalf("first stdout line is %q, want the address", first)
			}
			if u, ok := strings.CutPrefix(second, "admin on "); ok {
				l.admin = u
			} else if json.Unmarshal([]byte(second), &j) == nil && j.Admin != "" {
				l.admin = j.Admin
			} else {
				t.Fatalf("second stdout line is %q, want the admin address", second)
			}
			l.hook = l.url + "/fal/webhook"
			return l
		}
		select {
		case code := <-l.done:
			l.done <- code
			t.Fatalf("listen exited with %d before listening\nstderr: %s", code, l.stderr.String())
		default:
		}
		l.stdout.waitFor(wctx, t, "\n")
	}
}

// stop cancels the listener's context and returns its exit code.
func (l *listener) stop(t *testing.T) int {
	t.Helper()
	l.cancel()
	select {
	case code := <-l.done:
		l.done <- code // for the cleanup
		return code
	case <-waitCtx(t).Done():
		t.Fatal("listen did not return after its context was cancelled")
		return -1
	}
}

// appRequest is what the forward target received.
type appRequest struct {
	method string
	uri    string
	host   string
	header http.Header
	body   []byte
}

// app is a forward target recording what it receives.
type app struct {
	*httptest.Server
	mu   sync.Mutex // guards reqs
	reqs []appRequest
}

func newApp(t *testing.T, h func(w http.ResponseWriter, r *http.Request)) *app {
	a := &app{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, appRequest{r.Method, r.RequestURI, r.Host, r.Header.Clone(), body})
		a.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *app) received() []appRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]appRequest(nil), a.reqs...)
}

// post sends a signed delivery and returns the status and body.
func post(t *testing.T, s *faltest.Signer, url string, body []byte) (int, string) {
	t.Helper()
	req, err := s.NewClientRequest(t.Context(), url, faltest.Delivery{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestListenForward(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "yes")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "queued by the app")
	})
	l := startListen(t, "--any-user", "--jwks", jwks, "--forward", target.URL+"/hooks/fal")
	wctx := waitCtx(t)
	wantContains(t, "stderr", l.stderr.waitFor(wctx, t, "forwarding"),
		"keys: 1 Ed25519 key from "+jwks,
		"accepting deliveries for any fal user (--any-user): each line shows the user id; pin yours with --user-id",
		"dedupe in memory by request id",
		"forwarding verified deliveries to "+target.URL)

	// A genuine delivery reaches the app; the app's answer comes back.
	body, _ := sampleBody("ok", sampleRequestID)
	req, err := fal.NewClientRequest(t.Context(), l.hook, faltest.Delivery{Body: body, UserID: "user-1"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || string(answer) != "queued by the app" || resp.Header.Get("X-App") != "yes" {
		t.Fatalf("client got %d %q (X-App %q), want the app's 202 %q with its header", resp.StatusCode, answer, resp.Header.Get("X-App"), "queued by the app")
	}
	got := target.received()
	if len(got) != 1 {
		t.Fatalf("the app received %d requests, want 1", len(got))
	}
	fwd := got[0]
	if fwd.method != http.MethodPost || fwd.uri != "/hooks/fal" {
		t.Errorf("app got %s %s, want POST /hooks/fal", fwd.method, fwd.uri)
	}
	if !bytes.Equal(fwd.body, body) {
		t.Errorf("forwarded body differs from the delivery's:\n got %q\nwant %q", fwd.body, body)
	}
	// The forwarded delivery still verifies with the same keys: the app
	// may verify it again.
	if _, err := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey()))).Verify(t.Context(), fwd.header, fwd.body); err != nil {
		t.Errorf("the forwarded delivery no longer verifies: %v", err)
	}
	line := l.stdout.waitFor(wctx, t, "forwarded: app answered 202")
	wantContains(t, "log", line, "  202  "+sampleRequestID+"  user-1            OK     accepted, forwarded: app answered 202")

	// A forged delivery is answered 401 and never forwarded.
	forged := faltest.OKBody("forged-1", json.RawMessage(`{"images": [], "seed": 1}`))
	status, _ := post(t, faltest.SignerFromName("listen test: forger"), l.hook, forged)
	if status != http.StatusUnauthorized {
		t.Errorf("forged delivery answered %d, want 401", status)
	}
	// A tampered one neither.
	tampered := faltest.OKBody("tampered-1", json.RawMessage(`{"images": [], "seed": 1}`))
	req, _ = fal.NewClientRequest(t.Context(), l.hook, faltest.Delivery{Body: tampered})
	req.Body = io.NopCloser(bytes.NewReader(bytes.Replace(tampered, []byte("1}"), []byte("2}"), 1)))
	if status, _ = do(t, req); status != http.StatusUnauthorized {
		t.Errorf("tampered delivery answered %d, want 401", status)
	}
	// Nor a GET.
	getReq, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, l.hook, nil)
	if status, _ = do(t, getReq); status != http.StatusMethodNotAllowed {
		t.Errorf("GET answered %d, want 405", status)
	}
	out := l.stdout.waitFor(wctx, t, "method not allowed")
	if n := len(target.received()); n != 1 {
		t.Errorf("the app received %d requests, want only the genuine one", n)
	}
	wantContains(t, "log", out,
		"  401  forged-1                              faltest-user      -      rejected: signature mismatch (401): the only key did not verify it",
		"  401  tampered-1                            faltest-user      -      rejected: signature mismatch (401): the only key did not verify it",
		"  405  -                                     -                 -      rejected: method not allowed (405): GET")
	wantNoRepeats(t, out)

	if code := l.stop(t); code != exitOK {
		t.Errorf("listen exited %d after cancel, want 0\nstderr: %s", code, l.stderr.String())
	}
	wantContains(t, "stderr", l.stderr.String(), "shutting down", "stopped")
}

// TestListenForwardsOnlyWhatWasVerified sends a delivery dressed with
// everything a sender could add and checks the app gets exactly the
// verified body and the allowed headers.
func TestListenForwardsOnlyWhatWasVerified(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	l := startListen(t, "--any-user", "--jwks", jwks, "--forward", target.URL+"/hooks/fal?app=1", "--json")

	body, _ := sampleBody("ok", sampleRequestID)
	d := faltest.Delivery{Body: body, UserID: "user-1"}
	signed := fal.Sign(d)
	req, err := fal.NewClientRequest(t.Context(), l.hook+"?secret=s3cr3t&order=42", d)
	if err != nil {
		t.Fatal(err)
	}
	// Sent as chunked: the app still gets a Content-Length.
	req.ContentLength, req.Body, req.GetBody = -1, io.NopCloser(bytes.NewReader(body)), nil
	for name, v := range map[string]string{
		"Authorization":       "Bearer sender-token",
		"Cookie":              "session=abc",
		"X-Custom":            "from the sender",
		headerVerified:        "false",
		"X-Forwarded-For":     "203.0.113.7",
		"X-Forwarded-Host":    "evil.example",
		"X-Forwarded-Proto":   "https",
		"Forwarded":           "for=203.0.113.7",
		"Content-Type":        "text/html",
		"User-Agent":          "sender/1.0",
		"Accept-Encoding":     "gzip",
		"Connection":          falwebhook.HeaderSignature, // a hop-by-hop list naming a signed header
		"X-Fal-Webhook-Extra": "unsigned",
		"Traceparent":         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tracestate":          "sender=1",
	} {
		req.Header.Set(name, v)
	}
	req.Header.Add(headerVerified, "true")
	req.Host = "sender-chosen.example" // a Host of the sender's, not a verified one
	if status, _ := do(t, req); status != http.StatusOK {
		t.Fatalf("genuine delivery answered %d, want the app's 200", status)
	}
	got := target.received()
	if len(got) != 1 {
		t.Fatalf("the app received %d requests, want 1", len(got))
	}
	fwd := got[0]
	// The app gets the delivery's own trace context, the one its log line
	// names, not the sender's.
	var line listenLine
	out := l.stdout.waitFor(waitCtx(t), t, `"verdict":"accepted"`)
	if err := json.Unmarshal([]byte(lastLine(out)), &line); err != nil || len(line.TraceID) != 32 {
		t.Fatalf("delivery line %q has no trace id (%v)", lastLine(out), err)
	}
	if tp := fwd.header.Get("Traceparent"); !regexp.MustCompile(`^00-`+line.TraceID+`-[0-9a-f]{16}-01$`).MatchString(tp) || strings.Contains(tp, "0af7651916cd43dd8448eb211c80319c") {
		t.Errorf("the app got traceparent %q, want one of trace %s (the delivery's, not the sender's), sampled", tp, line.TraceID)
	}
	fwd.header.Del("Traceparent")
	if fwd.uri != "/hooks/fal?app=1" {
		t.Errorf("app got %s, want exactly the --forward URL /hooks/fal?app=1 (no query of the sender's)", fwd.uri)
	}
	want := http.Header{
		falwebhook.HeaderRequestID: {signed.RequestID},
		falwebhook.HeaderUserID:    {signed.UserID},
		falwebhook.HeaderTimestamp: {signed.Timestamp},
		falwebhook.HeaderSignature: {signed.Signature},
		"Content-Type":             {"application/json"},
		"Content-Length":           {strconv.Itoa(len(body))},
		headerVerified:             {"true"},
		"X-Forwarded-For":          {"127.0.0.1"},
		"X-Forwarded-Proto":        {"http"},
	}
	if appHost := strings.TrimPrefix(target.URL, "http://"); fwd.host != appHost {
		t.Errorf("the app got Host %q, want its own %q (the sender's Host is not passed on)", fwd.host, appHost)
	}
	if !reflect.DeepEqual(fwd.header, want) {
		t.Errorf("the app got headers\n%s\nwant exactly\n%s", headerText(fwd.header), headerText(want))
	}
	if !bytes.Equal(fwd.body, body) {
		t.Errorf("forwarded body differs from the delivery's")
	}
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// headerText lists h one "Name: value" line per value, sorted.
func headerText(h http.Header) string {
	var lines []string
	for k, vs := range h {
		for _, v := range vs {
			lines = append(lines, "  "+k+": "+v)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestListenDedupe replays a genuine delivery inside the timestamp window:
// by default the app sees it once and the replay is answered 200 as a
// duplicate; with --no-dedupe the app sees it twice.
func TestListenDedupe(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	body, _ := sampleBody("ok", sampleRequestID)
	d := faltest.Delivery{Body: body}
	h := fal.Sign(d) // one delivery, sent twice byte for byte
	send := func(t *testing.T, url string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		h.Set(req.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, tc := range []struct {
		name      string
		args      []string
		wantCalls int
	}{
		{"default", nil, 1},
		{"--no-dedupe", []string{"--no-dedupe"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := newApp(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "handled") })
			l := startListen(t, append([]string{"--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", target.URL}, tc.args...)...)
			wctx := waitCtx(t)
			if status, answer, _ := send(t, l.hook); status != http.StatusOK || answer != "handled" {
				t.Fatalf("first delivery answered %d %q, want the app's 200", status, answer)
			}
			// Its line is printed once its dedupe bookkeeping is done.
			l.stdout.waitFor(wctx, t, "forwarded: app answered 200")
			status, answer, hdr := send(t, l.hook)
			if n := len(target.received()); n != tc.wantCalls {
				t.Errorf("the app saw the delivery %d times, want %d", n, tc.wantCalls)
			}
			if tc.wantCalls == 1 {
				if status != http.StatusOK || hdr.Get(falwebhook.HeaderDuplicate) != "completed" {
					t.Fatalf("replay answered %d %q (%s %q), want 200 as a completed duplicate", status, answer, falwebhook.HeaderDuplicate, hdr.Get(falwebhook.HeaderDuplicate))
				}
				out := l.stdout.waitFor(wctx, t, "duplicate")
				wantContains(t, "log", out, "  200  "+sampleRequestID+"  faltest-user      -      duplicate: already handled; not forwarded again")
			} else if status != http.StatusOK || answer != "handled" {
				t.Errorf("replay answered %d %q, want the app's 200 again", status, answer)
			}
		})
	}
}

// TestListenUserIDs pins a user: a genuine delivery for another fal user
// is answered 403, never forwarded, and its line says why.
func TestListenUserIDs(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "handled") })
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"text", nil},
		{"json", []string{"--json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startListen(t, append([]string{"--jwks", jwks, "--forward", target.URL, "--user-id", "me", "--user-id", "my-other-account"}, tc.args...)...)
			wctx := waitCtx(t)
			l.stderr.waitFor(wctx, t, "accepting only deliveries for user ids me, my-other-account (others get 403)")
			before := len(target.received())

			foreign := faltest.Delivery{Body: faltest.OKBody("foreign-"+tc.name, json.RawMessage(`{"images": []}`)), UserID: "someone-else"}
			req, _ := fal.NewClientRequest(t.Context(), l.hook, foreign)
			if status, _ := do(t, req); status != http.StatusForbidden {
				t.Errorf("another user's genuine delivery answered %d, want 403", status)
			}
			mine := faltest.Delivery{Body: faltest.OKBody("mine-"+tc.name, json.RawMessage(`{"images": []}`)), UserID: "my-other-account"}
			req, _ = fal.NewClientRequest(t.Context(), l.hook, mine)
			if status, _ := do(t, req); status != http.StatusOK {
				t.Errorf("my delivery answered %d, want 200", status)
			}
			got := target.received()[before:]
			if len(got) != 1 || got[0].header.Get(falwebhook.HeaderUserID) != "my-other-account" {
				t.Errorf("the app received %d deliveries, want only mine", len(got))
			}
			out := l.stdout.waitFor(wctx, t, "mine-"+tc.name)
			if tc.name == "text" {
				wantContains(t, "log", out,
					`  403  foreign-text                          someone-else      -      rejected: unexpected user (403): user pinning is on (--user-id me --user-id my-other-account) and this delivery is for user "someone-else"; if that is your fal account, add --user-id someone-else`,
					"  200  mine-text                             my-other-account  OK     accepted, forwarded: app answered 200")
				return
			}
			wantContains(t, "log", out,
				`"status":403,"request_id":"foreign-json","user_id":"someone-else","verdict":"rejected","reason":"unexpected user"`,
				`"status":200,"request_id":"mine-json","user_id":"my-other-account","event_status":"OK","verdict":"accepted"`)
		})
	}
}

func TestListenForwardFailure(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close()

	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", goneURL)
	body, _ := sampleBody("ok", sampleRequestID)
	if status, _ := post(t, fal, l.hook, body); status != http.StatusBadGateway {
		t.Errorf("forward to a dead app answered %d, want 502", status)
	}
	l.stdout.waitFor(waitCtx(t), t, "accepted, forward failed: ")
}

// TestListenRelayBreaksOff: the app's answer breaks off midway; the
// delivery's line says so.
func TestListenRelayBreaksOff(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "only ten b")
		http.NewResponseController(w).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", target.URL)
	req, _ := fal.NewClientRequest(t.Context(), l.hook, faltest.Delivery{Body: faltest.OKBody("cut-1", json.RawMessage(`{}`))})
	if resp, err := http.DefaultClient.Do(req); err == nil {
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("the client read a whole answer; want it cut off like the app's")
		}
		resp.Body.Close()
	}
	out := l.stdout.waitFor(waitCtx(t), t, "cut-1")
	wantContains(t, "log", out, "  200  cut-1  ", "accepted, forwarded: app answered 200, relaying its answer broke off")
}

func TestListenJSONAndJWKSURL(t *testing.T) {
	fal := faltest.SignerFromName("listen test: fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()

	l := startListen(t, "--user-id", faltest.DefaultUserID, "--json", "--jwks", ks.URL)
	wctx := waitCtx(t)
	l.stderr.waitFor(wctx, t, "keys: 1 Ed25519 key from "+ks.URL)
	if first, _, _ := strings.Cut(l.stdout.String(), "\n"); first != `{"listening":"`+l.url+`"}` {
		t.Errorf("first --json line is %q", first)
	}

	body := faltest.ValidationErrorBody("json-1")
	status, answer := post(t, fal, l.hook, body)
	if status != http.StatusOK || answer != "ok\n" {
		t.Errorf("genuine delivery answered %d %q, want 200 ok", status, answer)
	}
	out := l.stdout.waitFor(wctx, t, `"request_id":"json-1"`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var rec listenLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rec); err != nil {
		t.Fatalf("delivery line is not JSON: %v\n%s", err, out)
	}
	if rec.Status != 200 || rec.EventStatus != "ERROR" || rec.Verdict != "accepted" || rec.Method != "POST" || rec.Path != "/fal/webhook" || len(rec.TraceID) != 32 {
		t.Errorf("JSON line = %+v", rec)
	}

	status, _ = post(t, fal, l.hook, []byte(`{"request_id": "x"}`)) // genuine signature, not an event
	if status != http.StatusBadRequest {
		t.Errorf("signed non-event answered %d, want 400", status)
	}
	out = l.stdout.waitFor(wctx, t, `"reason":"not a fal event"`)
	wantContains(t, "log", out, `"verdict":"rejected"`, `"status":400`)
	if n := ks.Fetches(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1 (warm-up only)", n)
	}
}

// TestListenKeysUnavailable: keys that cannot be fetched are reported at
// startup and a delivery is answered 503, each said once.
func TestListenKeysUnavailable(t *testing.T) {
	fal := faltest.SignerFromName("listen test: fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()
	ks.FailNext(5, http.StatusInternalServerError)
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", ks.URL)
	wctx := waitCtx(t)
	stderr := l.stderr.waitFor(wctx, t, "dedupe")
	wantContains(t, "stderr", stderr, "falwebhook listen: warning: keys unavailable: fetching JWKS: status 500, want 200 (deliveries get 503 until keys can be fetched)")
	if strings.Contains(stderr, "keys: ") {
		t.Errorf("stderr reports keys that were never fetched:\n%s", stderr)
	}
	if status, _ := post(t, fal, l.hook, faltest.OKBody("k-1", json.RawMessage(`{}`))); status != http.StatusServiceUnavailable {
		t.Errorf("delivery without keys answered %d, want 503", status)
	}
	out := l.stdout.waitFor(wctx, t, "k-1")
	wantContains(t, "log", out, "  503  k-1                                   faltest-user      -      rejected: keys unavailable (503): the last fetch failed; next attempt after the cooldown: fetching JWKS: status 500, want 200")
	wantNoRepeats(t, out+stderr)
}

// TestListenGracefulShutdown cancels the context while a delivery is being
// forwarded: the delivery completes, then run returns 0.
func TestListenGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	arrived := make(chan struct{})
	release := make(chan struct{})
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "done")
	})
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", target.URL)
	wctx := waitCtx(t)

	type answer struct {
		status int
		body   string
		err    error
	}
	answered := make(chan answer, 1)
	body, _ := sampleBody("ok", sampleRequestID)
	req, err := fal.NewClientRequest(t.Context(), l.hook, faltest.Delivery{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, string(b), err}
	}()

	select {
	case <-arrived:
	case <-wctx.Done():
		t.Fatal("the delivery never reached the app")
	}
	if status, body := get(t, l.admin+"/readyz"); status != http.StatusOK {
		t.Errorf("/readyz before the signal answered %d %q, want 200", status, body)
	}
	l.cancel() // SIGINT
	l.stderr.waitFor(wctx, t, "shutting down")
	select {
	case code := <-l.done:
		t.Fatalf("listen returned %d while a delivery was in flight", code)
	default:
	}
	// While it drains, the load balancer is told to send no more.
	if status, body := get(t, l.admin+"/readyz"); status != http.StatusServiceUnavailable || body != "not ready: shutting down\n" {
		t.Errorf("/readyz while shutting down answered %d %q, want 503 shutting down", status, body)
	}
	close(release)

	select {
	case a := <-answered:
		if a.err != nil || a.status != http.StatusOK || a.body != "done" {
			t.Errorf("in-flight delivery got %d %q, %v; want the app's 200 %q", a.status, a.body, a.err, "done")
		}
	case <-wctx.Done():
		t.Fatal("the in-flight delivery got no answer")
	}
	if code := l.stop(t); code != exitOK {
		t.Errorf("listen exited %d, want 0\nstderr: %s", code, l.stderr.String())
	}
	wantContains(t, "log", l.stdout.String(), "accepted, forwarded: app answered 200")
}

func TestListenUsageErrors(t *testing.T) {
	r := runCmd(t, "", "listen", "-h")
	wantContains(t, "listen -h", r.stderr, `listen on host:port (port 0 picks a free one) (default "127.0.0.1:8787")`, "-user-id ID", "-no-dedupe",
		`-admin-addr host:port`, `(default "127.0.0.1:8788")`, `-path path`, `(default "/fal/webhook")`, "-redis host:port or redis:// URL", "-max-body bytes", "-body-budget bytes")

	dir := t.TempDir()
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(faltest.SignerFromName("x")))
	for _, args := range [][]string{
		{"listen", "--any-user", "--jwks", filepath.Join(dir, "missing.json")},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "256.0.0.1:bad"},
		{"listen", "--any-user", "--jwks", jwks, "--forward", "not a url"},
		{"listen", "--any-user", "--jwks", jwks, "--tolerance", "0s"},
		{"listen", "--any-user", "--jwks", jwks, "extra"},
		{"listen", "--jwks", jwks, "--user-id", ""},
		{"listen", "--any-user", "--jwks", jwks, "--path", "fal/webhook"},
		{"listen", "--any-user", "--jwks", jwks, "--path", "/a b"},
		{"listen", "--any-user", "--jwks", jwks, "--redis", "127.0.0.1:1", "--no-dedupe"},
		{"listen", "--any-user", "--jwks", jwks, "--redis", "http://127.0.0.1:1"},
		{"listen", "--any-user", "--jwks", jwks, "--max-body", "-1"},
		{"listen", "--any-user", "--jwks", jwks, "--body-budget", "lots"},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "256.0.0.1:bad"},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--admin-host", ""},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--admin-host", "a.internal,"},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--admin-host", "a.internal:8788"},
		{"listen", "--any-user", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--admin-host", "http://a.internal"},
	} {
		r = runDone(t, args...)
		if r.code != exitUsage || r.stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 with an error", args, r.code, r.stderr)
		}
	}
	// Pinning is the default: without --user-id, listen refuses to start
	// unless told that any account will do, and says why.
	r = runDone(t, "listen", "--jwks", jwks, "--addr", "127.0.0.1:0", "--admin-addr", "")
	if r.code != exitUsage {
		t.Fatalf("listen without --user-id or --any-user: exit %d, want 2 (it must not start)\n%s", r.code, r)
	}
	wantContains(t, "stderr", r.stderr, "--user-id is required", "every fal customer can have genuine deliveries sent to your URL", "--any-user")
	if r.stdout != "" {
		t.Errorf("listen without --user-id printed %q: it must not listen", r.stdout)
	}
	r = runDone(t, "listen", "--jwks", jwks, "--user-id", "me", "--any-user")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--user-id and --any-user contradict each other") {
		t.Errorf("listen with --user-id and --any-user: %s; want exit 2 saying they contradict", r)
	}
}

// runDone runs the command in-process with a context already done, so that
// a listen that should have refused to start but did returns at once.
func runDone(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// TestListenLogBounded: what a forger sends reaches the log cut to a few
// hundred bytes and escaped, so that a megabyte of request id costs a line,
// not a megabyte, and no value can start a line of its own.
func TestListenLogBounded(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	forger := faltest.SignerFromName("listen test: forger")
	hugeID := strings.Repeat("r", 1_000_000)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"text", nil},
		{"json", []string{"--json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startListen(t, append([]string{"--any-user", "--jwks", jwks, "--path", "/"}, tc.args...)...)
			sendForged := func(path string, d faltest.Delivery) {
				t.Helper()
				req, err := forger.NewClientRequest(t.Context(), l.url+path, d)
				if err != nil {
					t.Fatal(err)
				}
				if status, _ := do(t, req); status != http.StatusUnauthorized {
					t.Errorf("forgery to %s answered %d, want 401", path, status)
				}
			}
			body := faltest.OKBody("small", json.RawMessage(`{}`))
			sendForged("/"+strings.Repeat("p", 10_000), faltest.Delivery{RequestID: hugeID, UserID: strings.Repeat("u", 20_000), Body: body})
			sendForged("/x%0A2026-01-01T00:00:00Z%20%20200%20%20fake%1B[2J", faltest.Delivery{RequestID: "id\xff\u202eevil", UserID: "last", Body: body})
			// A method of the sender's is quoted by the error.
			req, _ := http.NewRequestWithContext(t.Context(), strings.Repeat("M", 10_000), l.url+"/", nil)
			req.Header.Set(falwebhook.HeaderUserID, "end")
			if status, _ := do(t, req); status != http.StatusMethodNotAllowed {
				t.Errorf("a 10,000-byte method answered %d, want 405", status)
			}
			out := l.stdout.waitFor(waitCtx(t), t, "MMMM")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 5 { // two addresses, three requests
				t.Fatalf("stdout has %d lines, want 5 (each request on one line):\n%.3000s", len(lines), out)
			}
			for _, line := range lines[2:] {
				if len(line) > 2048 {
					t.Errorf("a forgery's line is %d bytes, want a bounded few hundred: %.200q…", len(line), line)
				}
				for _, r := range line {
					// JSON escapes control characters; the text line
					// escapes whatever a terminal would not show as is.
					if r < 0x20 || r == 0x7f || tc.name == "text" && (r == '\u202e' || r == utf8.RuneError) {
						t.Errorf("a forgery's line holds %q unescaped: %q", r, line)
					}
				}
			}
			if tc.name == "text" {
				wantContains(t, "log", out, strings.Repeat("r", 100)+"…(1000000 bytes)", strings.Repeat("u", 100)+"…(20000 bytes)", `id\xff\u202eevil`)
				return
			}
			var big, odd, method listenLine
			if json.Unmarshal([]byte(lines[2]), &big) != nil || json.Unmarshal([]byte(lines[3]), &odd) != nil || json.Unmarshal([]byte(lines[4]), &method) != nil {
				t.Fatalf("delivery lines are not JSON:\n%.3000s", out)
			}
			if big.Path != "/"+strings.Repeat("p", logMax-1)+"…(10001 bytes)" {
				t.Errorf("the long path was logged as %.200q, want %d bytes of it marked with its length", big.Path, logMax)
			}
			if len(method.Method) > logMax+20 || len(method.Error) > logErrMax+20 {
				t.Errorf("the long method was logged as %d bytes and its error as %d, want at most %d and %d and a marker", len(method.Method), len(method.Error), logMax, logErrMax)
			}
			if big.RequestID != strings.Repeat("r", logMax)+"…(1000000 bytes)" || big.UserID != strings.Repeat("u", logMax)+"…(20000 bytes)" {
				t.Errorf("the huge ids were logged as %.200q and %.200q, want %d bytes of each marked with its length", big.RequestID, big.UserID, logMax)
			}
			if odd.Path != "/x\n2026-01-01T00:00:00Z  200  fake\x1b[2J" || odd.RequestID != "id\ufffd\u202eevil" {
				t.Errorf("JSON line holds path %q and request id %q, want them as sent (JSON escapes them)", odd.Path, odd.RequestID)
			}
		})
	}
}

func TestClipAndEscape(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"", 4, ""},
		{"abcd", 4, "abcd"},
		{"abcde", 4, "abcd…(5 bytes)"},
		{"ab€cd", 4, "ab…(7 bytes)"}, // not in the middle of €
		{"€€", 3, "€…(6 bytes)"},
	} {
		if got := clip(tc.in, tc.max); got != tc.want {
			t.Errorf("clip(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
	for in, want := range map[string]string{
		"plain id-1":        "plain id-1",
		"été €":             "été €",
		"a\nb\r\tc":         `a\nb\r\tc`,
		"\x1b[2J\x00\x7f":   `\x1b[2J\x00\x7f`,
		"bad\xff\xfe":       `bad\xff\xfe`,
		"rtl\u202eoverride": `rtl\u202eoverride`,
		"line\u2028sep":     `line\u2028sep`,
		`back\slash "q"`:    `back\slash "q"`,
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestListenForwardReusesConnections sends deliveries 16 at a time through
// listen --forward and counts the connections the app accepts: each
// delivery in flight reuses one, instead of most opening their own.
func TestListenForwardReusesConnections(t *testing.T) {
	const conc, each = 16, 25
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	var mu sync.Mutex // guards conns
	conns := 0
	target := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		io.WriteString(w, "handled")
	}))
	target.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	target.Start()
	defer target.Close()
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", target.URL)

	type signed struct {
		h    faltest.Headers
		body []byte
	}
	deliveries := make([]signed, conc*each)
	for i := range deliveries {
		body := faltest.OKBody(fmt.Sprintf("reuse-%d", i), json.RawMessage(`{}`))
		deliveries[i] = signed{fal.Sign(faltest.Delivery{Body: body}), body}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for g := range conc {
		wg.Go(func() {
			for _, d := range deliveries[g*each : (g+1)*each] {
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, l.hook, bytes.NewReader(d.body))
				d.h.Set(req.Header)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != "handled" {
					errs <- fmt.Errorf("delivery answered %d %q, want the app's 200", resp.StatusCode, b)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mu.Lock()
	n := conns
	mu.Unlock()
	// One connection per delivery in flight; a few more when a delivery
	// starts before the connection of the one before is back in the pool.
	if n > 2*conc {
		t.Errorf("the app accepted %d connections for %d deliveries %d at a time, want at most %d: the proxy does not keep its connections", n, conc*each, conc, 2*conc)
	}
	t.Logf("%d deliveries, %d at a time: the app accepted %d connections", conc*each, conc, n)
}
