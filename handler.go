package falwebhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

// Errors of the HTTP layer, in addition to those of Verify.
var (
	// ErrMethodNotAllowed is returned by VerifyRequest for a request whose
	// method is not POST.
	ErrMethodNotAllowed = errors.New("falwebhook: method not allowed")

	// ErrBodyTooLarge is returned by VerifyRequest when the body exceeds the
	// limit set by WithMaxBodySize.
	ErrBodyTooLarge = errors.New("falwebhook: body too large")

	// ErrReadBody is returned by VerifyRequest when the body could not be
	// read, for example because the client went away.
	ErrReadBody = errors.New("falwebhook: reading body")
)

const (
	defaultMaxBodySize = 25 << 20
	retryAfterSeconds  = "60" // sent with 503 and 409
)

// WithMaxBodySize sets the largest body, in bytes, that the middleware and
// VerifyRequest read (default 25 MiB). A larger body is rejected with 413
// after reading at most n+1 bytes.
func WithMaxBodySize(n int64) Option {
	return func(v *Verifier) { v.maxBody = min(max(n, 0), 1<<62) }
}

// WithErrorHandler replaces the middleware's response to a rejected request
// (default WriteError). f receives the error (match it with errors.Is, or
// map it with StatusCode) and must write the whole response. The wrapped
// handler is never called for a rejected request, whatever f does.
func WithErrorHandler(f func(w http.ResponseWriter, r *http.Request, err error)) Option {
	return func(v *Verifier) { v.onError = f }
}

// StatusCode returns the HTTP status a webhook receiver should answer for an
// error from Verify, VerifyRequest, ParseEvent or Dedupe.Do:
//
//	nil                                            200 OK
//	ErrMethodNotAllowed                            405 Method Not Allowed
//	ErrBodyTooLarge                                413 Content Too Large
//	ErrMissingHeader, ErrMalformedHeader,
//	ErrInvalidEvent, ErrReadBody                   400 Bad Request
//	ErrTimestampOutOfRange, ErrSignatureMismatch   401 Unauthorized
//	ErrUnexpectedUser                              403 Forbidden
//	ErrKeysUnavailable, ErrNoUsableKeys,
//	ErrKeyNotFetched, ErrOverloaded,
//	ErrDedupeStore, ErrNoUserIDs                   503 Service Unavailable
//	anything else                                  500 Internal Server Error
//
// 503 asks fal to retry later: the delivery may be genuine but cannot be
// checked now. A 503 caused by keys wins over a 401: a signature the cached
// keys do not verify is a 503 when refetching them failed, or when they
// were fetched before the delivery was signed and the JWKS cooldown
// forbids fetching again yet (ErrKeyNotFetched: a key added since may
// have signed it, and forgeries are answered so too until a fetch settles
// them; see JWKS.Cooldown). A mismatch the keys settle is a 401.
func StatusCode(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrKeysUnavailable), errors.Is(err, ErrNoUsableKeys), errors.Is(err, ErrDedupeStore), errors.Is(err, ErrOverloaded),
		errors.Is(err, ErrNoUserIDs), errors.Is(err, ErrKeyNotFetched):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrMethodNotAllowed):
		return http.StatusMethodNotAllowed
	case errors.Is(err, ErrBodyTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrMissingHeader), errors.Is(err, ErrMalformedHeader),
		errors.Is(err, ErrInvalidEvent), errors.Is(err, ErrReadBody):
		return http.StatusBadRequest
	case errors.Is(err, ErrTimestampOutOfRange), errors.Is(err, ErrSignatureMismatch):
		return http.StatusUnauthorized
	case errors.Is(err, ErrUnexpectedUser):
		return http.StatusForbidden
	default:
		return http.StatusInternalServerError
	}
}

// WriteError writes the default response to a rejected request: the status
// and headers Answer(0, err) gives, with the status's standard text. It
// never reveals the error's detail. A handler set by WithErrorHandler can
// fall back on it, and routers other than net/http can use it through
// their http.ResponseWriter.
func WriteError(w http.ResponseWriter, err error) {
	write(w, 0, err)
}

// Answer returns the status and the headers to answer fal with, for code
// that writes its responses without an http.ResponseWriter (fiber, a
// Lambda event): state 0 and an error from Verify, VerifyRequest or
// ParseEvent, or the results of Dedupe.Do. The middleware and WriteError
// answer the same way:
//
//	err == nil, state 0 or ClaimAcquired  200
//	ClaimCompleted                        200, HeaderDuplicate: completed
//	ClaimInProgress                       409, Retry-After, HeaderDuplicate: in-progress
//	an error                              StatusCode(err), with Allow: POST on 405, Retry-After on 503
//	                                      (a *KeyNotFetchedError's RetryAfter, otherwise 60 seconds),
//	                                      and Connection: close on 413, ErrOverloaded and ErrReadBody
//	                                      so that the rest of the body is not read
func Answer(state ClaimState, err error) (status int, header http.Header) {
	header = http.Header{}
	switch state {
	case ClaimCompleted:
		header.Set(HeaderDuplicate, "completed")
		return http.StatusOK, header
	case ClaimInProgress:
		header.Set(HeaderDuplicate, "in-progress")
		header.Set("Retry-After", retryAfterSeconds)
		return http.StatusConflict, header
	}
	status = StatusCode(err)
	switch {
	case status == http.StatusMethodNotAllowed:
		header.Set("Allow", http.MethodPost)
	case status == http.StatusServiceUnavailable:
		header.Set("Retry-After", retryAfterSeconds)
		if ke := (*KeyNotFetchedError)(nil); errors.As(err, &ke) && ke.RetryAfter > 0 {
			header.Set("Retry-After", strconv.FormatInt(int64((ke.RetryAfter+time.Second-1)/time.Second), 10))
		}
	}
	if status == http.StatusRequestEntityTooLarge || errors.Is(err, ErrOverloaded) || errors.Is(err, ErrReadBody) {
		header.Set("Connection", "close")
	}
	return status, header
}

// write writes the answer Answer gives, with a short generic text.
func write(w http.ResponseWriter, state ClaimState, err error) {
	code, header := Answer(state, err)
	for k, vs := range header {
		w.Header()[k] = vs
	}
	text := http.StatusText(code)
	if state == ClaimCompleted {
		text = "OK (duplicate delivery, already processed)"
	}
	http.Error(w, text, code)
}

// contextKey is a pointer so that no other package can plant a verified
// event in a context.
type contextKey struct{ name string }

var eventKey = &contextKey{"falwebhook event"}

// verified is what the middleware stores in a request's context.
type verified struct {
	ev        *Event
	requestID string // the signed X-Fal-Webhook-Request-Id, which dedupe keys on
	userID    string // the signed X-Fal-Webhook-User-Id, which dedupe keys on
}

// EventFromContext returns the verified event the middleware stored in ctx,
// and whether there was one. Only this package's middleware stores events:
// no other code can make a context that passes for verified.
func EventFromContext(ctx context.Context) (*Event, bool) {
	vd, ok := ctx.Value(eventKey).(*verified)
	if !ok || vd.ev == nil {
		return nil, false
	}
	return vd.ev, true
}

func newContext(ctx context.Context, ev *Event, requestID string) context.Context {
	vd := &verified{ev: ev, requestID: requestID}
	if ev != nil {
		vd.userID = ev.UserID
	}
	return vd.context(ctx)
}

// context returns ctx carrying vd.
func (vd *verified) context(ctx context.Context) context.Context {
	return context.WithValue(ctx, eventKey, vd)
}

// received is what VerifyRequest and the middleware keep of one request,
// allocated in one piece once its headers pass: the headers, the body as
// read, and once verified the event, its context value and the fresh
// body.
type received struct {
	hs    Headers
	body  body
	ev    Event
	vd    verified
	fresh replayBody
}

// replayBody is the fresh request body over bytes already read and
// verified. GetBody hands out another one over the same bytes.
type replayBody struct {
	bytes.Reader
	b []byte
}

// reset makes rb read b from the start.
func (rb *replayBody) reset(b []byte) {
	rb.b = b
	rb.Reader.Reset(b)
}

// Close does nothing: the bytes stay readable through GetBody.
func (*replayBody) Close() error { return nil }

// getBody returns a new reader over rb's bytes, for http.Request.GetBody.
func (rb *replayBody) getBody() (io.ReadCloser, error) {
	fresh := &replayBody{}
	fresh.reset(rb.b)
	return fresh, nil
}

// VerifyRequest reads r's body, at most the configured limit, verifies it
// as a fal delivery with the request's headers, parses the event, and
// replaces r.Body with a fresh reader over the same bytes, so the caller can
// read the body again. It is for routers that hand out the *http.Request but
// do not use net/http middleware; r.Context() bounds any wait for keys. Do
// not read or bind the body before calling it.
//
// The method must be POST. The headers are checked before the body is read,
// so junk costs neither a body read nor a key lookup. Errors match the
// sentinels listed at StatusCode. The event's Payload shares memory with the
// body bytes r.Body now reads: do not modify it.
func (v *Verifier) VerifyRequest(r *http.Request) (*Event, error) {
	start := v.startTimer()
	d, err := v.verifyRequest(nil, r)
	v.observe(r.Context(), r.Header, start, outcome(err), err, StatusCode(err))
	if err != nil {
		v.logRejection(r.Context(), r.Header, r.RemoteAddr, err)
		return nil, err
	}
	return &d.ev, nil
}

// verifyRequest is VerifyRequest without the observation, returning the
// whole verified delivery. With w, the body's read deadline is set.
func (v *Verifier) verifyRequest(w http.ResponseWriter, r *http.Request) (*received, error) {
	if r.Method != http.MethodPost {
		closeUnread(w, r)
		return nil, fmt.Errorf("%w: %s", ErrMethodNotAllowed, r.Method)
	}
	hs, err := v.checkHeaders(r.Header)
	if err != nil {
		closeUnread(w, r)
		return nil, err
	}
	var rc *http.ResponseController
	serverTimeout := serverReadTimeout(r)
	if w != nil {
		if d, ok := readDeadline(time.Now(), v.readTimeout, serverTimeout); ok {
			rc = http.NewResponseController(w)
			if rc.SetReadDeadline(d) != nil {
				rc = nil // not supported by this writer
			}
		}
	}
	d := &received{hs: hs}
	b := &d.body
	if err := v.readBody(r, b); err != nil {
		// The deadline stays: the connection is closed, unread.
		b.free(v)
		return nil, err
	}
	if rc != nil && serverTimeout == 0 {
		// The body is in; the handler may take its time. Under a server's
		// ReadTimeout the deadline stays, earlier than the server's own.
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err := v.verifySignature(r.Context(), &d.hs, &b.sum); err != nil {
		b.free(v)
		return nil, emptyBodyHint(err, int(b.n))
	}
	body := b.bytes(v) // verified: no longer charged
	d.fresh.reset(body)
	r.Body = &d.fresh
	r.ContentLength = int64(len(body))
	r.GetBody = d.fresh.getBody
	// body is ours and never written again (the fresh r.Body only reads
	// it), so the event's Payload may share it instead of copying.
	if err := d.ev.parse(body, false, d.hs.RequestID); err != nil {
		return nil, err
	}
	d.ev.UserID = d.hs.UserID
	d.vd = verified{ev: &d.ev, requestID: d.hs.RequestID, userID: d.hs.UserID}
	return d, nil
}

// serverReadTimeout returns the ReadTimeout of the http.Server serving r,
// or 0 when it has none or r did not come from one.
func serverReadTimeout(r *http.Request) time.Duration {
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		return srv.ReadTimeout
	}
	return 0
}

// readDeadline returns the read deadline for a body whose read starts at
// now, under the middleware's timeout and the server's ReadTimeout (0:
// none), and whether to set it. The server counts its ReadTimeout from when
// it began reading the request, at or before now, so its deadline is at
// most now+server: when server is no longer than ours, the server's
// deadline, already set, comes first and is left alone. Otherwise ours is
// earlier, except for a request that took longer than server-ours to reach
// the middleware.
func readDeadline(now time.Time, ours, server time.Duration) (time.Time, bool) {
	if server > 0 && server <= ours {
		return time.Time{}, false
	}
	return now.Add(ours), true
}

// closeUnread makes the answer to an HTTP/1 request refused before its
// body was read close the connection, and ends the read now, so that the
// server does not wait to drain a body that may never come. HTTP/2 resets
// the stream by itself.
func closeUnread(w http.ResponseWriter, r *http.Request) {
	if w != nil && r.ProtoMajor < 2 && r.Body != nil && r.Body != http.NoBody {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
}

// Middleware returns a handler that passes only genuine fal deliveries to
// next. It fits func(http.Handler) http.Handler. It answers every method
// but POST with 405, so mount it on the webhook's route only (with chi:
// r.With(v.Middleware).Post(...), not r.Use).
//
// For each request it reads the body (bounded by WithMaxBodySize), verifies
// it, parses the event and calls next with the event in the request context
// (see EventFromContext) and a fresh body holding the same bytes. A request
// that is not POST, too large, forged, malformed, or not a fal event never
// reaches next: the middleware answers as WriteError does, or calls the
// handler set by WithErrorHandler. With next from Dedupe.Middleware, next
// runs once per delivery.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := v.startTimer()
		d, err := v.verifyRequest(w, r)
		if err != nil {
			v.observe(r.Context(), r.Header, start, outcome(err), err, StatusCode(err))
			v.reject(w, r, err)
			return
		}
		r = r.WithContext(d.vd.context(r.Context()))
		dh, ok := next.(*dedupeHandler)
		if !ok {
			v.observe(r.Context(), r.Header, start, "accepted", nil, 0)
			next.ServeHTTP(w, r)
			return
		}
		claimed := func(state ClaimState, err error) {
			switch {
			case state == ClaimCompleted:
				v.observe(r.Context(), r.Header, start, "duplicate", nil, http.StatusOK)
			case state == ClaimInProgress:
				v.observe(r.Context(), r.Header, start, "in_progress", nil, http.StatusConflict)
			case err != nil && state == 0:
				v.observe(r.Context(), r.Header, start, "store_error", err, StatusCode(err))
			default:
				v.observe(r.Context(), r.Header, start, "accepted", nil, 0)
			}
		}
		dh.d.serve(w, r, &d.vd, dh.next, v.logger, claimed)
	})
}

// Handler returns the middleware around f, which receives the verified event
// directly.
func (v *Verifier) Handler(f func(w http.ResponseWriter, r *http.Request, ev *Event)) http.Handler {
	return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := EventFromContext(r.Context())
		f(w, r, ev)
	}))
}

// reject answers a request that failed verification.
func (v *Verifier) reject(w http.ResponseWriter, r *http.Request, err error) {
	v.logRejection(r.Context(), r.Header, r.RemoteAddr, err)
	if v.onError != nil {
		if _, h := Answer(0, err); h.Get("Connection") == "close" {
			// Do not let the server read the rest of the body.
			w.Header().Set("Connection", "close")
		}
		v.onError(w, r, err)
		return
	}
	WriteError(w, err)
}

// logRejection logs a rejected delivery when a logger is set: keys
// unavailable and other 5xx at Error level, everything else at Warn.
func (v *Verifier) logRejection(ctx context.Context, h http.Header, remote string, err error) {
	l := v.logger
	if l == nil || errors.Is(err, ErrNoUserIDs) { // logged once, by NewVerifier
		return
	}
	code := StatusCode(err)
	level := slog.LevelWarn
	if code >= 500 && !errors.Is(err, ErrKeyNotFetched) { // a rotation or a forgery, not an outage
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.Int("status", code),
		slog.String("err", err.Error()),
		slog.String("request_id", firstRequestID(h)),
	}
	if remote != "" {
		attrs = append(attrs, slog.String("remote", remote))
	}
	l.LogAttrs(ctx, level, "falwebhook: rejected delivery", attrs...)
}

// maxLoggedID is the most of an unverified request id a log line holds.
const maxLoggedID = 128

// firstRequestID returns the first X-Fal-Webhook-Request-Id value in h,
// under any spelling, for logs about requests that may be malformed: at
// most maxLoggedID bytes of it, cut at a character boundary and marked
// with its length, since a forger chooses it.
func firstRequestID(h http.Header) string {
	for k, vs := range h {
		if len(vs) > 0 && headerIndex(k) == 0 {
			return clipForLog(vs[0], maxLoggedID)
		}
	}
	return ""
}

// clipForLog returns s, or its first n bytes (fewer, to end on a whole
// UTF-8 character) and a note of its length.
func clipForLog(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
