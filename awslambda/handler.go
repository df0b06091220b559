// Package awslambda runs an http.Handler, typically a falwebhook Verifier's
// middleware, as an AWS Lambda function behind a Lambda function URL, an API
// Gateway HTTP API or REST API, or an Application Load Balancer.
//
// Handler turns each invocation's event into an *http.Request, runs the
// handler against an in-memory response writer, and returns the response in
// the shape the front end expects. A fal webhook receiver:
//
//	func main() {
//		v := falwebhook.NewVerifier(falwebhook.WithUserIDs(os.Getenv("FAL_USER_ID")))
//
//		// Each cold start begins with an empty key cache. Fetching the keys
//		// while the function initialises (Lambda allows 10 seconds for it)
//		// spares the first delivery the wait. A failure here is harmless:
//		// the first delivery fetches again, or is answered 503 so that fal
//		// retries it.
//		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
//		if err := v.Refresh(ctx); err != nil {
//			log.Printf("warming the fal key cache: %v", err)
//		}
//		cancel()
//
//		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			ev, _ := falwebhook.EventFromContext(r.Context())
//			log.Printf("request %s finished: %s", ev.RequestID, ev.Status)
//		})
//		lambda.Start(awslambda.Handler(v.Middleware(h)))
//	}
//
// # Front ends
//
// The event's shape is detected from its JSON, so one function can serve
// several front ends:
//
//   - Payload 2.0, sent by Lambda function URLs (in the default BUFFERED
//     invoke mode) and by API Gateway HTTP APIs with payload format 2.0:
//     "version" is "2.0" and requestContext holds an "http" object.
//   - Payload 1.0, sent by API Gateway REST APIs (Lambda proxy integration)
//     and by HTTP APIs with payload format 1.0: "httpMethod" is present,
//     requestContext is an object without "elb", and "version" is absent or
//     "1.0".
//   - ALB target group events: "httpMethod" is present and requestContext
//     holds an "elb" object.
//
// An event that matches none of these, or more than one, fails the
// invocation with an error wrapping ErrUnsupportedEvent, which Lambda reports
// as a function error (the front end answers 502). So does an event that is
// not a JSON object, lacks a valid method or path, or names a member twice.
// Function URLs in RESPONSE_STREAM mode are not supported.
//
// An ALB's health checks, when enabled, are GET requests, which a verifier
// answers 405: route them to a handler of their own.
//
// # Headers
//
// Header fidelity is a security property. falwebhook rejects a delivery
// whose X-Fal-Webhook-* headers arrive more than once, and cannot verify one
// whose values were joined; Handler never turns either into a delivery that
// looks well formed:
//
//   - Payload 2.0 (function URLs, HTTP APIs) has no multi-value form: the
//     front end joins the values of a repeated header with commas. Each
//     value in "headers" is passed on as one header value, never split, so
//     a joined signature is not 128 hex digits, a joined timestamp is not
//     decimal digits, and a joined request or user id is not what fal
//     signed: the verifier rejects the delivery with 400 or 401.
//   - Payload 1.0 (REST APIs, HTTP APIs) carries "multiValueHeaders", every
//     value of every header, and "headers", the last value of each. Every
//     value in "multiValueHeaders" is passed on, so a repeated fal header
//     arrives as two values and is rejected as malformed (400). A "headers"
//     entry is added only when "multiValueHeaders" lacks that name and value
//     pair, the rule API Gateway applies itself: no value is ever dropped,
//     and headers and multiValueHeaders that disagree give two values, which
//     the verifier rejects.
//   - An ALB sends "multiValueHeaders", handled as above, when multi-value
//     headers are enabled on the target group. Otherwise it sends "headers"
//     alone, holding only the last value of a repeated header; the earlier
//     ones never reach the function. Enable multi-value headers
//     (lambda.multi_value_headers.enabled) so that the verifier sees them.
//   - Names arrive lower-cased (payload 2.0, ALB) or as the client sent them
//     (REST APIs). They are canonicalized as by http.CanonicalHeaderKey, and
//     falwebhook matches names case-insensitively; two spellings of one name
//     give two values.
//   - An event whose top-level object names a member twice (in any letter
//     case, as encoding/json matches them), or whose "headers" or
//     "multiValueHeaders" object names a header twice, is refused: decoding
//     it would silently keep only one of the values.
//
// # Requests
//
// The request carries the event's method, path, query, headers and protocol;
// the cookies of a payload 2.0 event become one Cookie header. Its Host comes from the Host header (then removed from Header, as net/http
// does) or the event's domain name; RemoteAddr is the source IP the front end
// reports, without a port (empty behind an ALB, which reports none). The
// body is the exact bytes the client sent: base64-decoded when the event
// sets isBase64Encoded, which is what fal's signature covers. An event whose
// body is not valid base64 is answered 400 without calling the handler.
// ContentLength and the Content-Length header give the body's length. The
// request's context is the invocation's, so its deadline bounds the handler.
//
// # Responses
//
// As with net/http, the status defaults to 200, headers set after the first
// WriteHeader or Write are ignored, and a missing Content-Type is sniffed
// from the body. A body that is valid UTF-8 is returned as text, any other
// as base64 with isBase64Encoded set (an API Gateway REST API passes it to
// clients as binary only for the binary media types configured on the API).
//
// For payload 2.0, a header with several values is joined with ", ", and
// Set-Cookie values go into "cookies". For payload 1.0 and ALBs, headers are
// returned as "multiValueHeaders" when the request used them (an ALB with
// multi-value headers enabled requires it) and as "headers" otherwise, with
// several values joined with ", "; an ALB response also carries
// "statusDescription", such as "200 OK".
package awslambda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-lambda-go/lambda"
)

// ErrUnsupportedEvent is returned, wrapped with detail, by the Invoke method
// of a Handler when the event is not an HTTP request from a supported front
// end: not a JSON object, of an unknown or ambiguous shape, without a valid
// method or path, or naming a member twice.
var ErrUnsupportedEvent = errors.New("awslambda: unsupported event")

// Handler returns a Lambda handler that serves each HTTP event with h; pass
// it to lambda.Start. A nil h means http.DefaultServeMux, as with
// http.Server. The returned handler is safe for concurrent use by multiple
// goroutines if h is.
func Handler(h http.Handler) lambda.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return handler{h}
}

// handler implements lambda.Handler.
type handler struct {
	h http.Handler
}

// Invoke serves one event and returns the JSON response for its front end.
func (a handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ev, err := parseEvent(payload)
	if err != nil {
		return nil, err
	}
	var w responseWriter
	r, err := ev.request(ctx)
	switch {
	case errors.Is(err, errBadBody):
		http.Error(&w, http.StatusText(http.StatusBadRequest), http.StatusBadRequest)
	case err != nil:
		return nil, err
	default:
		a.h.ServeHTTP(&w, r)
	}
	out, err := json.Marshal(ev.response(w.finish()))
	if err != nil {
		return nil, fmt.Errorf("awslambda: encoding response: %w", err)
	}
	return out, nil
}
