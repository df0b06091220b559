package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

// promSample is one sample of the Prometheus text format.
type promSample struct {
	labels map[string]string
	value  float64
}

var (
	promLine  = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	promLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// promSamples returns the samples of metric name in a /metrics answer.
func promSamples(t *testing.T, text, name string) []promSample {
	t.Helper()
	var out []promSample
	for _, line := range strings.Split(text, "\n") {
		m := promLine.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("bad sample %q: %v", line, err)
		}
		s := promSample{labels: map[string]string{}, value: v}
		for _, l := range promLabel.FindAllStringSubmatch(m[2], -1) {
			s.labels[l[1]] = l[2]
		}
		out = append(out, s)
	}
	return out
}

// outcomeCounts sums the samples of name by falwebhook_outcome, checking
// that error_type is set exactly on rejections, to the outcome, and that
// no other label than those and the scope's is present.
func outcomeCounts(t *testing.T, text, name string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, s := range promSamples(t, text, name) {
		o := s.labels["falwebhook_outcome"]
		et, hasET := s.labels["error_type"]
		switch o {
		case "accepted", "duplicate", "in_progress":
			if hasET {
				t.Errorf("%s{%v}: error_type on a delivery that was not rejected", name, s.labels)
			}
		default:
			if et != o {
				t.Errorf("%s{%v}: error_type %q, want the outcome %q", name, s.labels, et, o)
			}
		}
		for k := range s.labels {
			switch k {
			case "falwebhook_outcome", "error_type", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url":
			default:
				t.Errorf("%s has a label %s=%q: only the outcome and error type belong on it", name, k, s.labels[k])
			}
		}
		counts[o] += int(s.value)
	}
	return counts
}

func TestListenAdmin(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	l := startListen(t, "--jwks", jwks, "--user-id", "me", "--admin-host", "Gateway.internal,metrics.internal", "--admin-host", "other.internal")

	if status, body := get(t, l.admin+"/healthz"); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz answered %d %q, want 200 ok", status, body)
	}
	// A page that rebinds its own name to the admin address sends that
	// name as the Host: it is answered 421, with nothing of the endpoint's.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(l.admin, "http://"))
	for _, tc := range []struct {
		host string
		want int
	}{
		{"rebind.example:" + port, http.StatusMisdirectedRequest},
		{"rebind.example", http.StatusMisdirectedRequest},
		{"localhost.rebind.example", http.StatusMisdirectedRequest},
		{"localhost:" + port, http.StatusOK},
		{"127.0.0.1:" + port, http.StatusOK},
		{"gateway.internal:" + port, http.StatusOK},
		{"METRICS.internal", http.StatusOK},
		{"other.internal", http.StatusOK},
	} {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, l.admin+path, nil)
			req.Host = tc.host
			status, body := do(t, req)
			if status != tc.want {
				t.Errorf("%s with Host %q answered %d, want %d", path, tc.host, status, tc.want)
			}
			if tc.want != http.StatusOK && (strings.Contains(body, "falwebhook_") || strings.Contains(body, "ready") || strings.Contains(body, "ok")) {
				t.Errorf("%s with Host %q leaked the endpoint's answer: %q", path, tc.host, body)
			}
		}
	}
	if status, body := get(t, l.admin+"/readyz"); status != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz with static keys answered %d %q, want 200 ready", status, body)
	}
	// The admin endpoints are not on the delivery listener, nor deliveries
	// on the admin one.
	if status, _ := get(t, l.url+"/metrics"); status != http.StatusNotFound {
		t.Errorf("/metrics on the delivery listener answered %d, want 404", status)
	}
	if status, _ := post(t, fal, l.admin+"/fal/webhook", faltest.OKBody("a-0", nil)); status != http.StatusMethodNotAllowed && status != http.StatusNotFound {
		t.Errorf("a delivery to the admin listener answered %d, want 404 or 405", status)
	}

	d := func(id, user string) faltest.Delivery {
		return faltest.Delivery{Body: faltest.OKBody(id, json.RawMessage(`{}`)), UserID: user}
	}
	genuine := fal.Sign(d("a-1", "me"))
	send := func(h faltest.Headers, body []byte) int {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, l.hook, strings.NewReader(string(body)))
		h.Set(req.Header)
		status, _ := do(t, req)
		return status
	}
	for _, tc := range []struct {
		name   string
		status int
		send   func() int
	}{
		{"genuine", 200, func() int { return send(genuine, d("a-1", "me").Body) }},
		{"again", 200, func() int { return send(genuine, d("a-1", "me").Body) }},
		{"another", 200, func() int { return send(fal.Sign(d("a-2", "me")), d("a-2", "me").Body) }},
		{"forged", 401, func() int { return send(faltest.SignerFromName("forger").Sign(d("a-3", "me")), d("a-3", "me").Body) }},
		{"foreign", 403, func() int { return send(fal.Sign(d("a-4", "you")), d("a-4", "you").Body) }},
	} {
		if status := tc.send(); status != tc.status {
			t.Errorf("%s: answered %d, want %d", tc.name, status, tc.status)
		}
	}
	status, metrics := get(t, l.admin+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics answered %d", status)
	}
	want := map[string]int{"accepted": 2, "duplicate": 1, "signature_mismatch": 1, "unexpected_user": 1}
	if got := outcomeCounts(t, metrics, "falwebhook_deliveries_total"); !maps.Equal(got, want) {
		t.Errorf("falwebhook_deliveries_total by outcome = %v, want %v", got, want)
	}
	if got := outcomeCounts(t, metrics, "falwebhook_verification_duration_seconds_count"); !maps.Equal(got, want) {
		t.Errorf("falwebhook_verification_duration_seconds_count by outcome = %v, want %v", got, want)
	}
	for _, id := range []string{"a-1", "a-2", "a-3", "a-4", "faltest-user", `"me"`} {
		if strings.Contains(metrics, id) {
			t.Errorf("/metrics mentions %s: request and user ids must not be labels", id)
		}
	}
	wantContains(t, "/metrics", metrics, "# TYPE falwebhook_deliveries_total counter", "go_goroutines ", `target_info{service_name="falwebhook"`)
}

// TestListenReadyKeys: keys that could not be fetched make /readyz 503,
// and /readyz fetches them again (no delivery comes to a replica that is
// not ready); once fetched it is 200, and the JWKS metrics say so.
func TestListenReadyKeys(t *testing.T) {
	fal := faltest.SignerFromName("listen test: fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()
	ks.FailNext(1, http.StatusInternalServerError) // the startup fetch
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", ks.URL, "--json")
	l.stderr.waitFor(waitCtx(t), t, "dedupe")
	status, body := get(t, l.admin+"/readyz")
	if status != http.StatusServiceUnavailable || body != "not ready: keys: no JWKS fetch has succeeded yet\n" {
		t.Errorf("/readyz without keys answered %d %q, want 503 naming the keys", status, body)
	}
	// The JWKS logs a fetch after the observer has seen it.
	l.stderr.waitFor(waitCtx(t), t, `"msg":"falwebhook: JWKS fetched"`)
	if status, body = get(t, l.admin+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz after the keys were fetched answered %d %q, want 200", status, body)
	}
	if n := ks.Fetches(); n != 2 {
		t.Errorf("key server saw %d fetches, want 2: one at startup, one from /readyz (at most every 10s)", n)
	}
	_, metrics := get(t, l.admin+"/metrics")
	wantContains(t, "/metrics", metrics,
		`falwebhook_jwks_fetches_total{error_type="_OTHER",falwebhook_outcome="failure",`,
		`falwebhook_jwks_fetches_total{falwebhook_outcome="success",`)
	if s := promSamples(t, metrics, "falwebhook_jwks_keys"); len(s) != 1 || s[0].value != 1 || s[0].labels["url_full"] != ks.URL {
		t.Errorf("falwebhook_jwks_keys = %v, want 1 for %s", s, ks.URL)
	}
	if s := promSamples(t, metrics, "falwebhook_jwks_age_seconds"); len(s) != 1 || s[0].value < 0 || s[0].value > 60 {
		t.Errorf("falwebhook_jwks_age_seconds = %v, want one sample of a few seconds", s)
	}
}

// TestListenRedisDown: with --redis at an address nothing answers, /readyz
// is 503 naming Redis, and a genuine delivery is answered 503 (fal
// retries) without reaching the app.
func TestListenRedisDown(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	target := newApp(t, func(w http.ResponseWriter, r *http.Request) {})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--forward", target.URL, "--redis", "redis://"+dead+"/0")
	stderr := l.stderr.waitFor(waitCtx(t), t, "did not answer PING")
	wantContains(t, "stderr", stderr, "dedupe in Redis at "+dead+" by request id")
	status, body := get(t, l.admin+"/readyz")
	if status != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: redis: no answer to PING within 1s: ") || strings.Contains(body, "keys") {
		t.Errorf("/readyz with Redis down answered %d %q, want 503 naming Redis only", status, body)
	}
	if status, _ := post(t, fal, l.hook, faltest.OKBody("r-1", nil)); status != http.StatusServiceUnavailable {
		t.Errorf("delivery with Redis down answered %d, want 503", status)
	}
	if n := len(target.received()); n != 0 {
		t.Errorf("the app received %d deliveries while Redis was down", n)
	}
	wantContains(t, "log", l.stdout.waitFor(waitCtx(t), t, "r-1"), "rejected: dedupe store failed (503)")
	// go-redis's own messages go to listen's log.
	wantContains(t, "stderr", l.stderr.String(), "falwebhook listen: warning: redis: connection pool: failed to dial")
}

// TestListenPath: deliveries are taken at --path only.
func TestListenPath(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	for _, tc := range []struct {
		args []string
		ok   []string // paths taking deliveries
		not  []string // paths answered 404
	}{
		{nil, []string{"/fal/webhook"}, []string{"/", "/fal/webhook/", "/fal/webhookx", "/other"}},
		{[]string{"--path", "/hooks/"}, []string{"/hooks/", "/hooks/fal"}, []string{"/hooks", "/fal/webhook"}},
		{[]string{"--path", "/"}, []string{"/", "/anything", "/fal/webhook"}, nil},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			l := startListen(t, append([]string{"--user-id", faltest.DefaultUserID, "--jwks", jwks}, tc.args...)...)
			for i, p := range tc.ok {
				if status, _ := post(t, fal, l.url+p, faltest.OKBody(fmt.Sprintf("p-%d", i), nil)); status != http.StatusOK {
					t.Errorf("POST %s answered %d, want 200", p, status)
				}
			}
			for _, p := range tc.not {
				if status, _ := post(t, fal, l.url+p, faltest.OKBody("no", nil)); status != http.StatusNotFound {
					t.Errorf("POST %s answered %d, want 404", p, status)
				}
			}
			out := l.stdout.waitFor(waitCtx(t), t, fmt.Sprintf("p-%d", len(tc.ok)-1))
			if strings.Contains(out, " no ") {
				t.Errorf("a request to another path was logged as a delivery:\n%s", out)
			}
		})
	}
}

// TestListenMaxBody: --max-body bounds the body.
func TestListenMaxBody(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("listen test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--jwks", jwks, "--max-body", "1KiB", "--body-budget", "1MiB")
	small := faltest.OKBody("small", json.RawMessage(`"`+strings.Repeat("x", 900)+`"`))
	large := faltest.OKBody("large", json.RawMessage(`"`+strings.Repeat("x", 1000)+`"`))
	if len(small) > 1024 || len(large) <= 1024 {
		t.Fatalf("bodies of %d and %d bytes do not straddle 1 KiB", len(small), len(large))
	}
	if status, _ := post(t, fal, l.hook, small); status != http.StatusOK {
		t.Errorf("%d-byte body answered %d, want 200", len(small), status)
	}
	if status, _ := post(t, fal, l.hook, large); status != http.StatusRequestEntityTooLarge {
		t.Errorf("%d-byte body answered %d, want 413", len(large), status)
	}
}

// TestListenJSONLogs: with --json, stderr is slog JSON too.
func TestListenJSONLogs(t *testing.T) {
	fal := faltest.SignerFromName("listen test: fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()
	l := startListen(t, "--user-id", faltest.DefaultUserID, "--json", "--jwks", ks.URL)
	l.stderr.waitFor(waitCtx(t), t, "dedupe")
	stderr := l.stderr.waitFor(waitCtx(t), t, "JWKS fetched") // logged after the keys are in use
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var rec struct {
			Time  time.Time
			Level string
			Msg   string
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Time.IsZero() || rec.Level == "" {
			t.Fatalf("stderr line is not a slog JSON record: %q (%v)", line, err)
		}
		msgs = append(msgs, rec.Level+" "+rec.Msg)
	}
	want := "INFO keys: 1 Ed25519 key from " + ks.URL
	if !slices.Contains(msgs, want) || !slices.Contains(msgs, "INFO falwebhook: JWKS fetched") {
		t.Errorf("stderr records %q, want %q and the JWKS fetch among them", msgs, want)
	}
	if code := l.stop(t); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(l.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("no JSON record of the stop:\n%s", l.stderr.String())
	}
}

// TestAdminHostGuard: the admin endpoints answer only to loopback names,
// IP addresses and the configured names, with or without a port.
func TestAdminHostGuard(t *testing.T) {
	h := adminHostGuard([]string{"Prom.Internal"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("secret metrics"))
	}))
	for _, tc := range []struct {
		host string
		want int
	}{
		{"localhost", 200}, {"localhost:8788", 200}, {"LOCALHOST:8788", 200},
		{"127.0.0.1", 200}, {"127.0.0.1:8788", 200}, {"[::1]", 200}, {"[::1]:8788", 200},
		{"10.1.2.3:8788", 200}, {"[fd00::7]:8788", 200}, // an address cannot be rebound
		{"prom.internal", 200}, {"prom.internal:9090", 200},
		{"", 421}, {":8788", 421}, {"evil.example", 421}, {"evil.example:8788", 421},
		{"localhost.evil.example", 421}, {"127.0.0.1.nip.io", 421}, {"prom.internal.evil.example", 421},
		{"0x7f.1", 421}, {"[evil.example]:8788", 421}, {"::1", 200},
	} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Host = tc.host
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, req)
		if rr.Code != tc.want {
			t.Errorf("Host %q: answered %d, want %d", tc.host, rr.Code, tc.want)
		}
		if tc.want != 200 && strings.Contains(rr.Body.String(), "secret") {
			t.Errorf("Host %q: the endpoint's answer leaked: %q", tc.host, rr.Body.String())
		}
	}
}

func TestSizeFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		text string
	}{
		{"0", 0, ""}, {"1048576", 1 << 20, "1MiB"}, {"1000", 1000, "1000"}, {"512KiB", 512 << 10, "512KiB"},
		{"25MiB", 25 << 20, "25MiB"}, {"2GiB", 2 << 30, "2GiB"}, {"100B", 100, "100"},
	} {
		var f sizeFlag
		if err := f.Set(tc.in); err != nil || f.n != tc.want || f.String() != tc.text {
			t.Errorf("Set(%q): %d %q %v, want %d %q", tc.in, f.n, f.String(), err, tc.want, tc.text)
		}
	}
	for _, bad := range []string{"", "-1", "1MB", "1.5MiB", "KiB", "9999999999GiB", "0x10"} {
		var f sizeFlag
		if err := f.Set(bad); err == nil {
			t.Errorf("Set(%q) = %d, want an error", bad, f.n)
		}
	}
}

func TestRedisOptions(t *testing.T) {
	o, err := redisOptions("127.0.0.1:6379")
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "127.0.0.1:6379" || o.DialTimeout != time.Second || o.ReadTimeout != time.Second || o.PoolTimeout != time.Second ||
		o.MaxRetries != 2 || o.DialerRetries != 1 || !o.ContextTimeoutEnabled {
		t.Errorf("host:port options = %+v, want redisdedupe's recommended timeouts", o)
	}
	o, err = redisOptions("redis://:pw@10.0.0.1:6380/2?read_timeout=3s&max_retries=5")
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "10.0.0.1:6380" || o.Password != "pw" || o.DB != 2 || o.ReadTimeout != 3*time.Second || o.MaxRetries != 5 || o.DialTimeout != time.Second {
		t.Errorf("URL options = %+v, want the URL's own settings kept and the rest recommended", o)
	}
	p := pingClient(o).Options() // MaxRetries -1 (none) reads back as 0
	if p.MaxRetries != 0 || p.ReadTimeout != time.Second || p.DialTimeout != time.Second || p.Addr != o.Addr || p.Password != "pw" {
		t.Errorf("ping client options = %+v, want one attempt bounded by 1s at the same Redis", p)
	}
	for _, bad := range []string{"", "http://x", "a b:1", "redis://h:1/x"} {
		if _, err := redisOptions(bad); err == nil {
			t.Errorf("redisOptions(%q) succeeded", bad)
		}
	}
}

// TestReadiness checks the keys' part of readiness against a clock: ready
// until MaxStale past the expiry of the newest fetched keys, failed fetches
// changing nothing, and a refresh started at most every 10s while not
// ready.
func TestReadiness(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	refreshed := make(chan struct{}, 10)
	rd := &readiness{
		now:     func() time.Time { return now },
		refresh: func(context.Context) error { refreshed <- struct{}{}; return errors.New("down") },
	}
	check := func(want string, refreshes int) {
		t.Helper()
		if got := strings.Join(rd.check(context.Background()), "; "); got != want {
			t.Errorf("at %s: check = %q, want %q", now.Format(time.TimeOnly), got, want)
		}
		rd.mu.Lock()
		n := rd.refreshes
		rd.mu.Unlock()
		if n != refreshes {
			t.Errorf("at %s: %d refreshes started, want %d", now.Format(time.TimeOnly), n, refreshes)
		}
	}
	const never = "keys: no JWKS fetch has succeeded yet"
	check(never, 1)
	<-refreshed
	now = now.Add(9 * time.Second)
	check(never, 1)
	rd.fetched(falwebhook.FetchInfo{Err: errors.New("down")})
	now = now.Add(time.Second)
	check(never, 2)
	<-refreshed

	rd.fetched(falwebhook.FetchInfo{Keys: 1, Expiry: now.Add(time.Hour)})
	rd.fetched(falwebhook.FetchInfo{Keys: 1, Expiry: now.Add(time.Minute)}) // an older fetch reported late
	check("", 2)
	now = now.Add(time.Hour + keysMaxStale - time.Second)
	check("", 2)
	now = now.Add(time.Second)
	check("keys: the last good keys expired more than 24h0m0s ago", 3)
	<-refreshed

	rd.stopping.Store(true)
	rd.static = true
	check("shutting down", 3)
}
