package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

const sendDescription = `
Send signs a delivery the way fal does and POSTs it to URL, then prints the
answer. Use it to exercise a receiver that trusts a dev key: "listen --jwks"
with keygen's JWKS file, or your own service configured with that JWKS.

The body is FILE (--body, sent byte for byte) or a sample (--sample): "ok" is
a real fal image result, "error" fal's documented 422 validation error. The
key is a key file from keygen (--key) or derived from a name (--seed-name,
reproducible; the same name gives the same key in keygen). The request id
defaults to the body's request_id (a fresh UUID for samples), the time to now.
Redirects are not followed: fal treats a 3xx as a failed delivery.

Exit status: 0 on a 2xx answer, 1 on any other answer, 2 on a usage or I/O
error (including no answer at all).`

func runSend(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "send", "[flags] URL", sendDescription)
	var (
		bodyPath  = fs.String("body", "", "send the body in `FILE` (\"-\" for stdin)")
		sample    = fs.String("sample", "", "send a sample body of this `kind`: ok or error (default ok when there is no --body)")
		keyPath   = fs.String("key", "", "sign with the private key in `FILE` (from keygen)")
		seedName  = fs.String("seed-name", "", "sign with the dev key derived from `NAME`")
		requestID = fs.String("request-id", "", "the X-Fal-Webhook-Request-Id `value` (default: the body's request_id)")
		userID    = fs.String("user-id", faltest.DefaultUserID, "the X-Fal-Webhook-User-Id `value`")
		timeout   = durationVar(fs, "timeout", 30*time.Second, "give up waiting for the answer after this `duration`")
		at        timeFlag
	)
	fs.Var(&at, "time", "sign as of this `time` (RFC 3339 or Unix seconds; default now)")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	fail := func(code int, format string, args ...any) int { return e.errorf(code, "send", format, args...) }
	if len(pos) != 1 {
		return fail(exitUsage, "want exactly one URL, got %d arguments (see -h)", len(pos))
	}
	target := pos[0]
	if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fail(exitUsage, "URL %q: want http://host[:port]/path or https://…", target)
	}
	if (*keyPath == "") == (*seedName == "") {
		return fail(exitUsage, "give exactly one of --key FILE and --seed-name NAME")
	}
	if *bodyPath != "" && *sample != "" {
		return fail(exitUsage, "give either --body or --sample, not both")
	}
	if *userID == "" {
		return fail(exitUsage, "--user-id must not be empty")
	}
	if *timeout <= 0 {
		return fail(exitUsage, "--timeout must be positive")
	}

	var signer *faltest.Signer
	if *keyPath != "" {
		var err error
		if signer, err = loadSignerFile(*keyPath); err != nil {
			return fail(exitUsage, "--key: %v", err)
		}
	} else {
		signer = faltest.SignerFromName(*seedName)
	}

	var (
		body []byte
		what string
	)
	if *bodyPath != "" {
		var err error
		if body, err = readInput(e, *bodyPath); err != nil {
			return fail(exitUsage, "%v", err)
		}
		what = displayPath(*bodyPath)
		if *requestID == "" {
			var top struct {
				RequestID string `json:"request_id"`
			}
			if json.Unmarshal(body, &top) != nil || top.RequestID == "" {
				return fail(exitUsage, "--body %s has no top-level request_id string; pass --request-id", what)
			}
			*requestID = top.RequestID
		}
	} else {
		kind := *sample
		if kind == "" {
			kind = "ok"
		}
		if *requestID == "" {
			*requestID = newRequestID()
		}
		var err error
		if body, err = sampleBody(kind, *requestID); err != nil {
			return fail(exitUsage, "--sample: %v", err)
		}
		what = "sample " + kind
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	d := faltest.Delivery{RequestID: *requestID, UserID: *userID, Time: at.t, Body: body}
	h := signer.Sign(d)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	h.Set(req.Header)

	w := e.stdout
	fmt.Fprintf(w, "POST %s\n", target)
	for _, kv := range [][2]string{
		{falwebhook.HeaderRequestID, h.RequestID},
		{falwebhook.HeaderUserID, h.UserID},
		{falwebhook.HeaderTimestamp, h.Timestamp},
		{falwebhook.HeaderSignature, h.Signature},
	} {
		fmt.Fprintf(w, "  %s: %s\n", kv[0], kv[1])
	}
	fmt.Fprintf(w, "  body: %d bytes (%s), signed by key %s\n", len(body), what, signer.KeyID())

	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	defer resp.Body.Close()
	const maxShown = 64 << 10
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxShown+1))
	if err != nil {
		return fail(exitUsage, "reading the answer: %v", err)
	}
	fmt.Fprintf(w, "\n%s %s\n", resp.Proto, resp.Status)
	if len(answer) > maxShown {
		answer = append(answer[:maxShown], "\n[… cut at 64 KiB]"...)
	}
	if len(answer) > 0 {
		w.Write(answer)
		if answer[len(answer)-1] != '\n' {
			fmt.Fprintln(w)
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			fmt.Fprintf(e.stderr, "falwebhook send: %s: fal treats a redirect as a failed delivery\n", resp.Status)
		} else {
			fmt.Fprintf(e.stderr, "falwebhook send: %s: not a 2xx; fal would retry\n", resp.Status)
		}
		return exitInvalid
	}
	return exitOK
}
