// Package falwebhook verifies fal.ai webhook deliveries.
//
// fal.ai signs every webhook with Ed25519. The signed message is four lines
// joined by "\n", with no trailing newline:
//
//	<X-Fal-Webhook-Request-Id>
//	<X-Fal-Webhook-User-Id>
//	<X-Fal-Webhook-Timestamp>
//	<lower-case hex of sha256(raw body)>
//
// and X-Fal-Webhook-Signature carries the 64-byte signature as 128 hex
// digits. No key id is sent: a delivery is genuine when any of fal's published
// keys verifies it. By default the keys come from fal's JWKS document
// (DefaultJWKSURL), fetched on first use and cached (see JWKS).
//
// The checks are strict where fal's own sample is lax: all four headers must
// be present exactly once and non-empty, the identifiers may not contain
// control characters, the timestamp is decimal seconds within five minutes
// of now (both directions), and the signature must be exactly 128 hex
// digits. These cheap checks run before the body is read and before any key
// lookup, so junk never causes a JWKS fetch.
//
// # Entry points
//
//	Middleware     net/http: wraps a handler; the event is in the request context (EventFromContext)
//	Handler        net/http: like Middleware, handing the event to a function
//	VerifyRequest  any router that gives you an *http.Request (gin, echo): bounded read, verify, parse
//	Verify         you hold the headers and the raw body (fiber/fasthttp, AWS Lambda, a queue)
//
// All four answer the same question with the same errors; StatusCode maps an
// error to the HTTP status to answer, WriteError writes it, and Answer gives
// the status and headers to code that has no http.ResponseWriter.
//
//	v := falwebhook.NewVerifier()
//	mux.Handle("POST /fal/webhook", v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {
//		log.Printf("request %s finished: %s", ev.RequestID, ev.Status)
//	}))
//
// fal delivers at least once; Dedupe runs a handler once per delivery:
// v.Middleware(d.Middleware(h)), or d.Do with the event Verify returned.
package falwebhook

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// The four headers fal.ai sends with every webhook delivery. Lookups are
// case-insensitive.
const (
	HeaderRequestID = "X-Fal-Webhook-Request-Id"
	HeaderUserID    = "X-Fal-Webhook-User-Id"
	HeaderTimestamp = "X-Fal-Webhook-Timestamp"
	HeaderSignature = "X-Fal-Webhook-Signature"
)

// Errors returned by Verify and the other entry points. Match them with
// errors.Is; the returned errors wrap them with detail (which header, the
// skew, how many keys were tried).
var (
	// ErrMissingHeader is returned when a required X-Fal-Webhook-* header is
	// absent or empty.
	ErrMissingHeader = errors.New("falwebhook: missing header")

	// ErrMalformedHeader is returned when a header is present but unusable:
	// sent more than once, containing a control character, a timestamp that is
	// not decimal digits fitting an int64, or a signature that is not exactly
	// 128 hex digits.
	ErrMalformedHeader = errors.New("falwebhook: malformed header")

	// ErrTimestampOutOfRange is returned when the delivery's timestamp is
	// further from now than the tolerance. The error is a *TimestampError.
	ErrTimestampOutOfRange = errors.New("falwebhook: timestamp out of range")

	// ErrSignatureMismatch is returned when no usable key verifies the
	// signature: the body or a header was changed, or the delivery was not
	// signed by fal.
	ErrSignatureMismatch = errors.New("falwebhook: signature mismatch")

	// ErrUnexpectedUser is returned when the delivery's user id is not one
	// of those given to WithUserIDs: it may be genuinely signed by fal, but
	// for another fal account.
	ErrUnexpectedUser = errors.New("falwebhook: unexpected user")

	// ErrNoUserIDs is returned for every delivery, and by Refresh, when
	// WithUserIDs was given no non-empty id, as WithUserIDs(os.Getenv(…))
	// is when the variable is unset: pinning was asked for but names no
	// account, so the Verifier refuses everything rather than accept any
	// account's deliveries. It is a configuration error, logged once at
	// Error level when the Verifier is made; deliveries are answered 503 so
	// that fal retries them once the configuration is fixed.
	ErrNoUserIDs = errors.New("falwebhook: WithUserIDs given no user id")
)

// wrapped is an error matching outer and inner whose text says each
// package prefix once: outer's text, then inner's without "falwebhook: ".
type wrapped struct {
	msg          string
	outer, inner error
}

func (e *wrapped) Error() string   { return e.msg }
func (e *wrapped) Unwrap() []error { return []error{e.outer, e.inner} }

// wrap returns an error matching outer and inner, reading
// "<outer>: <detail>: <inner>" (or "<outer>: <inner>" with no detail).
func wrap(outer error, detail string, inner error) error {
	msg := outer.Error()
	if detail != "" {
		msg += ": " + detail
	}
	return &wrapped{msg: msg + ": " + strings.TrimPrefix(inner.Error(), "falwebhook: "), outer: outer, inner: inner}
}

// TimestampError describes a delivery whose timestamp is outside the
// tolerance. It unwraps to ErrTimestampOutOfRange.
type TimestampError struct {
	Timestamp int64         // the delivery's timestamp, Unix seconds
	Skew      int64         // Timestamp minus the verifier's now, in seconds (saturated); positive is in the future
	Tolerance time.Duration // the allowed skew either way
}

func (e *TimestampError) Error() string {
	return fmt.Sprintf("%s: skew %+ds exceeds tolerance %s", ErrTimestampOutOfRange, e.Skew, e.Tolerance)
}

// Unwrap returns ErrTimestampOutOfRange.
func (e *TimestampError) Unwrap() error { return ErrTimestampOutOfRange }

// Headers holds the four X-Fal-Webhook-* header values of one delivery,
// exactly as received.
type Headers struct {
	RequestID string // X-Fal-Webhook-Request-Id
	UserID    string // X-Fal-Webhook-User-Id
	Timestamp string // X-Fal-Webhook-Timestamp, Unix seconds as decimal digits
	Signature string // X-Fal-Webhook-Signature, 128 hex digits

	// Set by ParseHeaders.
	unix int64
	sig  [ed25519.SignatureSize]byte
}

// ParseHeaders extracts the four fal headers from h and checks their
// grammar: each present exactly once (under any spelling of its name, even
// with equal values) and non-empty, no control characters in the request id,
// user id and timestamp, the timestamp ^[0-9]+$ within int64, and the
// signature exactly 128 hex digits of either case (surrounding spaces
// trimmed). The first failure, in that order of headers, is returned: it
// wraps ErrMissingHeader or ErrMalformedHeader and names the header.
//
// ParseHeaders neither reads the clock nor looks up keys: Verify and the
// middleware call it first.
func ParseHeaders(h http.Header) (Headers, error) {
	var (
		vals  [4]string
		count [4]int
	)
	for k, vs := range h {
		if i := headerIndex(k); i >= 0 {
			count[i] += len(vs)
			if len(vs) > 0 {
				vals[i] = vs[0]
			}
		}
	}
	for i, name := range headerNames {
		if count[i] > 1 {
			return Headers{}, fmt.Errorf("%w: %s sent %d times", ErrMalformedHeader, name, count[i])
		}
		if vals[i] == "" {
			return Headers{}, fmt.Errorf("%w: %s", ErrMissingHeader, name)
		}
	}
	hs := Headers{RequestID: vals[0], UserID: vals[1], Timestamp: vals[2], Signature: vals[3]}
	for i, s := range vals[:3] {
		if j := controlIndex(s); j >= 0 {
			return Headers{}, fmt.Errorf("%w: %s has control character %q at byte %d", ErrMalformedHeader, headerNames[i], s[j], j)
		}
	}
	var ok bool
	if hs.unix, ok = parseDigits(hs.Timestamp); !ok {
		return Headers{}, fmt.Errorf("%w: %s must be decimal Unix seconds fitting int64", ErrMalformedHeader, HeaderTimestamp)
	}
	sig := strings.Trim(hs.Signature, " \t")
	if len(sig) != 2*ed25519.SignatureSize {
		return Headers{}, fmt.Errorf("%w: %s must be %d hex digits, got %d bytes", ErrMalformedHeader, HeaderSignature, 2*ed25519.SignatureSize, len(sig))
	}
	if _, err := hex.Decode(hs.sig[:], []byte(sig)); err != nil {
		return Headers{}, fmt.Errorf("%w: %s is not hex", ErrMalformedHeader, HeaderSignature)
	}
	return hs, nil
}

var headerNames = [4]string{HeaderRequestID, HeaderUserID, HeaderTimestamp, HeaderSignature}

// headerIndex returns the index in headerNames of k, matched
// case-insensitively, or -1.
func headerIndex(k string) int {
	const prefix = "X-Fal-Webhook-"
	if len(k) <= len(prefix) || !strings.EqualFold(k[:len(prefix)], prefix) {
		return -1
	}
	for i, name := range headerNames {
		if len(k) == len(name) && strings.EqualFold(k[len(prefix):], name[len(prefix):]) {
			return i
		}
	}
	return -1
}

// controlIndex returns the index of the first ASCII control character (C0 or
// DEL) in s, or -1. C1 controls encoded in UTF-8 are also rejected.
func controlIndex(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return i
		}
		// U+0080..U+009F are encoded as 0xC2 0x80..0x9F.
		if c == 0xc2 && i+1 < len(s) && s[i+1] >= 0x80 && s[i+1] <= 0x9f {
			return i
		}
	}
	return -1
}

// parseDigits parses s as ^[0-9]+$ into an int64, rejecting overflow. Unlike
// strconv.ParseInt it accepts no sign.
func parseDigits(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	const maxInt64 = 1<<63 - 1
	var n int64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 || n > (maxInt64-int64(d))/10 {
			return 0, false
		}
		n = n*10 + int64(d)
	}
	return n, true
}

// AppendMessage appends the message fal signs for this delivery to dst and
// returns the extended slice: request id, user id and timestamp exactly as
// held, then the lower-case hex of sha256(body), joined by "\n" with no
// trailing newline.
func (hs Headers) AppendMessage(dst, body []byte) []byte {
	sum := sha256.Sum256(body)
	return hs.appendMessage(dst, &sum)
}

func (hs *Headers) appendMessage(dst []byte, sum *[sha256.Size]byte) []byte {
	dst = append(dst, hs.RequestID...)
	dst = append(dst, '\n')
	dst = append(dst, hs.UserID...)
	dst = append(dst, '\n')
	dst = append(dst, hs.Timestamp...)
	dst = append(dst, '\n')
	return hex.AppendEncode(dst, sum[:])
}

// A Verifier checks fal.ai webhook deliveries. Create one with NewVerifier
// and share it: it is safe for concurrent use by multiple goroutines.
type Verifier struct {
	keys        KeySource
	tolerance   int64 // seconds
	now         func() time.Time
	logger      *slog.Logger
	maxBody     int64
	budget      bodyBudget
	readTimeout time.Duration
	onError     func(http.ResponseWriter, *http.Request, error)
	observer    Observer
	userIDs     map[string]bool // nil: any user
	pinned      bool            // WithUserIDs was given
	configErr   error           // refuses every delivery; set by NewVerifier
}

// An Option configures a Verifier. For every option, a zero or nil argument
// means the default.
type Option func(*Verifier)

// WithKeys makes the Verifier take its keys from src: StaticKeys for fixed
// keys, or a JWKS of your own (another URL, HTTP client or cache policy).
// The default is fal's JWKS at DefaultJWKSURL, cached, with the Verifier's
// clock and logger.
func WithKeys(src KeySource) Option {
	return func(v *Verifier) { v.keys = src }
}

// WithTolerance sets how far, in either direction, a delivery's timestamp may
// be from now (default 5 minutes). It is rounded down to whole seconds, and
// at least one second; a skew of exactly the tolerance passes.
func WithTolerance(d time.Duration) Option {
	return func(v *Verifier) {
		v.tolerance = 0
		if d > 0 {
			v.tolerance = max(int64(d/time.Second), 1)
		}
	}
}

// WithUserIDs makes the Verifier accept only deliveries whose
// X-Fal-Webhook-User-Id is one of ids, your fal account's user ids. Pin
// them: fal signs every customer's deliveries with the same keys and sends
// no key id, so anyone with a fal account can point a request's
// fal_webhook at your URL and fal will deliver a genuine, correctly signed
// body of their choosing. A delivery for another user fails with
// ErrUnexpectedUser (403) among the cheap checks, before any key lookup.
// The user id is signed, so it cannot be changed in transit. Without
// WithUserIDs (the default) any user is accepted; handlers should still
// match the request id against requests they submitted.
//
// Empty ids are ignored, and WithUserIDs with no non-empty id fails closed:
// every delivery is refused with ErrNoUserIDs (503, so that fal retries
// once the configuration is fixed), logged once at Error level, so that an
// unset environment variable never turns pinning off.
//
// Find your user id in a delivery's headers: "falwebhook verify" and
// "falwebhook listen" print it.
func WithUserIDs(ids ...string) Option {
	return func(v *Verifier) {
		v.userIDs = nil
		v.pinned = true
		for _, id := range ids {
			if id == "" {
				continue
			}
			if v.userIDs == nil {
				v.userIDs = make(map[string]bool)
			}
			v.userIDs[id] = true
		}
	}
}

// WithClock sets the function the Verifier reads the current time from
// (default time.Now), for tests and for replaying captured deliveries. The
// default JWKS uses it too; a JWKS passed to WithKeys has its own Clock.
func WithClock(now func() time.Time) Option {
	return func(v *Verifier) { v.now = now }
}

// WithLogger makes the Verifier log each rejected request, with the precise
// reason, to l, from every entry point: keys unavailable and other 5xx at
// Error level, everything else at Warn.
// Responses never carry the reason. The default JWKS logs its fetches to l,
// and a Dedupe without a Logger of its own logs there too. By default
// nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(v *Verifier) { v.logger = l }
}

// NewVerifier returns a Verifier configured by opts. It does no I/O and
// never returns nil: with no key option, keys are fetched from
// DefaultJWKSURL on first use and cached. Call Refresh at startup to load
// them eagerly; it also reports a configuration that refuses every
// delivery (ErrNoUserIDs), which NewVerifier logs at Error level, to the
// WithLogger logger or else slog.Default.
func NewVerifier(opts ...Option) *Verifier {
	v := &Verifier{}
	for _, opt := range opts {
		if opt != nil {
			opt(v)
		}
	}
	if v.pinned && v.userIDs == nil {
		v.configErr = fmt.Errorf("%w: every delivery is refused until one is set (is the variable holding it empty?)", ErrNoUserIDs)
		l := v.logger
		if l == nil {
			l = slog.Default()
		}
		l.Error("falwebhook: misconfigured Verifier refuses every delivery", "err", v.configErr)
	}
	if v.tolerance == 0 {
		v.tolerance = int64(defaultTolerance / time.Second)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.maxBody == 0 {
		v.maxBody = defaultMaxBodySize
	}
	if v.readTimeout == 0 {
		v.readTimeout = defaultReadTimeout
	}
	if v.budget.max == 0 {
		v.budget.max = max(defaultBodyBudget, 2*v.maxBody)
	}
	// One body of the largest size must fit in the part of the budget
	// open to large bodies.
	v.budget.max = max(v.budget.max, (v.maxBody+1)*4/3+1)
	if v.keys == nil {
		v.keys = &JWKS{URL: DefaultJWKSURL, Clock: v.now, Logger: v.logger, Observer: v.observer}
	}
	return v
}

const defaultTolerance = 5 * time.Minute

// Refresh loads the Verifier's keys now: it fetches the JWKS (whatever the
// cache state) or checks the static keys, and reports why they are not
// usable. Call it at startup so that a wrong JWKS URL or a network policy
// blocking it fails loudly instead of as 503 answers to fal. A key source
// without a Refresh(ctx) error method has nothing to load.
func (v *Verifier) Refresh(ctx context.Context) error {
	if v.configErr != nil {
		return v.configErr
	}
	if r, ok := v.keys.(interface{ Refresh(context.Context) error }); ok {
		return r.Refresh(ctx)
	}
	return nil
}

// Verify reports whether body with header h is a genuine fal webhook
// delivery, and returns its event. It checks the headers (ParseHeaders), the
// time window, the signature over the request id, user id, timestamp and
// sha256 of body, and parses body as an Event (ParseEvent). The cheap checks
// run before any key lookup; ctx bounds the wait for keys when they have to
// be fetched.
//
// Verify is for callers that hold the raw body, such as fiber (pass
// http.Header(c.GetReqHeaders()) and c.Request().Body(), which is not
// decompressed) or AWS Lambda. A body over the limit (WithMaxBodySize) is
// refused with ErrBodyTooLarge; bound the read yourself too, since the body
// is already in memory. Give it every value of every header, so that
// a repeated fal header is seen and rejected. The event does not share
// memory with body. Errors match the sentinels listed at StatusCode.
func (v *Verifier) Verify(ctx context.Context, h http.Header, body []byte) (*Event, error) {
	start := v.startTimer()
	ev, err := v.verify(ctx, h, body)
	v.observe(ctx, h, start, outcome(err), err, StatusCode(err))
	if err != nil {
		v.logRejection(ctx, h, "", err)
	}
	return ev, err
}

func (v *Verifier) verify(ctx context.Context, h http.Header, body []byte) (*Event, error) {
	hs, err := v.checkHeaders(h)
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > v.maxBody {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBodyTooLarge, len(body), v.maxBody)
	}
	sum := sha256.Sum256(body)
	if err := v.verifySignature(ctx, &hs, &sum); err != nil {
		return nil, emptyBodyHint(err, len(body))
	}
	ev, err := parseEvent(body, true, hs.RequestID)
	if err != nil {
		return nil, err
	}
	ev.UserID = hs.UserID
	return ev, nil
}

// startTimer returns the time a delivery's verification starts, when an
// Observer will want its duration.
func (v *Verifier) startTimer() time.Time {
	if v.observer == nil {
		return time.Time{}
	}
	return time.Now()
}

// emptyBodyHint adds to a signature mismatch over an empty body the
// likeliest cause: the body was read before verification.
func emptyBodyHint(err error, n int) error {
	if n == 0 && errors.Is(err, ErrSignatureMismatch) {
		return fmt.Errorf("%w (the body was empty: was it read before verification?)", err)
	}
	return err
}

// checkHeaders runs the cheap checks: ParseHeaders, the user and the time
// window.
func (v *Verifier) checkHeaders(h http.Header) (Headers, error) {
	if v.configErr != nil {
		return Headers{}, v.configErr
	}
	hs, err := ParseHeaders(h)
	if err != nil {
		return hs, err
	}
	if v.userIDs != nil && !v.userIDs[hs.UserID] {
		return hs, fmt.Errorf("%w: %s %q is not one of the %d pinned user ids", ErrUnexpectedUser, HeaderUserID, hs.UserID, len(v.userIDs))
	}
	if err := v.checkWindow(hs.unix); err != nil {
		return hs, err
	}
	return hs, nil
}

func (v *Verifier) checkWindow(ts int64) error {
	now := v.now().Unix()
	skew := ts - now
	if (ts >= 0) != (now >= 0) && (skew >= 0) != (ts >= 0) { // overflowed
		skew = 1<<63 - 1
		if ts < 0 {
			skew = -1 << 63
		}
	}
	if skew > v.tolerance || skew < -v.tolerance {
		return &TimestampError{Timestamp: ts, Skew: skew, Tolerance: time.Duration(v.tolerance) * time.Second}
	}
	return nil
}

// verifySignature builds the signed message and asks the key source.
func (v *Verifier) verifySignature(ctx context.Context, hs *Headers, sum *[sha256.Size]byte) error {
	var buf [512]byte
	msg := hs.appendMessage(buf[:0], sum)
	err := v.keys.VerifySignature(ctx, msg, hs.sig[:])
	if err == nil || errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrNoUsableKeys) {
		return err
	}
	// A key source of the caller's that fails in its own way: the delivery
	// cannot be checked now, so fal should retry it.
	return wrap(ErrKeysUnavailable, "", err)
}
