package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// captureTime is when the test captures were signed; every verify run
// passes --now relative to it.
var captureTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var captureTS = strconv.FormatInt(captureTime.Unix(), 10)

// captureRequest returns the wire bytes of a signed delivery of body, as nc
// would capture them: an HTTP/1.1 request with Content-Length, or chunked.
func captureRequest(t *testing.T, s *faltest.Signer, body []byte, chunked bool) []byte {
	t.Helper()
	req, err := s.NewClientRequest(context.Background(), "http://127.0.0.1:8787/fal/webhook", faltest.Delivery{Body: body, Time: captureTime})
	if err != nil {
		t.Fatal(err)
	}
	if chunked {
		req.ContentLength = -1
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.TransferEncoding = []string{"chunked"}
	}
	var buf bytes.Buffer
	if err := req.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeFile writes data to a new file in dir and returns its path.
func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("verify test: fal")
	jwks := writeTestFile(t, dir, "jwks.json", faltest.JWKS(faltest.SignerFromName("verify test: older key"), fal))
	otherJWKS := writeTestFile(t, dir, "other.json", faltest.JWKS(faltest.SignerFromName("verify test: someone else")))

	body, err := sampleBody("ok", sampleRequestID)
	if err != nil {
		t.Fatal(err)
	}
	raw := captureRequest(t, fal, body, false)
	good := writeTestFile(t, dir, "good.http", raw)
	tampered := writeTestFile(t, dir, "tampered.http", bytes.Replace(raw, []byte(`"dog"`), []byte(`"cat"`), 1))
	lf := writeTestFile(t, dir, "lf.http", bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n")))
	chunkedRaw := captureRequest(t, fal, body, true)
	if !bytes.Contains(chunkedRaw, []byte("Transfer-Encoding: chunked")) {
		t.Fatalf("test capture is not chunked:\n%s", chunkedRaw)
	}
	chunked := writeTestFile(t, dir, "chunked.http", chunkedRaw)
	chunkedLF := writeTestFile(t, dir, "chunked-lf.http", bytes.ReplaceAll(chunkedRaw, []byte("\r\n"), []byte("\n")))
	noSig := writeTestFile(t, dir, "nosig.http", dropLine(raw, falwebhook.HeaderSignature))
	errorRaw := captureRequest(t, fal, faltest.ValidationErrorBody("0e7f3c2a-9b41-4d8e-a6f5-2c1d0b9e8a73"), false)
	errorCapture := writeTestFile(t, dir, "error.http", errorRaw)
	notHTTP := writeTestFile(t, dir, "junk.txt", []byte("hello\n"))
	bodyFile := writeTestFile(t, dir, "body.json", body)
	h := fal.Sign(faltest.Delivery{Body: body, Time: captureTime})

	now := strconv.FormatInt(captureTime.Unix()+12, 10)
	msgLines := []string{
		`"` + sampleRequestID + `\n"`,
		`"faltest-user\n"`,
		`"` + captureTS + `\n"`,
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  []string
	}{
		{
			name: "valid capture",
			args: []string{"--jwks", jwks, "--now", now, good},
			code: exitOK,
			want: append([]string{
				"POST /fal/webhook HTTP/1.1",
				`X-Fal-Webhook-Request-Id  "` + sampleRequestID + `"`,
				`X-Fal-Webhook-User-Id     "faltest-user"  <- the fal user this delivery is for; pin yours with --user-id`,
				"ok    each present once and well formed",
				"skew -12s", "within the tolerance of ±300s",
				"426 bytes, sha256 ",
				"key #2 of 2 from " + jwks + " verifies it",
				"x=" + keyX(fal.PublicKey()),
				`VALID    accepted (200): a genuine delivery for user "faltest-user"`,
				`hint: if that is your fal account, pin it: --user-id faltest-user, falwebhook.WithUserIDs("faltest-user")`,
				"image 1             https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg (1024x1024)",
				"seed                17454220438242315174",
			}, msgLines...),
		},
		{
			name: "flags after the file, --now as RFC 3339",
			args: []string{good, "--jwks", jwks, "--now", "2026-01-01T00:04:00Z"},
			code: exitOK,
			want: []string{"skew -240s", "VALID"},
		},
		{
			name: "tampered body",
			args: []string{"--jwks", jwks, "--now", now, tampered},
			code: exitInvalid,
			want: []string{"FAIL  none of the 2 keys from", "INVALID  rejected: signature mismatch (401)", "signature mismatch: none of 2 keys verified it", "NOT verified"},
		},
		{
			name: "unknown key",
			args: []string{"--jwks", otherJWKS, "--now", now, good},
			code: exitInvalid,
			want: []string{"FAIL  the only key", "INVALID  rejected: signature mismatch (401)", "signature mismatch: the only key did not verify it"},
		},
		{
			name: "old capture without a fitting --now",
			args: []string{"--jwks", jwks, "--now", strconv.FormatInt(captureTime.Unix()+3600, 10), good},
			code: exitInvalid,
			want: []string{"skew -3600s (1h0m0s in the past), outside", "INVALID  rejected: stale timestamp (-3600s) (401)", "key #2 of 2", "pass --now " + captureTS},
		},
		{
			name: "narrower tolerance",
			args: []string{"--jwks", jwks, "--now", now, "--tolerance", "10s", good},
			code: exitInvalid,
			want: []string{"outside the tolerance of ±10s", "INVALID  rejected: stale timestamp (-12s) (401)"},
		},
		{
			name: "missing signature header",
			args: []string{"--jwks", jwks, "--now", now, noSig},
			code: exitInvalid,
			want: []string{"X-Fal-Webhook-Signature   (absent)", "FAIL  missing header: X-Fal-Webhook-Signature", "not checked", "INVALID  rejected: missing header (400)"},
		},
		{
			name: "ERROR delivery",
			args: []string{"--jwks", jwks, "--now", now, errorCapture},
			code: exitOK,
			want: []string{"VALID", "status              ERROR", "Invalid status code: 422: body.prompt: field required (value_error.missing)"},
		},
		{
			name: "LF-only capture",
			args: []string{"--jwks", jwks, "--now", now, lf},
			code: exitOK,
			want: []string{"bare LF", "VALID"},
		},
		{
			name: "chunked capture",
			args: []string{"--jwks", jwks, "--now", now, chunked},
			code: exitOK,
			want: []string{"chunked body decoded: 426 bytes", "VALID"},
		},
		{
			name: "chunked LF-only capture",
			args: []string{"--jwks", jwks, "--now", now, chunkedLF},
			code: exitOK,
			want: []string{"chunked body with bare-LF line ends decoded leniently: 426 bytes", "VALID"},
		},
		{
			name:  "capture on stdin",
			stdin: string(raw),
			args:  []string{"--jwks", jwks, "--now", now},
			code:  exitOK,
			want:  []string{"delivery   stdin", "VALID"},
		},
		{
			name: "headers and body given separately",
			args: []string{"--jwks", jwks, "--now", now, "--body", bodyFile,
				"--header", "x-fal-webhook-request-id: " + h.RequestID,
				"--header", "X-Fal-Webhook-User-Id: " + h.UserID,
				"--header", "X-Fal-Webhook-Timestamp:" + h.Timestamp,
				"--header", "X-Fal-Webhook-Signature: " + h.Signature,
			},
			code: exitOK,
			want: []string{"--header/--body", "VALID"},
		},
		{
			name: "duplicate header",
			args: []string{"--jwks", jwks, "--now", now, "--body", bodyFile,
				"--header", "X-Fal-Webhook-Request-Id: " + h.RequestID,
				"--header", "X-Fal-Webhook-Request-Id: " + h.RequestID,
				"--header", "X-Fal-Webhook-User-Id: " + h.UserID,
				"--header", "X-Fal-Webhook-Timestamp: " + h.Timestamp,
				"--header", "X-Fal-Webhook-Signature: " + h.Signature,
			},
			code: exitInvalid,
			want: []string{`X-Fal-Webhook-Request-Id  "` + h.RequestID + `", "` + h.RequestID + `"`, "FAIL  malformed header: X-Fal-Webhook-Request-Id sent 2 times", "INVALID  rejected: malformed header (400)"},
		},
		{
			name: "pinned user",
			args: []string{"--jwks", jwks, "--now", now, "--user-id", "someone", "--user-id", "faltest-user", good},
			code: exitOK,
			want: []string{`"faltest-user"  <- pinned by --user-id`, `VALID    accepted (200): a genuine delivery for user "faltest-user"`},
		},
		{
			name: "another user's delivery",
			args: []string{"--jwks", jwks, "--now", now, "--user-id", "my-user", good},
			code: exitInvalid,
			want: []string{
				`"faltest-user"  <- NOT one of the pinned --user-id values`,
				"key #2 of 2", // the signature itself is fal's
				"INVALID  rejected: unexpected user (403)",
				`unexpected user: X-Fal-Webhook-User-Id "faltest-user" is not one of the 1 pinned user ids`,
				`hint: user pinning is on (--user-id my-user) and this delivery is for user "faltest-user"; if that is your fal account, add --user-id faltest-user`,
			},
		},
		{name: "empty --user-id", args: []string{"--jwks", jwks, "--user-id", "", good}, code: exitUsage, want: []string{"--user-id must not be empty"}},
		{name: "bad flag", args: []string{"--jwks", jwks, "--bogus", good}, code: exitUsage},
		{name: "missing file", args: []string{"--jwks", jwks, filepath.Join(dir, "nope.http")}, code: exitUsage, want: []string{"nope.http"}},
		{name: "missing JWKS file", args: []string{"--jwks", filepath.Join(dir, "nope.json"), good}, code: exitUsage, want: []string{"--jwks"}},
		{name: "not a JWKS", args: []string{"--jwks", good, good}, code: exitUsage, want: []string{"malformed JWKS"}},
		{name: "not an HTTP request", args: []string{"--jwks", jwks, notHTTP}, code: exitUsage, want: []string{"raw HTTP request"}},
		{name: "two files", args: []string{"--jwks", jwks, good, good}, code: exitUsage},
		{name: "file and --header", args: []string{"--jwks", jwks, "--body", bodyFile, good}, code: exitUsage},
		{name: "--header without --body", args: []string{"--jwks", jwks, "--header", "A: b"}, code: exitUsage},
		{name: "bad --header", args: []string{"--jwks", jwks, "--body", bodyFile, "--header", "no colon"}, code: exitUsage},
		{name: "bad --now", args: []string{"--jwks", jwks, "--now", "soon", good}, code: exitUsage},
		{name: "bad --tolerance", args: []string{"--jwks", jwks, "--tolerance", "-1s", good}, code: exitUsage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, tc.stdin, append([]string{"verify"}, tc.args...)...)
			wantCode(t, r, tc.code)
			wantContains(t, "output", r.stdout+r.stderr, tc.want...)
			wantNoRepeats(t, r.stdout+r.stderr)
			if tc.code == exitUsage && r.stderr == "" {
				t.Errorf("usage error with nothing on stderr")
			}
		})
	}
}

// TestVerifyJWKSURL checks keys fetched over HTTP from a loopback key
// server, and that junk never causes a fetch.
func TestVerifyJWKSURL(t *testing.T) {
	dir := t.TempDir()
	fal := faltest.SignerFromName("verify test: fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()
	body, _ := sampleBody("ok", sampleRequestID)
	raw := captureRequest(t, fal, body, false)
	noSig := writeTestFile(t, dir, "nosig.http", dropLine(raw, falwebhook.HeaderSignature))
	now := strconv.FormatInt(captureTime.Unix(), 10)

	r := runCmd(t, "", "verify", "--jwks", ks.URL, "--now", now, noSig)
	wantCode(t, r, exitInvalid)
	if n := ks.Fetches(); n != 0 {
		t.Errorf("a delivery without a signature caused %d JWKS fetches, want 0", n)
	}

	r = runCmd(t, string(raw), "verify", "--jwks", ks.URL, "--now", now, "-")
	wantCode(t, r, exitOK)
	wantContains(t, "stdout", r.stdout, "fetching keys from "+ks.URL, "key #1 of 1 from "+ks.URL, "VALID")
	if n := ks.Fetches(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}

	ks.FailNext(1, 500)
	r = runCmd(t, string(raw), "verify", "--jwks", ks.URL, "--now", now)
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, "falwebhook verify: --jwks "+ks.URL+": keys unavailable: fetching JWKS: status 500, want 200")
	wantNoRepeats(t, r.stderr)

	// The library's fetch rules hold: at most 1 MiB, https or loopback.
	ks.SetDocument(bytes.Repeat([]byte(" "), 1<<20+1), "application/json")
	r = runCmd(t, string(raw), "verify", "--jwks", ks.URL, "--now", now)
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, "document larger than 1048576 bytes")
	r = runCmd(t, string(raw), "verify", "--jwks", "http://192.0.2.1/jwks.json", "--now", now)
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, `JWKS URL "http://192.0.2.1/jwks.json": plain http is allowed only for loopback hosts`)
	wantNoRepeats(t, r.stderr)
}

// dropLine removes the header line starting with name from a raw request.
func dropLine(raw []byte, name string) []byte {
	var out []string
	for _, l := range strings.SplitAfter(string(raw), "\n") {
		if !strings.HasPrefix(l, name+":") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, ""))
}

// TestParseRawRequest covers both readers: http.ReadRequest for what it
// reads, and the lenient fallback (whose notes say "leniently" or "no
// Content-Length") only for what it cannot.
func TestParseRawRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		body     string
		note     string
		lenient  bool // the fallback must be used, and only then
		wantFail bool
	}{
		{name: "content-length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", body: "abc"},
		{name: "content-length, bare LF headers", in: "POST / HTTP/1.1\nContent-Length: 4\n\nab\nc", body: "ab\nc", note: "bare LF"},
		{name: "leading blank line", in: "\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", body: "abc"},
		{name: "truncated", in: "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", body: "abc", note: "shorter than Content-Length: 3 of 5 bytes (truncated capture?)"},
		{name: "truncated, Expect", in: "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", body: "", note: "100 Continue"},
		{name: "trailing bytes", in: "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabc", body: "ab", note: "1 bytes after the body"},
		{name: "HTTP/2 request line", in: "POST /x HTTP/2\ncontent-length: 3\n\nabc", body: "abc", note: "HTTP/2: read as HTTP/1.1 text\nlines end in a bare LF"},
		{name: "HTTP/3 request line only", in: "POST /x HTTP/3\r\n\r\n", body: "", note: "HTTP/3"},
		{name: "no length", in: "POST / HTTP/1.1\nHost: x\n\nabc\n", body: "abc\n", note: "no Content-Length", lenient: true},
		{name: "chunked with extension and trailer", in: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n1\r\nc\r\n0\r\nT: v\r\n\r\n", body: "abc", note: "chunked body decoded: 3 bytes from 28"},
		{name: "chunked, bare LF", in: "POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n3\na\nb\n0\n\n", body: "a\nb", note: "bare-LF line ends decoded leniently: 3 bytes from 9", lenient: true},
		{name: "chunked, bare LF, trailing bytes", in: "POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n1\na\n0\n\nxyz", body: "a", note: "3 bytes after the body", lenient: true},
		{name: "bad chunk size", in: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", wantFail: true},
		{name: "truncated chunk", in: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", wantFail: true},
		{name: "no blank line", in: "POST / HTTP/1.1\r\nHost: x\r\n", wantFail: true},
		{name: "empty", in: "", wantFail: true},
		{name: "not HTTP", in: "hello world\n\nbody", wantFail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseRawRequest([]byte(tc.in))
			if tc.wantFail {
				if err == nil {
					t.Fatalf("parsed %q, want an error", tc.in)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(c.body) != tc.body {
				t.Errorf("body %q, want %q", c.body, tc.body)
			}
			notes := strings.Join(c.notes, "\n")
			if tc.note != "" {
				wantContains(t, "notes", notes, tc.note)
			}
			if lenient := strings.Contains(notes, "leniently") || strings.Contains(notes, "no Content-Length"); lenient != tc.lenient {
				t.Errorf("lenient fallback used: %v, want %v; notes:\n%s", lenient, tc.lenient, notes)
			}
		})
	}
}
