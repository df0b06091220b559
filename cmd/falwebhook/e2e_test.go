package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// The end-to-end test runs the real command: two "falwebhook listen"
// processes sharing one redis-server in front of one app, as replicas
// behind a load balancer would.

// unavailable skips the test for want of msg, or fails it under CI=true,
// where everything must run.
func unavailable(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI must provide it (.ci/install-redis.sh installs it)", msg)
	}
	t.Skipf("%s; skipping (install redis-server to run it)", msg)
}

// redisServer is a redis-server process of the test's own.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
}

// startRedis starts a redis-server on a free loopback port, without
// persistence, and kills it at the end of the test.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server is not installed (apt-get install -y redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	r := &redisServer{addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
	c := redis.NewClient(&redis.Options{Addr: r.addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING", r.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// buildCommand builds the falwebhook binary into a temporary directory.
func buildCommand(ctx context.Context, t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "falwebhook")
	out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// gatewayProc is one "falwebhook listen" process.
type gatewayProc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	url, admin     string
	exited         chan struct{} // closed when the process has exited
	err            error         // its Wait error, once exited
}

// startGateway starts "falwebhook listen --addr 127.0.0.1:0 --admin-addr
// 127.0.0.1:0 --json args..." and reads its addresses from stdout.
func startGateway(ctx context.Context, t *testing.T, bin, name string, args ...string) *gatewayProc {
	t.Helper()
	g := &gatewayProc{name: name, stdout: newSyncBuffer(), stderr: newSyncBuffer(), exited: make(chan struct{})}
	g.cmd = exec.Command(bin, append([]string{"listen", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--json"}, args...)...)
	g.cmd.Stdout, g.cmd.Stderr = g.stdout, g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		g.err = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr:\n%s", name, g.stdout.String(), name, g.stderr.String())
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out := g.stdout.waitFor(wctx, t, `{"admin":`)
	lines := strings.SplitN(out, "\n", 3)
	var first, second struct{ Listening, Admin string }
	if len(lines) < 3 || json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[1]), &second) != nil ||
		first.Listening == "" || second.Admin == "" {
		t.Fatalf("%s: stdout does not start with its two addresses:\n%s", name, out)
	}
	g.url, g.admin = first.Listening, second.Admin
	return g
}

// pollReady polls the gateway's /readyz, at most every 50 ms, until it
// answers want, and returns the last body; it fails the test after bound.
func pollReady(ctx context.Context, t *testing.T, g *gatewayProc, want int, bound time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var status int
	var body string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.admin+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status, body = resp.StatusCode, string(b)
			if status == want {
				return body
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: /readyz still answers %d %q after %s, want %d", g.name, status, body, bound, want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// countingApp is the app behind the gateways: it counts the deliveries it
// gets by request id and keeps the traceparent of each.
type countingApp struct {
	*httptest.Server
	mu          sync.Mutex // guards the maps
	counts      map[string]int
	traceparent map[string]string
}

func newCountingApp(t *testing.T) *countingApp {
	a := &countingApp{counts: map[string]int{}, traceparent: map[string]string{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(falwebhook.HeaderRequestID)
		if !bytes.Contains(body, []byte(`"request_id": "`+id+`"`)) {
			t.Errorf("the app got request id %q with a body for another: %s", id, body)
		}
		a.mu.Lock()
		a.counts[id]++
		a.traceparent[id] = r.Header.Get("Traceparent")
		a.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *countingApp) snapshot() (map[string]int, map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.counts), maps.Clone(a.traceparent)
}

// TestGatewayEndToEnd runs two gateways with --redis and --user-id in
// front of one app and checks exactly-once delivery across them, that
// nothing forged or foreign gets through, /readyz through a Redis outage,
// the metrics, the trace context and a graceful stop.
func TestGatewayEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command and runs processes")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	rs := startRedis(t)
	bin := buildCommand(ctx, t)

	fal := faltest.SignerFromName("e2e: fal")
	jwks := writeTestFile(t, t.TempDir(), "jwks.json", faltest.JWKS(fal))
	app := newCountingApp(t)
	args := []string{"--jwks", jwks, "--forward", app.URL + "/hook", "--redis", rs.addr, "--user-id", "me", "--shutdown-timeout", "10s"}
	gws := []*gatewayProc{startGateway(ctx, t, bin, "gateway A", args...), startGateway(ctx, t, bin, "gateway B", args...)}
	for _, g := range gws {
		pollReady(ctx, t, g, http.StatusOK, 15*time.Second)
	}

	client := &http.Client{Timeout: 20 * time.Second}
	// want counts the outcomes each gateway's answers show, for /metrics.
	want := []map[string]int{{}, {}}
	var wantMu sync.Mutex // guards want
	send := func(gi int, h faltest.Headers, body []byte) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, gws[gi].url+"/fal/webhook", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		h.Set(req.Header)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", gws[gi].name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		dup := resp.Header.Get(falwebhook.HeaderDuplicate)
		outcome := map[string]string{"200/": "accepted", "204/": "accepted", "200/completed": "duplicate", "409/in-progress": "in_progress",
			"401/": "signature_mismatch", "403/": "unexpected_user"}[fmt.Sprintf("%d/%s", resp.StatusCode, dup)]
		if outcome == "" {
			t.Errorf("%s answered %d (%s %q), which no delivery here should get", gws[gi].name, resp.StatusCode, falwebhook.HeaderDuplicate, dup)
		}
		wantMu.Lock()
		want[gi][outcome]++
		wantMu.Unlock()
		return resp.StatusCode, dup
	}
	delivery := func(id, user string) faltest.Delivery {
		return faltest.Delivery{Body: faltest.OKBody(id, json.RawMessage(`{"seed": 42}`)), UserID: user}
	}
	genuine := map[string]int{} // request id: times it must reach the app

	// Genuine deliveries, spread over both gateways.
	for i := range 6 {
		id := fmt.Sprintf("g-%d", i)
		d := delivery(id, "me")
		if status, dup := send(i%2, fal.Sign(d), d.Body); status != http.StatusNoContent || dup != "" {
			t.Errorf("%s at %s answered %d %q, want the app's 204", id, gws[i%2].name, status, dup)
		}
		genuine[id] = 1
	}

	// The same delivery at both gateways at once, then fal's retries.
	for i := range 4 {
		id := fmt.Sprintf("c-%d", i)
		d := delivery(id, "me")
		h := fal.Sign(d)
		start := make(chan struct{})
		type answer struct {
			status int
			dup    string
		}
		answers := make([]answer, 2)
		var wg sync.WaitGroup
		for gi := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				answers[gi].status, answers[gi].dup = send(gi, h, d.Body)
			}()
		}
		close(start)
		wg.Wait()
		handled := 0
		for gi, a := range answers {
			if a.status == http.StatusNoContent && a.dup == "" {
				handled++
				// The answer goes out before the completion is recorded;
				// the delivery's line is printed after.
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				gws[gi].stdout.waitFor(wctx, t, `"status":204,"request_id":"`+id+`"`)
				cancel()
			}
		}
		for gi, a := range answers {
			switch {
			case a.status == http.StatusConflict:
				// fal retries later: by then it is done.
				if status, dup := send(gi, h, d.Body); status != http.StatusOK || dup != "completed" {
					t.Errorf("%s: retry at %s answered %d %q, want 200 completed", id, gws[gi].name, status, dup)
				}
			}
		}
		if handled != 1 {
			t.Errorf("%s sent to both gateways at once: answers %+v, want exactly one handled", id, answers)
		}
		if status, dup := send(i%2, h, d.Body); status != http.StatusOK || dup != "completed" {
			t.Errorf("%s: replay answered %d %q, want 200 completed", id, status, dup)
		}
		genuine[id] = 1
	}

	// A forgery, a tampered body and another fal user's genuine delivery.
	d := delivery("forged-1", "me")
	if status, _ := send(0, faltest.SignerFromName("e2e: forger").Sign(d), d.Body); status != http.StatusUnauthorized {
		t.Errorf("forged delivery answered %d, want 401", status)
	}
	d = delivery("tampered-1", "me")
	h := fal.Sign(d)
	if status, _ := send(1, h, bytes.Replace(d.Body, []byte("42"), []byte("43"), 1)); status != http.StatusUnauthorized {
		t.Errorf("tampered delivery answered %d, want 401", status)
	}
	d = delivery("foreign-1", "someone-else")
	if status, _ := send(0, fal.Sign(d), d.Body); status != http.StatusForbidden {
		t.Errorf("another user's delivery answered %d, want 403", status)
	}

	counts, traceparents := app.snapshot()
	if !maps.Equal(counts, genuine) {
		t.Errorf("the app got %v, want each genuine delivery exactly once: %v", counts, genuine)
	}

	// Each forwarded delivery carries the trace its gateway logged.
	logged := 0
	for _, g := range gws {
		for _, line := range strings.Split(strings.TrimSpace(g.stdout.String()), "\n")[2:] {
			var l listenLine
			if err := json.Unmarshal([]byte(line), &l); err != nil {
				t.Errorf("%s: delivery line is not JSON: %q", g.name, line)
				continue
			}
			if l.Verdict != "accepted" {
				continue
			}
			logged++
			if tp := traceparents[l.RequestID]; !strings.HasPrefix(tp, "00-"+l.TraceID+"-") || len(tp) != 55 {
				t.Errorf("%s: %s logged trace %q, but the app got traceparent %q", g.name, l.RequestID, l.TraceID, tp)
			}
		}
	}
	if logged != len(genuine) {
		t.Errorf("the gateways logged %d accepted deliveries, want %d", logged, len(genuine))
	}

	// /metrics counted what each gateway answered.
	for gi, g := range gws {
		t.Logf("%s answered %v", g.name, want[gi])
		resp, err := client.Get(g.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text := string(b)
		if got := outcomeCounts(t, text, "falwebhook_deliveries_total"); !maps.Equal(got, want[gi]) {
			t.Errorf("%s: falwebhook_deliveries_total by outcome = %v, want %v", g.name, got, want[gi])
		}
		if got := outcomeCounts(t, text, "falwebhook_verification_duration_seconds_count"); !maps.Equal(got, want[gi]) {
			t.Errorf("%s: falwebhook_verification_duration_seconds_count by outcome = %v, want %v", g.name, got, want[gi])
		}
		for id := range genuine {
			if strings.Contains(text, id) {
				t.Errorf("%s: /metrics mentions request id %s", g.name, id)
			}
		}
	}

	// Redis stops answering: both gateways turn unready, and ready again
	// when it resumes.
	if err := rs.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for _, g := range gws {
		body := pollReady(ctx, t, g, http.StatusServiceUnavailable, 15*time.Second)
		if !strings.HasPrefix(body, "not ready: redis: ") {
			t.Errorf("%s: /readyz with Redis stopped says %q, want it to name Redis", g.name, body)
		}
	}
	if err := rs.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, g := range gws {
		pollReady(ctx, t, g, http.StatusOK, 15*time.Second)
	}
	d = delivery("after-1", "me")
	if status, _ := send(1, fal.Sign(d), d.Body); status != http.StatusNoContent {
		t.Errorf("delivery after Redis resumed answered %d, want 204", status)
	}
	genuine["after-1"] = 1
	if counts, _ := app.snapshot(); !maps.Equal(counts, genuine) {
		t.Errorf("the app got %v, want %v", counts, genuine)
	}

	// SIGTERM: both stop cleanly.
	for _, g := range gws {
		if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range gws {
		select {
		case <-g.exited:
			if g.err != nil {
				t.Errorf("%s exited with %v after SIGTERM, want status 0", g.name, g.err)
			}
			wantContains(t, g.name+" stderr", g.stderr.String(), `"msg":"stopped"`)
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop within 20s of SIGTERM", g.name)
		}
	}
}
