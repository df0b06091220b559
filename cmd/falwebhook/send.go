package main

import (
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

// sendFlags are send's flags and its URL.
type sendFlags struct {
	bodyPath, sample, keyPath, seedName, requestID, userID string
	timeout                                                *time.Duration
	at                                                     timeFlag
	target                                                 string
}

func runSend(ctx context.Context, e *env, args []string) int {
	f, code, ok := parseSendFlags(e, args)
	if !ok {
		return code
	}
	fail := func(format string, args ...any) int { return e.errorf(exitUsage, "send", format, args...) }
	var signer *faltest.Signer
	if f.keyPath == "" {
		signer = faltest.SignerFromName(f.seedName)
	} else {
		var err error
		if signer, err = loadSignerFile(f.keyPath); err != nil {
			return fail("--key: %v", err)
		}
	}
	d, what, err := f.delivery(e, signer)
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *f.timeout)
	defer cancel()
	req, err := signer.NewClientRequest(ctx, f.target, d)
	if err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(e.stdout, "POST %s\n", f.target)
	for _, name := range []string{falwebhook.HeaderRequestID, falwebhook.HeaderUserID, falwebhook.HeaderTimestamp, falwebhook.HeaderSignature} {
		fmt.Fprintf(e.stdout, "  %s: %s\n", name, req.Header.Get(name))
	}
	fmt.Fprintf(e.stdout, "  body: %d bytes (%s), signed by key %s\n", len(d.Body), what, signer.KeyID())
	return postDelivery(e, req)
}

// parseSendFlags parses send's arguments. When ok is false the command is
// over: return code.
func parseSendFlags(e *env, args []string) (f *sendFlags, code int, ok bool) {
	fs := newFlagSet(e, "send", "[flags] URL", sendDescription)
	f = &sendFlags{}
	fs.StringVar(&f.bodyPath, "body", "", "send the body in `FILE` (\"-\" for stdin)")
	fs.StringVar(&f.sample, "sample", "", "send a sample body of this `kind`: ok or error (default ok when there is no --body)")
	fs.StringVar(&f.keyPath, "key", "", "sign with the private key in `FILE` (from keygen)")
	fs.StringVar(&f.seedName, "seed-name", "", "sign with the dev key derived from `NAME`")
	fs.StringVar(&f.requestID, "request-id", "", "the X-Fal-Webhook-Request-Id `value` (default: the body's request_id)")
	fs.StringVar(&f.userID, "user-id", faltest.DefaultUserID, "the X-Fal-Webhook-User-Id `value`")
	f.timeout = durationVar(fs, "timeout", 30*time.Second, "give up waiting for the answer after this `duration`")
	fs.Var(&f.at, "time", "sign as of this `time` (RFC 3339 or Unix seconds; default now)")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return nil, code, false
	}
	fail := func(format string, args ...any) (*sendFlags, int, bool) {
		return nil, e.errorf(exitUsage, "send", format, args...), false
	}
	if len(pos) != 1 {
		return fail("want exactly one URL, got %d arguments (see -h)", len(pos))
	}
	f.target = pos[0]
	switch u, err := url.Parse(f.target); {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fail("URL %q: want http://host[:port]/path or https://…", f.target)
	case (f.keyPath == "") == (f.seedName == ""):
		return fail("give exactly one of --key FILE and --seed-name NAME")
	case f.bodyPath != "" && f.sample != "":
		return fail("give either --body or --sample, not both")
	case f.userID == "":
		return fail("--user-id must not be empty")
	case *f.timeout <= 0:
		return fail("--timeout must be positive")
	}
	return f, 0, true
}

// delivery returns the delivery to sign, and what its body is: --body
// (whose request_id is the default request id), or a sample.
func (f *sendFlags) delivery(e *env, signer *faltest.Signer) (faltest.Delivery, string, error) {
	d := faltest.Delivery{RequestID: f.requestID, UserID: f.userID, Time: f.at.t}
	if f.bodyPath != "" {
		var err error
		if d.Body, err = readInput(e, f.bodyPath); err != nil {
			return d, "", err
		}
		var top struct {
			RequestID string `json:"request_id"`
		}
		if d.RequestID == "" && (json.Unmarshal(d.Body, &top) != nil || top.RequestID == "") {
			// faltest would make one up, which the body would not match.
			return d, "", fmt.Errorf("--body %s has no top-level request_id string; pass --request-id", displayPath(f.bodyPath))
		}
		return d, displayPath(f.bodyPath), nil
	}
	kind := f.sample
	if kind == "" {
		kind = "ok"
	}
	if d.RequestID == "" {
		// A fresh random UUID, as faltest gives a delivery without one:
		// the sample body must carry it too.
		d.RequestID = signer.Sign(faltest.Delivery{}).RequestID
	}
	var err error
	if d.Body, err = sampleBody(kind, d.RequestID); err != nil {
		return d, "", fmt.Errorf("--sample: %w", err)
	}
	return d, "sample " + kind, nil
}

// postDelivery sends req without following redirects, prints the answer
// and returns the exit code: 0 for a 2xx.
func postDelivery(e *env, req *http.Request) int {
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return e.errorf(exitUsage, "send", "%v", err)
	}
	defer resp.Body.Close()
	const maxShown = 64 << 10
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxShown+1))
	if err != nil {
		return e.errorf(exitUsage, "send", "reading the answer: %v", err)
	}
	fmt.Fprintf(e.stdout, "\n%s %s\n", resp.Proto, resp.Status)
	if len(answer) > maxShown {
		answer = append(answer[:maxShown], "\n[… cut at 64 KiB]"...)
	}
	if len(answer) > 0 {
		e.stdout.Write(answer)
		if answer[len(answer)-1] != '\n' {
			fmt.Fprintln(e.stdout)
		}
	}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return e.errorf(exitInvalid, "send", "%s: fal treats a redirect as a failed delivery", resp.Status)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return e.errorf(exitInvalid, "send", "%s: not a 2xx; fal would retry", resp.Status)
	}
	return exitOK
}
