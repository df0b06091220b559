package falqueue

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Errors returned by Client's methods. Match them with errors.Is; the
// returned errors wrap them with detail. Answers from fal that are errors
// come as an *APIError, which unwraps to one of ErrRateLimited,
// ErrUnauthorized, ErrResultGone, ErrRejected, ErrServerError,
// ErrUnexpectedStatus or ErrAlreadyCompleted.
var (
	// ErrInvalidConfig is returned when the Client itself is unusable: no
	// Key, a Key with characters a header cannot carry, a BaseURL that is
	// not https (or http on a loopback host), or a negative MaxResultBytes.
	// Nothing is sent.
	ErrInvalidConfig = errors.New("falqueue: invalid client configuration")

	// ErrInvalidArgument is returned for an argument that cannot be sent: an
	// endpoint that is not owner/app[/path], an input that does not marshal
	// to a JSON object, a webhook URL that is not an absolute http or https
	// URL, or a nil Request or one without its id or the URL the call
	// needs. Nothing is sent.
	ErrInvalidArgument = errors.New("falqueue: invalid argument")

	// ErrUntrustedURL is returned when a status, response or cancel URL is
	// not on BaseURL's scheme and host, whether it came in a submit answer
	// or in a stored Request. The key is sent to these URLs, so the call is
	// refused before anything is sent.
	ErrUntrustedURL = errors.New("falqueue: URL not on the queue's host")

	// ErrInvalidResponse is returned when a successful answer is not what
	// fal documents: not a JSON object, a submit answer without request_id
	// or without any of the three URLs, a status answer without a status or
	// for another request id.
	ErrInvalidResponse = errors.New("falqueue: invalid answer from fal")

	// ErrResponseTooLarge is returned when an answer's body exceeds the
	// operation's limit: MaxResultBytes for Result, 1 MiB for the others.
	// It is not retried.
	ErrResponseTooLarge = errors.New("falqueue: answer too large")

	// ErrNotReady is returned by Result when the request has not finished:
	// fal answered 202, or with the request's IN_QUEUE or IN_PROGRESS
	// status. Poll Status until it reports StateCompleted.
	ErrNotReady = errors.New("falqueue: result not ready")

	// ErrResultGone is returned by Status, Result and Cancel when fal
	// answers 404 Not Found or 410 Gone (without an X-Fal-Error-Type, which
	// would make it the request's own failure): fal no longer has the
	// request or its result. fal keeps a result 1 hour after the request
	// completes, 6 minutes when it is 10 KB or larger; an unknown request id
	// answers the same. Retrying does not help.
	ErrResultGone = errors.New("falqueue: fal no longer has the result")

	// ErrRateLimited is returned when fal still answers 429 Too Many
	// Requests after the retries, or asks (Retry-After) to wait longer than
	// the retry policy's cap; APIError.RetryAfter then says how long.
	ErrRateLimited = errors.New("falqueue: rate limited")

	// ErrUnauthorized is returned when fal answers 401 or 403: the key is
	// wrong, revoked, or lacks the permission. Result never turns these
	// into a failed request's Event.
	ErrUnauthorized = errors.New("falqueue: unauthorized")

	// ErrRejected is returned for other 4xx answers to Submit, Status and
	// Cancel, such as 404 for an unknown endpoint on submit or 422 for an
	// input fal refuses.
	ErrRejected = errors.New("falqueue: request rejected")

	// ErrServerError is returned when fal answers 5xx and retrying did not
	// help (or the status is not retried, such as 500 on submit).
	ErrServerError = errors.New("falqueue: fal server error")

	// ErrUnexpectedStatus is returned for answers with a status the
	// operation does not expect, such as a redirect (never followed: the
	// key would travel with it).
	ErrUnexpectedStatus = errors.New("falqueue: unexpected answer status")

	// ErrAlreadyCompleted is returned by Cancel when the request finished
	// before it could be cancelled: fal answers 400 with status
	// ALREADY_COMPLETED.
	ErrAlreadyCompleted = errors.New("falqueue: request already completed")
)

// Op names a queue operation in an APIError.
type Op string

// The operations of Client.
const (
	OpSubmit Op = "submit"
	OpStatus Op = "status"
	OpResult Op = "result"
	OpCancel Op = "cancel"
)

// APIError is an answer from fal that is an error, after any retries. It
// unwraps to one of the sentinels named in the package's error list, so
// errors.Is(err, ErrResultGone) and errors.As(err, &apiErr) both work.
//
// Its text never contains the key: Client removes the key from any text of
// fal's answer it quotes.
type APIError struct {
	Op         Op            // the operation
	Endpoint   string        // the endpoint, such as fal-ai/flux/dev, when known
	RequestID  string        // the request's id; empty for Submit
	StatusCode int           // the HTTP status of fal's last answer
	Detail     string        // fal's message: the body's detail (or message), or an excerpt of the body, on one line
	ErrorType  string        // the X-Fal-Error-Type header, if any
	RetryAfter time.Duration // how long fal's Retry-After asked to wait; 0 when it did not
	Attempts   int           // how many times the call was sent
	kind       error         // the sentinel
}

// Error returns a one-line summary such as
//
//	falqueue: status of request 1234 (fal-ai/flux/dev): 429 Too Many Requests: rate limit exceeded (retry after 2m0s; 6 attempts)
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("falqueue: ")
	b.WriteString(describe(e.Op, e.Endpoint, e.RequestID))
	b.WriteString(": ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteString(" ")
		b.WriteString(t)
	}
	if e.ErrorType != "" {
		b.WriteString(" [")
		b.WriteString(oneLine(e.ErrorType, maxDetail))
		b.WriteString("]")
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	var notes []string
	if e.RetryAfter > 0 {
		notes = append(notes, "retry after "+e.RetryAfter.String())
	}
	if e.Attempts > 1 {
		notes = append(notes, strconv.Itoa(e.Attempts)+" attempts")
	}
	if len(notes) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(notes, "; "))
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the sentinel the answer matches.
func (e *APIError) Unwrap() error { return e.kind }

// describe names a call for error texts: "submit to fal-ai/flux/dev",
// "status of request 1234 (fal-ai/flux/dev)".
func describe(op Op, endpoint, requestID string) string {
	endpoint, requestID = oneLine(endpoint, maxDetail), oneLine(requestID, maxDetail)
	if op == OpSubmit {
		return "submit to " + endpoint
	}
	s := string(op) + " of request " + requestID
	if endpoint != "" {
		s += " (" + endpoint + ")"
	}
	return s
}

// kindOf returns the sentinel for an error answer with the given status.
func kindOf(op Op, code int) error {
	switch {
	case code == http.StatusTooManyRequests:
		return ErrRateLimited
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return ErrUnauthorized
	case op != OpSubmit && (code == http.StatusNotFound || code == http.StatusGone):
		return ErrResultGone
	case code >= 400 && code < 500:
		return ErrRejected
	case code >= 500 && code < 600:
		return ErrServerError
	}
	return ErrUnexpectedStatus
}

// maxDetail bounds, in bytes, each part of an error text taken from an
// answer.
const maxDetail = 300

// oneLine makes s fit on one line of at most max bytes: invalid UTF-8 and
// control characters become spaces or U+FFFD, runs of white space become
// one space, and a longer text is cut and ends in "...".
func oneLine(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == ' ' || r == '\u2028' || r == '\u2029'
	}), " ")
	if len(s) <= max {
		return s
	}
	cut := max - len("...")
	for cut > 0 && s[cut]&0xc0 == 0x80 {
		cut--
	}
	return s[:cut] + "..."
}

// wrapCall wraps an error of a call, naming it: "falqueue: status of request
// 1234: <err>".
func wrapCall(op Op, endpoint, requestID string, err error) error {
	return fmt.Errorf("falqueue: %s: %w", describe(op, endpoint, requestID), err)
}
