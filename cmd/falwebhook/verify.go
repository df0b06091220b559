package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/falwebhook/falwebhook"
)

const verifyDescription = `
Verify diagnoses a captured delivery offline and prints every check: the four
X-Fal-Webhook-* headers (the user id among them: the id of your fal account
to pin with --user-id), the timestamp against now, the body's sha256, the
exact message fal signs (newlines shown as \n), which key verifies the
signature, the verdict of falwebhook's Verifier, and the decoded event.

The delivery is a raw HTTP request, read from FILE or, without FILE or with
"-", from stdin: as captured by "nc -l 8787 > capture.http" or copied from a
request bin. CRLF or LF line ends; Content-Length or chunked bodies. Or give
the parts: --header (repeatable) and --body.

Keys come from --jwks: fal's JWKS URL by default, another URL, or a JWKS file
(as written by keygen). A URL is fetched only when the headers are usable.

With --user-id (repeatable) the verdict also requires the delivery to be for
one of those fal users, as falwebhook.WithUserIDs does.

To check an old capture, pass --now with its timestamp (printed by verify).

Exit status: 0 valid, 1 invalid, 2 usage or I/O error (including keys that
could not be fetched).`

// verifyFlags are verify's flags and arguments.
type verifyFlags struct {
	headers   stringList
	bodyPath  string
	jwks      string
	now       timeFlag
	tolerance *time.Duration
	userIDs   stringList
	pos       []string
}

// diagnosis is one run of verify: the delivery, what is known of it so
// far, and where the report goes.
type diagnosis struct {
	w         io.Writer
	c         *capture
	sent      falwebhook.Headers // the first value of each header, as sent
	herr      error              // ParseHeaders' verdict on the headers
	ts        int64              // the timestamp, when herr is nil
	now       time.Time
	nowSource string
	tolerance time.Duration
	userIDs   []string
	jwks      string              // where keys come from
	keys      []ed25519.PublicKey // nil until loaded
	matched   int                 // index in keys of the key that verifies the signature, or -1
}

func runVerify(ctx context.Context, e *env, args []string) int {
	f, code, ok := parseVerifyFlags(e, args)
	if !ok {
		return code
	}
	fail := func(format string, args ...any) int { return e.errorf(exitUsage, "verify", format, args...) }
	d := &diagnosis{w: e.stdout, now: f.now.t, nowSource: "--now", tolerance: *f.tolerance, userIDs: f.userIDs, jwks: f.jwks, matched: -1}
	if d.now.IsZero() {
		d.now, d.nowSource = time.Now(), "the clock"
	}
	if !isURL(f.jwks) {
		// A file is read now, so that a bad path is a usage error; a URL
		// is fetched only when the headers are worth checking.
		var err error
		if d.keys, err = loadJWKSFile(f.jwks); err != nil {
			return fail("--jwks: %v", err)
		}
	}
	c, source, err := f.delivery(e)
	if err != nil {
		return fail("%v", err)
	}
	d.setDelivery(c)

	d.printDelivery(source)
	d.printHeaders()
	d.printTimestamp()
	d.printMessage()
	if err := d.printSignature(ctx); err != nil {
		return fail("--jwks %s: %s", f.jwks, errText(err))
	}
	verr := d.printVerdict(ctx)
	d.printEvent(verr == nil)
	if verr != nil {
		return exitInvalid
	}
	return exitOK
}

// parseVerifyFlags parses verify's arguments. When ok is false the command
// is over: return code.
func parseVerifyFlags(e *env, args []string) (f *verifyFlags, code int, ok bool) {
	fs := newFlagSet(e, "verify", "[flags] [FILE|-]", verifyDescription)
	f = &verifyFlags{}
	fs.StringVar(&f.bodyPath, "body", "", "the body `FILE` (\"-\" for stdin), with --header instead of a raw request")
	fs.StringVar(&f.jwks, "jwks", falwebhook.DefaultJWKSURL, "JWKS `URL or file` holding the public keys")
	f.tolerance = durationVar(fs, "tolerance", 5*time.Minute, "largest accepted `skew` between the timestamp and now")
	fs.Var(&f.headers, "header", "a `'Name: value'` header of the delivery (repeatable), with --body")
	fs.Var(&f.now, "now", "check the timestamp against this `time` (RFC 3339 or Unix seconds) instead of the clock")
	fs.Var(&f.userIDs, "user-id", "accept only deliveries for this fal user `ID` (repeatable), as WithUserIDs does")
	if f.pos, code, ok = parseArgs(fs, args); !ok {
		return nil, code, false
	}
	fail := func(format string, args ...any) (*verifyFlags, int, bool) {
		return nil, e.errorf(exitUsage, "verify", format, args...), false
	}
	switch {
	case len(f.pos) > 1:
		return fail("want at most one FILE, got %d arguments", len(f.pos))
	case *f.tolerance <= 0:
		return fail("--tolerance must be positive, got %s", *f.tolerance)
	case *f.tolerance%time.Second != 0:
		return fail("--tolerance must be whole seconds, got %s", *f.tolerance)
	case slices.Contains(f.userIDs, ""):
		return fail("--user-id must not be empty")
	case len(f.headers) > 0 || f.bodyPath != "":
		if len(f.pos) > 0 {
			return fail("give either a raw request FILE or --header/--body, not both")
		}
		if f.bodyPath == "" {
			return fail("--header needs --body FILE (use an empty file for an empty body)")
		}
	}
	return f, 0, true
}

// delivery reads the delivery: --header and --body, or a raw request from
// a file or stdin. It returns it and where it came from.
func (f *verifyFlags) delivery(e *env) (*capture, string, error) {
	if f.bodyPath != "" {
		h := http.Header{}
		for _, hv := range f.headers {
			name, value, ok := strings.Cut(hv, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" {
				return nil, "", fmt.Errorf("--header %q: want 'Name: value'", hv)
			}
			h.Add(name, strings.TrimSpace(value))
		}
		body, err := readInput(e, f.bodyPath)
		if err != nil {
			return nil, "", err
		}
		return &capture{header: h, body: body}, "--header/--body " + f.bodyPath, nil
	}
	path := "-"
	if len(f.pos) == 1 {
		path = f.pos[0]
	}
	data, err := readInput(e, path)
	if err != nil {
		return nil, "", err
	}
	c, err := parseRawRequest(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", displayPath(path), err)
	}
	return c, displayPath(path), nil
}

// setDelivery records the delivery and runs the library's header checks.
func (d *diagnosis) setDelivery(c *capture) {
	d.c = c
	first := func(name string) string {
		if vs := c.header.Values(name); len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	d.sent = falwebhook.Headers{
		RequestID: first(falwebhook.HeaderRequestID),
		UserID:    first(falwebhook.HeaderUserID),
		Timestamp: first(falwebhook.HeaderTimestamp),
		Signature: first(falwebhook.HeaderSignature),
	}
	var hs falwebhook.Headers
	if hs, d.herr = falwebhook.ParseHeaders(c.header); d.herr == nil {
		// ParseHeaders checked it: decimal digits that fit an int64.
		d.ts, _ = strconv.ParseInt(hs.Timestamp, 10, 64)
	}
}

func (d *diagnosis) printDelivery(source string) {
	fmt.Fprintf(d.w, "delivery   %s\n", source)
	if d.c.requestLine != "" {
		fmt.Fprintf(d.w, "           %s\n", d.c.requestLine)
	}
	for _, n := range d.c.notes {
		fmt.Fprintf(d.w, "  note     %s\n", n)
	}
}

// printHeaders prints the four headers as sent, then the library's verdict
// on them, which names the failing header.
func (d *diagnosis) printHeaders() {
	fmt.Fprintf(d.w, "\nheaders\n")
	for _, name := range []string{falwebhook.HeaderRequestID, falwebhook.HeaderUserID, falwebhook.HeaderTimestamp, falwebhook.HeaderSignature} {
		vs := d.c.header.Values(name)
		shown := "(absent)"
		if len(vs) > 0 {
			quoted := make([]string, len(vs))
			for i, v := range vs {
				quoted[i] = strconv.Quote(v)
			}
			shown = strings.Join(quoted, ", ")
		}
		if name == falwebhook.HeaderUserID && len(vs) == 1 {
			shown += "  <- " + d.userNote()
		}
		fmt.Fprintf(d.w, "        %-25s %s\n", name, shown)
	}
	if d.herr != nil {
		fmt.Fprintf(d.w, "  FAIL  %s\n", errText(d.herr))
		return
	}
	fmt.Fprintf(d.w, "  ok    each present once and well formed\n")
}

// userNote says what the user id means for this run.
func (d *diagnosis) userNote() string {
	switch {
	case len(d.userIDs) == 0:
		return "the fal user this delivery is for; pin yours with --user-id (falwebhook.WithUserIDs)"
	case slices.Contains(d.userIDs, d.sent.UserID):
		return "pinned by --user-id"
	}
	return "NOT one of the pinned --user-id values"
}

func (d *diagnosis) printTimestamp() {
	fmt.Fprintf(d.w, "\ntimestamp\n")
	if d.herr != nil {
		fmt.Fprintf(d.w, "  --    not checked: the headers are not usable\n")
		return
	}
	skew, tol := d.ts-d.now.Unix(), int64(d.tolerance/time.Second)
	mark, verdict := "ok", "within"
	if skew > tol || skew < -tol {
		mark, verdict = "FAIL", "outside"
	}
	fmt.Fprintf(d.w, "  %-4s  %s is %s\n", mark, d.sent.Timestamp, time.Unix(d.ts, 0).UTC().Format(time.RFC3339))
	fmt.Fprintf(d.w, "        now %d is %s (%s)\n", d.now.Unix(), d.now.UTC().Format(time.RFC3339), d.nowSource)
	fmt.Fprintf(d.w, "        skew %+ds (%s), %s the tolerance of ±%ds\n", skew, describeSkew(skew), verdict, tol)
}

// printMessage prints the body's hash and the message fal signs, built
// from the headers as sent.
func (d *diagnosis) printMessage() {
	sum := sha256.Sum256(d.c.body)
	fmt.Fprintf(d.w, "\nbody\n")
	fmt.Fprintf(d.w, "        %d bytes, sha256 %x\n", len(d.c.body), sum)
	fmt.Fprintf(d.w, "\nsigned message (request id, user id, timestamp, sha256 of the body; joined by \\n)\n")
	for _, line := range strings.SplitAfter(string(d.sent.AppendMessage(nil, d.c.body)), "\n") {
		fmt.Fprintf(d.w, "        %s\n", strconv.Quote(line))
	}
}

// printSignature fetches the keys when they come from a URL, and prints
// which of them verifies the signature. Its error is the fetch's.
func (d *diagnosis) printSignature(ctx context.Context) error {
	fmt.Fprintf(d.w, "\nsignature\n")
	if d.herr != nil {
		fmt.Fprintf(d.w, "  --    not checked: the headers are not usable\n")
		return nil
	}
	if d.keys == nil {
		fmt.Fprintf(d.w, "        fetching keys from %s\n", d.jwks)
		var err error
		if d.keys, err = fetchJWKS(ctx, d.jwks); err != nil {
			return err
		}
	}
	d.matched = slices.IndexFunc(d.keys, func(k ed25519.PublicKey) bool { return d.keyVerifies(ctx, k) })
	switch {
	case d.matched >= 0:
		fmt.Fprintf(d.w, "  ok    key #%d of %d from %s verifies it\n", d.matched+1, len(d.keys), d.jwks)
		fmt.Fprintf(d.w, "        x=%s\n", keyX(d.keys[d.matched]))
	case len(d.keys) == 1:
		fmt.Fprintf(d.w, "  FAIL  the only key, from %s, does not verify it\n", d.jwks)
	default:
		fmt.Fprintf(d.w, "  FAIL  none of the %d keys from %s verifies it\n", len(d.keys), d.jwks)
	}
	if d.matched < 0 || len(d.keys) > 1 {
		for i, k := range d.keys {
			fmt.Fprintf(d.w, "        #%d x=%s\n", i+1, keyX(k))
		}
	}
	return nil
}

// keyVerifies reports whether k verifies the delivery's signature: it asks
// a Verifier holding k alone whose clock reads the delivery's own
// timestamp, so that only the signature decides.
func (d *diagnosis) keyVerifies(ctx context.Context, k ed25519.PublicKey) bool {
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(k)),
		falwebhook.WithClock(func() time.Time { return time.Unix(d.ts, 0) }),
	)
	_, err := v.Verify(ctx, d.c.header, d.c.body)
	// The event is parsed after the signature is checked: a body that is
	// not an event was still signed by k.
	return err == nil || errors.Is(err, falwebhook.ErrInvalidEvent)
}

// printVerdict asks falwebhook's Verifier, configured as the flags say,
// and prints its verdict, which it returns.
func (d *diagnosis) printVerdict(ctx context.Context) error {
	opts := []falwebhook.Option{
		falwebhook.WithKeys(falwebhook.StaticKeys(d.keys...)),
		falwebhook.WithClock(func() time.Time { return d.now }),
		falwebhook.WithTolerance(d.tolerance),
	}
	if len(d.userIDs) > 0 { // WithUserIDs with none would refuse everything
		opts = append(opts, falwebhook.WithUserIDs(d.userIDs...))
	}
	v := falwebhook.NewVerifier(opts...)
	_, err := v.Verify(ctx, d.c.header, d.c.body)
	fmt.Fprintf(d.w, "\nverdict\n")
	if err == nil {
		fmt.Fprintf(d.w, "  VALID    accepted (200): a genuine delivery for user %q\n", d.sent.UserID)
		if len(d.userIDs) == 0 {
			fmt.Fprintf(d.w, "           hint: if that is your fal account, pin it: --user-id %s, falwebhook.WithUserIDs(%q)\n", d.sent.UserID, d.sent.UserID)
		}
		return nil
	}
	fmt.Fprintf(d.w, "  INVALID  %s\n", rejection(err))
	fmt.Fprintf(d.w, "           %s\n", errText(err))
	if hint := d.hint(err); hint != "" {
		fmt.Fprintf(d.w, "           hint: %s\n", hint)
	}
	return err
}

// hint suggests what to do about an invalid verdict.
func (d *diagnosis) hint(err error) string {
	switch {
	case errors.Is(err, falwebhook.ErrUnexpectedUser):
		return userHint(d.sent.UserID, d.userIDs)
	case errors.Is(err, falwebhook.ErrTimestampOutOfRange) && d.matched >= 0:
		return fmt.Sprintf("the signature itself is valid; to check an old capture pass --now %d", d.ts)
	case errors.Is(err, falwebhook.ErrTimestampOutOfRange) && d.ts > 1e12:
		return "the timestamp looks like milliseconds; fal sends seconds"
	case errors.Is(err, falwebhook.ErrSignatureMismatch):
		return "the body or a header changed after signing (a proxy re-encoding JSON?), or another key signed it (--jwks)"
	case errors.Is(err, falwebhook.ErrMissingHeader):
		return "a proxy may have dropped X-Fal-Webhook-* headers, or this is not a fal delivery"
	}
	return ""
}

// describeSkew renders a skew in seconds in human units.
func describeSkew(skew int64) string {
	d := skew
	dir := "in the past"
	if d > 0 {
		dir = "in the future"
	} else {
		d = -d
	}
	if d == 0 {
		return "now"
	}
	if d > int64(1<<62/time.Second) {
		return "absurdly far " + dir
	}
	return time.Duration(d*int64(time.Second)).String() + " " + dir
}

// printEvent decodes and prints the body as a fal event.
func (d *diagnosis) printEvent(verified bool) {
	label := "event"
	if !verified {
		label = "event (NOT verified: do not trust it)"
	}
	fmt.Fprintf(d.w, "\n%s\n", label)
	w := d.w
	ev, err := falwebhook.ParseEvent(d.c.body)
	if err != nil {
		fmt.Fprintf(w, "  FAIL  %s\n", errText(err))
		return
	}
	fmt.Fprintf(w, "        request_id          %s\n", ev.RequestID)
	if ev.GatewayRequestID != "" {
		fmt.Fprintf(w, "        gateway_request_id  %s\n", ev.GatewayRequestID)
	}
	fmt.Fprintf(w, "        status              %s\n", ev.Status)
	if d.sent.RequestID != "" && ev.RequestID != d.sent.RequestID {
		fmt.Fprintf(w, "  warn  the body's request_id differs from %s %q\n", falwebhook.HeaderRequestID, d.sent.RequestID)
	}
	if err := ev.Err(); err != nil {
		fmt.Fprintf(w, "        error               %s\n", errText(err))
		return
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err == nil && len(out.Images) > 0 {
		for i, img := range out.Images {
			fmt.Fprintf(w, "        image %-13d %s", i+1, img.URL)
			if img.Width > 0 && img.Height > 0 {
				fmt.Fprintf(w, " (%dx%d)", img.Width, img.Height)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "        seed                %d\n", out.Seed)
		return
	}
	if len(ev.Payload) > 0 {
		fmt.Fprintf(w, "        payload             %s\n", compactJSON(ev.Payload, 200))
	}
}

func displayPath(p string) string {
	if p == "-" {
		return "stdin"
	}
	return p
}
