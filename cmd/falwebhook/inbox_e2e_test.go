package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// TestGatewayInboxSurvivesKill runs the real command, listen --inbox
// sqlite:PATH, in front of an app slower than the sender waits, kills it
// with SIGKILL while it forwards, and starts it again on the same file:
// every delivery reaches the app, none is lost, and only the one being
// forwarded when the gateway died reaches it twice, with the same
// Idempotency-Key.
func TestGatewayInboxSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command and runs processes")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := buildCommand(ctx, t)
	fal := faltest.SignerFromName("inbox e2e: fal")
	dir := t.TempDir()
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	app := newInboxApp(t)
	db := filepath.Join(dir, "inbox.db")
	// One worker: one delivery in flight at a time.
	args := []string{"--jwks", jwks, "--user-id", "me", "--forward", app.URL + "/hook", "--inbox", "sqlite:" + db,
		"--inbox-workers", "1", "--shutdown-timeout", "10s"}
	a := startGateway(ctx, t, bin, "gateway A", args...)
	pollReady(ctx, t, a, http.StatusOK, 15*time.Second)

	client := &http.Client{Timeout: 10 * time.Second}
	var ids []string
	for i := range 8 {
		id := fmt.Sprintf("k-%d", i)
		ids = append(ids, id)
		if code, dup := sendTimed(t, client, fal, a.url+"/fal/webhook", id, "me"); code != http.StatusOK || dup != "" {
			t.Fatalf("%s answered %d %q, want 200 stored", id, code, dup)
		}
	}
	// Three go through; the fourth is held by the app.
	for range 3 {
		select {
		case app.gate <- struct{}{}:
		case <-ctx.Done():
			t.Fatal("the app got no delivery to release")
		}
	}
	app.waitUntil(t, "three delivered and a fourth in flight", func(m map[string][]*inboxArrival) bool {
		return len(m) == 4 && delivered(m) == 3
	})
	// The three completions are committed: five jobs are left (none
	// completed is counted among falwebhook_inbox_jobs).
	waitMetricsProc(ctx, t, a, "three jobs completed", func(text string) bool { return sumJobs(t, text) == 5 })
	var inFlight string
	for id, arrs := range app.snapshot() {
		if arrs[0].status == 0 {
			inFlight = id
		}
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited

	// Started again on the same file, it takes back the delivery its
	// predecessor was forwarding at once.
	b := startGateway(ctx, t, bin, "gateway B", args...)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	b.stderr.waitFor(wctx, t, "1 delivery left being forwarded by a process that stopped resumed at once")
	pollReady(ctx, t, b, http.StatusOK, 15*time.Second)
	app.releaseAll()
	app.waitUntil(t, "every delivery answered 2xx", func(m map[string][]*inboxArrival) bool { return delivered(m) == len(ids) })

	got := app.snapshot()
	if len(got) != len(ids) {
		t.Errorf("the app got %s, want exactly the 8 deliveries", app.summary())
	}
	for _, id := range ids {
		want := 1
		if id == inFlight {
			want = 2
		}
		if len(got[id]) != want {
			t.Errorf("%s reached the app %d times, want %d (in flight at the kill: %s)", id, len(got[id]), want, inFlight)
			continue
		}
		for i, arr := range got[id] {
			checkForwarded(t, id, arr, i+1)
		}
	}
	// Known after the restart: a repeat is not forwarded again.
	if code, dup := sendTimed(t, client, fal, b.url+"/fal/webhook", ids[0], "me"); code != http.StatusOK || dup != "completed" {
		t.Errorf("repeat of %s answered %d %q, want 200 completed", ids[0], code, dup)
	}
	text := waitMetricsProc(ctx, t, b, "every job completed", func(text string) bool { return sumJobs(t, text) == 0 })
	if got := metric(t, text, "falwebhook_inbox_resumed_at_start"); got != 1 {
		t.Errorf("falwebhook_inbox_resumed_at_start = %v, want 1", got)
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.exited:
		if b.err != nil {
			t.Errorf("gateway B exited with %v after SIGTERM, want status 0", b.err)
		}
	case <-time.After(20 * time.Second):
		t.Error("gateway B did not stop within 20s of SIGTERM")
	}
	if n := len(app.snapshot()[ids[0]]); n != 1 {
		t.Errorf("%s reached the app %d times, want once", ids[0], n)
	}
}

// sumJobs adds up falwebhook_inbox_jobs over its states (-1 when absent).
func sumJobs(t *testing.T, text string) float64 {
	t.Helper()
	ss := promSamples(t, text, "falwebhook_inbox_jobs")
	if len(ss) == 0 {
		return -1
	}
	var n float64
	for _, s := range ss {
		n += s.value
	}
	return n
}

// waitMetricsProc polls a gateway's /metrics until cond holds, failing
// after 30 s.
func waitMetricsProc(ctx context.Context, t *testing.T, g *gatewayProc, what string, cond func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var text string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.admin+"/metrics", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			text = string(b)
			if cond(text) {
				return text
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still waiting for %s; /metrics:\n%s", g.name, what, grepLines(text, "falwebhook_inbox_"))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// grepLines returns the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
