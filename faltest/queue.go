package faltest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultQueueKey is the key a Queue accepts until SetKey changes it,
// shaped like a fal key (id:secret).
const DefaultQueueKey = "faltest-key-id:faltest-key-secret"

// fal's figures for results and webhooks, which a Queue follows by its
// Clock.
const (
	// ResultRetention is how long fal keeps a result after the request
	// completes.
	ResultRetention = time.Hour
	// LargeResultRetention is how long fal keeps a result of
	// LargeResultBytes or more.
	LargeResultRetention = 6 * time.Minute
	// LargeResultBytes is the size from which a result is kept only
	// LargeResultRetention ("10 KB or larger"; read as 10,000 bytes, the
	// stricter reading).
	LargeResultBytes = 10_000
	// WebhookMaxRetries is how many times fal retries a webhook after the
	// first attempt, at most.
	WebhookMaxRetries = 31
)

// WebhookRetryDelay returns how long after attempt n (1 for the first) a
// Queue retries a failed webhook: 15 s, 30 s, 60 s, then 120 s each time,
// which puts WebhookMaxRetries retries in just under an hour, fal's
// retention. fal documents the count, the hour and the per-attempt
// timeouts (15 s for the first attempt, 120 s after), not the intervals;
// these are an approximation.
func WebhookRetryDelay(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 4 {
		return 2 * time.Minute
	}
	return 15 * time.Second << (n - 1)
}

// Op names a queue operation, for Queue.FailNext.
type Op string

// The queue's operations.
const (
	OpSubmit Op = "submit"
	OpStatus Op = "status"
	OpResult Op = "result"
	OpCancel Op = "cancel"
)

// A Queue is a fake fal queue on a loopback address, for tests of code that
// submits requests, polls them, fetches results and receives webhooks. It
// answers at fal's URLs (POST {URL}/{endpoint}?fal_webhook=…, and status,
// result and cancel at {URL}/{owner}/{app}/requests/{id}…, without the
// endpoint's sub-path, so a client that rebuilds URLs instead of using the
// ones returned gets 404), checks "Authorization: Key <key>" (401 without
// it), and delivers signed webhooks on fal's retry schedule.
//
// Nothing happens in the background. Time is the Queue's Clock: a request
// moves through IN_QUEUE and IN_PROGRESS as its Plan says when the clock
// moves, its result expires after fal's retention by the clock, and
// webhooks are delivered only inside Advance (or Deliver), which walks the
// clock from one due attempt to the next, POSTs each one signed with the
// Signer at the time it is due, and retries failures with
// WebhookRetryDelay: an hour of fal's retries runs in a few milliseconds.
// A 2xx answer ends the deliveries; a 3xx ends them as a permanent failure,
// as at fal; anything else, a timeout or a network error is retried until
// WebhookMaxRetries or the result's expiry. (fal also refuses private and
// loopback webhook URLs; a Queue delivers to them, since tests run there.)
//
// Faults: a Plan can drop a request's webhook, delay it, or deliver it more
// than once, and make the request fail (a 422 with validation detail, an
// infrastructure error with X-Fal-Error-Type); FailNext makes calls answer
// 429 with Retry-After, or any status; Expire forgets a result early.
// Request and Requests report each request's counts: status calls, result
// fetches, cancels and webhook attempts.
//
// A Queue is safe for concurrent use by multiple goroutines.
type Queue struct {
	// URL is the queue's base URL, such as http://127.0.0.1:41234: a
	// falqueue.Client's BaseURL.
	URL string

	srv    *httptest.Server
	signer *Signer
	clock  *Clock
	hooks  *http.Client // delivers webhooks; never follows redirects
	turn   sync.Mutex   // one Advance at a time

	mu           sync.Mutex // guards the fields below
	key          string
	userID       string
	planner      func(QueueRequest) Plan
	reqs         map[string]*queued
	order        []*queued
	faults       map[Op]fault
	unauthorized int
	submitted    int // requests given an id
}

// A fault makes the next calls of one operation fail.
type fault struct {
	n          int
	status     int
	retryAfter string
}

// QueueRequest is a request as submitted: what a planner decides on.
type QueueRequest struct {
	ID          string    // the request id the Queue gave it
	Endpoint    string    // such as fal-ai/flux/dev
	Input       []byte    // the submitted body, verbatim
	WebhookURL  string    // the fal_webhook query parameter; empty for none
	SubmittedAt time.Time // by the Queue's Clock
}

// A Plan decides what happens to one request. The zero Plan completes the
// request at once, successfully, with its input as the result, and delivers
// its webhook (if it asked for one) at once.
type Plan struct {
	InQueue    time.Duration // how long it stays IN_QUEUE after submission
	InProgress time.Duration // then how long IN_PROGRESS, unless Hold

	// Hold keeps the request IN_PROGRESS, after InQueue, until
	// Queue.Complete is called.
	Hold bool

	// Output is its outcome; the zero Output is success with the input
	// echoed as the result.
	Output Output

	// Webhook says how its webhook goes.
	Webhook WebhookPlan
}

// Output is a request's outcome: what the result endpoint answers and what
// the webhook carries. The zero Output is a success whose result is the
// request's input.
type Output struct {
	// Payload is a successful result's body, verbatim; nil means the
	// request's input.
	Payload json.RawMessage

	// StatusCode is a failed request's HTTP status, such as 422 or 504;
	// 0 means success.
	StatusCode int

	// Body is a failed request's body, such as {"detail": [...]}; nil
	// means {"detail": "<status text>"}. A body that is not JSON is
	// delivered as fal delivers one, with a null payload and a
	// payload_error.
	Body json.RawMessage

	// ErrorType is a failed request's X-Fal-Error-Type, such as
	// "request_timeout"; empty sends none.
	ErrorType string
}

// OKOutput returns a successful Output whose result is payload, encoded as
// OKBody encodes its payload (a json.RawMessage verbatim).
func OKOutput(payload any) Output {
	return Output{Payload: marshalPayload(payload)}
}

// ErrorOutput returns a failed Output with statusCode and the body
// {"detail": <detail>}, encoded as ErrorBody encodes it, and the error type
// errorType ("" for none).
func ErrorOutput(statusCode int, detail any, errorType string) Output {
	body := append([]byte(`{"detail": `), marshalPayload(detail)...)
	return Output{StatusCode: statusCode, Body: append(body, '}'), ErrorType: errorType}
}

// ValidationErrorOutput returns fal's documented 422 failure, a request
// missing its prompt: the result ValidationErrorBody delivers.
func ValidationErrorOutput() Output {
	return ErrorOutput(http.StatusUnprocessableEntity, json.RawMessage(validationDetail), "")
}

// WebhookPlan says how a request's webhook is delivered.
type WebhookPlan struct {
	// Drop loses the webhook: no attempt is made. Only polling finds the
	// result.
	Drop bool

	// Delay makes the first attempt come this long after the request
	// completes (a late webhook); with a Delay past the result's retention
	// the webhook never comes.
	Delay time.Duration

	// Duplicates delivers the webhook this many more times right after it
	// is first answered 2xx, each freshly signed.
	Duplicates int
}

// WebhookState is where a request's webhook deliveries stand.
type WebhookState string

// The webhook states.
const (
	WebhookNone       WebhookState = "none"       // no fal_webhook was given
	WebhookWaiting    WebhookState = "waiting"    // the request has not completed
	WebhookPending    WebhookState = "pending"    // an attempt is due (see RequestInfo.NextAttempt)
	WebhookDelivered  WebhookState = "delivered"  // an attempt was answered 2xx
	WebhookDropped    WebhookState = "dropped"    // the Plan dropped it
	WebhookRedirected WebhookState = "redirected" // an attempt was answered 3xx: a permanent failure
	WebhookExpired    WebhookState = "expired"    // retries stopped when the result expired
	WebhookExhausted  WebhookState = "exhausted"  // WebhookMaxRetries retries failed
)

// WebhookAttempt is one webhook delivery attempt.
type WebhookAttempt struct {
	Time       time.Time // when it was made (and signed), by the Queue's Clock
	StatusCode int       // the receiver's answer; 0 when there was none
	Err        string    // the network error or timeout, when there was no answer
	Duplicate  bool      // a duplicate of a delivery already answered 2xx
}

// RequestInfo is what a Queue knows about one request, at the Clock's
// current time.
type RequestInfo struct {
	QueueRequest
	Plan Plan

	State       string    // IN_QUEUE, IN_PROGRESS or COMPLETED, now
	Cancelled   bool      // Cancel ended it
	Output      Output    // its outcome, once completed
	CompletedAt time.Time // zero until it completes
	ExpiresAt   time.Time // when its result expires; zero until it completes
	Expired     bool      // its result is gone

	StatusCalls   int // authorized calls to its status URL, failed ones (FailNext) included
	ResultCalls   int // authorized calls to its response URL, failed ones included
	ResultsServed int // result calls answered with its outcome (success or failure)
	CancelCalls   int // authorized calls to its cancel URL

	Webhook     WebhookState
	Attempts    []WebhookAttempt
	Deliveries  int       // attempts answered 2xx, duplicates included
	NextAttempt time.Time // when the next attempt is due; zero when none is
}

// queued is one request's state.
type queued struct {
	info     RequestInfo // counts, webhook attempts and outcome so far
	retries  int         // failed attempts of the current delivery
	dups     int         // duplicates still to deliver
	statusAt time.Time   // when the planned InQueue ends
}

// NewQueue starts a Queue on 127.0.0.1 that signs webhooks with signer and
// runs on clock (a new NewClock(time.Time{}) when nil). The caller must
// Close it. NewQueue panics if signer is nil.
func NewQueue(signer *Signer, clock *Clock) *Queue {
	if signer == nil {
		panic("faltest: NewQueue needs a Signer")
	}
	if clock == nil {
		clock = NewClock(time.Time{})
	}
	q := &Queue{
		signer: signer,
		clock:  clock,
		hooks: &http.Client{
			Transport:     &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		key:    DefaultQueueKey,
		userID: DefaultUserID,
		reqs:   make(map[string]*queued),
		faults: make(map[Op]fault),
	}
	q.srv = httptest.NewServer(http.HandlerFunc(q.serveHTTP))
	q.URL = q.srv.URL
	return q
}

// Close shuts the server down and waits for outstanding calls to finish.
func (q *Queue) Close() { q.srv.Close() }

// Client returns an HTTP client for the queue (a falqueue.Client's
// HTTPClient); any client reaches it, since it is plain HTTP on loopback.
func (q *Queue) Client() *http.Client { return q.srv.Client() }

// Clock returns the Queue's Clock.
func (q *Queue) Clock() *Clock { return q.clock }

// Key returns the key the Queue accepts: "Authorization: Key <Key()>".
func (q *Queue) Key() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.key
}

// SetKey changes the key the Queue accepts.
func (q *Queue) SetKey(key string) {
	q.mu.Lock()
	q.key = key
	q.mu.Unlock()
}

// SetUserID sets the X-Fal-Webhook-User-Id of the webhooks;
// DefaultUserID until then.
func (q *Queue) SetUserID(id string) {
	q.mu.Lock()
	q.userID = id
	q.mu.Unlock()
}

// SetPlanner makes plan decide each request submitted from now on; nil
// gives every request the zero Plan.
func (q *Queue) SetPlanner(plan func(QueueRequest) Plan) {
	q.mu.Lock()
	q.planner = plan
	q.mu.Unlock()
}

// FailNext makes the next n authorized calls of op answer status (in
// [400, 599]) with {"detail": "<status text>"} and, if retryAfter is not
// empty, that Retry-After header (such as "2", or an HTTP date). It
// replaces any failures of op still pending; n <= 0 cancels them. A failed
// submit creates no request; failed calls still count in the request's
// StatusCalls, ResultCalls or CancelCalls. FailNext panics on a status
// outside [400, 599].
func (q *Queue) FailNext(op Op, n, status int, retryAfter string) {
	if status < 400 || status > 599 {
		panic("faltest: FailNext status " + strconv.Itoa(status) + " not in [400, 599]")
	}
	q.mu.Lock()
	q.faults[op] = fault{n: max(n, 0), status: status, retryAfter: retryAfter}
	q.mu.Unlock()
}

// Unauthorized returns how many calls were answered 401 because their
// Authorization was not "Key <Key()>".
func (q *Queue) Unauthorized() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.unauthorized
}

// Request returns what the Queue knows about the request id.
func (q *Queue) Request(id string) (RequestInfo, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.reqs[id]
	if !ok {
		return RequestInfo{}, false
	}
	return q.snapshot(r, q.clock.Now()), true
}

// Requests returns what the Queue knows about every request, in the order
// they were submitted.
func (q *Queue) Requests() []RequestInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.clock.Now()
	out := make([]RequestInfo, len(q.order))
	for i, r := range q.order {
		out[i] = q.snapshot(r, now)
	}
	return out
}

// Complete completes the request id now with out, whatever its Plan said
// (for a Plan with Hold, or to finish a request early). It fails for an
// unknown request or one already completed.
func (q *Queue) Complete(id string, out Output) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.reqs[id]
	now := q.clock.Now()
	switch {
	case !ok:
		return fmt.Errorf("faltest: no request %q", id)
	case q.completed(r, now):
		return fmt.Errorf("faltest: request %q already completed", id)
	}
	q.complete(r, now, out)
	return nil
}

// Expire makes the request's result gone now, as if its retention had
// passed: the result endpoint answers 404 and webhook retries stop. It
// fails for an unknown request or one not completed.
func (q *Queue) Expire(id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.reqs[id]
	now := q.clock.Now()
	switch {
	case !ok:
		return fmt.Errorf("faltest: no request %q", id)
	case !q.completed(r, now):
		return fmt.Errorf("faltest: request %q has not completed", id)
	}
	r.info.ExpiresAt = now
	return nil
}

// Advance moves the Queue's Clock forward by d, delivering on the way every
// webhook attempt that falls due, in order, each at its due time: the clock
// stands at an attempt's time while it is made, so its signature's
// timestamp is that time. Attempts wait for the receiver's answer in real
// time, 15 s for a first attempt and 120 s for a retry at most. It returns
// early with ctx's error when ctx is done.
func (q *Queue) Advance(ctx context.Context, d time.Duration) error {
	q.turn.Lock()
	defer q.turn.Unlock()
	target := q.clock.Now().Add(max(d, 0))
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		q.mu.Lock()
		// The next event by target: a request completing (which schedules
		// its webhook) or an attempt falling due.
		var (
			next *queued
			when time.Time
		)
		for _, r := range q.order {
			t := r.info.NextAttempt
			if r.info.CompletedAt.IsZero() && !r.info.Plan.Hold {
				t = r.info.SubmittedAt.Add(r.info.Plan.InQueue + r.info.Plan.InProgress)
			}
			if !t.IsZero() && !t.After(target) && (next == nil || t.Before(when)) {
				next, when = r, t
			}
		}
		if next == nil {
			q.mu.Unlock()
			q.clock.moveTo(target)
			return nil
		}
		q.clock.moveTo(when)
		now := q.clock.Now()
		if !q.completed(next, now) || next.info.NextAttempt.IsZero() || next.info.NextAttempt.After(now) {
			q.mu.Unlock()
			continue
		}
		a, ok := q.prepare(next, now)
		q.mu.Unlock()
		if ok {
			q.attempt(ctx, next, a)
		}
	}
}

// Deliver delivers the webhook attempts due now, without moving the clock
// past them: Advance(ctx, 0).
func (q *Queue) Deliver(ctx context.Context) error { return q.Advance(ctx, 0) }

// delivery is one attempt about to be made.
type delivery struct {
	url       string
	body      []byte
	userID    string
	at        time.Time
	timeout   time.Duration
	duplicate bool
}

// prepare builds r's due attempt at now, or stops the deliveries when its
// result has expired. q.mu is held.
func (q *Queue) prepare(r *queued, now time.Time) (delivery, bool) {
	if !now.Before(r.info.ExpiresAt) {
		r.info.NextAttempt, r.info.Webhook = time.Time{}, WebhookExpired
		return delivery{}, false
	}
	d := delivery{
		url:       r.info.WebhookURL,
		body:      webhookBody(&r.info),
		userID:    q.userID,
		at:        now,
		timeout:   15 * time.Second,
		duplicate: r.info.Webhook == WebhookDelivered,
	}
	if r.retries > 0 || d.duplicate {
		d.timeout = 2 * time.Minute
	}
	return d, true
}

// attempt makes one delivery attempt and records its outcome.
func (q *Queue) attempt(ctx context.Context, r *queued, d delivery) {
	rec := WebhookAttempt{Time: d.at, Duplicate: d.duplicate}
	actx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := q.signer.NewClientRequest(actx, d.url, Delivery{RequestID: r.info.ID, UserID: d.userID, Time: d.at, Body: d.body})
	if err == nil {
		var resp *http.Response
		if resp, err = q.hooks.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			rec.StatusCode = resp.StatusCode
		}
	}
	if err != nil {
		rec.Err = err.Error()
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	r.info.Attempts = append(r.info.Attempts, rec)
	code := rec.StatusCode
	switch {
	case code >= 200 && code <= 299:
		r.info.Deliveries++
		if r.info.Webhook != WebhookDelivered {
			r.info.Webhook, r.dups = WebhookDelivered, r.info.Plan.Webhook.Duplicates
		}
		r.info.NextAttempt = time.Time{}
		if r.dups > 0 {
			r.dups--
			r.info.NextAttempt = d.at
		}
	case d.duplicate:
		r.info.NextAttempt = time.Time{} // a failed duplicate is not retried
		if r.dups > 0 {
			r.dups--
			r.info.NextAttempt = d.at
		}
	case code >= 300 && code <= 399:
		r.info.Webhook, r.info.NextAttempt = WebhookRedirected, time.Time{}
	default:
		r.retries++
		next := d.at.Add(WebhookRetryDelay(r.retries))
		switch {
		case r.retries > WebhookMaxRetries:
			r.info.Webhook, r.info.NextAttempt = WebhookExhausted, time.Time{}
		case !next.Before(r.info.ExpiresAt):
			r.info.Webhook, r.info.NextAttempt = WebhookExpired, time.Time{}
		default:
			r.info.NextAttempt = next
		}
	}
}

// webhookBody returns the body fal would deliver for r's outcome.
func webhookBody(r *RequestInfo) []byte {
	out := r.Output
	payload, errMsg := []byte(out.Payload), ""
	if out.StatusCode != 0 {
		payload, errMsg = out.Body, "Invalid status code: "+strconv.Itoa(out.StatusCode)
	}
	if !json.Valid(payload) {
		return deliveryBody(r.ID, errMsg, []byte("null"), "Response payload is not JSON serializable. Either return a JSON serializable object or use the queue endpoint to retrieve the response.")
	}
	return deliveryBody(r.ID, errMsg, payload, "")
}

// completed reports whether r has completed by now, completing it as its
// Plan says when that time has come. q.mu is held.
func (q *Queue) completed(r *queued, now time.Time) bool {
	if !r.info.CompletedAt.IsZero() {
		return true
	}
	p := r.info.Plan
	if p.Hold {
		return false
	}
	at := r.info.SubmittedAt.Add(p.InQueue + p.InProgress)
	if now.Before(at) {
		return false
	}
	q.complete(r, at, p.Output)
	return true
}

// complete records r's outcome out at time at and schedules its webhook.
// q.mu is held.
func (q *Queue) complete(r *queued, at time.Time, out Output) {
	if out.StatusCode == 0 && out.Payload == nil {
		out.Payload = r.info.Input
	}
	if out.StatusCode != 0 && out.Body == nil {
		out.Body = []byte(`{"detail": ` + string(marshalCompact(http.StatusText(out.StatusCode))) + `}`)
	}
	size := len(out.Payload)
	if out.StatusCode != 0 {
		size = len(out.Body)
	}
	keep := ResultRetention
	if size >= LargeResultBytes {
		keep = LargeResultRetention
	}
	r.info.Output, r.info.CompletedAt, r.info.ExpiresAt = out, at, at.Add(keep)
	switch {
	case r.info.WebhookURL == "":
		r.info.Webhook = WebhookNone
	case r.info.Plan.Webhook.Drop:
		r.info.Webhook = WebhookDropped
	default:
		r.info.Webhook, r.info.NextAttempt = WebhookPending, at.Add(max(r.info.Plan.Webhook.Delay, 0))
	}
}

// state returns r's queue state at now. q.mu is held.
func (q *Queue) state(r *queued, now time.Time) string {
	switch {
	case q.completed(r, now):
		return "COMPLETED"
	case now.Before(r.statusAt):
		return "IN_QUEUE"
	}
	return "IN_PROGRESS"
}

// snapshot returns a copy of r's info at now. q.mu is held.
func (q *Queue) snapshot(r *queued, now time.Time) RequestInfo {
	state := q.state(r, now) // first: it may complete r
	info := r.info
	info.State = state
	if state == "COMPLETED" {
		info.Expired = !now.Before(info.ExpiresAt)
	}
	info.Input = slices.Clone(info.Input)
	info.Attempts = slices.Clone(info.Attempts)
	return info
}

// appOf returns the owner/app part of an endpoint id, which fal's status,
// result and cancel URLs use: the first two segments, or three for the
// workflows and comfy namespaces.
func appOf(endpoint string) string {
	segs := strings.Split(endpoint, "/")
	n := 2
	if segs[0] == "workflows" || segs[0] == "comfy" {
		n = 3
	}
	if len(segs) < n {
		return endpoint
	}
	return strings.Join(segs[:n], "/")
}

func writeQueueJSON(w http.ResponseWriter, code int, v any) {
	b, ok := v.([]byte)
	if !ok {
		b = marshalCompact(v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func detailBody(msg string) map[string]string { return map[string]string{"detail": msg} }

// maxInput bounds a submitted body.
const maxInput = 10 << 20

func (q *Queue) serveHTTP(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	key := q.key
	if r.Header.Get("Authorization") != "Key "+key {
		q.unauthorized++
		q.mu.Unlock()
		writeQueueJSON(w, http.StatusUnauthorized, detailBody("Missing or invalid Authorization header: expected 'Key <key>'"))
		return
	}
	q.mu.Unlock()

	path := strings.TrimPrefix(r.URL.Path, "/")
	app, rest, isRequest := strings.Cut(path, "/requests/")
	if !isRequest {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			writeQueueJSON(w, http.StatusMethodNotAllowed, detailBody("Method Not Allowed"))
			return
		}
		q.submit(w, r, path)
		return
	}
	id, suffix, _ := strings.Cut(rest, "/")
	op, method := OpResult, http.MethodGet
	switch suffix {
	case "":
	case "status":
		op = OpStatus
	case "cancel":
		op, method = OpCancel, http.MethodPut
	default:
		writeQueueJSON(w, http.StatusNotFound, detailBody("Not Found"))
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeQueueJSON(w, http.StatusMethodNotAllowed, detailBody("Method Not Allowed"))
		return
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	req, ok := q.reqs[id]
	if !ok || appOf(req.info.Endpoint) != app {
		writeQueueJSON(w, http.StatusNotFound, detailBody("Request not found"))
		return
	}
	switch op {
	case OpStatus:
		req.info.StatusCalls++
	case OpResult:
		req.info.ResultCalls++
	case OpCancel:
		req.info.CancelCalls++
	}
	if q.injectFault(w, op) {
		return
	}
	now := q.clock.Now()
	switch op {
	case OpStatus:
		q.answerStatus(w, req, now)
	case OpResult:
		q.answerResult(w, req, now)
	case OpCancel:
		q.answerCancel(w, req, now)
	}
}

// injectFault answers with op's pending failure, if any. q.mu is held.
func (q *Queue) injectFault(w http.ResponseWriter, op Op) bool {
	f := q.faults[op]
	if f.n <= 0 {
		return false
	}
	f.n--
	q.faults[op] = f
	if f.retryAfter != "" {
		w.Header().Set("Retry-After", f.retryAfter)
	}
	writeQueueJSON(w, f.status, detailBody(http.StatusText(f.status)))
	return true
}

func (q *Queue) submit(w http.ResponseWriter, r *http.Request, endpoint string) {
	if segs := strings.Split(endpoint, "/"); len(segs) < 2 || slices.Contains(segs, "") {
		writeQueueJSON(w, http.StatusNotFound, detailBody("Application not found"))
		return
	}
	input, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxInput))
	if err != nil {
		writeQueueJSON(w, http.StatusRequestEntityTooLarge, detailBody("Request body too large"))
		return
	}
	q.mu.Lock()
	if q.injectFault(w, OpSubmit) {
		q.mu.Unlock()
		return
	}
	now := q.clock.Now()
	q.submitted++
	qr := QueueRequest{
		ID:          fmt.Sprintf("00000000-0000-4000-8000-%012x", q.submitted),
		Endpoint:    endpoint,
		Input:       input,
		WebhookURL:  r.URL.Query().Get("fal_webhook"),
		SubmittedAt: now,
	}
	planner := q.planner
	q.mu.Unlock()

	var plan Plan
	if planner != nil {
		plan = planner(qr) // outside the lock: a planner may call the Queue
	}
	plan.InQueue, plan.InProgress = max(plan.InQueue, 0), max(plan.InProgress, 0)
	qd := &queued{info: RequestInfo{QueueRequest: qr, Plan: plan, Webhook: WebhookWaiting}, statusAt: now.Add(plan.InQueue)}
	if qr.WebhookURL == "" {
		qd.info.Webhook = WebhookNone
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	q.reqs[qr.ID] = qd
	q.order = append(q.order, qd)
	q.completed(qd, now) // a zero Plan completes at once and schedules its webhook
	writeQueueJSON(w, http.StatusOK, q.statusBody(qd, "IN_QUEUE", now))
}

// statusBody returns a status answer for r in state. q.mu is held.
func (q *Queue) statusBody(r *queued, state string, now time.Time) []byte {
	base := q.URL + "/" + appOf(r.info.Endpoint) + "/requests/" + r.info.ID
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"status": %s, "request_id": %s, "response_url": %s, "status_url": %s, "cancel_url": %s`,
		marshalCompact(state), marshalCompact(r.info.ID), marshalCompact(base), marshalCompact(base+"/status"), marshalCompact(base+"/cancel"))
	switch state {
	case "IN_QUEUE":
		pos := 0
		for _, o := range q.order {
			if o == r {
				break
			}
			if o.info.CompletedAt.IsZero() && now.Before(o.statusAt) {
				pos++
			}
		}
		fmt.Fprintf(&b, `, "queue_position": %d`, pos)
	case "IN_PROGRESS":
		b.WriteString(`, "logs": null`)
	case "COMPLETED":
		secs := r.info.CompletedAt.Sub(r.info.SubmittedAt.Add(r.info.Plan.InQueue)).Seconds()
		fmt.Fprintf(&b, `, "logs": null, "metrics": {"inference_time": %s}`, strconv.FormatFloat(max(secs, 0), 'f', -1, 64))
		if out := r.info.Output; out.StatusCode != 0 {
			fmt.Fprintf(&b, `, "error": %s`, marshalCompact("Invalid status code: "+strconv.Itoa(out.StatusCode)))
			if out.ErrorType != "" {
				fmt.Fprintf(&b, `, "error_type": %s`, marshalCompact(out.ErrorType))
			}
		}
	}
	b.WriteByte('}')
	return b.Bytes()
}

func (q *Queue) answerStatus(w http.ResponseWriter, r *queued, now time.Time) {
	state := q.state(r, now)
	code := http.StatusAccepted
	if state == "COMPLETED" {
		code = http.StatusOK
	}
	writeQueueJSON(w, code, q.statusBody(r, state, now))
}

func (q *Queue) answerResult(w http.ResponseWriter, r *queued, now time.Time) {
	state := q.state(r, now)
	switch {
	case state != "COMPLETED":
		writeQueueJSON(w, http.StatusAccepted, q.statusBody(r, state, now))
		return
	case !now.Before(r.info.ExpiresAt):
		writeQueueJSON(w, http.StatusNotFound, detailBody("Request not found"))
		return
	}
	r.info.ResultsServed++
	out := r.info.Output
	w.Header().Set("X-Fal-Request-Id", r.info.ID)
	if out.StatusCode == 0 {
		writeQueueJSON(w, http.StatusOK, []byte(out.Payload))
		return
	}
	if out.ErrorType != "" {
		w.Header().Set("X-Fal-Error-Type", out.ErrorType)
	}
	writeQueueJSON(w, out.StatusCode, []byte(out.Body))
}

func (q *Queue) answerCancel(w http.ResponseWriter, r *queued, now time.Time) {
	if q.completed(r, now) {
		writeQueueJSON(w, http.StatusBadRequest, map[string]string{"status": "ALREADY_COMPLETED"})
		return
	}
	r.info.Cancelled = true
	r.statusAt = now
	q.complete(r, now, Output{
		StatusCode: 499,
		Body:       []byte(`{"detail": "Request cancelled by the client", "error_type": "client_cancelled"}`),
		ErrorType:  "client_cancelled",
	})
	writeQueueJSON(w, http.StatusAccepted, map[string]string{"status": "CANCELLATION_REQUESTED"})
}
