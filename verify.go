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
// keys verifies it. The keys come from fal's JWKS document
// (DefaultJWKSURL), fetched on first use and cached by a JWKS; static keys
// can be given with WithKeys instead.
//
// The checks are strict where fal's own sample is lax: all four headers must
// be present exactly once and non-empty, the identifiers may not contain
// control characters, the timestamp is decimal seconds within
// DefaultTolerance of now (both directions), and the signature must be exactly
// 128 hex digits. These cheap checks run before any key lookup, so junk never
// causes a JWKS fetch.
//
// Typical use wraps a handler:
//
//	v := falwebhook.NewVerifier()
//	mux.Handle("POST /fal/webhook", v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//		ev, _ := falwebhook.EventFromContext(r.Context())
//		log.Printf("request %s finished: %s", ev.RequestID, ev.Status)
//	})))
//
// or verifies from any router:
//
//	if err := v.Verify(ctx, r.Header, body); err != nil {
//		http.Error(w, "invalid webhook", falwebhook.StatusCode(err))
//		return
//	}
package falwebhook

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
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

// DefaultTolerance is how far a delivery's timestamp may be from the current
// time, in either direction, before it is rejected.
const DefaultTolerance = 5 * time.Minute

// Errors returned by Verify and friends. Match them with errors.Is; the
// returned errors wrap them with detail (which header, the skew, how many keys
// were tried).
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

	// ErrNoUsableKeys is returned when a key source holds no usable Ed25519
	// key (an empty WithKeys, or a JWKS without an OKP/Ed25519 signing key).
	ErrNoUsableKeys = errors.New("falwebhook: no usable keys")

	// ErrKeysUnavailable is returned when keys could not be had: the JWKS
	// fetch failed and nothing usable is cached. It is temporary; a webhook
	// receiver should answer 503 so that fal retries the delivery.
	ErrKeysUnavailable = errors.New("falwebhook: keys unavailable")
)

// TimestampError describes a delivery whose timestamp is outside the
// tolerance. It unwraps to ErrTimestampOutOfRange.
type TimestampError struct {
	Timestamp int64         // the delivery's timestamp, Unix seconds
	Now       int64         // the verifier's clock, Unix seconds
	Tolerance time.Duration // the allowed skew
}

// Skew returns Timestamp - Now in seconds: positive when the delivery claims
// to come from the future. It saturates instead of overflowing.
func (e *TimestampError) Skew() int64 {
	d := e.Timestamp - e.Now
	if (e.Timestamp >= 0) != (e.Now >= 0) && (d >= 0) != (e.Timestamp >= 0) {
		if e.Timestamp >= 0 {
			return maxInt64
		}
		return -maxInt64 - 1
	}
	return d
}

func (e *TimestampError) Error() string {
	return fmt.Sprintf("%s: skew %+ds exceeds tolerance %s", ErrTimestampOutOfRange, e.Skew(), e.Tolerance)
}

// Unwrap returns ErrTimestampOutOfRange.
func (e *TimestampError) Unwrap() error { return ErrTimestampOutOfRange }

const maxInt64 = 1<<63 - 1

// Headers holds the four X-Fal-Webhook-* header values of one delivery,
// exactly as received.
type Headers struct {
	RequestID string // X-Fal-Webhook-Request-Id
	UserID    string // X-Fal-Webhook-User-Id
	Timestamp string // X-Fal-Webhook-Timestamp, Unix seconds as decimal digits
	Signature string // X-Fal-Webhook-Signature, 128 hex digits
}

// ParseHeaders extracts the four fal headers from h. Names match
// case-insensitively, also in a header map built by hand with non-canonical
// keys. A header that is absent or empty yields ErrMissingHeader; one present
// more than once (under any spelling, even with equal values) yields
// ErrMalformedHeader. Values are not otherwise checked here.
func ParseHeaders(h http.Header) (Headers, error) {
	var (
		vals  [4]string
		count [4]int
	)
	for k, vs := range h {
		i := headerIndex(k)
		if i < 0 {
			continue
		}
		count[i] += len(vs)
		if len(vs) > 0 {
			vals[i] = vs[0]
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
	return Headers{RequestID: vals[0], UserID: vals[1], Timestamp: vals[2], Signature: vals[3]}, nil
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

// Set writes the four headers into h under their canonical names, replacing
// any earlier values.
func (hs Headers) Set(h http.Header) {
	h[HeaderRequestID] = []string{hs.RequestID}
	h[HeaderUserID] = []string{hs.UserID}
	h[HeaderTimestamp] = []string{hs.Timestamp}
	h[HeaderSignature] = []string{hs.Signature}
}

// AppendMessage appends the message fal signs for a delivery to dst and
// returns the extended slice: request id, user id and timestamp exactly as
// given, then the lower-case hex of sha256(body), joined by "\n" with no
// trailing newline.
func AppendMessage(dst []byte, requestID, userID, timestamp string, body []byte) []byte {
	sum := sha256.Sum256(body)
	return appendMessageDigest(dst, requestID, userID, timestamp, &sum)
}

func appendMessageDigest(dst []byte, requestID, userID, timestamp string, sum *[sha256.Size]byte) []byte {
	dst = append(dst, requestID...)
	dst = append(dst, '\n')
	dst = append(dst, userID...)
	dst = append(dst, '\n')
	dst = append(dst, timestamp...)
	dst = append(dst, '\n')
	return hex.AppendEncode(dst, sum[:])
}

// A Verifier checks fal.ai webhook deliveries. Create one with NewVerifier
// and share it: it is safe for concurrent use by multiple goroutines.
type Verifier struct {
	keys      KeySource
	jwksURL   string
	client    *http.Client
	tolerance time.Duration
	now       func() time.Time

	// lastKey is the index, in the most recent key list, of the key that
	// last verified a delivery; it is tried first. A hint only.
	lastKey atomic.Int32

	mw middlewareConfig
}

// An Option configures a Verifier.
type Option func(*Verifier)

// WithKeys makes the Verifier trust exactly these keys instead of fetching
// fal's JWKS. Keys that are not 32 bytes long are ignored; with no usable key
// every Verify fails with ErrNoUsableKeys.
func WithKeys(keys ...ed25519.PublicKey) Option {
	return func(v *Verifier) { v.keys = StaticKeys(keys) }
}

// WithKeySource makes the Verifier take its keys from src, for example a JWKS
// built with NewJWKS and its own options. If src also implements
// KeyRefresher, a signature no cached key verifies triggers one refresh.
func WithKeySource(src KeySource) Option {
	return func(v *Verifier) { v.keys = src }
}

// WithJWKSURL sets the URL of the JWKS document the Verifier fetches its keys
// from (default DefaultJWKSURL). It must be https, except for loopback hosts.
// It has no effect together with WithKeys or WithKeySource.
func WithJWKSURL(url string) Option {
	return func(v *Verifier) { v.jwksURL = url }
}

// WithHTTPClient sets the client used to fetch the JWKS (default: a client
// with a 10 second timeout). It has no effect together with WithKeys or
// WithKeySource.
func WithHTTPClient(c *http.Client) Option {
	return func(v *Verifier) { v.client = c }
}

// WithTolerance sets how far, in either direction, a delivery's timestamp may
// be from now (default DefaultTolerance, 5 minutes). It is truncated to whole
// seconds; a skew of exactly the tolerance passes. A tolerance of zero or less
// restores the default.
func WithTolerance(d time.Duration) Option {
	return func(v *Verifier) { v.tolerance = d }
}

// WithClock sets the function the Verifier, and its default JWKS cache, read
// the current time from (default time.Now). For tests and for replaying
// captured deliveries.
func WithClock(now func() time.Time) Option {
	return func(v *Verifier) { v.now = now }
}

// NewVerifier returns a Verifier configured by opts. It does no I/O and
// cannot fail: with no key option, keys are fetched from DefaultJWKSURL on
// first use and cached.
func NewVerifier(opts ...Option) *Verifier {
	v := &Verifier{
		jwksURL:   DefaultJWKSURL,
		tolerance: DefaultTolerance,
		now:       time.Now,
		mw:        defaultMiddlewareConfig(),
	}
	for _, opt := range opts {
		if opt != nil {
			opt(v)
		}
	}
	if v.tolerance <= 0 {
		v.tolerance = DefaultTolerance
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.keys == nil {
		var jo []JWKSOption
		if v.client != nil {
			jo = append(jo, WithJWKSHTTPClient(v.client))
		}
		jo = append(jo, WithJWKSClock(v.now))
		v.keys = NewJWKS(v.jwksURL, jo...)
	}
	return v
}

// KeySource returns the source the Verifier takes its keys from.
func (v *Verifier) KeySource() KeySource { return v.keys }

// Verify reports, as a nil error, whether body with header h is a genuine fal
// webhook delivery: the four headers are present once each and well formed,
// the timestamp is within the tolerance, and a usable key verifies the
// signature over the request id, user id, timestamp and sha256 of body.
//
// The header checks run before any key lookup. ctx bounds the wait for keys
// when they have to be fetched.
func (v *Verifier) Verify(ctx context.Context, h http.Header, body []byte) error {
	hs, err := ParseHeaders(h)
	if err != nil {
		return err
	}
	return v.VerifyHeaders(ctx, hs, body)
}

// VerifyHeaders is like Verify for callers that hold the four header values
// as strings, such as fasthttp handlers. An empty value is missing. The
// caller is responsible for rejecting a header sent more than once.
func (v *Verifier) VerifyHeaders(ctx context.Context, hs Headers, body []byte) error {
	sig, err := v.check(hs)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	return v.verifyDigest(ctx, hs, &sig, &sum)
}

// check runs the cheap checks on hs: presence, grammar and the time window.
// It returns the decoded signature.
func (v *Verifier) check(hs Headers) (sig [ed25519.SignatureSize]byte, err error) {
	vals := [4]string{hs.RequestID, hs.UserID, hs.Timestamp, hs.Signature}
	for i, s := range vals {
		if s == "" {
			return sig, fmt.Errorf("%w: %s", ErrMissingHeader, headerNames[i])
		}
	}
	for i, s := range vals[:3] {
		if j := controlIndex(s); j >= 0 {
			return sig, fmt.Errorf("%w: %s has control character %q at byte %d", ErrMalformedHeader, headerNames[i], s[j], j)
		}
	}
	ts, ok := parseDigits(hs.Timestamp)
	if !ok {
		return sig, fmt.Errorf("%w: %s must be decimal Unix seconds fitting int64", ErrMalformedHeader, HeaderTimestamp)
	}
	if err := decodeSignature(&sig, hs.Signature); err != nil {
		return sig, err
	}
	if err := v.checkWindow(ts); err != nil {
		return sig, err
	}
	return sig, nil
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
	var n int64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 {
			return 0, false
		}
		if n > (maxInt64-int64(d))/10 {
			return 0, false
		}
		n = n*10 + int64(d)
	}
	return n, true
}

// decodeSignature decodes exactly 128 hex digits, either case, after trimming
// surrounding spaces and tabs.
func decodeSignature(dst *[ed25519.SignatureSize]byte, s string) error {
	s = strings.Trim(s, " \t")
	if len(s) != 2*ed25519.SignatureSize {
		return fmt.Errorf("%w: %s must be %d hex digits, got %d bytes", ErrMalformedHeader, HeaderSignature, 2*ed25519.SignatureSize, len(s))
	}
	if _, err := hex.Decode(dst[:], []byte(s)); err != nil {
		return fmt.Errorf("%w: %s is not hex", ErrMalformedHeader, HeaderSignature)
	}
	return nil
}

func (v *Verifier) checkWindow(ts int64) error {
	now := v.now().Unix()
	tol := uint64(v.tolerance / time.Second)
	var diff uint64
	if ts >= now {
		diff = uint64(ts) - uint64(now)
	} else {
		diff = uint64(now) - uint64(ts)
	}
	if diff > tol {
		return &TimestampError{Timestamp: ts, Now: now, Tolerance: v.tolerance}
	}
	return nil
}

// verifyDigest checks sig over the message built from hs and the body's
// sha256 against the key source, refreshing it once on a mismatch when it
// supports that.
func (v *Verifier) verifyDigest(ctx context.Context, hs Headers, sig *[ed25519.SignatureSize]byte, sum *[sha256.Size]byte) error {
	keys, err := v.keys.PublicKeys(ctx)
	if err != nil {
		if errors.Is(err, ErrNoUsableKeys) || errors.Is(err, ErrKeysUnavailable) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	var buf [512]byte
	msg := appendMessageDigest(buf[:0], hs.RequestID, hs.UserID, hs.Timestamp, sum)
	tried, ok := v.tryKeys(keys, msg, sig[:])
	if ok {
		return nil
	}
	if r, isRefresher := v.keys.(KeyRefresher); isRefresher {
		fresh, refreshed, rerr := r.RefreshKeys(ctx)
		if rerr != nil {
			return fmt.Errorf("%w: none of %d keys verified and the refresh failed: %w", ErrSignatureMismatch, tried, rerr)
		}
		if refreshed || !nothingNew(fresh, keys) {
			n, ok := v.tryKeys(fresh, msg, sig[:])
			if ok {
				return nil
			}
			return fmt.Errorf("%w: none of %d keys verified, nor %d after a refresh", ErrSignatureMismatch, tried, n)
		}
	}
	if tried == 0 {
		return fmt.Errorf("%w: the key source returned no 32-byte key", ErrNoUsableKeys)
	}
	return fmt.Errorf("%w: none of %d keys verified", ErrSignatureMismatch, tried)
}

// nothingNew reports whether fresh, returned by a declined refresh, offers
// no keys beyond tried: it is empty, or the very slice already tried (not
// merely equal keys).
func nothingNew(fresh, tried []ed25519.PublicKey) bool {
	return len(fresh) == 0 || len(fresh) == len(tried) && &fresh[0] == &tried[0]
}

// tryKeys verifies sig with each usable key, the last successful one first.
// It returns how many usable keys were tried and whether one verified.
func (v *Verifier) tryKeys(keys []ed25519.PublicKey, msg, sig []byte) (int, bool) {
	hint := int(v.lastKey.Load())
	tried := 0
	if hint >= 0 && hint < len(keys) && len(keys[hint]) == ed25519.PublicKeySize {
		tried++
		if ed25519.Verify(keys[hint], msg, sig) {
			return tried, true
		}
	} else {
		hint = -1
	}
	for i, k := range keys {
		if i == hint || len(k) != ed25519.PublicKeySize {
			continue
		}
		tried++
		if ed25519.Verify(k, msg, sig) {
			v.lastKey.Store(int32(i))
			return tried, true
		}
	}
	return tried, false
}
