package falwebhook

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/falwebhook/falwebhook/internal/edkey"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// JWKS document locations.
const (
	// DefaultJWKSURL is where fal.ai publishes its webhook signing keys.
	DefaultJWKSURL = "https://rest.fal.ai/.well-known/jwks.json"

	// LegacyJWKSURL is the address given by fal's older webhook guide.
	LegacyJWKSURL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
)

// Errors about keys.
var (
	// ErrNoUsableKeys is returned when a key source holds no usable Ed25519
	// key: StaticKeys without one, or a JWKS document without an OKP/Ed25519
	// signing key (then wrapped in ErrKeysUnavailable).
	ErrNoUsableKeys = errors.New("falwebhook: no usable keys")

	// ErrKeysUnavailable is returned when keys could not be had: the JWKS
	// fetch failed and nothing usable is cached. It is temporary; a webhook
	// receiver should answer 503 so that fal retries the delivery.
	ErrKeysUnavailable = errors.New("falwebhook: keys unavailable")

	// ErrKeyNotFetched is returned, as a *KeyNotFetchedError, by a JWKS
	// when no cached key verifies a signature, the keys were fetched before
	// the delivery was signed (so its key may be new), and the cooldown
	// forbids fetching them again yet. A receiver should answer 503 with
	// the error's Retry-After, so that fal retries once a fetch can tell a
	// key rotation from a forgery. Key sources that never fetch, such as
	// StaticKeys, never return it.
	ErrKeyNotFetched = errors.New("falwebhook: signing key not fetched yet")

	// ErrMalformedJWKS is returned by ParseJWKS, and wrapped in fetch
	// errors, when a JWKS document is not a JSON object whose "keys" member
	// is an array.
	ErrMalformedJWKS = errors.New("falwebhook: malformed JWKS")
)

// maxKeys is the most usable keys a key set may hold. A forged delivery
// costs one verification per key, so the number is bounded; a JWKS with
// more is refused as malformed and the last good keys keep serving.
const maxKeys = 64

// KeyNotFetchedError is a signature that no cached key verifies, signed
// after those keys were fetched, while the cooldown forbids fetching them
// again: the delivery may be signed by a key fal added since. It matches
// ErrKeyNotFetched and ErrSignatureMismatch with errors.Is.
type KeyNotFetchedError struct {
	Keys       int           // how many cached keys were tried
	RetryAfter time.Duration // until the next fetch is allowed, at least a second
}

func (e *KeyNotFetchedError) Error() string {
	return fmt.Sprintf("%s: none of %d keys fetched before the delivery was signed verified it; the next fetch is allowed in %s", ErrKeyNotFetched, e.Keys, e.RetryAfter)
}

// Unwrap returns ErrKeyNotFetched and ErrSignatureMismatch.
func (e *KeyNotFetchedError) Unwrap() []error {
	return []error{ErrKeyNotFetched, ErrSignatureMismatch}
}

// signedAt returns the timestamp line of a message built by
// Headers.AppendMessage, and whether there was one.
func signedAt(msg []byte) (int64, bool) {
	for range 2 {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			return 0, false
		}
		msg = msg[i+1:]
	}
	i := bytes.IndexByte(msg, '\n')
	if i < 0 {
		return 0, false
	}
	return parseDigits(string(msg[:i]))
}

// maxEntries is the most entries a JWKS's "keys" array may hold, usable or
// not. Every entry costs a decoding before it can be found unusable or a
// duplicate, so the count is checked first, before any entry is decoded.
const maxEntries = 4 * maxKeys

// ParseJWKS returns the usable Ed25519 public keys of a JWKS document.
//
// The document must be one JSON object with a "keys" member holding an
// array; member names match exactly (case-sensitively), and a member name
// given twice, at the top level or in an entry, makes the document
// malformed rather than letting the first or the last win. Each entry is a
// usable key when it has "kty":"OKP", "crv":"Ed25519" and an "x" that
// decodes (base64url, padded or not) to a 32-byte public key that is
// neither of small order nor non-canonically encoded (such keys verify
// forgeries); a "use" other than "sig", an "alg" other than "EdDSA" or
// "Ed25519", "key_ops" without "verify", a private part "d", or any of
// these members of the wrong JSON type make it unusable. Members it does
// not use, such as "kid", are ignored whatever their type. Unusable entries
// are skipped, never fatal; duplicates are returned once. The result has
// fresh copies of the keys.
//
// It returns an error wrapping ErrMalformedJWKS for a malformed document,
// one with more than 256 entries (counted before any is decoded) or one
// with more than 64 usable keys, and ErrNoUsableKeys when no entry is
// usable.
func ParseJWKS(data []byte) (keys []ed25519.PublicKey, err error) {
	doc, err := jsonObject(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedJWKS, err)
	}
	raw, ok := doc["keys"]
	if !ok {
		return nil, fmt.Errorf("%w: no \"keys\" member", ErrMalformedJWKS)
	}
	entries, err := jsonArray(raw, maxEntries)
	if err != nil {
		return nil, fmt.Errorf("%w: \"keys\" %w", ErrMalformedJWKS, err)
	}

	defer func() {
		// jwx is third-party code parsing untrusted input: never let it
		// take the process down.
		if r := recover(); r != nil {
			keys, err = nil, fmt.Errorf("%w: parser panic: %v", ErrMalformedJWKS, r)
		}
	}()
	for i, e := range entries {
		if e[0] != '{' {
			continue // not a key at all
		}
		members, err := jsonObject(e)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrMalformedJWKS, i, err)
		}
		pub, ok := usableKey(members)
		if !ok || slices.ContainsFunc(keys, func(k ed25519.PublicKey) bool { return k.Equal(pub) }) {
			continue
		}
		if edkey.Check(pub) != nil { // small order or non-canonical: it would verify forgeries
			continue
		}
		if len(keys) == maxKeys {
			return nil, fmt.Errorf("%w: more than %d usable keys", ErrMalformedJWKS, maxKeys)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: none of the %d JWKS entries is a usable Ed25519 signing key", ErrNoUsableKeys, len(entries))
	}
	return keys, nil
}

// jsonArray splits data, which must be exactly one JSON array, into its
// elements, refusing more than n of them before decoding the next.
func jsonArray(data json.RawMessage, n int) ([]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, errors.New("is not an array")
	}
	var elems []json.RawMessage
	for dec.More() {
		if len(elems) == n {
			return nil, fmt.Errorf("has more than %d entries", n)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("is not an array")
		}
		elems = append(elems, v)
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return nil, errors.New("is not an array")
	}
	return elems, nil
}

// jsonObject decodes data, which must be exactly one JSON object, into its
// members, refusing a member name given twice.
func jsonObject(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	members := make(map[string]json.RawMessage)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name := t.(string) // dec.Token checks that object keys are strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if _, dup := members[name]; dup {
			return nil, fmt.Errorf("member %q given twice", name)
		}
		members[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return members, nil
}

// usableKey applies the key rules of ParseJWKS to one entry's members.
func usableKey(m map[string]json.RawMessage) (ed25519.PublicKey, bool) {
	str := func(name string) (string, bool) {
		var s string
		return s, json.Unmarshal(m[name], &s) == nil
	}
	if kty, ok := str("kty"); !ok || kty != "OKP" {
		return nil, false
	}
	if crv, ok := str("crv"); !ok || crv != "Ed25519" {
		return nil, false
	}
	if _, hasD := m["d"]; hasD {
		return nil, false
	}
	if _, has := m["use"]; has {
		if use, ok := str("use"); !ok || use != "sig" {
			return nil, false
		}
	}
	if _, has := m["alg"]; has {
		if alg, ok := str("alg"); !ok || alg != "EdDSA" && alg != "Ed25519" {
			return nil, false
		}
	}
	if raw, has := m["key_ops"]; has { // "key_ops":[] has no "verify" either
		var ops []string
		if json.Unmarshal(raw, &ops) != nil || !slices.Contains(ops, "verify") {
			return nil, false
		}
	}
	x, ok := m["x"]
	if !ok || x[0] != '"' {
		return nil, false
	}
	// jwx decodes x (base64url, padded or not) from an entry holding only
	// the members checked above.
	k, err := jwk.ParseKey([]byte(`{"kty":"OKP","crv":"Ed25519","x":` + string(x) + `}`))
	if err != nil {
		return nil, false
	}
	okp, ok := k.(jwk.OKPPublicKey)
	if !ok || okp.Crv() != jwa.Ed25519 {
		return nil, false
	}
	pub := okp.X()
	if len(pub) != ed25519.PublicKeySize {
		return nil, false
	}
	return ed25519.PublicKey(bytes.Clone(pub)), true // X shares jwx's buffer
}

// A JWKS is a KeySource that fetches a JWKS document over HTTPS and caches
// its keys. Set URL and, where the defaults do not suit, the other fields,
// then use it; fields must not change after first use. A zero field means
// its default. It is lazy: nothing is fetched, and no goroutine runs, until
// keys are first needed.
//
//	keys := &falwebhook.JWKS{URL: falwebhook.LegacyJWKSURL, Client: myClient}
//	v := falwebhook.NewVerifier(falwebhook.WithKeys(keys))
//
// The cache rules:
//
//   - Keys live for TTL, or the response's Cache-Control max-age (less
//     Age), clamped to [5 minutes, 24 hours] as fal asks.
//   - A fetch must answer 200 with a document of at most 1 MiB that
//     ParseJWKS accepts; anything else fails the fetch.
//   - One fetch is in flight at a time and its result is shared by every
//     waiter; a waiter gives up when its ctx is done without cancelling the
//     fetch, which is bounded by FetchTimeout.
//   - A successful fetch replaces the whole key set; a failed one changes
//     nothing. Expired keys keep serving while the refetch runs in the
//     background (stale-while-revalidate), and while fetches fail, for up
//     to MaxStale past their expiry; after that, and when no fetch ever
//     succeeded, VerifySignature waits for a fetch or fails with
//     ErrKeysUnavailable. After a failed fetch the next one waits for the
//     cooldown.
//   - When no cached key verifies a signature, the keys are fetched anew
//     (the key may be new), at most once per Cooldown; a fetch in flight is
//     joined. The mismatch is ErrSignatureMismatch (401) when the keys
//     tried cannot be missing the delivery's key, because they were fetched
//     after it was signed: by a fetch started after the delivery arrived,
//     or after the second of its signed timestamp. Otherwise, inside the
//     cooldown, the answer comes at once, never waiting: a
//     *KeyNotFetchedError (ErrKeyNotFetched, 503 with Retry-After until the
//     next fetch is allowed), so that a delivery signed by a key fal added
//     right after a fetch is retried and accepted once the cooldown ends,
//     not refused as a forgery. When a fetch is allowed there is no 503 of
//     this kind: the keys are fetched and decide. If the refetch fails, the
//     mismatch also wraps ErrKeysUnavailable (503): the delivery may be
//     signed by a key we could not fetch. So forged deliveries cause at
//     most one fetch per Cooldown (see Cooldown for what they are answered).
//
// A JWKS is safe for concurrent use by multiple goroutines.
type JWKS struct {
	// URL is the address of the JWKS document. It must be https; plain
	// http is accepted only for loopback hosts (localhost, 127.0.0.0/8,
	// ::1), for tests and local development. A bad URL surfaces as
	// ErrKeysUnavailable.
	URL string

	// Client fetches the document (default: a client with a 10 second
	// timeout). Whatever the client, redirects to plain http (other than
	// loopback) are refused before they are followed.
	Client *http.Client

	// Clock returns the current time (default time.Now).
	Clock func() time.Time

	// Logger receives one line per fetch: successes at Info, failures at
	// Warn (default: no logging).
	Logger *slog.Logger

	// TTL is the lifetime of fetched keys when the response has no
	// Cache-Control max-age (default 1 hour). It is clamped to
	// [5 minutes, 24 hours].
	TTL time.Duration

	// Cooldown is the least time between two fetches after a failed fetch,
	// and between refetches caused by signatures no cached key verifies
	// (default 1 minute, at least 10 seconds: it bounds the fetches that
	// forged deliveries can cause).
	//
	// A key fal adds right after a fetch is missing from the cache until
	// the next one. So inside the cooldown a delivery that the cached keys
	// do not verify, signed after they were fetched, cannot be judged yet:
	// it gets ErrKeyNotFetched, 503 with Retry-After until the cooldown
	// ends, and fal's retry meets refetched keys. A forgery signed after
	// the fetch gets the same 503, as nothing tells it from a rotation but
	// a fetch, and fetching for every forgery would let forgeries drive the
	// fetches; sent again after the next fetch, the same forgery is a 401.
	// A mismatch signed before the keys were fetched, or one that a fetch
	// has just settled, is a 401. No 503 of this kind is given while a
	// fetch is allowed, and key sources that never fetch (StaticKeys)
	// always answer a mismatch with 401.
	Cooldown time.Duration

	// MaxStale is how long past their expiry the last good keys keep
	// serving while fetches fail (default 24 hours, at most 24 hours). A
	// negative MaxStale turns stale serving off.
	MaxStale time.Duration

	// FetchTimeout bounds one fetch, independently of the contexts of the
	// callers waiting for it (default 10 seconds).
	FetchTimeout time.Duration

	// Observer, if set, is told about each fetch (ObserveFetch).
	Observer Observer

	init   sync.Once
	client *http.Client // Client with the scheme check on redirects
	now    func() time.Time

	cur     atomic.Pointer[cachedKeys] // the last good keys; replaced only by a successful fetch
	started atomic.Uint64              // fetches started; written with mu held

	mu          sync.Mutex // guards the fields below
	call        *fetchCall // the fetch in flight, or nil
	lastAttempt time.Time  // when the latest fetch started; zero before the first
	lastErr     error      // the latest fetch's error; nil after a success
}

// Bounds of a JWKS's settings.
const (
	minJWKSTTL          = 5 * time.Minute
	maxJWKSTTL          = 24 * time.Hour
	minCooldown         = 10 * time.Second
	maxJWKSSize         = 1 << 20 // largest JWKS document accepted, in bytes
	defaultFetchTimeout = 10 * time.Second
)

// cachedKeys is one fetch's keys.
type cachedKeys struct {
	*keySet
	fetch   uint64    // the number of the fetch that brought them, from 1
	fetched time.Time // when that fetch started
	expiry  time.Time
}

type fetchCall struct {
	fetch uint64        // its number, from 1
	done  chan struct{} // closed when keys and err are set
	keys  *cachedKeys
	err   error
}

// setup applies the defaults and bounds, once.
func (j *JWKS) setup() {
	j.init.Do(func() {
		c := j.Client
		if c == nil {
			c = &http.Client{Timeout: defaultFetchTimeout}
		}
		j.client = withSchemeCheck(c)
		j.now = j.Clock
		if j.now == nil {
			j.now = time.Now
		}
	})
}

// ttl is the TTL setting; cacheTTL clamps whatever lifetime it settles on.
func (j *JWKS) ttl() time.Duration {
	if j.TTL == 0 {
		return time.Hour
	}
	return j.TTL
}

func (j *JWKS) cooldown() time.Duration {
	if j.Cooldown == 0 {
		return time.Minute
	}
	return max(j.Cooldown, minCooldown)
}

// maxStale is the MaxStale setting, at most 24 hours; a negative one, no
// stale serving, stays negative.
func (j *JWKS) maxStale() time.Duration {
	if j.MaxStale == 0 {
		return maxJWKSTTL
	}
	return min(j.MaxStale, maxJWKSTTL)
}

func (j *JWKS) fetchTimeout() time.Duration {
	if j.FetchTimeout <= 0 {
		return defaultFetchTimeout
	}
	return j.FetchTimeout
}

// VerifySignature reports, as a nil error, whether a key of the document
// verifies sig over msg, fetching the keys first when there are none or
// they have expired, and once more when none of them verifies it. See JWKS
// for the rules.
func (j *JWKS) VerifySignature(ctx context.Context, msg, sig []byte) error {
	j.setup()
	arrived := j.started.Load() // fetches started before the delivery was in hand
	s, err := j.keys(ctx)
	if err != nil {
		return err
	}
	if s.verify(msg, sig) {
		return nil
	}

	// No cached key verifies it: perhaps fal rotated its keys. Each turn
	// either answers or waits for a fetch; a fetch started here starts
	// after the delivery arrived, so its keys settle the question. Only
	// fetches finished or started elsewhere meanwhile bring another turn.
	for range maxRefetchTurns {
		now := j.now()
		j.mu.Lock()
		c := j.call
		if c == nil {
			if cur := j.cur.Load(); cur != s {
				// A fetch that finished since s was read brought other
				// keys: try them, then decide with them.
				j.mu.Unlock()
				s = cur
				if s.verify(msg, sig) {
					return nil
				}
				continue
			}
			if next := j.lastAttempt.Add(j.cooldown()); now.Before(next) {
				j.mu.Unlock()
				return cooldownMismatch(s, msg, arrived, now, next)
			}
			c = j.startLocked(ctx, now)
		}
		j.mu.Unlock()
		fresh, err := j.wait(ctx, c)
		if err != nil {
			return wrap(mismatch(len(s.keys)), "and refetching the keys failed", err)
		}
		if fresh != s && fresh.verify(msg, sig) {
			return nil
		}
		if definitive(fresh, msg, arrived) {
			return mismatch(len(fresh.keys))
		}
		s = fresh // a fetch started before the delivery arrived: another turn
	}
	return mismatch(len(s.keys))
}

// maxRefetchTurns bounds VerifySignature's turns after a mismatch. A turn
// ends without an answer only when a fetch finished in the meantime, which
// forged deliveries can cause at most once per cooldown, so the bound is
// never reached but by a caller of Refresh in a loop.
const maxRefetchTurns = 4

// definitive reports whether keys s, which do not verify a signature over
// msg, cannot be missing its key because they were fetched after it was
// signed: by a fetch started after the delivery was in hand (one of number
// above arrived, which counts the fetches started before), or started after
// the second of its signed timestamp (whole seconds: a delivery signed at
// ts was signed before second ts+1 began). A msg without a timestamp line,
// not built by Headers.AppendMessage, has nothing to wait for: a plain
// mismatch.
func definitive(s *cachedKeys, msg []byte, arrived uint64) bool {
	if s.fetch > arrived {
		return true
	}
	ts, ok := signedAt(msg)
	return !ok || ts < s.fetched.Unix()
}

// cooldownMismatch is the error for a signature that keys s do not verify
// while no fetch is allowed until next: a plain mismatch when s cannot be
// missing its key (definitive), and otherwise a *KeyNotFetchedError whose
// RetryAfter lasts until next.
func cooldownMismatch(s *cachedKeys, msg []byte, arrived uint64, now, next time.Time) error {
	if definitive(s, msg, arrived) {
		return mismatch(len(s.keys))
	}
	secs := (next.Sub(now) + time.Second - 1) / time.Second // rounded up
	return &KeyNotFetchedError{Keys: len(s.keys), RetryAfter: max(secs, 1) * time.Second}
}

// keys returns the keys to verify with: the cached ones, fetching first
// when there are none or they have expired (expired keys within MaxStale
// serve while the fetch runs).
func (j *JWKS) keys(ctx context.Context) (*cachedKeys, error) {
	now := j.now()
	if s := j.cur.Load(); s != nil && now.Before(s.expiry) {
		return s, nil
	}

	j.mu.Lock()
	if s := j.cur.Load(); s != nil && now.Before(s.expiry) {
		j.mu.Unlock()
		return s, nil
	}
	c := j.call
	if c == nil {
		if j.lastErr != nil && now.Before(j.lastAttempt.Add(j.cooldown())) {
			cause := j.lastErr
			j.mu.Unlock()
			return j.staleOr(now, wrap(ErrKeysUnavailable, "the last fetch failed; next attempt after the cooldown", cause))
		}
		c = j.startLocked(ctx, now)
	}
	j.mu.Unlock()

	// Expired keys still within the max-stale bound serve while the fetch
	// runs in the background, so a slow key server never holds up a
	// delivery. A delivery they do not verify joins that fetch.
	if s, err := j.staleOr(now, nil); err == nil {
		return s, nil
	}
	s, err := j.wait(ctx, c)
	if err != nil {
		return j.staleOr(now, err)
	}
	return s, nil
}

// staleOr returns the last good keys if they are within the max-stale bound
// at now, and otherwise err, or ErrKeysUnavailable when err is nil.
func (j *JWKS) staleOr(now time.Time, err error) (*cachedKeys, error) {
	if s := j.cur.Load(); s != nil && now.Before(s.expiry.Add(j.maxStale())) {
		return s, nil
	}
	if err == nil {
		err = ErrKeysUnavailable
	}
	return nil, err
}

// Refresh fetches the keys now, whatever the cache state and cooldown (a
// fetch already in flight is joined), for example to warm the cache at
// startup so that a wrong URL fails loudly. On failure the cached keys are
// kept; the error wraps ErrKeysUnavailable.
func (j *JWKS) Refresh(ctx context.Context) error {
	j.setup()
	j.mu.Lock()
	c := j.call
	if c == nil {
		c = j.startLocked(ctx, j.now())
	}
	j.mu.Unlock()
	_, err := j.wait(ctx, c)
	return err
}

// wait waits for the fetch c, or for ctx to be done.
func (j *JWKS) wait(ctx context.Context, c *fetchCall) (*cachedKeys, error) {
	select {
	case <-c.done:
		if c.err != nil {
			return nil, wrap(ErrKeysUnavailable, "", c.err)
		}
		return c.keys, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: gave up waiting for the JWKS fetch: %w", ErrKeysUnavailable, ctx.Err())
	}
}

// startLocked starts a fetch and records it as the one in flight. j.mu must
// be held. The fetch keeps ctx's values but not its cancellation: it is
// shared, and bounded by the fetch timeout instead.
func (j *JWKS) startLocked(ctx context.Context, now time.Time) *fetchCall {
	c := &fetchCall{done: make(chan struct{}), fetch: j.started.Add(1)}
	j.call = c
	j.lastAttempt = now
	go j.run(context.WithoutCancel(ctx), c, now)
	return c
}

func (j *JWKS) run(ctx context.Context, c *fetchCall, start time.Time) {
	began := time.Now()
	fctx, cancel := context.WithTimeout(ctx, j.fetchTimeout())
	defer cancel()
	keys, ttl, err := j.fetch(fctx)

	info := FetchInfo{URL: j.URL, Start: start, Keys: len(keys), Err: err}
	j.mu.Lock()
	if err == nil {
		info.Expiry = start.Add(ttl)
		c.keys = &cachedKeys{keySet: newKeySet(keys), fetch: c.fetch, fetched: start, expiry: info.Expiry}
		j.cur.Store(c.keys)
	}
	c.err = err
	j.lastErr = err
	j.call = nil
	j.mu.Unlock()
	if j.Observer != nil {
		// Before the waiters wake, so that what they see next has been
		// observed.
		info.Duration = time.Since(began)
		j.Observer.ObserveFetch(ctx, info)
	}
	close(c.done)

	if l := j.Logger; l != nil {
		if err == nil {
			l.Info("falwebhook: JWKS fetched", "url", j.URL, "keys", len(keys), "ttl", ttl)
		} else {
			l.Warn("falwebhook: JWKS fetch failed", "url", j.URL, "err", err)
		}
	}
}

// fetch GETs and parses the document, returning the keys and their TTL.
func (j *JWKS) fetch(ctx context.Context) ([]ed25519.PublicKey, time.Duration, error) {
	u, err := url.Parse(j.URL)
	if err != nil {
		return nil, 0, fmt.Errorf("bad JWKS URL: %w", err)
	}
	if err := checkScheme(u); err != nil {
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("bad JWKS URL: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("fetching JWKS: %w", err)
	}
	defer func() {
		// Drain a little so the connection can be reused, then close.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("fetching JWKS: status %d, want 200", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("reading JWKS: %w", err)
	}
	if len(data) > maxJWKSSize {
		return nil, 0, fmt.Errorf("%w: document larger than %d bytes", ErrMalformedJWKS, maxJWKSSize)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		return nil, 0, err
	}
	return keys, j.cacheTTL(resp.Header), nil
}

// checkScheme accepts https URLs, and http ones for loopback hosts only.
func checkScheme(u *url.URL) error {
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("JWKS URL %q: plain http is allowed only for loopback hosts", u.Redacted())
	default:
		return fmt.Errorf("JWKS URL %q: scheme must be https", u.Redacted())
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// withSchemeCheck returns a copy of c that refuses a redirect failing
// checkScheme before following it, then applies c's own redirect policy
// (or, without one, stops after 5 redirects).
func withSchemeCheck(c *http.Client) *http.Client {
	cc := *c
	next := c.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := checkScheme(req.URL); err != nil {
			return err
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 5 {
			return errors.New("stopped after 5 redirects")
		}
		return nil
	}
	return &cc
}

// parseDelta parses HTTP delta-seconds: decimal digits, a value too large
// to hold taken as the largest (RFC 9111, section 1.2.2).
func parseDelta(s string) (int64, bool) {
	if n, ok := parseDigits(s); ok {
		return n, true
	}
	if s != "" && strings.Trim(s, "0123456789") == "" {
		return 1<<63 - 1, true
	}
	return 0, false
}

// cacheTTL derives the keys' lifetime from Cache-Control max-age (less Age),
// clamped to [5 minutes, 24 hours]; without max-age it is the TTL setting.
// no-store and no-cache give the minimum.
func (j *JWKS) cacheTTL(h http.Header) time.Duration {
	ttl := j.ttl()
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return minJWKSTTL
			case strings.HasPrefix(d, "max-age="):
				secs, ok := parseDelta(strings.Trim(d[len("max-age="):], `"`))
				if !ok {
					continue
				}
				if age, ok := parseDelta(h.Get("Age")); ok {
					secs -= min(age, secs)
				}
				secs = min(secs, int64(maxJWKSTTL/time.Second))
				ttl = time.Duration(secs) * time.Second
			}
		}
	}
	return min(max(ttl, minJWKSTTL), maxJWKSTTL)
}
