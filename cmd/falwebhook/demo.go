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
a second local server (a dev key stands in for fal's), and sends it six
deliveries: two genuine ones (an OK image result and an ERROR) and four that
must be rejected (a tampered body, a replayed old delivery, a signature by an
unknown key, a missing header). It prints what the receiver answered and
decided for each. Nothing leaves the loopback interface.

Exit status 0 when every verdict is as expected, 1 otherwise.`

// demoCase is one delivery the demo sends.
type demoCase struct {
	name       string
	sent       string
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
	fal := faltest.SignerFromName("falwebhook demo: stands in for fal")
	stranger := faltest.SignerFromName("falwebhook demo: not fal")
	ks := faltest.NewKeyServer(fal)
	defer ks.Close()

	// The receiver's clock is frozen at the start, so that every run
	// prints the same skews.
	start := time.Now()
	receiver, outcomes := startDemoReceiver(ks, start)
	defer receiver.Close()
	url := receiver.URL + "/fal/webhook"
	cases := demoCases(ctx, fal, stranger, start)

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
	fmt.Fprintf(w, "Genuine deliveries reached the handler (200); the others never did: 401 for a bad\n")
	fmt.Fprintf(w, "signature or timestamp, 400 for a malformed request. fal's JWKS was fetched %s\n", times(ks.Fetches()))
	fmt.Fprintf(w, "over HTTP and cached.\n\n")
	if failed > 0 {
		fmt.Fprintf(w, "FAIL: %d of %d verdicts not as expected.\n", failed, len(cases))
		return exitInvalid
	}
	fmt.Fprintf(w, "PASS: all %d verdicts as expected.\n", len(cases))
	return exitOK
}

// startDemoReceiver starts the receiver: the real Verifier, fetching keys
// from ks over HTTP, around a handler that only ever sees verified events,
// with its clock frozen at start. It reports each decision on outcomes
// before it answers.
func startDemoReceiver(ks *faltest.KeyServer, start time.Time) (*httptest.Server, <-chan demoOutcome) {
	outcomes := make(chan demoOutcome, 1) // one request at a time
	clock := func() time.Time { return start }
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(&falwebhook.JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock}),
		falwebhook.WithClock(clock),
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

// demoCases returns the deliveries the demo sends, signed as of start.
func demoCases(ctx context.Context, fal, stranger *faltest.Signer, start time.Time) []demoCase {
	okBody, _ := sampleBody("ok", sampleRequestID)
	sign := func(s *faltest.Signer, d faltest.Delivery) func(string) (*http.Request, error) {
		if d.Time.IsZero() {
			d.Time = start
		}
		return func(url string) (*http.Request, error) { return s.NewClientRequest(ctx, url, d) }
	}
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
				Time: start.Add(-10 * time.Minute),
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
	}
}

// runDemoCases sends each case to url and tabulates what the receiver
// answered and decided, and whether that was expected.
func runDemoCases(client *http.Client, url string, cases []demoCase, outcomes <-chan demoOutcome) (t *table, failed int, err error) {
	t = &table{header: []string{"CASE", "SENT", "HTTP", "VERDICT", "EXPECTED?"}}
	for _, c := range cases {
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
