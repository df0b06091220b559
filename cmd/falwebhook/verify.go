package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/falwebhook/falwebhook"
)

const verifyDescription = `
Verify diagnoses a captured delivery offline and prints every check: the four
X-Fal-Webhook-* headers, the timestamp against now, the body's sha256, the
exact message fal signs (newlines shown as \n), which key verifies the
signature, the verdict of falwebhook's Verifier, and the decoded event.

The delivery is a raw HTTP request, read from FILE or, without FILE or with
"-", from stdin: as captured by "nc -l 8787 > capture.http" or copied from a
request bin. CRLF or LF line ends; Content-Length or chunked bodies. Or give
the parts: --header (repeatable) and --body.

Keys come from --jwks: fal's JWKS URL by default, another URL, or a JWKS file
(as written by keygen). A URL is fetched only when the headers are usable.

To check an old capture, pass --now with its timestamp (printed by verify).

Exit status: 0 valid, 1 invalid, 2 usage or I/O error (including keys that
could not be fetched).`

func runVerify(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "verify", "[flags] [FILE|-]", verifyDescription)
	var (
		headers   stringList
		bodyPath  = fs.String("body", "", "the body `FILE` (\"-\" for stdin), with --header instead of a raw request")
		jwks      = fs.String("jwks", falwebhook.DefaultJWKSURL, "JWKS `URL or file` holding the public keys")
		now       timeFlag
		tolerance = durationVar(fs, "tolerance", 5*time.Minute, "largest accepted `skew` between the timestamp and now")
	)
	fs.Var(&headers, "header", "a `'Name: value'` header of the delivery (repeatable), with --body")
	fs.Var(&now, "now", "check the timestamp against this `time` (RFC 3339 or Unix seconds) instead of the clock")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	fail := func(code int, format string, args ...any) int { return e.errorf(code, "verify", format, args...) }
	if len(pos) > 1 {
		return fail(exitUsage, "want at most one FILE, got %d arguments", len(pos))
	}
	if *tolerance <= 0 {
		return fail(exitUsage, "--tolerance must be positive, got %s", *tolerance)
	}
	if *tolerance%time.Second != 0 {
		return fail(exitUsage, "--tolerance must be whole seconds, got %s", *tolerance)
	}

	// The delivery.
	var (
		c      *capture
		source string
	)
	switch {
	case len(headers) > 0 || *bodyPath != "":
		if len(pos) > 0 {
			return fail(exitUsage, "give either a raw request FILE or --header/--body, not both")
		}
		if *bodyPath == "" {
			return fail(exitUsage, "--header needs --body FILE (use an empty file for an empty body)")
		}
		h := http.Header{}
		for _, hv := range headers {
			name, value, ok := strings.Cut(hv, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" {
				return fail(exitUsage, "--header %q: want 'Name: value'", hv)
			}
			h.Add(name, strings.TrimSpace(value))
		}
		body, err := readInput(e, *bodyPath)
		if err != nil {
			return fail(exitUsage, "%v", err)
		}
		c = &capture{header: h, body: body}
		source = "--header/--body " + *bodyPath
	default:
		path := "-"
		if len(pos) == 1 {
			path = pos[0]
		}
		data, err := readInput(e, path)
		if err != nil {
			return fail(exitUsage, "%v", err)
		}
		c, err = parseRawRequest(data)
		if err != nil {
			return fail(exitUsage, "%s: %v", displayPath(path), err)
		}
		source = displayPath(path)
	}

	// The keys: a file is read now (a bad path is a usage error); a URL is
	// fetched only if the headers are worth checking.
	var (
		keys     []ed25519.PublicKey
		keysFrom string
	)
	if !isURL(*jwks) {
		var err error
		if keys, err = loadJWKSFile(*jwks); err != nil {
			return fail(exitUsage, "--jwks: %v", err)
		}
		keysFrom = *jwks
	}
	clock := now.t
	nowSource := "--now"
	if clock.IsZero() {
		clock = time.Now()
		nowSource = "the clock"
	}

	w := e.stdout
	fmt.Fprintf(w, "delivery   %s\n", source)
	if c.requestLine != "" {
		fmt.Fprintf(w, "           %s\n", c.requestLine)
	}
	for _, n := range c.notes {
		fmt.Fprintf(w, "  note     %s\n", n)
	}

	// 1. Headers.
	fmt.Fprintf(w, "\nheaders\n")
	hs, headersOK := checkHeaders(w, c.header)

	// 2. Timestamp.
	fmt.Fprintf(w, "\ntimestamp\n")
	ts, tsOK := parseUnixDigits(hs.Timestamp)
	windowOK := false
	if !tsOK {
		fmt.Fprintf(w, "  --    no usable timestamp\n")
	} else {
		skew := ts - clock.Unix()
		windowOK = skew <= int64(*tolerance/time.Second) && -skew <= int64(*tolerance/time.Second)
		mark := "ok"
		verdict := "within"
		if !windowOK {
			mark, verdict = "FAIL", "outside"
		}
		fmt.Fprintf(w, "  %-4s  %s is %s\n", mark, hs.Timestamp, time.Unix(ts, 0).UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "        now %d is %s (%s)\n", clock.Unix(), clock.UTC().Format(time.RFC3339), nowSource)
		fmt.Fprintf(w, "        skew %+ds (%s), %s the tolerance of ±%ds\n", skew, describeSkew(skew), verdict, int64(*tolerance/time.Second))
	}

	// 3. Body.
	sum := sha256.Sum256(c.body)
	fmt.Fprintf(w, "\nbody\n")
	fmt.Fprintf(w, "        %d bytes, sha256 %s\n", len(c.body), hex.EncodeToString(sum[:]))

	// 4. The signed message.
	msg := hs.AppendMessage(nil, c.body)
	fmt.Fprintf(w, "\nsigned message (request id, user id, timestamp, sha256 of the body; joined by \\n)\n")
	for _, line := range strings.SplitAfter(string(msg), "\n") {
		fmt.Fprintf(w, "        %s\n", strconv.Quote(line))
	}

	// 5. Keys.
	fmt.Fprintf(w, "\nsignature\n")
	sig, sigOK := decodeSig(hs.Signature)
	matched := -1
	switch {
	case !headersOK || !sigOK:
		fmt.Fprintf(w, "  --    not checked: the headers are not usable\n")
	default:
		if keys == nil {
			fmt.Fprintf(w, "        fetching keys from %s\n", *jwks)
			var err error
			if keys, err = fetchKeys(ctx, *jwks); err != nil {
				return fail(exitUsage, "fetching keys: %v", err)
			}
			keysFrom = *jwks
		}
		for i, k := range keys {
			if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig) {
				matched = i
				break
			}
		}
		switch {
		case matched >= 0:
			fmt.Fprintf(w, "  ok    key #%d of %d from %s verifies it\n", matched+1, len(keys), keysFrom)
			fmt.Fprintf(w, "        x=%s (sha256 %s)\n", keyX(keys[matched]), keyFingerprint(keys[matched]))
		case len(keys) == 1:
			fmt.Fprintf(w, "  FAIL  the only key, from %s, does not verify it\n", keysFrom)
		default:
			fmt.Fprintf(w, "  FAIL  none of the %d keys from %s verifies it\n", len(keys), keysFrom)
		}
		if matched < 0 || len(keys) > 1 {
			for i, k := range keys {
				fmt.Fprintf(w, "        #%d x=%s (sha256 %s)\n", i+1, keyX(k), keyFingerprint(k))
			}
		}
	}

	// 6. The verdict, from the library itself.
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(keys...)),
		falwebhook.WithClock(func() time.Time { return clock }),
		falwebhook.WithTolerance(*tolerance),
	)
	_, verr := v.Verify(ctx, c.header, c.body)
	fmt.Fprintf(w, "\nverdict\n")
	if verr == nil {
		fmt.Fprintf(w, "  VALID   a genuine delivery; a receiver would answer 200\n")
	} else {
		fmt.Fprintf(w, "  INVALID %s; a receiver would answer %d\n", reason(verr), falwebhook.StatusCode(verr))
		fmt.Fprintf(w, "          %v\n", verr)
		if hint := verifyHint(verr, matched, tsOK, ts); hint != "" {
			fmt.Fprintf(w, "          hint: %s\n", hint)
		}
	}
	if (verr == nil) != (matched >= 0 && windowOK) {
		// The per-key check above and the library disagree; say so
		// rather than hide it.
		fmt.Fprintf(w, "          note: the key-by-key check above disagrees with the Verifier\n")
	}

	// 7. The event.
	label := "event"
	if verr != nil {
		label = "event (NOT verified: do not trust it)"
	}
	fmt.Fprintf(w, "\n%s\n", label)
	printEvent(w, c.body, hs.RequestID)

	if verr != nil {
		return exitInvalid
	}
	return exitOK
}

// checkHeaders prints each X-Fal-Webhook-* header and whether it is usable,
// and returns their values.
func checkHeaders(w io.Writer, h http.Header) (falwebhook.Headers, bool) {
	names := []string{falwebhook.HeaderRequestID, falwebhook.HeaderUserID, falwebhook.HeaderTimestamp, falwebhook.HeaderSignature}
	vals := make([]string, len(names))
	allOK := true
	for i, name := range names {
		var got []string
		for k, vs := range h {
			if strings.EqualFold(k, name) {
				got = append(got, vs...)
			}
		}
		problem := ""
		switch {
		case len(got) == 0:
			problem = "missing"
		case len(got) > 1:
			problem = fmt.Sprintf("sent %d times", len(got))
		case got[0] == "":
			problem = "empty"
		}
		if len(got) > 0 {
			vals[i] = got[0]
		}
		if problem == "" {
			problem = headerValueProblem(name, vals[i])
		}
		mark := "ok"
		if problem != "" {
			mark = "FAIL"
			allOK = false
		}
		shown := make([]string, len(got))
		for j, v := range got {
			shown[j] = strconv.Quote(v)
		}
		line := fmt.Sprintf("  %-4s  %-25s %s", mark, name, strings.Join(shown, ", "))
		if problem != "" {
			line += "  <- " + problem
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	return falwebhook.Headers{RequestID: vals[0], UserID: vals[1], Timestamp: vals[2], Signature: vals[3]}, allOK
}

// headerValueProblem applies the library's grammar to one header value.
func headerValueProblem(name, v string) string {
	if name != falwebhook.HeaderSignature {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c == 0x7f || c == 0xc2 && i+1 < len(v) && v[i+1] >= 0x80 && v[i+1] <= 0x9f {
				return fmt.Sprintf("control character at byte %d", i)
			}
		}
	}
	switch name {
	case falwebhook.HeaderTimestamp:
		if _, ok := parseUnixDigits(v); !ok {
			return "not decimal Unix seconds"
		}
		if len(v) >= 13 {
			return "" // a valid number; the window check will say it is milliseconds
		}
	case falwebhook.HeaderSignature:
		s := strings.Trim(v, " \t")
		if len(s) != 2*ed25519.SignatureSize {
			return fmt.Sprintf("%d characters, want %d hex digits", len(s), 2*ed25519.SignatureSize)
		}
		if _, err := hex.DecodeString(s); err != nil {
			return "not hex"
		}
	}
	return ""
}

// parseUnixDigits parses ^[0-9]+$ as an int64, as the library does.
func parseUnixDigits(s string) (int64, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func decodeSig(s string) ([]byte, bool) {
	b, err := hex.DecodeString(strings.Trim(s, " \t"))
	return b, err == nil && len(b) == ed25519.SignatureSize
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

// verifyHint suggests what to do about an invalid verdict.
func verifyHint(err error, matched int, tsOK bool, ts int64) string {
	switch {
	case errors.Is(err, falwebhook.ErrTimestampOutOfRange) && matched >= 0:
		return fmt.Sprintf("the signature itself is valid; to check an old capture pass --now %d", ts)
	case errors.Is(err, falwebhook.ErrTimestampOutOfRange) && tsOK && ts > 1e12:
		return "the timestamp looks like milliseconds; fal sends seconds"
	case errors.Is(err, falwebhook.ErrSignatureMismatch):
		return "the body or a header changed after signing (a proxy re-encoding JSON?), or another key signed it (--jwks)"
	case errors.Is(err, falwebhook.ErrMissingHeader):
		return "a proxy may have dropped X-Fal-Webhook-* headers, or this is not a fal delivery"
	}
	return ""
}

// printEvent decodes and prints the body as a fal event.
func printEvent(w io.Writer, body []byte, headerRequestID string) {
	ev, err := falwebhook.ParseEvent(body)
	if err != nil {
		fmt.Fprintf(w, "  FAIL  %v\n", err)
		return
	}
	fmt.Fprintf(w, "        request_id          %s\n", ev.RequestID)
	if ev.GatewayRequestID != "" {
		fmt.Fprintf(w, "        gateway_request_id  %s\n", ev.GatewayRequestID)
	}
	fmt.Fprintf(w, "        status              %s\n", ev.Status)
	if headerRequestID != "" && ev.RequestID != headerRequestID {
		fmt.Fprintf(w, "  warn  the body's request_id differs from %s %q\n", falwebhook.HeaderRequestID, headerRequestID)
	}
	if err := ev.Err(); err != nil {
		fmt.Fprintf(w, "        error               %v\n", err)
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

// fetchKeys fetches the JWKS document at url and parses it.
func fetchKeys(ctx context.Context, url string) ([]ed25519.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d from %s", resp.StatusCode, url)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	return falwebhook.ParseJWKS(data)
}

func displayPath(p string) string {
	if p == "-" {
		return "stdin"
	}
	return p
}
