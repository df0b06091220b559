package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestMain makes every HTTP client that uses http.DefaultTransport (send,
// the JWKS fetcher's default client, listen's forwarder) refuse to dial
// anything but loopback, so that no test can reach fal or any other host,
// even by mistake.
func TestMain(m *testing.M) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("test guard: refusing to dial non-loopback address %s", addr)
		}
		return d.DialContext(ctx, network, addr)
	}
	http.DefaultTransport = tr
	redis.SetLogger(redisLogger{}) // as main does
	if kind := os.Getenv(benchChildEnv); kind != "" {
		os.Exit(serveBenchChild(kind, os.Args[1:]))
	}
	code := m.Run()
	stopBenchServers()
	os.Exit(code)
}

// result is what one run of the command produced.
type result struct {
	code   int
	stdout string
	stderr string
}

// runCmd runs the command in-process with args and stdin.
func runCmd(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, strings.NewReader(stdin), &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// wantCode fails the test when r did not exit with code.
func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\n%s", r.code, code, r)
	}
}

// wantContains fails the test when s lacks any of subs.
func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, s)
		}
	}
}

// wantNoRepeats fails the test when a line of out says a phrase of an
// error twice ("keys unavailable: ... keys unavailable"), or words a
// count badly ("none of 1 key").
func wantNoRepeats(t *testing.T, out string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		for _, phrase := range []string{
			"falwebhook: ", "keys unavailable", "fetching", "signature mismatch", "unexpected user",
			"missing header", "malformed header", "timestamp out of range", "not a fal event",
		} {
			if strings.Count(line, phrase) > 1 {
				t.Errorf("%q is said twice in %q", phrase, line)
			}
		}
		if strings.Contains(line, "none of 1 ") || strings.Contains(line, "disagrees") {
			t.Errorf("badly worded: %q", line)
		}
	}
}

// syncBuffer is a concurrency-safe output buffer whose readers can wait for
// text to appear, without sleeping.
type syncBuffer struct {
	mu      sync.Mutex    // guards the fields below
	buf     bytes.Buffer  // everything written
	changed chan struct{} // closed and replaced on every write
}

func newSyncBuffer() *syncBuffer {
	return &syncBuffer{changed: make(chan struct{})}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor blocks until the output contains sub and returns the output, or
// fails the test when ctx ends first.
func (b *syncBuffer) waitFor(ctx context.Context, t *testing.T, sub string) string {
	t.Helper()
	for {
		b.mu.Lock()
		s, changed := b.buf.String(), b.changed
		b.mu.Unlock()
		if strings.Contains(s, sub) {
			return s
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("waiting for %q in output: %v\noutput so far:\n%s", sub, ctx.Err(), s)
		}
	}
}

// waitCtx bounds a test's waits on other goroutines: a hang fails the test
// instead of the whole binary timing out.
func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUsage(t *testing.T) {
	r := runCmd(t, "")
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, "Usage:", "demo", "verify", "listen", "send", "keygen")

	r = runCmd(t, "", "help")
	wantCode(t, r, exitOK)
	wantContains(t, "stdout", r.stdout, "Usage:", "falwebhook <command>")

	r = runCmd(t, "", "frobnicate")
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, `unknown command "frobnicate"`)

	r = runCmd(t, "", "help", "frobnicate")
	wantCode(t, r, exitUsage)

	for _, name := range []string{"demo", "verify", "listen", "send", "keygen"} {
		r = runCmd(t, "", name, "-h")
		wantCode(t, r, exitOK)
		wantContains(t, name+" -h stderr", r.stderr, "Usage: falwebhook "+name)

		r = runCmd(t, "", "help", name)
		wantCode(t, r, exitOK)
		wantContains(t, "help "+name+" stdout", r.stdout, "Usage: falwebhook "+name)

		r = runCmd(t, "", name, "--no-such-flag")
		wantCode(t, r, exitUsage)
		wantContains(t, name+" bad flag stderr", r.stderr, "no-such-flag", "-h' for usage")
	}
}

func TestParseArgsInterspersed(t *testing.T) {
	e := &env{stdout: io.Discard, stderr: io.Discard}
	fs := newFlagSet(e, "x", "", "")
	a := fs.String("a", "", "")
	pos, _, ok := parseArgs(fs, []string{"one", "-a", "v", "two", "--", "-three"})
	if !ok || *a != "v" || strings.Join(pos, ",") != "one,two,-three" {
		t.Fatalf("got pos %q, -a %q, ok %v; want [one two -three], v, true", pos, *a, ok)
	}
}

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1767225600", 1767225600, true},
		{"2026-01-01T00:00:00Z", 1767225600, true},
		{"2026-01-01T01:00:00+01:00", 1767225600, true},
		{"+1767225600", 0, false},
		{"yesterday", 0, false},
		{"99999999999999999999", 0, false},
	} {
		got, err := parseTime(tc.in)
		if (err == nil) != tc.ok || tc.ok && got.Unix() != tc.want {
			t.Errorf("parseTime(%q) = %v, %v; want %d, ok %v", tc.in, got.Unix(), err, tc.want, tc.ok)
		}
	}
}

func TestDemo(t *testing.T) {
	r := runCmd(t, "", "demo")
	wantCode(t, r, exitOK)
	wantContains(t, "demo output", r.stdout,
		"CASE", "SENT", "HTTP", "VERDICT", "EXPECTED?",
		"ok ", "error-422", "tampered-body", "stale", "unknown-key", "no-signature",
		"new-key", "late-forgery", "new-key-retry",
		"request 5057fca7-2eb3-468f-b95d-cefe92b0b9d4, status OK",
		"image https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg, seed 17454220438242315174",
		"Invalid status code: 422: body.prompt: field required (value_error.missing)",
		"rejected: signature mismatch", "rejected: stale timestamp (-600s)", "rejected: missing header",
		"rejected: key not fetched yet, retry in 59s",
		"fetched twice",
		"PASS: all 9 verdicts as expected.",
	)
	if strings.Contains(r.stdout, "NO:") {
		t.Errorf("a demo verdict is not as expected:\n%s", r.stdout)
	}
	// Each case's row carries its HTTP status.
	for _, row := range []struct{ name, status string }{
		{"ok", "200"}, {"error-422", "200"}, {"tampered-body", "401"},
		{"stale", "401"}, {"unknown-key", "401"}, {"no-signature", "400"},
		{"new-key", "503"}, {"late-forgery", "503"}, {"new-key-retry", "200"},
	} {
		found := false
		for _, line := range strings.Split(r.stdout, "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[0] == row.name {
				found = true
				if !strings.Contains(line, "  "+row.status+"  ") || !strings.HasSuffix(line, "yes") {
					t.Errorf("row %q: want HTTP %s and as expected, got %q", row.name, row.status, line)
				}
			}
		}
		if !found {
			t.Errorf("demo table has no row %q:\n%s", row.name, r.stdout)
		}
	}
	r = runCmd(t, "", "demo", "extra")
	wantCode(t, r, exitUsage)
}

// TestFlagErrorMessages checks that the errors a new user is most likely to
// hit say what is wanted.
func TestFlagErrorMessages(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "dev.key.pem")
	wantCode(t, runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", filepath.Join(dir, "dev.jwks.json")), exitOK)
	capture := writeTestFile(t, dir, "x.http", []byte("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--tolerance", "10", "x.http"}, `invalid value "10" for flag -tolerance: a duration needs a unit, such as 10s or 5m`},
		{[]string{"listen", "--tolerance", "10"}, `invalid value "10" for flag -tolerance: a duration needs a unit, such as 10s or 5m`},
		{[]string{"listen", "--forward-timeout", "1.5"}, `a duration needs a unit, such as 1.5s or 5m`},
		{[]string{"send", "--timeout", "5min", "http://127.0.0.1:1/"}, `invalid value "5min" for flag -timeout: want a duration such as 30s, 5m or 1h30m`},
		{[]string{"verify", "--jwks", key, capture}, key + " looks like a PEM private key; --jwks wants a JWKS document (keygen writes one as *.jwks.json)"},
		{[]string{"listen", "--any-user", "--jwks", key}, key + " looks like a PEM private key; --jwks wants a JWKS document (keygen writes one as *.jwks.json)"},
	} {
		r := runCmd(t, "", tc.args...)
		wantCode(t, r, exitUsage)
		wantContains(t, fmt.Sprintf("%q stderr", tc.args), r.stderr, tc.want)
	}
}
