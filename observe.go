package falwebhook

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
)

// An Observer is told about each delivery a Verifier handles and each
// fetch a JWKS makes, for metrics and traces (the module
// github.com/falwebhook/falwebhook/falotel turns them into OpenTelemetry).
// Its methods are called synchronously on the request's or the fetch's
// goroutine, so they must be quick and must not block; they must be safe
// for concurrent use. With no Observer nothing is measured.
type Observer interface {
	// ObserveDelivery is called once per request to Verify, VerifyRequest
	// or the middleware, when its outcome is known: after verification,
	// and with Dedupe.Middleware as the middleware's handler after the
	// claim (a handler's own run is not included).
	ObserveDelivery(ctx context.Context, d DeliveryInfo)

	// ObserveFetch is called after each JWKS fetch, successful or not.
	ObserveFetch(ctx context.Context, f FetchInfo)
}

// DeliveryInfo describes the outcome of one delivery, for an Observer.
type DeliveryInfo struct {
	// Outcome is a low-cardinality word: "accepted" (verified; the handler
	// ran or is about to), "duplicate" (already completed; Dedupe),
	// "in_progress" (being handled elsewhere; Dedupe), or the reason
	// of a rejection: "method_not_allowed", "body_too_large",
	// "missing_header", "malformed_header", "timestamp_out_of_range",
	// "unexpected_user", "signature_mismatch", "key_not_fetched"
	// (ErrKeyNotFetched), "keys_unavailable",
	// "invalid_event", "read_error", "overloaded", "store_error",
	// "misconfigured" (ErrNoUserIDs) or "internal".
	Outcome string

	// Err is the rejection, nil unless Outcome names one.
	Err error

	// Status is the HTTP status answered: StatusCode(Err) for a
	// rejection; 200 for "accepted" from Verify and VerifyRequest, whose
	// callers answer themselves.
	Status int

	// RequestID and UserID are the delivery's X-Fal-Webhook-Request-Id and
	// X-Fal-Webhook-User-Id as sent (verified only when Err is nil); empty
	// when absent or malformed.
	RequestID, UserID string

	// Duration is how long verification took: header checks, reading and
	// hashing the body, the signature (including any wait for keys), and
	// parsing the event.
	Duration time.Duration
}

// FetchInfo describes one JWKS fetch, for an Observer.
type FetchInfo struct {
	URL      string
	Start    time.Time     // by the JWKS's Clock
	Duration time.Duration // how long the fetch took
	Keys     int           // usable keys fetched; 0 on failure
	Expiry   time.Time     // when the fetched keys expire, by the Clock; zero on failure
	Err      error         // nil on success
}

// WithObserver makes the Verifier report each delivery to o, and the
// default JWKS each fetch (a JWKS passed to WithKeys has its own Observer
// field). By default nothing is reported.
func WithObserver(o Observer) Option {
	return func(v *Verifier) { v.observer = o }
}

// outcome names err for DeliveryInfo.Outcome.
func outcome(err error) string {
	for _, o := range outcomes {
		if errors.Is(err, o.err) {
			return o.name
		}
	}
	if err == nil {
		return "accepted"
	}
	return "internal"
}

// outcomes lists the rejection reasons, in StatusCode's order of
// precedence.
var outcomes = [...]struct {
	err  error
	name string
}{
	{ErrKeysUnavailable, "keys_unavailable"},
	{ErrNoUsableKeys, "keys_unavailable"},
	{ErrKeyNotFetched, "key_not_fetched"},
	{ErrDedupeStore, "store_error"},
	{ErrOverloaded, "overloaded"},
	{ErrNoUserIDs, "misconfigured"},
	{ErrMethodNotAllowed, "method_not_allowed"},
	{ErrBodyTooLarge, "body_too_large"},
	{ErrMissingHeader, "missing_header"},
	{ErrMalformedHeader, "malformed_header"},
	{ErrInvalidEvent, "invalid_event"},
	{ErrReadBody, "read_error"},
	{ErrTimestampOutOfRange, "timestamp_out_of_range"},
	{ErrSignatureMismatch, "signature_mismatch"},
	{ErrUnexpectedUser, "unexpected_user"},
}

// observe reports a delivery to v's observer, if any.
func (v *Verifier) observe(ctx context.Context, h http.Header, start time.Time, out string, err error, status int) {
	if v.observer == nil {
		return
	}
	d := DeliveryInfo{Outcome: out, Err: err, Status: status, Duration: time.Since(start)}
	if hs, herr := ParseHeaders(h); herr == nil {
		// Copies: some routers (fasthttp) reuse the header's memory after
		// the request, and an Observer may keep these.
		d.RequestID, d.UserID = strings.Clone(hs.RequestID), strings.Clone(hs.UserID)
	}
	v.observer.ObserveDelivery(ctx, d)
}
