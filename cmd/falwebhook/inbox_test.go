package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// inboxArrival is one request the app behind an inbox received.
type inboxArrival struct {
	header http.Header
	body   []byte
	status int // what the app answered; 0 when the request broke off
}

// inboxApp is an app slower than any sender waits: each request blocks
// until the test releases it (one token on gate, or gate closed). The
// request ids in failOnce are answered 500 on their first arrival.
type inboxApp struct {
	*httptest.Server
	gate     chan struct{}
	failOnce map[string]bool

	mu       sync.Mutex // guards arrivals
	arrivals map[string][]*inboxArrival
	changed  chan struct{} // closed and replaced on every change
}

func newInboxApp(t testing.TB, failOnce ...string) *inboxApp {
	a := &inboxApp{gate: make(chan struct{}), failOnce: map[string]bool{}, arrivals: map[string][]*inboxArrival{}, changed: make(chan struct{})}
	for _, id := range failOnce {
		a.failOnce[id] = true
	}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(falwebhook.HeaderRequestID)
		arr := &inboxArrival{header: r.Header.Clone(), body: body}
		a.mu.Lock()
		first := len(a.arrivals[id]) == 0
		a.arrivals[id] = append(a.arrivals[id], arr)
		a.notifyLocked()
		a.mu.Unlock()
		select {
		case <-a.gate:
		case <-r.Context().Done():
			return
		}
		status := http.StatusNoContent
		if first && a.failOnce[id] {
			status = http.StatusInternalServerError
		}
		a.mu.Lock()
		arr.status = status
		a.notifyLocked()
		a.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(func() {
		a.releaseAll()
		a.Close()
	})
	return a
}

func (a *inboxApp) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

var releaseOnce sync.Map // *inboxApp: *sync.Once

// releaseAll lets every request through, now and later.
func (a *inboxApp) releaseAll() {
	o, _ := releaseOnce.LoadOrStore(a, &sync.Once{})
	o.(*sync.Once).Do(func() { close(a.gate) })
}

// waitUntil blocks until cond holds over the arrivals, failing the test
// after 30 s.
func (a *inboxApp) waitUntil(t testing.TB, what string, cond func(map[string][]*inboxArrival) bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		ok, changed := cond(a.arrivals), a.changed
		a.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("still waiting after 30s for the app: %s; it has %s", what, a.summary())
		}
	}
}

// summary lists, per request id, the statuses the app answered.
func (a *inboxApp) summary() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := slices.Sorted(func(yield func(string) bool) {
		for id := range a.arrivals {
			if !yield(id) {
				return
			}
		}
	})
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "%s:", id)
		for _, arr := range a.arrivals[id] {
			fmt.Fprintf(&b, " %d", arr.status)
		}
		b.WriteString("; ")
	}
	return b.String()
}

func (a *inboxApp) snapshot() map[string][]inboxArrival {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]inboxArrival{}
	for id, arrs := range a.arrivals {
		for _, arr := range arrs {
			out[id] = append(out[id], *arr)
		}
	}
	return out
}

// delivered counts the request ids the app answered with 2xx.
func delivered(arrivals map[string][]*inboxArrival) int {
	n := 0
	for _, arrs := range arrivals {
		for _, arr := range arrs {
			if arr.status/100 == 2 {
				n++
				break
			}
		}
	}
	return n
}

// sendTimed posts a signed delivery with a client that gives up after
// 10 s (less than the app takes) and returns the status and the duplicate
// header.
func sendTimed(t testing.TB, client *http.Client, fal *faltest.Signer, hook, id, user string) (int, string) {
	t.Helper()
	d := faltest.Delivery{Body: faltest.OKBody(id, json.RawMessage(`{"seed": 18446744073709551615, "images": []}`)), UserID: user}
	req, err := http.NewRequest(http.MethodPost, hook, bytes.NewReader(d.Body))
	if err != nil {
		t.Fatal(err)
	}
	fal.Sign(d).Set(req.Header)
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("delivery %s: %v", id, err)
		return 0, ""
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(falwebhook.HeaderDuplicate)
}

var traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$`)

// checkForwarded checks a request the app got from the inbox: the stored
// body byte for byte and the headers the inbox sends, and only those.
func checkForwarded(t testing.TB, id string, arr inboxArrival, attempt int) {
	t.Helper()
	want := faltest.OKBody(id, json.RawMessage(`{"seed": 18446744073709551615, "images": []}`))
	if !bytes.Equal(arr.body, want) {
		t.Errorf("%s: the app got body %q, want %q", id, arr.body, want)
	}
	h := arr.header
	for k, v := range map[string]string{
		falwebhook.HeaderRequestID: id,
		falwebhook.HeaderUserID:    "me",
		"Idempotency-Key":          id,
		"Falwebhook-Attempt":       fmt.Sprint(attempt),
		"Falwebhook-Source":        "webhook",
		"Falwebhook-Verified":      "true",
		"Content-Type":             "application/json",
		"Content-Length":           fmt.Sprint(len(want)),
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s attempt %d: the app got %s %q, want %q", id, attempt, k, got, v)
		}
	}
	if tp := h.Get("Traceparent"); !traceparentRE.MatchString(tp) {
		t.Errorf("%s: traceparent %q", id, tp)
	}
	for k := range h {
		switch k {
		case falwebhook.HeaderRequestID, falwebhook.HeaderUserID, "Idempotency-Key", "Falwebhook-Attempt", "Falwebhook-Source",
			"Falwebhook-Verified", "Content-Type", "Content-Length", "Traceparent", "User-Agent", "Accept-Encoding":
		default:
			t.Errorf("%s: the app got header %s: %q, which the inbox does not send", id, k, h.Values(k))
		}
	}
}

// metric returns the value of the sample of name with the labels (all of
// them, as k=v pairs), or -1 when absent.
func metric(t *testing.T, text, name string, labels ...string) float64 {
	t.Helper()
next:
	for _, s := range promSamples(t, text, name) {
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if s.labels[k] != v {
				continue next
			}
		}
		return s.value
	}
	return -1
}

// withRetryDelay makes the inbox retry after d for the test.
func withRetryDelay(t *testing.T, d time.Duration) {
	old := inboxRetryDelay
	inboxRetryDelay = d
	t.Cleanup(func() { inboxRetryDelay = old })
}

// TestListenInboxSQLite runs listen --inbox sqlite: in front of an app
// slower than the sender waits: deliveries are acknowledged at once, each
// reaches the app once with its Idempotency-Key and exact body, a failing
// attempt is retried, forgeries and foreign deliveries are never stored,
// the metrics count it all, and a restart on the same file knows what was
// forwarded.
func TestListenInboxSQLite(t *testing.T) {
	withRetryDelay(t, 10*time.Millisecond)
	dir := t.TempDir()
	fal := faltest.SignerFromName("inbox test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	app := newInboxApp(t, "d-3")
	db := filepath.Join(dir, "inbox.db")
	args := []string{"--jwks", jwks, "--user-id", "me", "--forward", app.URL + "/hook", "--inbox", "sqlite:" + db, "--inbox-workers", "4"}
	l := startListen(t, args...)
	wctx := waitCtx(t)
	wantContains(t, "stderr", l.stderr.waitFor(wctx, t, "forwarding stored deliveries"),
		"dedupe by the inbox: one job per request id",
		"inbox: SQLite file "+db+" (this process owns it); a delivery is acknowledged once stored; 0 deliveries left being forwarded by a process that stopped resumed at once",
		"forwarding stored deliveries to "+app.URL+"/hook: up to 4 at once, each attempt up to 5m0s")
	if code, body := get(t, l.admin+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q", code, body)
	}

	// Deliveries are acknowledged while the app holds every one it gets.
	client := &http.Client{Timeout: 10 * time.Second}
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("d-%d", i))
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if code, dup := sendTimed(t, client, fal, l.hook, id, "me"); code != http.StatusOK || dup != "" {
				t.Errorf("%s answered %d %q, want 200 stored", id, code, dup)
			}
		})
	}
	wg.Wait()
	// Repeats, forgeries, tampering and another account's deliveries.
	if code, dup := sendTimed(t, client, fal, l.hook, "d-0", "me"); code != http.StatusOK || dup != "completed" {
		t.Errorf("repeat of d-0 answered %d %q, want 200 completed", code, dup)
	}
	if code, _ := sendTimed(t, client, faltest.SignerFromName("inbox test: forger"), l.hook, "forged-1", "me"); code != http.StatusUnauthorized {
		t.Errorf("forgery answered %d, want 401", code)
	}
	if code, _ := sendTimed(t, client, fal, l.hook, "foreign-1", "someone-else"); code != http.StatusForbidden {
		t.Errorf("another account's delivery answered %d, want 403", code)
	}
	d := faltest.Delivery{Body: faltest.OKBody("tampered-1", json.RawMessage(`{"seed": 1}`)), UserID: "me"}
	req, _ := fal.NewClientRequest(t.Context(), l.hook, d)
	req.Body = io.NopCloser(bytes.NewReader(bytes.Replace(d.Body, []byte("1}"), []byte("2}"), 1)))
	if code, _ := do(t, req); code != http.StatusUnauthorized {
		t.Errorf("tampered delivery answered %d, want 401", code)
	}

	// The app holds four (the workers); the others wait in the queue.
	app.waitUntil(t, "four deliveries being forwarded", func(m map[string][]*inboxArrival) bool { return len(m) == 4 })
	_, text := get(t, l.admin+"/metrics")
	if got := metric(t, text, "falwebhook_inbox_queue_depth"); got != 6 {
		t.Errorf("queue depth %v while the app holds 4 of 10, want 6", got)
	}
	if got := metric(t, text, "falwebhook_inbox_jobs", "state=running"); got != 4 {
		t.Errorf("running jobs %v, want 4", got)
	}
	if got := metric(t, text, "falwebhook_inbox_oldest_waiting_seconds"); got < 0 || got > 60 {
		t.Errorf("oldest waiting %v s, want the few seconds since the first was stored", got)
	}
	if got := metric(t, text, "falwebhook_inbox_up"); got != 1 {
		t.Errorf("falwebhook_inbox_up %v, want 1", got)
	}

	app.releaseAll()
	app.waitUntil(t, "every delivery answered 2xx", func(m map[string][]*inboxArrival) bool { return delivered(m) == len(ids) })
	out := l.stdout.waitFor(wctx, t, "forwarded from the inbox (attempt 2, webhook)")
	wantContains(t, "log", out,
		"  200  d-1                                   me                -      accepted, stored; forwarding from the inbox",
		"  200  d-0                                   me                -      duplicate: already stored; not forwarded again",
		"  401  forged-1",
		"  403  foreign-1",
		"fwd  d-3                                   me                OK     forward from the inbox failed (attempt 1, webhook): app answered 500: \"\"; retrying",
		"fwd  d-3                                   me                OK     forwarded from the inbox (attempt 2, webhook): app answered 204")

	got := app.snapshot()
	if len(got) != len(ids) {
		t.Errorf("the app got request ids %s, want exactly the 10 genuine ones", app.summary())
	}
	for _, id := range ids {
		arrs := got[id]
		want := 1
		if id == "d-3" {
			want = 2
		}
		if len(arrs) != want {
			t.Errorf("%s reached the app %d times, want %d", id, len(arrs), want)
			continue
		}
		for i, arr := range arrs {
			checkForwarded(t, id, arr, i+1)
		}
	}

	waitMetrics(t, l.admin, "every job completed", func(text string) bool {
		return metric(t, text, "falwebhook_inbox_forwarded_total") == 10 && metric(t, text, "falwebhook_inbox_jobs", "state=running") == 0
	})
	_, text = get(t, l.admin+"/metrics")
	for name, want := range map[string]float64{
		"falwebhook_inbox_forward_attempts_total": 11,
		"falwebhook_inbox_queue_depth":            0,
		"falwebhook_inbox_oldest_waiting_seconds": 0,
		"falwebhook_inbox_resumed_at_start":       0,
	} {
		if got := metric(t, text, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// The Verifier has no dedupe of its own: the inbox answered the repeat.
	if got := outcomeCounts(t, text, "falwebhook_deliveries_total"); got["accepted"] != 11 || got["duplicate"] != 0 {
		t.Errorf("falwebhook_deliveries_total by outcome %v, want 11 accepted (one a repeat the inbox found stored) and no dedupe", got)
	}
	if got := metric(t, text, "falwebhook_inbox_forward_failures_total", "reason=status"); got != 1 {
		t.Errorf("failures by status %v, want 1", got)
	}
	if code := l.stop(t); code != exitOK {
		t.Fatalf("listen exited %d, want 0\nstderr: %s", code, l.stderr.String())
	}

	// Started again on the same file: a repeat is still a duplicate.
	l = startListen(t, args...)
	if code, dup := sendTimed(t, client, fal, l.hook, "d-5", "me"); code != http.StatusOK || dup != "completed" {
		t.Errorf("repeat of d-5 after a restart answered %d %q, want 200 completed", code, dup)
	}
	if code := l.stop(t); code != exitOK {
		t.Fatalf("listen exited %d, want 0\nstderr: %s", code, l.stderr.String())
	}
	if n := len(app.snapshot()["d-5"]); n != 1 {
		t.Errorf("d-5 reached the app %d times, want once", n)
	}
}

// waitMetrics polls /metrics until cond holds, failing after 30 s.
func waitMetrics(t *testing.T, admin, what string, cond func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, text := get(t, admin+"/metrics")
		if cond(text) {
			return text
		}
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after 30s for %s; /metrics:\n%s", what, text)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestListenInboxGracefulShutdown stops listen while the app holds a
// forward: the forward finishes, and listen exits 0.
func TestListenInboxGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("inbox test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	app := newInboxApp(t)
	db := filepath.Join(dir, "inbox.db")
	args := []string{"--jwks", jwks, "--any-user", "--forward", app.URL + "/hook", "--inbox", "sqlite:" + db}
	l := startListen(t, args...)
	client := &http.Client{Timeout: 10 * time.Second}
	if code, _ := sendTimed(t, client, fal, l.hook, "s-1", "me"); code != http.StatusOK {
		t.Fatalf("delivery answered %d, want 200", code)
	}
	app.waitUntil(t, "the forward", func(m map[string][]*inboxArrival) bool { return len(m["s-1"]) == 1 })
	l.cancel()
	l.stderr.waitFor(waitCtx(t), t, "shutting down")
	app.releaseAll()
	if code := l.stop(t); code != exitOK {
		t.Fatalf("listen exited %d, want 0\nstderr: %s", code, l.stderr.String())
	}
	wantContains(t, "stdout", l.stdout.String(), "forwarded from the inbox (attempt 1, webhook): app answered 204")
	// Completed: started again, nothing is forwarded again.
	l = startListen(t, args...)
	if code, dup := sendTimed(t, client, fal, l.hook, "s-1", "me"); code != http.StatusOK || dup != "completed" {
		t.Errorf("repeat after the restart answered %d %q, want 200 completed", code, dup)
	}
	l.stop(t)
	if n := len(app.snapshot()["s-1"]); n != 1 {
		t.Errorf("s-1 reached the app %d times, want once", n)
	}
}

func TestListenInboxUsageErrors(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("inbox test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	db := "sqlite:" + filepath.Join(dir, "inbox.db")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--inbox", db}, "--inbox needs --forward"},
		{[]string{"--inbox", db, "--forward", "http://127.0.0.1:1/", "--redis", "127.0.0.1:1"}, "--inbox and --redis contradict each other"},
		{[]string{"--inbox", db, "--forward", "http://127.0.0.1:1/", "--no-dedupe"}, "--inbox and --no-dedupe contradict each other"},
		{[]string{"--inbox", db, "--forward", "http://127.0.0.1:1/", "--inbox-workers", "0"}, "--inbox-workers must be between 1 and 1000"},
		{[]string{"--inbox-workers", "3"}, "--inbox-workers needs --inbox"},
		{[]string{"--inbox", "redis://127.0.0.1:1", "--forward", "http://127.0.0.1:1/"}, `--inbox "redis://127.0.0.1:1": want sqlite:PATH or a postgres:// (or postgresql://) URL`},
		{[]string{"--inbox", "sqlite:", "--forward", "http://127.0.0.1:1/"}, "want sqlite:PATH with a plain file path"},
		{[]string{"--inbox", "sqlite:" + filepath.Join(dir, "x.db?mode=memory"), "--forward", "http://127.0.0.1:1/"}, "need a plain file path"},
		{[]string{"--inbox", "postgres://u:secret@127.0.0.1:1/x?sslmode=bogus", "--forward", "http://127.0.0.1:1/"}, "postgres://u:xxxxx@127.0.0.1:1/x"},
	} {
		// Bounded: a listen that wrongly starts is stopped, and fails.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		var stdout, stderr bytes.Buffer
		code := run(ctx, append([]string{"listen", "--addr", "127.0.0.1:0", "--admin-addr", "", "--jwks", jwks, "--any-user"}, c.args...), strings.NewReader(""), &stdout, &stderr)
		cancel()
		r := result{code, stdout.String(), stderr.String()}
		if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("listen %v: %s\nwant exit %d and %q", c.args, r, exitUsage, c.want)
		}
		if strings.Contains(r.stderr, "secret") {
			t.Errorf("listen %v printed the password: %s", c.args, r.stderr)
		}
	}

	// One process owns a SQLite file.
	l := startListen(t, "--jwks", jwks, "--any-user", "--forward", "http://127.0.0.1:1/", "--inbox", db)
	r := runCmd(t, "", "listen", "--addr", "127.0.0.1:0", "--admin-addr", "", "--jwks", jwks, "--any-user", "--forward", "http://127.0.0.1:1/", "--inbox", db)
	if r.code != exitUsage || !strings.Contains(r.stderr, "in use by another process") {
		t.Errorf("a second listen on the same file: %s\nwant it refused", r)
	}
	l.stop(t)
}

// postgresURL returns the server of FALWEBHOOK_POSTGRES_URL, or skips
// (fails under CI=true).
func postgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("FALWEBHOOK_POSTGRES_URL")
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FALWEBHOOK_POSTGRES_URL is not set: CI runs these tests with a real Postgres (bash .ci/with-postgres.sh go test ./...)")
		}
		t.Skip("no Postgres: set FALWEBHOOK_POSTGRES_URL (bash .ci/with-postgres.sh go test ./... starts a throwaway server and sets it)")
	}
	return u
}

// newDatabase creates a database of the test's own on the Postgres server,
// dropped when the test ends, and returns its URL.
func newDatabase(t testing.TB) (string, string) {
	t.Helper()
	base := postgresURL(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to FALWEBHOOK_POSTGRES_URL: %v", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "falwebhook_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String(), name
}

// TestListenInboxPostgres runs two listen --inbox postgres:// on one
// database in front of one app: deliveries spread over both, and the same
// ones at both at once, reach the app once each; /readyz turns 503 while
// the database refuses connections.
func TestListenInboxPostgres(t *testing.T) {
	withRetryDelay(t, 10*time.Millisecond)
	pgURL, dbName := newDatabase(t)
	dir := t.TempDir()
	fal := faltest.SignerFromName("inbox test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(fal))
	app := newInboxApp(t, "p-2")
	args := []string{"--jwks", jwks, "--user-id", "me", "--forward", app.URL + "/hook", "--inbox", pgURL, "--forward-timeout", "20s"}
	ls := []*listener{startListen(t, args...), startListen(t, args...)}
	for _, l := range ls {
		wantContains(t, "stderr", l.stderr.waitFor(waitCtx(t), t, "forwarding stored deliveries"),
			", shared by every listen using it; a delivery is acknowledged once stored;",
			"those left are taken back 1m20s after their attempt started")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var ids []string
	var wg sync.WaitGroup
	for i := range 12 {
		id := fmt.Sprintf("p-%d", i)
		ids = append(ids, id)
		// Each delivery at both gateways at once: one stores it, the
		// other finds it stored.
		var mu sync.Mutex
		var dups int
		var inner sync.WaitGroup
		for _, l := range ls {
			inner.Go(func() {
				code, dup := sendTimed(t, client, fal, l.hook, id, "me")
				if code != http.StatusOK {
					t.Errorf("%s answered %d, want 200", id, code)
				}
				mu.Lock()
				if dup != "" {
					dups++
				}
				mu.Unlock()
			})
		}
		wg.Go(func() {
			inner.Wait()
			if dups != 1 {
				t.Errorf("%s at both gateways at once: %d answered as duplicates, want 1", id, dups)
			}
		})
	}
	wg.Wait()
	if code, _ := sendTimed(t, client, faltest.SignerFromName("inbox test: forger"), ls[0].hook, "forged-1", "me"); code != http.StatusUnauthorized {
		t.Errorf("forgery answered %d, want 401", code)
	}
	app.releaseAll()
	app.waitUntil(t, "every delivery answered 2xx", func(m map[string][]*inboxArrival) bool { return delivered(m) == len(ids) })
	got := app.snapshot()
	if len(got) != len(ids) {
		t.Errorf("the app got %s, want exactly the genuine ones", app.summary())
	}
	for _, id := range ids {
		want := 1
		if id == "p-2" {
			want = 2
		}
		if len(got[id]) != want {
			t.Errorf("%s reached the app %d times, want %d", id, len(got[id]), want)
			continue
		}
		for i, arr := range got[id] {
			checkForwarded(t, id, arr, i+1)
		}
	}
	// The app has answered; each gateway counts the forward once it has
	// read that answer, a moment later: poll, bounded.
	var forwarded float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		forwarded = 0
		for _, l := range ls {
			_, text := get(t, l.admin+"/metrics")
			forwarded += metric(t, text, "falwebhook_inbox_forwarded_total")
			if got := metric(t, text, "falwebhook_inbox_resumed_at_start"); got != -1 {
				t.Errorf("falwebhook_inbox_resumed_at_start on Postgres: %v, want it absent", got)
			}
		}
		if forwarded >= float64(len(ids)) || time.Now().After(deadline) {
			break
		}
	}
	if forwarded != float64(len(ids)) {
		t.Errorf("the gateways forwarded %v between them, want %d", forwarded, len(ids))
	}

	// The database refuses connections: /readyz says so; then recovers.
	admin, err := pgx.Connect(t.Context(), postgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	exec("ALTER DATABASE " + dbName + " ALLOW_CONNECTIONS false")
	exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + dbName + "'")
	for _, l := range ls {
		body := pollAdmin(t, l.admin+"/readyz", http.StatusServiceUnavailable)
		if !strings.HasPrefix(body, "not ready: inbox database: no answer within 1s: ") {
			t.Errorf("/readyz with the database refusing: %q", body)
		}
		text := waitMetrics(t, l.admin, "falwebhook_inbox_up 0", func(text string) bool { return metric(t, text, "falwebhook_inbox_up") == 0 })
		if got := metric(t, text, "falwebhook_inbox_queue_depth"); got != -1 {
			t.Errorf("queue depth %v with the database refusing, want it absent", got)
		}
	}
	exec("ALTER DATABASE " + dbName + " ALLOW_CONNECTIONS true")
	for _, l := range ls {
		pollAdmin(t, l.admin+"/readyz", http.StatusOK)
	}
	for _, l := range ls {
		if code := l.stop(t); code != exitOK {
			t.Errorf("listen exited %d, want 0\nstderr: %s", code, l.stderr.String())
		}
	}
}

// pollAdmin polls url until it answers want, failing after 30 s, and
// returns the body.
func pollAdmin(t *testing.T, url string, want int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, url)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still answers %d %q after 30s, want %d", url, code, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// percentile returns the p-th percentile of sorted durations.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// headWriter keeps what is written until it holds two lines, then drops
// the rest: the addresses listen announces, without its delivery lines.
type headWriter struct {
	mu   sync.Mutex
	buf  []byte
	full chan struct{}
}

func (w *headWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Count(w.buf, []byte("\n")) < 2 {
		w.buf = append(w.buf, p...)
		if bytes.Count(w.buf, []byte("\n")) >= 2 {
			close(w.full)
		}
	}
	return len(p), nil
}

// runBenchListen runs listen --json with args in-process for a benchmark
// and returns the URL of its deliveries and of its admin listener.
func runBenchListen(b *testing.B, args ...string) (hook, admin string) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &headWriter{full: make(chan struct{})}
	stderr := newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"listen", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--json"}, args...), strings.NewReader(""), out, stderr)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-out.full:
	case code := <-done:
		b.Fatalf("listen exited %d: %s", code, stderr.String())
	case <-time.After(30 * time.Second):
		b.Fatal("listen did not announce its addresses")
	}
	lines := strings.SplitN(string(out.buf), "\n", 3)
	var first, second struct{ Listening, Admin string }
	if json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[1]), &second) != nil {
		b.Fatalf("stdout starts %q", out.buf)
	}
	return first.Listening + "/fal/webhook", second.Admin
}

// BenchmarkListenAck measures how fast listen acknowledges deliveries
// from 32 concurrent senders: "verify" is the floor (listen answering 200
// itself once verified, dedupe in memory), "inbox-sqlite" stores each in
// the inbox first (and forwards it to a fast app meanwhile). It reports
// acknowledgement latency p50 and p99, acknowledged deliveries per
// second, and for the inbox forwarded deliveries per second (until the
// app has them all).
func BenchmarkListenAck(b *testing.B) {
	const senders = 32
	fal := faltest.SignerFromName("inbox bench: fal")
	jwks := writeTestFileTB(b, b.TempDir(), "jwks.json", faltest.JWKS(fal))
	for _, mode := range []string{"verify", "inbox-sqlite"} {
		b.Run(mode, func(b *testing.B) {
			var forwarded sync.WaitGroup
			appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusNoContent)
				forwarded.Done()
			}))
			defer appSrv.Close()
			args := []string{"--jwks", jwks, "--user-id", "me"}
			if mode == "inbox-sqlite" {
				args = append(args, "--forward", appSrv.URL, "--inbox", "sqlite:"+filepath.Join(b.TempDir(), "inbox.db"), "--inbox-workers", "16")
			}
			hook, _ := runBenchListen(b, args...)
			type signed struct {
				h    faltest.Headers
				body []byte
			}
			reqs := make([]signed, b.N)
			for i := range reqs {
				d := faltest.Delivery{Body: faltest.OKBody(fmt.Sprintf("bench-%s-%d", mode, i), json.RawMessage(`{"seed": 1}`)), UserID: "me"}
				reqs[i] = signed{fal.Sign(d), d.Body}
			}
			if mode == "inbox-sqlite" {
				forwarded.Add(b.N)
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: senders}, Timeout: 30 * time.Second}
			lat := make([][]time.Duration, senders)
			var next sync.Mutex
			n := 0
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for s := range senders {
				wg.Go(func() {
					for {
						next.Lock()
						i := n
						n++
						next.Unlock()
						if i >= len(reqs) {
							return
						}
						req, _ := http.NewRequest(http.MethodPost, hook, bytes.NewReader(reqs[i].body))
						reqs[i].h.Set(req.Header)
						t0 := time.Now()
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						lat[s] = append(lat[s], time.Since(t0))
						if resp.StatusCode != http.StatusOK {
							b.Errorf("delivery answered %d", resp.StatusCode)
							return
						}
					}
				})
			}
			wg.Wait()
			acked := time.Since(start)
			b.StopTimer()
			var all []time.Duration
			for _, l := range lat {
				all = append(all, l...)
			}
			b.ReportMetric(float64(b.N)/acked.Seconds(), "acks/s")
			b.ReportMetric(float64(percentile(all, 0.50).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
			if mode == "inbox-sqlite" {
				forwarded.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "forwarded/s")
			}
			client.CloseIdleConnections()
		})
	}
}

func writeTestFileTB(tb testing.TB, dir, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}
