package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

const demoDescription = `
Demo runs a webhook receiver built from the real falwebhook Verifier and
Middleware on 127.0.0.1, with "fal's" public keys served as a JWKS document by
a second local server (a dev key stands in for fal's), and sends it nine
deliveries: two genuine ones (an OK image result and an ERROR) and four that
must be rejected (a tampered body, a replayed old delivery, a signature by an
unknown key, a missing header), all signed before the receiver fetches the
keys; then a key rotation on the receiver's fake clock: fal publishes a second
key right after the fetch and signs with it (503 with Retry-After, as is a
forgery signed then: the cached keys cannot tell them apart), and fal's retry a
minute later, once the keys may be fetched again (accepted). It prints what
the receiver answered and decided for each. Nothing leaves the loopback
interface.

Exit status 0 when every verdict is as expected, 1 otherwise.`

// demoCase is one delivery the demo sends.
type demoCase struct {
	name       string
	sent       string
	prepare    func() // if set, run before build: moves the clock or the keys
	build      func(url string) (*http.Request, error)
	wantStatus int
	wantErr    error // nil: the delivery must be accepted
}

// demoOutcome is what the receiver decided for one request.
type demoOutcome struct {
	ev  *falwebhook.Event
	err error
}

func runDemo(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "demo", "", demoDescription)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return e.errorf(exitUsage, "demo", "unexpected argument %q", pos[0])
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	// "fal": a dev key published as a JWKS document on 127.0.0.1.
	keys := demoKeys{
		fal:      faltest.SignerFromName("falwebhook demo: stands in for fal"),
		rotated:  faltest.SignerFromName("falwebhook demo: fal's next key"),
		stranger: faltest.SignerFromName("falwebhook demo: not fal"),
	}
	ks := faltest.NewKeyServer(keys.fal)
	defer ks.Close()
	keys.server = ks

	// The receiver runs on a fake clock that stands still but where the
	// cases move it, so that every run prints the same skews and waits
	// for nothing.
	clock := faltest.NewClock(time.Now())
	receiver, outcomes := startDemoReceiver(ks, clock)
	defer receiver.Close()
	url := receiver.URL + "/fal/webhook"
	cases := demoCases(ctx, keys, clock)
	fal := keys.fal

	w := e.stdout
	fmt.Fprintf(w, "falwebhook demo: a receiver built from falwebhook's Verifier and Middleware gets\n")
	fmt.Fprintf(w, "%d webhook deliveries. Everything runs on 127.0.0.1; a dev key stands in for fal's.\n\n", len(cases))
	fmt.Fprintf(w, "  fal's keys  %s  (JWKS, 1 Ed25519 key, kid %s)\n", ks.URL, fal.KeyID())
	fmt.Fprintf(w, "  receiver    %s\n", url)
	fmt.Fprintf(w, "              falwebhook.NewVerifier(falwebhook.WithKeys(&falwebhook.JWKS{URL: keysURL})).Middleware(handler)\n\n")

	t, failed, err := runDemoCases(receiver.Client(), url, cases, outcomes)
	if err != nil {
		return e.errorf(exitUsage, "demo", "%v", err)
	}
	t.write(w)

	fmt.Fprintln(w)
	fmt.Fprintf(w, "Genuine deliveries reached the handler (200); the others never did. The first six\n")
	fmt.Fprintf(w, "were signed a second before the receiver fetched fal's keys (on the first one), so\n")
	fmt.Fprintf(w, "those keys settle them: 401 for a bad signature or timestamp, 400 for a malformed\n")
	fmt.Fprintf(w, "request. Then fal published a second key. A delivery that the cached keys do not\n")
	fmt.Fprintf(w, "verify, signed after they were fetched, may be signed by a key added since: inside\n")
	fmt.Fprintf(w, "the refetch cooldown (1 minute, which bounds the fetches forgeries can cause) it is\n")
	fmt.Fprintf(w, "answered 503 with Retry-After until the next fetch is allowed, whether it is a new\n")
	fmt.Fprintf(w, "key or a forgery, so that a rotation is not refused as a forgery. fal retried, the\n")
	fmt.Fprintf(w, "keys were fetched again, and the new key's delivery was accepted. fal's JWKS was\n")
	fmt.Fprintf(w, "fetched %s over HTTP and cached.\n\n", times(ks.Fetches()))
	if failed > 0 {
		fmt.Fprintf(w, "FAIL: %d of %d verdicts not as expected.\n", failed, len(cases))
		return exitInvalid
	}
	fmt.Fprintf(w, "PASS: all %d verdicts as expected.\n", len(cases))
	return exitOK
}

// startDemoReceiver starts the receiver: the real Verifier, fetching keys
// from ks over HTTP, around a handler that only ever sees verified events,
// on clock. It reports each decision on outcomes before it answers.
func startDemoReceiver(ks *faltest.KeyServer, clock *faltest.Clock) (*httptest.Server, <-chan demoOutcome) {
	outcomes := make(chan demoOutcome, 1) // one request at a time
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(&falwebhook.JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}),
		falwebhook.WithClock(clock.Now),
		falwebhook.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
			outcomes <- demoOutcome{err: err}
			falwebhook.WriteError(w, err)
		}),
	)
	mux := http.NewServeMux()
	mux.Handle("/fal/webhook", v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {
		outcomes <- demoOutcome{ev: ev}
		fmt.Fprintln(w, "received")
	}))
	return httptest.NewServer(mux), outcomes
}

// demoKeys are the demo's signers and the server publishing fal's keys.
type demoKeys struct {
	fal      *faltest.Signer // fal's key, published from the start
	rotated  *faltest.Signer // fal's next key, published after the first fetch
	stranger *faltest.Signer // never published
	server   *faltest.KeyServer
}

// demoCases returns the deliveries the demo sends: the first six signed a
// second before the receiver's clock reads at first, so before it fetches
// the keys, then a key rotation.
func demoCases(ctx context.Context, keys demoKeys, clock *faltest.Clock) []demoCase {
	fal, stranger := keys.fal, keys.stranger
	start := clock.Now().Add(-time.Second)
	okBody, _ := sampleBody("ok", sampleRequestID)
	sign := func(s *faltest.Signer, d faltest.Delivery) func(string) (*http.Request, error) {
		return func(url string) (*http.Request, error) {
			if d.Time.IsZero() {
				d.Time = start
			}
			return s.NewClientRequest(ctx, url, d)
		}
	}
	now := func(s *faltest.Signer, d faltest.Delivery) func(string) (*http.Request, error) {
		return func(url string) (*http.Request, error) {
			d.Time = clock.Now()
			return s.NewClientRequest(ctx, url, d)
		}
	}
	rotatedBody := faltest.OKBody("9f0a1b2c-3d4e-4f5a-9b6c-7d8e9f0a1b2c", json.RawMessage(`{"images": [], "seed": 9}`))
	return []demoCase{
		{
			name:       "ok",
			sent:       "OK image result (fal's real body)",
			build:      sign(fal, faltest.Delivery{Body: okBody}),
			wantStatus: http.StatusOK,
		},
		{
			name:       "error-422",
			sent:       "ERROR result: input rejected (422)",
			build:      sign(fal, faltest.Delivery{Body: faltest.ValidationErrorBody("0e7f3c2a-9b41-4d8e-a6f5-2c1d0b9e8a73")}),
			wantStatus: http.StatusOK,
		},
		{
			name: "tampered-body",
			sent: "OK body, seed changed after signing",
			build: func(url string) (*http.Request, error) {
				body, _ := sampleBody("ok", "3c9d1e5f-7a2b-4c6d-8e0f-1a2b3c4d5e6f")
				r, err := fal.NewClientRequest(ctx, url, faltest.Delivery{Body: body, Time: start})
				if err != nil {
					return nil, err
				}
				// Same length: Content-Length still holds.
				forged := bytes.Replace(body, []byte("17454220438242315174"), []byte("17454220438242315175"), 1)
				r.Body, r.GetBody = io.NopCloser(bytes.NewReader(forged)), nil
				return r, nil
			},
			wantStatus: http.StatusUnauthorized,
			wantErr:    falwebhook.ErrSignatureMismatch,
		},
		{
			name: "stale",
			sent: "signed 10 minutes ago (a replay)",
			build: sign(fal, faltest.Delivery{
				Body: faltest.OKBody("6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", map[string]any{"images": []any{}, "seed": 42}),
				Time: clock.Now().Add(-10 * time.Minute),
			}),
			wantStatus: http.StatusUnauthorized,
			wantErr:    falwebhook.ErrTimestampOutOfRange,
		},
		{
			name: "unknown-key",
			sent: "signed by a key not in the JWKS",
			build: sign(stranger, faltest.Delivery{
				Body: faltest.OKBody("7d8e9f0a-1b2c-4d3e-9f4a-5b6c7d8e9f0a", json.RawMessage(`{"images": [], "seed": 7}`)),
			}),
			wantStatus: http.StatusUnauthorized,
			wantErr:    falwebhook.ErrSignatureMismatch,
		},
		{
			name: "no-signature",
			sent: "X-Fal-Webhook-Signature removed",
			build: func(url string) (*http.Request, error) {
				body := faltest.OKBody("8e9f0a1b-2c3d-4e4f-8a5b-6c7d8e9f0a1b", json.RawMessage(`{"images": [], "seed": 8}`))
				r, err := fal.NewClientRequest(ctx, url, faltest.Delivery{Body: body, Time: start})
				if err != nil {
					return nil, err
				}
				r.Header.Del(falwebhook.HeaderSignature)
				return r, nil
			},
			wantStatus: http.StatusBadRequest,
			wantErr:    falwebhook.ErrMissingHeader,
		},
		{
			name: "new-key",
			sent: "signed 1 s after the fetch by a key fal added since",
			prepare: func() {
				keys.server.SetSigners(fal, keys.rotated)
				clock.Advance(time.Second)
			},
			build:      now(keys.rotated, faltest.Delivery{Body: rotatedBody}),
			wantStatus: http.StatusServiceUnavailable,
			wantErr:    falwebhook.ErrKeyNotFetched,
		},
		{
			name: "late-forgery",
			sent: "signed 1 s after the fetch by a key not in the JWKS",
			build: now(stranger, faltest.Delivery{
				Body: faltest.OKBody("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", json.RawMessage(`{"images": [], "seed": 10}`)),
			}),
			wantStatus: http.StatusServiceUnavailable,
			wantErr:    falwebhook.ErrKeyNotFetched,
		},
		{
			name:       "new-key-retry",
			sent:       "new-key's delivery, retried 60 s later",
			prepare:    func() { clock.Advance(time.Minute) },
			build:      now(keys.rotated, faltest.Delivery{Body: rotatedBody}),
			wantStatus: http.StatusOK,
		},
	}
}

// runDemoCases sends each case to url and tabulates what the receiver
// answered and decided, and whether that was expected.
func runDemoCases(client *http.Client, url string, cases []demoCase, outcomes <-chan demoOutcome) (t *table, failed int, err error) {
	t = &table{header: []string{"CASE", "SENT", "HTTP", "VERDICT", "EXPECTED?"}}
	for _, c := range cases {
		if c.prepare != nil {
			c.prepare()
		}
		req, err := c.build(url)
		if err != nil {
			return nil, 0, fmt.Errorf("building %s: %w", c.name, err)
		}
		status, out, err := demoSend(client, req, outcomes)
		if err != nil {
			return nil, 0, fmt.Errorf("sending %s: %w", c.name, err)
		}
		verdict := "accepted"
		if out.err != nil {
			verdict = "rejected: " + reason(out.err)
		}
		expected := "yes"
		if why := demoMismatch(c, status, out); why != "" {
			expected = "NO: " + why
			failed++
		}
		var detail []string
		if out.ev != nil {
			detail = eventLines(out.ev)
		}
		t.add(detail, c.name, c.sent, strconv.Itoa(status), verdict, expected)
	}
	return t, failed, nil
}

// demoSend sends req and returns the receiver's status and decision.
func demoSend(client *http.Client, req *http.Request, outcomes <-chan demoOutcome) (int, demoOutcome, error) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, demoOutcome{}, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	// The receiver records its decision before it answers.
	select {
	case out := <-outcomes:
		return resp.StatusCode, out, nil
	default:
		return resp.StatusCode, demoOutcome{err: errors.New("the receiver recorded no decision")}, nil
	}
}

// demoMismatch says how the outcome differs from the case's expectation,
// or "" when it does not.
func demoMismatch(c demoCase, status int, out demoOutcome) string {
	want := "accepted"
	if c.wantErr != nil {
		want = "rejected"
	}
	switch {
	case c.wantErr == nil && out.err != nil,
		c.wantErr != nil && !errors.Is(out.err, c.wantErr):
		return fmt.Sprintf("want %s %d", want, c.wantStatus)
	case status != c.wantStatus:
		return fmt.Sprintf("want HTTP %d", c.wantStatus)
	}
	return ""
}

// eventLines describes a verified event on two lines.
func eventLines(ev *falwebhook.Event) []string {
	lines := []string{fmt.Sprintf("↳ request %s, status %s", ev.RequestID, ev.Status)}
	if err := ev.Err(); err != nil {
		var re *falwebhook.RequestError
		if errors.As(err, &re) {
			return append(lines, "  "+failureText(re))
		}
		return append(lines, "  "+err.Error())
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	switch {
	case err == nil && len(out.Images) > 0:
		return append(lines, fmt.Sprintf("  image %s, seed %d", out.Images[0].URL, out.Seed))
	case len(ev.Payload) > 0:
		return append(lines, "  payload "+compactJSON(ev.Payload, 80))
	}
	return lines
}

// times renders a count of occurrences: "once", "twice", "3 times".
func times(n int) string {
	switch n {
	case 1:
		return "once"
	case 2:
		return "twice"
	}
	return strconv.Itoa(n) + " times"
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// table prints rows in aligned columns, each row optionally followed by
// detail lines indented to the second column.
type table struct {
	header []string
	rows   [][]string
	detail [][]string
}

func (t *table) add(detail []string, cells ...string) {
	t.rows = append(t.rows, cells)
	t.detail = append(t.detail, detail)
}

func (t *table) write(w io.Writer) {
	widths := make([]int, len(t.header))
	for _, row := range append([][]string{t.header}, t.rows...) {
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	line := func(row []string) {
		var b strings.Builder
		for i, c := range row {
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(t.header)
	indent := strings.Repeat(" ", widths[0]+2)
	for i, row := range t.rows {
		line(row)
		for _, d := range t.detail[i] {
			fmt.Fprintln(w, indent+d)
		}
	}
}
