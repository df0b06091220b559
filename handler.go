package falwebhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
)

// DefaultMaxBodySize is the largest delivery body the middleware and
// VerifyRequest accept, in bytes (25 MiB).
const DefaultMaxBodySize = 25 << 20

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

type middlewareConfig struct {
	maxBody    int64
	logger     *slog.Logger
	onError    func(http.ResponseWriter, *http.Request, error)
	retryAfter int // seconds, sent with 503
	dedupe     *dedupeConfig
}

func defaultMiddlewareConfig() middlewareConfig {
	return middlewareConfig{maxBody: DefaultMaxBodySize, retryAfter: 60}
}

// WithMaxBodySize sets the largest body, in bytes, that the middleware and
// VerifyRequest read (default DefaultMaxBodySize, 25 MiB). A larger body is
// rejected with 413 after reading at most n+1 bytes. Zero or less restores
// the default.
func WithMaxBodySize(n int64) Option {
	return func(v *Verifier) {
		if n <= 0 {
			n = DefaultMaxBodySize
		}
		v.mw.maxBody = min(n, maxInt64-1) // room for the +1 that detects overflow
	}
}

// WithLogger makes the middleware log each rejected request, with the
// precise reason, to l: keys unavailable at Error level, everything else at
// Warn. The response itself never carries the reason.
func WithLogger(l *slog.Logger) Option {
	return func(v *Verifier) { v.mw.logger = l }
}

// WithErrorHandler replaces the middleware's response to a rejected request.
// f receives the error (match it with errors.Is, or map it with StatusCode)
// and must write the whole response. The wrapped handler is never called for
// a rejected request, whatever f does.
func WithErrorHandler(f func(w http.ResponseWriter, r *http.Request, err error)) Option {
	return func(v *Verifier) { v.mw.onError = f }
}

// StatusCode returns the HTTP status a webhook receiver should answer for an
// error from Verify, VerifyRequest or ParseEvent:
//
//	nil                                            200 OK
//	ErrMethodNotAllowed                            405 Method Not Allowed
//	ErrBodyTooLarge                                413 Content Too Large
//	ErrMissingHeader, ErrMalformedHeader,
//	ErrInvalidEvent, ErrReadBody                   400 Bad Request
//	ErrTimestampOutOfRange, ErrSignatureMismatch   401 Unauthorized
//	ErrKeysUnavailable, ErrNoUsableKeys            503 Service Unavailable
//	anything else                                  500 Internal Server Error
//
// 503 asks fal to retry later: the delivery may be genuine but cannot be
// checked now.
func StatusCode(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrKeysUnavailable), errors.Is(err, ErrNoUsableKeys):
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
	default:
		return http.StatusInternalServerError
	}
}

// contextKey is a pointer so that no other package can forge a verified
// event in a context.
type contextKey struct{ name string }

var eventKey = &contextKey{"falwebhook event"}

// EventFromContext returns the verified event the middleware stored in ctx,
// and whether there was one.
func EventFromContext(ctx context.Context) (*Event, bool) {
	ev, ok := ctx.Value(eventKey).(*Event)
	return ev, ok && ev != nil
}

// NewContext returns a copy of ctx carrying ev, as the middleware does. It is
// meant for testing handlers that call EventFromContext.
func NewContext(ctx context.Context, ev *Event) context.Context {
	return context.WithValue(ctx, eventKey, ev)
}

// VerifyRequest reads r's body, at most the configured limit, verifies it
// as a fal delivery with the request's headers, parses the event, and
// replaces r.Body with a fresh reader over the same bytes, so the caller can
// read the body again. It is for routers that do not use net/http
// middleware; r.Context() bounds any wait for keys.
//
// The method must be POST. The headers are checked before the body is read,
// so junk costs neither a body read nor a key lookup. Errors match the
// sentinels listed at StatusCode. The event's Payload shares memory with the
// body bytes r.Body now reads: do not modify it.
func (v *Verifier) VerifyRequest(r *http.Request) (*Event, error) {
	ev, _, err := v.verifyRequest(r)
	return ev, err
}

// verifyRequest is VerifyRequest, also returning the verified headers.
func (v *Verifier) verifyRequest(r *http.Request) (*Event, Headers, error) {
	if r.Method != http.MethodPost {
		return nil, Headers{}, fmt.Errorf("%w: %s", ErrMethodNotAllowed, r.Method)
	}
	hs, err := ParseHeaders(r.Header)
	if err != nil {
		return nil, hs, err
	}
	sig, err := v.check(hs)
	if err != nil {
		return nil, hs, err
	}
	body, sum, err := readBody(r, v.mw.maxBody)
	if err != nil {
		return nil, hs, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	if err := v.verifyDigest(r.Context(), hs, &sig, &sum); err != nil {
		return nil, hs, err
	}
	// body is ours and never written again (the fresh r.Body only reads
	// it), so the event's Payload may share it instead of copying.
	ev, err := parseEvent(body, false)
	return ev, hs, err
}

// readBody reads r's body, hashing it on the way, failing with
// ErrBodyTooLarge as soon as more than limit bytes arrive.
func readBody(r *http.Request, limit int64) ([]byte, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if r.ContentLength > limit {
		return nil, sum, fmt.Errorf("%w: Content-Length %d exceeds %d bytes", ErrBodyTooLarge, r.ContentLength, limit)
	}
	if r.Body == nil || r.Body == http.NoBody {
		return []byte{}, sha256.Sum256(nil), nil
	}
	size := int64(512)
	if r.ContentLength > 0 {
		// +1 to see EOF without growing. Capped: Content-Length is the
		// client's claim, and nothing is verified yet.
		size = min(r.ContentLength, 64<<10) + 1
	}
	buf := make([]byte, 0, size)
	h := sha256.New()
	lr := io.LimitReader(r.Body, limit+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			h.Write(buf[len(buf) : len(buf)+n])
			buf = buf[:len(buf)+n]
		}
		if int64(len(buf)) > limit {
			return nil, sum, fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, limit)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, sum, fmt.Errorf("%w: %w", ErrBodyTooLarge, err)
			}
			return nil, sum, fmt.Errorf("%w: %w", ErrReadBody, err)
		}
	}
	h.Sum(sum[:0])
	return buf, sum, nil
}

// Middleware returns a handler that passes only genuine fal deliveries to
// next. It fits func(http.Handler) http.Handler, e.g. chi's r.Use.
//
// For each request it reads the body (bounded by WithMaxBodySize), verifies
// it, parses the event and calls next with the event in the request context
// (see EventFromContext) and a fresh body holding the same bytes. A request
// that is not POST, too large, forged, malformed, or not a fal event never
// reaches next: the middleware answers with the status given by StatusCode
// (with Allow: POST on 405 and Retry-After on 503) and a short generic text,
// or calls the handler set by WithErrorHandler.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, hs, err := v.verifyRequest(r)
		if err != nil {
			v.reject(w, r, err)
			return
		}
		r = r.WithContext(NewContext(r.Context(), ev))
		if v.mw.dedupe != nil {
			v.serveDedupe(w, r, hs.RequestID, next)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// An EventHandlerFunc handles one verified delivery.
type EventHandlerFunc func(w http.ResponseWriter, r *http.Request, ev *Event)

// Handler returns the middleware around f, which receives the verified event
// directly.
func (v *Verifier) Handler(f EventHandlerFunc) http.Handler {
	return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := EventFromContext(r.Context())
		f(w, r, ev)
	}))
}

// reject answers a request that failed verification.
func (v *Verifier) reject(w http.ResponseWriter, r *http.Request, err error) {
	code := StatusCode(err)
	if l := v.mw.logger; l != nil {
		level := slog.LevelWarn
		if code >= 500 {
			level = slog.LevelError
		}
		l.LogAttrs(r.Context(), level, "falwebhook: rejected delivery",
			slog.Int("status", code),
			slog.String("err", err.Error()),
			slog.String("request_id", firstRequestID(r.Header)),
			slog.String("remote", r.RemoteAddr))
	}
	if code == http.StatusRequestEntityTooLarge {
		// Do not let the server drain the rest of an oversized body.
		w.Header().Set("Connection", "close")
	}
	if v.mw.onError != nil {
		v.mw.onError(w, r, err)
		return
	}
	writeStatus(w, code, v.mw.retryAfter)
}

// WriteError writes the middleware's default response to a rejected
// request: the status given by StatusCode(err) with its standard text, plus
// Allow: POST on 405 and Retry-After on 503. It never reveals the error's
// detail. A handler set by WithErrorHandler can fall back on it.
func WriteError(w http.ResponseWriter, err error) {
	writeStatus(w, StatusCode(err), defaultMiddlewareConfig().retryAfter)
}

// writeStatus writes a short, generic response for code.
func writeStatus(w http.ResponseWriter, code, retryAfter int) {
	switch code {
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", http.MethodPost)
	case http.StatusServiceUnavailable, http.StatusConflict:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	http.Error(w, http.StatusText(code), code)
}

// firstRequestID returns the first X-Fal-Webhook-Request-Id value in h,
// under any spelling, for logs about requests that may be malformed.
func firstRequestID(h http.Header) string {
	for k, vs := range h {
		if len(vs) > 0 && headerIndex(k) == 0 {
			return vs[0]
		}
	}
	return ""
}
