package falqueue

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// policy is how a call is retried. The figures are those of fal's own
// JavaScript client (fal-js libs/client/src/queue.ts and retry.ts).
type policy struct {
	retries  int           // retries after the first attempt
	base     time.Duration // delay before the first retry; doubled for each next one
	cap      time.Duration // longest delay, and longest Retry-After honoured
	statuses []int         // answers that are retried
	// sentOnly: network errors are retried only when the request surely
	// did not reach fal (the connection was never made), since a submit
	// that reached fal may have been enqueued.
	sentOnly bool
}

// policyFor returns the retry policy of op. Submit: 3 retries on 429, 502,
// 503 and 504 (not 500: the request may have been accepted and a second
// submit would be a second, billed request), 1 s base, 60 s cap (fal-js's
// QUEUE_RETRY_CONFIG). Status, result and cancel: 5 retries on 429, 500,
// 502, 503 and 504, 1 s base, 30 s cap (QUEUE_STATUS_RETRY_CONFIG).
func policyFor(op Op) policy {
	if op == OpSubmit {
		return policy{retries: 3, base: time.Second, cap: time.Minute, statuses: []int{429, 502, 503, 504}, sentOnly: true}
	}
	return policy{retries: 5, base: time.Second, cap: 30 * time.Second, statuses: []int{429, 500, 502, 503, 504}}
}

// retriesStatus reports whether an answer with this status and header is
// retried. An answer that carries X-Fal-Error-Type, or a 504 marked
// X-Fal-Request-Timeout-Type: user, is the request's own outcome (fal
// replays it on every fetch), not a passing fault, and is not retried; 429
// always is.
func (p policy) retriesStatus(code int, h http.Header) bool {
	retried := false
	for _, s := range p.statuses {
		retried = retried || s == code
	}
	return retried && (code == http.StatusTooManyRequests || !isOutcome(code, h))
}

// isOutcome reports whether an error answer is the request's own outcome
// as fal marks it: an X-Fal-Error-Type header, or a 504 for the request's
// own start timeout (X-Fal-Request-Timeout-Type: user, which fal's clients
// never retry).
func isOutcome(code int, h http.Header) bool {
	return h.Get(headerErrorType) != "" ||
		code == http.StatusGatewayTimeout && strings.EqualFold(h.Get(headerTimeoutType), "user")
}

// delay returns the wait before retry n (0 for the first): base·2ⁿ capped,
// with ±25% jitter (r in [0, 1)), still capped.
func (p policy) delay(n int, r float64) time.Duration {
	d := p.cap
	if n < 32 && p.base<<n < p.cap && p.base<<n > 0 {
		d = p.base << n
	}
	d = time.Duration(float64(d) * (0.75 + 0.5*r))
	return min(d, p.cap)
}

// retriesError reports whether a call that failed with err, a network
// error, is retried.
func (p policy) retriesError(err error) bool {
	var ne *netError
	if !errors.As(err, &ne) {
		return false
	}
	var (
		cve  *tls.CertificateVerificationError
		uae  x509.UnknownAuthorityError
		hne  x509.HostnameError
		cie  x509.CertificateInvalidError
		rhde tls.RecordHeaderError
	)
	if errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) || errors.As(err, &rhde) {
		return false // a TLS misconfiguration does not pass
	}
	if !p.sentOnly {
		return true
	}
	return notSent(err)
}

// notSent reports whether err shows that the request never left: the
// connection (or the proxy's) could not be made, or the host's name did
// not resolve.
func notSent(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && (op.Op == "dial" || op.Op == "proxyconnect")
}

// netError marks an error of the HTTP exchange itself (connection, TLS,
// timeout, a body cut short), as opposed to one of this package.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

// parseRetryAfter parses a Retry-After value: delta-seconds or an HTTP-date,
// relative to now. A date in the past is 0; a value too large to hold is
// the largest duration. ok is false when v is empty or malformed.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > int64(1<<63-1)/int64(time.Second) {
			return 1<<63 - 1, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// The headers fal's answers carry that this package reads.
const (
	headerErrorType   = "X-Fal-Error-Type"
	headerTimeoutType = "X-Fal-Request-Timeout-Type"
)

// call is one operation to send.
type call struct {
	op        Op
	method    string
	url       string
	body      []byte // nil: no body
	endpoint  string
	requestID string
	limit     int64 // most bytes of the answer's body to read
}

// answer is fal's answer to a call.
type answer struct {
	code          int
	header        http.Header
	body          []byte
	attempts      int
	retryAfter    time.Duration
	hasRetryAfter bool
}

// do sends k, retrying as its policy says, and returns fal's last answer,
// whatever its status; the caller decides what it means. The error is a
// network error after the retries, ErrResponseTooLarge, or the context's
// error (joined with the last failure) when ctx ends during a wait.
func (c *Client) do(ctx context.Context, cfg *config, k call) (*answer, error) {
	p := policyFor(k.op)
	for n := 0; ; n++ {
		ans, err := c.send(ctx, cfg, k)
		if err != nil {
			err = wrapCall(k.op, k.endpoint, k.requestID, err)
			if n > 0 {
				err = fmt.Errorf("%w (%d attempts)", err, n+1)
			}
			if ctx.Err() != nil || n >= p.retries || !p.retriesError(err) {
				return nil, err
			}
			if serr := c.sleep(ctx, p.delay(n, c.random())); serr != nil {
				return nil, fmt.Errorf("falqueue: %s: waiting to retry: %w (last attempt: %w)", describe(k.op, k.endpoint, k.requestID), serr, err)
			}
			continue
		}
		ans.attempts = n + 1
		if n >= p.retries || !p.retriesStatus(ans.code, ans.header) {
			return ans, nil
		}
		d := p.delay(n, c.random())
		if ans.hasRetryAfter {
			if ans.retryAfter > p.cap {
				return ans, nil // fal asks for longer than we wait: the caller gets RetryAfter
			}
			d = max(d, ans.retryAfter)
		}
		if serr := c.sleep(ctx, d); serr != nil {
			return nil, fmt.Errorf("falqueue: %s: waiting to retry: %w (last answer: %w)", describe(k.op, k.endpoint, k.requestID), serr, c.apiError(k, ans))
		}
	}
}

// send makes one attempt of k.
func (c *Client) send(ctx context.Context, cfg *config, k call) (*answer, error) {
	var body io.Reader
	if k.body != nil {
		body = bytes.NewReader(k.body)
	}
	r, err := http.NewRequestWithContext(ctx, k.method, k.url, body)
	if err != nil {
		return nil, err // cannot happen: the URL was checked
	}
	r.Header.Set("Authorization", "Key "+c.Key)
	r.Header.Set("Accept", "application/json")
	r.Header.Set("User-Agent", userAgent)
	if k.body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	resp, err := cfg.hc.Do(r)
	if err != nil {
		return nil, &netError{err}
	}
	defer resp.Body.Close()
	if resp.ContentLength > k.limit {
		return nil, fmt.Errorf("%w: %d bytes announced, limit %d", ErrResponseTooLarge, resp.ContentLength, k.limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, k.limit+1))
	if err != nil {
		return nil, &netError{fmt.Errorf("reading the answer (%d %s): %w", resp.StatusCode, http.StatusText(resp.StatusCode), err)}
	}
	if int64(len(b)) > k.limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrResponseTooLarge, k.limit)
	}
	ans := &answer{code: resp.StatusCode, header: resp.Header, body: b}
	now := c.now()
	if t, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		now = t // Retry-After dates are the server's, so is its clock
	}
	ans.retryAfter, ans.hasRetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	return ans, nil
}

// sleep waits d by the Client's Clock, or until ctx is done.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if c.Clock != nil {
		return c.Clock.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// random returns a number in [0, 1) for the jitter.
func (c *Client) random() float64 {
	if c.jitter != nil {
		return c.jitter()
	}
	return rand.Float64()
}

// now returns the time by the Client's Clock.
func (c *Client) now() time.Time {
	if c.Clock != nil {
		return c.Clock.Now()
	}
	return time.Now()
}
