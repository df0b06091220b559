// Package falqueue is a client for fal.ai's queue: it submits requests,
// asks for their status, fetches their results and cancels them.
//
// A request's life:
//
//	POST {BaseURL}/{endpoint}?fal_webhook=<url>   Submit: fal answers with the request id and three URLs
//	GET  {status_url}                             Status: 202 while IN_QUEUE or IN_PROGRESS, 200 when COMPLETED
//	GET  {response_url}                           Result: the model's output, or the request's failure
//	PUT  {cancel_url}                             Cancel
//
// Result returns the same *falwebhook.Event a webhook delivery carries, so
// code that processes webhooks processes fetched results unchanged: a
// successful request gives StatusOK and the result's bytes as the Payload,
// exactly; a failed one (a 422 for invalid input, a request_timeout) gives
// an Event whose Err reports it. That makes a polling backstop possible:
// when a webhook does not come (the receiver was down longer than fal's
// retries, a redirect, a rejected delivery), the result can still be
// fetched, but only for as long as fal keeps it: 1 hour after the request
// completes, and only 6 minutes when the result is 10 KB or larger. After
// that Result and Status return ErrResultGone.
//
// The key is sent as "Authorization: Key <Key>". It never appears in an
// error or in the Client's formatted forms (%v, %+v, %#v, slog), and it is
// only ever sent to BaseURL's host: the status, result and cancel URLs fal
// returns must be on that host (ErrUntrustedURL), redirects are not
// followed, and an http BaseURL is refused unless its host is a loopback
// address.
//
// Calls are retried as fal's own JavaScript client retries them: Status,
// Result and Cancel up to 5 times on 429, 500, 502, 503 and 504 and on
// network errors; Submit up to 3 times on 429, 502, 503 and 504, and on a
// network error only when the connection was never made. Waits start at 1 s
// and double, with ±25% jitter, up to 30 s (60 s for Submit); a Retry-After
// is honoured, and one longer than that cap ends the retries, reporting it
// in APIError.RetryAfter, so that a job system can reschedule.
//
//	qc := &falqueue.Client{Key: os.Getenv("FAL_KEY")}
//	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{"prompt": "a dog"}, "https://example.com/fal/webhook")
//	// ... store req; later, perhaps in another process:
//	st, err := qc.Status(ctx, req)
//	if st.Completed() {
//		ev, err := qc.Result(ctx, req) // the *falwebhook.Event the webhook carries
//	}
//
// faltest.Queue is a fake fal queue for tests: the whole round trip,
// submit to processed, offline.
package falqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/falwebhook/falwebhook"
)

// DefaultBaseURL is fal's queue, where requests are submitted.
const DefaultBaseURL = "https://queue.fal.run"

// DefaultMaxResultBytes is the default limit, 64 MiB, on the body of a
// result.
const DefaultMaxResultBytes = 64 << 20

// maxAnswerBytes bounds the answers to Submit, Status and Cancel.
const maxAnswerBytes = 1 << 20

// userAgent is sent with every call.
const userAgent = "falqueue (github.com/falwebhook/falwebhook)"

// A Client talks to fal's queue. Set its fields before first use and do not
// change them after; the zero value of each field but Key selects a
// default. A Client is safe for concurrent use by multiple goroutines.
type Client struct {
	// Key is the fal key, sent as "Authorization: Key <Key>"; fal keys are
	// often of the form id:secret. It is required. It is sent only to
	// BaseURL's scheme, host and port. It never appears in errors or in the
	// Client's formatted forms, and Client removes it (and the secret part
	// of an id:secret key) from everything it takes from fal's answers:
	// error texts, statuses and fetched payloads, since an answer never
	// legitimately holds it; a submit answer quoting it is refused. A
	// struct that holds a Client by value in an unexported field is printed
	// by fmt without these methods: hold a *Client.
	Key string

	// BaseURL is where requests are submitted; DefaultBaseURL when empty.
	// It must be https, or http on a loopback host (a test server); it may
	// have a path but no user info, query or fragment. The status, result
	// and cancel URLs fal returns must have BaseURL's scheme, host and port,
	// since the key is sent to them.
	BaseURL string

	// HTTPClient sends the calls; nil means a shared client with timeouts:
	// 10 s to connect, 10 s for the TLS handshake, 60 s for the answer's
	// headers and 2 minutes for the whole exchange, the proxy from the
	// environment. Its CheckRedirect is not used: redirects are never
	// followed (a 3xx answer is ErrUnexpectedStatus), so the key never
	// travels to another URL.
	HTTPClient *http.Client

	// Clock gives the submit time and waits between retries; nil means the
	// real clock. Tests set a fake one (*faltest.Clock is one) so that
	// retries do not wait.
	Clock Clock

	// MaxResultBytes limits the body Result reads; DefaultMaxResultBytes
	// (64 MiB) when zero. A larger result is refused with
	// ErrResponseTooLarge, so raise it for endpoints whose outputs are
	// inline (base64) media. A negative value is ErrInvalidConfig.
	MaxResultBytes int64

	jitter func() float64 // returns [0, 1) for the retry jitter; nil means math/rand/v2. For tests.
}

// A Clock tells the time and waits. *faltest.Clock implements it.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Sleep waits d, or until ctx is done, when it returns ctx.Err().
	Sleep(ctx context.Context, d time.Duration) error
}

// config is a Client's checked configuration.
type config struct {
	base      *url.URL // BaseURL without a trailing slash
	origin    string   // scheme://host:port of BaseURL, lower case
	hc        *http.Client
	maxResult int64
}

var defaultHTTPClient = sync.OnceValue(func() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		Timeout: 2 * time.Minute,
	}
})

func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// config checks the Client's fields.
func (c *Client) config() (*config, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil Client", ErrInvalidConfig)
	}
	if c.Key == "" {
		return nil, fmt.Errorf("%w: no Key", ErrInvalidConfig)
	}
	for i := 0; i < len(c.Key); i++ {
		if b := c.Key[i]; b <= ' ' || b >= 0x7f {
			return nil, fmt.Errorf("%w: Key has a space, control or non-ASCII character", ErrInvalidConfig)
		}
	}
	if c.MaxResultBytes < 0 {
		return nil, fmt.Errorf("%w: MaxResultBytes %d is negative", ErrInvalidConfig, c.MaxResultBytes)
	}
	raw := c.BaseURL
	if raw == "" {
		raw = DefaultBaseURL
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: BaseURL: %w", ErrInvalidConfig, err)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("%w: BaseURL %q is not an absolute http or https URL", ErrInvalidConfig, oneLine(raw, maxDetail))
	case u.User != nil:
		return nil, fmt.Errorf("%w: BaseURL has user info", ErrInvalidConfig)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("%w: BaseURL %q has a query or fragment", ErrInvalidConfig, oneLine(raw, maxDetail))
	case u.Scheme == "http" && !loopback(u.Hostname()):
		return nil, fmt.Errorf("%w: BaseURL %q is http, which would send the key in clear text; use https (http is allowed only on a loopback host)", ErrInvalidConfig, oneLine(raw, maxDetail))
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	hc := c.HTTPClient
	if hc == nil {
		hc = defaultHTTPClient()
	}
	cp := *hc
	cp.CheckRedirect = refuseRedirect
	max := c.MaxResultBytes
	if max == 0 {
		max = DefaultMaxResultBytes
	}
	return &config{base: u, origin: origin(u), hc: &cp, maxResult: max}, nil
}

// loopback reports whether host is localhost or a loopback IP address.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// origin returns u's scheme, host and port (the default one when u has
// none), lower case.
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// trusted checks that raw, a URL from fal or from a stored Request, may be
// sent the key: absolute, without user info, on the queue's origin.
func (cfg *config) trusted(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%w: %s %q is not an absolute URL", ErrUntrustedURL, name, oneLine(raw, maxDetail))
	}
	if u.User != nil {
		return fmt.Errorf("%w: %s has user info", ErrUntrustedURL, name)
	}
	if o := origin(u); o != cfg.origin {
		return fmt.Errorf("%w: %s %q is on %s, not %s", ErrUntrustedURL, name, oneLine(raw, maxDetail), oneLine(o, maxDetail), cfg.origin)
	}
	return nil
}

// checkEndpoint checks an endpoint id: owner/app with an optional path, each
// segment of letters, digits and . _ ~ -, and none of them "." or "..".
func checkEndpoint(endpoint string) error {
	segs := strings.Split(endpoint, "/")
	if len(segs) < 2 {
		return fmt.Errorf("%w: endpoint %q is not owner/app[/path]", ErrInvalidArgument, oneLine(endpoint, maxDetail))
	}
	for _, s := range segs {
		ok := s != "" && s != "." && s != ".."
		for i := 0; ok && i < len(s); i++ {
			b := s[i]
			ok = 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '.' || b == '_' || b == '~' || b == '-'
		}
		if !ok {
			return fmt.Errorf("%w: endpoint %q is not owner/app[/path] of letters, digits and . _ ~ -", ErrInvalidArgument, oneLine(endpoint, maxDetail))
		}
	}
	return nil
}

// checkWebhookURL checks a fal_webhook URL: absolute http or https.
func checkWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%w: webhook URL %q is not an absolute http or https URL", ErrInvalidArgument, oneLine(raw, maxDetail))
	}
	return nil
}

// marshalInput encodes a submit's input, which must be a JSON object; nil
// is the empty object.
func marshalInput(input any) ([]byte, error) {
	if input == nil {
		return []byte("{}"), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(input); err != nil {
		return nil, fmt.Errorf("%w: input: %w", ErrInvalidArgument, err)
	}
	b := bytes.TrimSpace(buf.Bytes())
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("%w: input must encode to a JSON object, not %s", ErrInvalidArgument, oneLine(string(b[:min(len(b), 40)]), 40))
	}
	return b, nil
}

// checkRequest checks that req can be used for op and returns the URL op
// calls: its status, response or cancel URL, which must be on the queue's
// origin.
func (cfg *config) checkRequest(op Op, req *Request) (string, error) {
	if req == nil {
		return "", fmt.Errorf("falqueue: %s: %w: nil Request", op, ErrInvalidArgument)
	}
	name, raw := "cancel_url", req.CancelURL
	switch op {
	case OpStatus:
		name, raw = "status_url", req.StatusURL
	case OpResult:
		name, raw = "response_url", req.ResponseURL
	}
	switch {
	case req.ID == "":
		return "", wrapCall(op, req.Endpoint, "", fmt.Errorf("%w: Request has no id", ErrInvalidArgument))
	case raw == "":
		return "", wrapCall(op, req.Endpoint, req.ID, fmt.Errorf("%w: Request has no %s", ErrInvalidArgument, name))
	}
	if err := cfg.trusted(name, raw); err != nil {
		return "", wrapCall(op, req.Endpoint, req.ID, err)
	}
	return raw, nil
}

// Submit submits input to endpoint (such as fal-ai/flux/dev) with POST
// {BaseURL}/{endpoint}, asking fal to deliver the outcome to webhookURL
// (?fal_webhook=<url>) unless it is empty. input is encoded with
// encoding/json and must encode to a JSON object (pass a json.RawMessage to
// send bytes as they are); nil sends {}.
//
// The returned Request holds fal's answer: the request id and the status,
// response and cancel URLs, which must be on BaseURL's host
// (ErrUntrustedURL); an answer without any of them is ErrInvalidResponse.
// Store it before anything else if the result must not be lost.
//
// Submit is retried up to 3 times on 429, 502, 503 and 504, but not on 500,
// and after a network error only when the connection was never made: a
// request that reached fal may have been enqueued, and a second submit is a
// second request, billed. A 502 or 504 from a gateway can still hide an
// enqueued request (fal's own clients accept that risk too). Other error
// answers are an *APIError.
func (c *Client) Submit(ctx context.Context, endpoint string, input any, webhookURL string) (*Request, error) {
	req, err := c.submit(ctx, endpoint, input, webhookURL)
	return req, c.scrub(err)
}

func (c *Client) submit(ctx context.Context, endpoint string, input any, webhookURL string) (*Request, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	if err := checkEndpoint(endpoint); err != nil {
		return nil, err
	}
	if webhookURL != "" {
		if err := checkWebhookURL(webhookURL); err != nil {
			return nil, err
		}
	}
	body, err := marshalInput(input)
	if err != nil {
		return nil, err
	}
	target := *cfg.base
	target.Path += "/" + endpoint
	if webhookURL != "" {
		target.RawQuery = url.Values{"fal_webhook": {webhookURL}}.Encode()
	}
	k := call{op: OpSubmit, method: http.MethodPost, url: target.String(), body: body, endpoint: endpoint, limit: maxAnswerBytes}
	ans, err := c.do(ctx, cfg, k)
	if err != nil {
		return nil, err
	}
	if ans.code < 200 || ans.code > 299 {
		return nil, c.apiError(k, ans)
	}
	a, err := parseSubmit(ans.body)
	if err != nil {
		return nil, wrapCall(OpSubmit, endpoint, "", err)
	}
	for _, u := range []struct{ name, raw string }{
		{"status_url", a.StatusURL}, {"response_url", a.ResponseURL}, {"cancel_url", a.CancelURL},
	} {
		if err := cfg.trusted(u.name, u.raw); err != nil {
			return nil, wrapCall(OpSubmit, endpoint, a.RequestID, err)
		}
	}
	for _, v := range []string{a.RequestID, a.StatusURL, a.ResponseURL, a.CancelURL} {
		if c.redact(v) != v { // a Request is stored and logged: it must not carry the key
			return nil, wrapCall(OpSubmit, endpoint, "", fmt.Errorf("%w: the answer quotes the key", ErrInvalidResponse))
		}
	}
	return &Request{
		ID:          a.RequestID,
		Endpoint:    endpoint,
		StatusURL:   a.StatusURL,
		ResponseURL: a.ResponseURL,
		CancelURL:   a.CancelURL,
		WebhookURL:  webhookURL,
		SubmittedAt: c.now().Round(0).UTC(),
	}, nil
}

// Status returns the request's status from GET {req.StatusURL}: fal answers
// 202 while it is StateInQueue (with its queue position) or
// StateInProgress, and 200 once it is StateCompleted. A state this package
// does not know is kept verbatim.
//
// Status is retried up to 5 times on 429, 500, 502, 503, 504 and network
// errors. 404 and 410 are ErrResultGone; other error answers are an
// *APIError; an answer that is not a status, or is another request's, is
// ErrInvalidResponse.
func (c *Client) Status(ctx context.Context, req *Request) (*Status, error) {
	st, err := c.status(ctx, req)
	return st, c.scrub(err)
}

func (c *Client) status(ctx context.Context, req *Request) (*Status, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	target, err := cfg.checkRequest(OpStatus, req)
	if err != nil {
		return nil, err
	}
	k := call{op: OpStatus, method: http.MethodGet, url: target, endpoint: req.Endpoint, requestID: req.ID, limit: maxAnswerBytes}
	ans, err := c.do(ctx, cfg, k)
	if err != nil {
		return nil, err
	}
	if ans.code != http.StatusOK && ans.code != http.StatusAccepted {
		return nil, c.apiError(k, ans)
	}
	st, err := parseStatus(ans.body, req.ID)
	if err != nil {
		return nil, wrapCall(OpStatus, req.Endpoint, req.ID, err)
	}
	st.State, st.Error, st.ErrorType = State(c.redact(string(st.State))), c.redact(st.Error), c.redact(st.ErrorType)
	st.Metrics = c.redactBytes(st.Metrics)
	return st, nil
}

// Result fetches the request's outcome from GET {req.ResponseURL} and
// returns it as the *falwebhook.Event a webhook delivery would carry, so
// that the same code processes both:
//
//   - 200: Event{RequestID: req.ID, Status: falwebhook.StatusOK, Payload:
//     the body's bytes exactly}. A body that is not JSON gives a null
//     Payload and a PayloadError, as fal's webhook does, so Err reports it.
//   - the request's failure: any other 4xx but 401, 403, 404, 410 and 429,
//     and a 5xx that fal marks as the request's own (X-Fal-Error-Type, which
//     fal documents on every request failure, or a 504 with
//     X-Fal-Request-Timeout-Type: user), gives Event{Status:
//     falwebhook.StatusError, Error: "Invalid status code: 422", Payload:
//     the body, ErrorType: X-Fal-Error-Type}, whose Err returns a
//     *falwebhook.RequestError with the validation detail.
//
// Everything else is an error, never an Event: 202, or an answer that is
// the request's IN_QUEUE or IN_PROGRESS status, is ErrNotReady; 404 and
// 410 without X-Fal-Error-Type are ErrResultGone (fal keeps a result 1
// hour, 6 minutes when it is 10 KB or larger); 401 and 403 are
// ErrUnauthorized; a 429, or a 5xx without those marks, is an *APIError
// once the retries are spent: a gateway's fault is not the request's
// failure, and reporting a request as failed when its result may still be
// fetched later would be worse than reporting nothing yet (Status's Error
// says whether the request failed). A body over MaxResultBytes is
// ErrResponseTooLarge.
//
// Result is retried like Status. Call it once Status reports
// StateCompleted.
func (c *Client) Result(ctx context.Context, req *Request) (*falwebhook.Event, error) {
	ev, err := c.result(ctx, req)
	return ev, c.scrub(err)
}

func (c *Client) result(ctx context.Context, req *Request) (*falwebhook.Event, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	target, err := cfg.checkRequest(OpResult, req)
	if err != nil {
		return nil, err
	}
	k := call{op: OpResult, method: http.MethodGet, url: target, endpoint: req.Endpoint, requestID: req.ID, limit: cfg.maxResult}
	ans, err := c.do(ctx, cfg, k)
	if err != nil {
		return nil, err
	}
	if state, ok := notReady(ans, req.ID); ok {
		return nil, wrapCall(OpResult, req.Endpoint, req.ID, fmt.Errorf("%w: fal answered %d (%s)", ErrNotReady, ans.code, state))
	}
	code, outcome := ans.code, isOutcome(ans.code, ans.header)
	switch {
	case code == http.StatusOK:
		ev := &falwebhook.Event{RequestID: req.ID, Status: falwebhook.StatusOK}
		c.setPayload(ev, ans)
		return ev, nil
	case code < 400 || code > 599,
		code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusTooManyRequests,
		(code == http.StatusNotFound || code == http.StatusGone) && !outcome,
		code >= 500 && !outcome:
		return nil, c.apiError(k, ans)
	}
	ev := &falwebhook.Event{
		RequestID: req.ID,
		Status:    falwebhook.StatusError,
		Error:     "Invalid status code: " + strconv.Itoa(code),
		ErrorType: c.redact(ans.header.Get(headerErrorType)),
	}
	if len(bytes.TrimSpace(ans.body)) > 0 {
		c.setPayload(ev, ans)
	}
	return ev, nil
}

// setPayload makes the answer's body the event's payload, or, when it is
// not JSON, a null payload with a payload_error, as fal's webhook reports
// an output it cannot serialize. The key is removed from it: an answer
// never legitimately holds it, and events are stored.
func (c *Client) setPayload(ev *falwebhook.Event, ans *answer) {
	body := c.redactBytes(ans.body)
	if json.Valid(body) {
		ev.Payload = body
		return
	}
	ev.Payload = json.RawMessage("null")
	ct := ans.header.Get("Content-Type")
	if ct == "" {
		ct = "no Content-Type"
	}
	ev.PayloadError = c.redact(fmt.Sprintf("falqueue: the answer's body is not JSON (%s, %d bytes)", oneLine(ct, 100), len(ans.body)))
}

// notReady reports whether a result answer says the request has not
// finished: a 202, or a small body that is this request's IN_QUEUE or
// IN_PROGRESS status.
func notReady(ans *answer, id string) (State, bool) {
	if ans.code != http.StatusAccepted && len(ans.body) > 64<<10 {
		return "", false
	}
	var s struct {
		Status    string `json:"status"`
		RequestID string `json:"request_id"`
	}
	parsed := json.Unmarshal(ans.body, &s) == nil
	if ans.code == http.StatusAccepted {
		if !parsed || s.Status == "" {
			return "no status", true
		}
		return State(oneLine(s.Status, maxDetail)), true
	}
	if parsed && s.RequestID == id && (State(s.Status) == StateInQueue || State(s.Status) == StateInProgress) {
		return State(s.Status), true
	}
	return "", false
}

// Cancel asks fal to cancel the request with PUT {req.CancelURL}; fal
// cancels a request that has not started and signals one in progress. A
// request that already finished is ErrAlreadyCompleted; 404 and 410 are
// ErrResultGone; other error answers are an *APIError. Cancel is retried
// like Status.
func (c *Client) Cancel(ctx context.Context, req *Request) error {
	return c.scrub(c.cancel(ctx, req))
}

func (c *Client) cancel(ctx context.Context, req *Request) error {
	cfg, err := c.config()
	if err != nil {
		return err
	}
	target, err := cfg.checkRequest(OpCancel, req)
	if err != nil {
		return err
	}
	k := call{op: OpCancel, method: http.MethodPut, url: target, endpoint: req.Endpoint, requestID: req.ID, limit: maxAnswerBytes}
	ans, err := c.do(ctx, cfg, k)
	if err != nil {
		return err
	}
	if ans.code >= 200 && ans.code <= 299 {
		return nil
	}
	return c.apiError(k, ans)
}

// apiError describes an error answer to k.
func (c *Client) apiError(k call, ans *answer) *APIError {
	e := &APIError{
		Op:         k.op,
		Endpoint:   k.endpoint,
		RequestID:  k.requestID,
		StatusCode: ans.code,
		Detail:     c.redact(detail(ans.body)),
		ErrorType:  c.redact(ans.header.Get(headerErrorType)),
		Attempts:   ans.attempts,
		kind:       kindOf(k.op, ans.code),
	}
	if ans.hasRetryAfter {
		e.RetryAfter = ans.retryAfter
	}
	if k.op == OpCancel && ans.code == http.StatusBadRequest {
		var s struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(ans.body, &s) == nil && s.Status == "ALREADY_COMPLETED" {
			e.kind = ErrAlreadyCompleted
		}
	}
	return e
}

// detail returns fal's message in an error answer: the body's detail (a
// string, or validation errors), message or status, or an excerpt of the
// body.
func detail(body []byte) string {
	var d struct {
		Detail  json.RawMessage `json:"detail"`
		Message string          `json:"message"`
		Status  string          `json:"status"`
	}
	if json.Unmarshal(body, &d) == nil {
		if len(d.Detail) > 0 && string(d.Detail) != "null" {
			var ed falwebhook.ErrorDetail
			if json.Unmarshal(d.Detail, &ed) == nil {
				return oneLine(ed.String(), maxDetail)
			}
			return oneLine(string(d.Detail), maxDetail)
		}
		if d.Message != "" {
			return oneLine(d.Message, maxDetail)
		}
		if d.Status != "" {
			return oneLine(d.Status, maxDetail)
		}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ""
	}
	return excerpt(body)
}

// redacted stands for the key wherever it would appear.
const redacted = "[REDACTED]"

// redact removes the key, and the secret part of an id:secret key, from s,
// a text taken from fal's answer.
func (c *Client) redact(s string) string {
	if c == nil || c.Key == "" {
		return s
	}
	s = strings.ReplaceAll(s, c.Key, redacted)
	if _, secret, ok := strings.Cut(c.Key, ":"); ok && len(secret) >= 8 {
		s = strings.ReplaceAll(s, secret, redacted)
	}
	return s
}

// redactBytes is redact for a body; it returns b itself when there is
// nothing to remove.
func (c *Client) redactBytes(b []byte) []byte {
	if c == nil || c.Key == "" {
		return b
	}
	_, secret, _ := strings.Cut(c.Key, ":")
	if !bytes.Contains(b, []byte(c.Key)) && (len(secret) < 8 || !bytes.Contains(b, []byte(secret))) {
		return b
	}
	return []byte(c.redact(string(b)))
}

// scrub returns err, or, if its text would show the key (an answer or a
// stored URL quoted it), an error with the key removed from its text that
// still matches what err matched: the package's sentinels, *APIError,
// the context's errors and the network errors.
func (c *Client) scrub(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := c.redact(msg); red != msg {
		return &scrubbed{msg: red, errs: matched(err)}
	}
	return err
}

// scrubbed is an error whose text had the key removed.
type scrubbed struct {
	msg  string
	errs []error
}

func (e *scrubbed) Error() string   { return e.msg }
func (e *scrubbed) Unwrap() []error { return e.errs }

// matched returns the errors in err's tree that scrubbed keeps.
func matched(err error) []error {
	var out []error
	for _, s := range []error{
		ErrInvalidConfig, ErrInvalidArgument, ErrUntrustedURL, ErrInvalidResponse, ErrResponseTooLarge,
		ErrNotReady, ErrResultGone, ErrRateLimited, ErrUnauthorized, ErrRejected, ErrServerError,
		ErrUnexpectedStatus, ErrAlreadyCompleted, context.Canceled, context.DeadlineExceeded,
	} {
		if errors.Is(err, s) {
			out = append(out, s)
		}
	}
	var ae *APIError
	if errors.As(err, &ae) {
		out = append(out, ae) // its text is redacted when it is made
	}
	var op *net.OpError
	if errors.As(err, &op) {
		out = append(out, &net.OpError{Op: op.Op, Net: op.Net, Err: errors.New("network error")})
	}
	return out
}

// String returns a description of the Client that never shows its key:
//
//	falqueue.Client{BaseURL: "https://queue.fal.run", Key: [REDACTED]}
func (c Client) String() string {
	key := `""`
	if c.Key != "" {
		key = redacted
	}
	base := c.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	return fmt.Sprintf("falqueue.Client{BaseURL: %q, Key: %s}", base, key)
}

// GoString returns the same as String, for %#v.
func (c Client) GoString() string { return c.String() }

// Format writes String for every verb, so that no verb (%v, %+v, %#v, %s,
// %d, %x) prints the key.
func (c Client) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, c.String()) }

// LogValue returns the Client's base URL and a redacted key, for log/slog.
func (c Client) LogValue() slog.Value {
	key := ""
	if c.Key != "" {
		key = redacted
	}
	base := c.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	return slog.GroupValue(slog.String("base_url", base), slog.String("key", key))
}
