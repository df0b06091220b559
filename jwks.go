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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// Defaults of a JWKS cache.
const (
	DefaultJWKSTTL      = time.Hour        // lifetime of fetched keys without Cache-Control
	MinJWKSTTL          = 5 * time.Minute  // Cache-Control max-age is raised to at least this
	MaxJWKSTTL          = 24 * time.Hour   // and lowered to at most this, as fal asks
	DefaultCooldown     = time.Minute      // least time between fetches after a failure or a mismatch
	DefaultMaxStale     = 24 * time.Hour   // how long past expiry the last good keys serve while fetches fail
	DefaultFetchTimeout = 10 * time.Second // bound on one fetch, whoever waits for it
	MaxJWKSSize         = 1 << 20          // largest JWKS document accepted, in bytes
)

// ErrMalformedJWKS is returned by ParseJWKS, and wrapped in fetch errors, when
// a JWKS document is not a JSON object whose "keys" member is an array.
var ErrMalformedJWKS = errors.New("falwebhook: malformed JWKS")

// A KeySource supplies the Ed25519 public keys that may sign deliveries.
// PublicKeys must be safe for concurrent use and must not modify the returned
// slice or keys afterwards. An error should wrap ErrKeysUnavailable when
// trying again later may help, and ErrNoUsableKeys when there are no keys.
type KeySource interface {
	PublicKeys(ctx context.Context) ([]ed25519.PublicKey, error)
}

// A KeyRefresher is a KeySource that can fetch its keys anew. When no cached
// key verifies a well-formed, in-window delivery, the Verifier calls
// RefreshKeys once and tries the keys it returns.
//
// RefreshKeys reports refreshed == false, with no error, when it declined to
// refresh (for example inside a cooldown); it must not block in that case,
// and may return the keys it holds now. The Verifier tries keys returned
// with refreshed == false only when they are not the very slice PublicKeys
// gave it, so a source that replaces its slice on every change lets a
// delivery use keys fetched by a concurrent refresh.
type KeyRefresher interface {
	KeySource
	RefreshKeys(ctx context.Context) (keys []ed25519.PublicKey, refreshed bool, err error)
}

// StaticKeys is a KeySource of fixed keys. Keys that are not
// ed25519.PublicKeySize bytes long are skipped by the Verifier.
type StaticKeys []ed25519.PublicKey

// PublicKeys returns the keys, or ErrNoUsableKeys when none is 32 bytes long.
func (s StaticKeys) PublicKeys(context.Context) ([]ed25519.PublicKey, error) {
	for _, k := range s {
		if len(k) == ed25519.PublicKeySize {
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: %d static keys, none of %d bytes", ErrNoUsableKeys, len(s), ed25519.PublicKeySize)
}

// ParseJWKS returns the usable Ed25519 public keys of a JWKS document.
//
// A usable key has "kty":"OKP", "crv":"Ed25519" and an "x" that decodes
// (base64url, padded or not) to exactly 32 bytes; a "use" other than "sig",
// an "alg" other than "EdDSA" or "Ed25519", "key_ops" without "verify", or a
// private part "d" make it unusable. Unusable entries are skipped, never
// fatal; duplicates are returned once. The result has fresh copies of the
// keys.
//
// It returns an error wrapping ErrMalformedJWKS when data is not a JSON
// object with a "keys" array, and ErrNoUsableKeys when no entry is usable.
func ParseJWKS(data []byte) (keys []ed25519.PublicKey, err error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedJWKS, err)
	}
	raw, ok := doc["keys"]
	if !ok {
		return nil, fmt.Errorf("%w: no \"keys\" member", ErrMalformedJWKS)
	}
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || raw[0] != '[' {
		return nil, fmt.Errorf("%w: \"keys\" is not an array", ErrMalformedJWKS)
	}

	defer func() {
		// jwx is third-party code parsing untrusted input: never let it
		// take the process down.
		if r := recover(); r != nil {
			keys, err = nil, fmt.Errorf("%w: parser panic: %v", ErrMalformedJWKS, r)
		}
	}()
	set, err := jwk.Parse(data, jwk.WithIgnoreParseError(true))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedJWKS, err)
	}
	entries := set.Len()
	for i := 0; i < entries; i++ {
		k, ok := set.Key(i)
		if !ok {
			continue
		}
		pub, ok := usableKey(k)
		if !ok || containsKey(keys, pub) {
			continue
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: none of %d parsed JWKS entries is an Ed25519 signing key", ErrNoUsableKeys, entries)
	}
	return keys, nil
}

// usableKey applies the key rules of ParseJWKS to one parsed entry.
func usableKey(k jwk.Key) (ed25519.PublicKey, bool) {
	okp, ok := k.(jwk.OKPPublicKey) // private keys are a different type
	if !ok || okp.Crv() != jwa.Ed25519 {
		return nil, false
	}
	if _, hasD := okp.Get("d"); hasD {
		return nil, false
	}
	if use := okp.KeyUsage(); use != "" && use != "sig" {
		return nil, false
	}
	if alg := okp.Algorithm(); alg != nil {
		if s := alg.String(); s != "" && s != "EdDSA" && s != "Ed25519" {
			return nil, false
		}
	}
	if _, hasOps := okp.Get(jwk.KeyOpsKey); hasOps { // "key_ops":[] has no "verify" either
		verify := false
		for _, op := range okp.KeyOps() {
			verify = verify || op == jwk.KeyOpVerify
		}
		if !verify {
			return nil, false
		}
	}
	x := okp.X()
	if len(x) != ed25519.PublicKeySize {
		return nil, false
	}
	return ed25519.PublicKey(bytes.Clone(x)), true // X shares jwx's buffer
}

func containsKey(keys []ed25519.PublicKey, k ed25519.PublicKey) bool {
	for _, have := range keys {
		if have.Equal(k) {
			return true
		}
	}
	return false
}

// A JWKS is a KeySource that fetches a JWKS document over HTTPS and caches
// its keys. It is lazy: nothing is fetched, and no goroutine runs, until keys
// are first needed.
//
//   - Keys live for DefaultJWKSTTL, or the response's Cache-Control max-age
//     clamped to [MinJWKSTTL, MaxJWKSTTL].
//   - One fetch is in flight at a time and its result is shared by every
//     waiter; a waiter gives up when its ctx is done without cancelling the
//     fetch, which is bounded by its own timeout.
//   - A successful fetch replaces the whole key set; a failed one changes
//     nothing. Expired keys within the max-stale bound keep serving while
//     the refetch runs in the background (stale-while-revalidate), and while
//     fetches fail; after that bound, and when no fetch ever succeeded,
//     PublicKeys waits for the fetch or returns ErrKeysUnavailable. After a
//     failure the next fetch waits for the cooldown.
//   - RefreshKeys, used by the Verifier when no cached key verifies a
//     delivery, fetches at most once per cooldown and never waits for one.
//
// A JWKS is safe for concurrent use by multiple goroutines.
type JWKS struct {
	url          string
	client       *http.Client
	now          func() time.Time
	ttl          time.Duration
	cooldown     time.Duration
	maxStale     time.Duration
	fetchTimeout time.Duration
	logger       *slog.Logger
	onRefresh    func(RefreshInfo)

	cur atomic.Pointer[keySet] // the last good keys; replaced only by a successful fetch

	mu          sync.Mutex // guards the fields below
	call        *fetchCall // the fetch in flight, or nil
	lastAttempt time.Time  // when the latest fetch started; zero before the first
	lastErr     error      // the latest fetch's error; nil after a success
	fetches     int64
	failures    int64
	lastSuccess time.Time
}

type keySet struct {
	keys    []ed25519.PublicKey
	fetched time.Time
	expiry  time.Time
}

type fetchCall struct {
	done chan struct{} // closed when keys and err are set
	keys []ed25519.PublicKey
	err  error
}

// RefreshInfo describes one JWKS fetch, for WithRefreshHook.
type RefreshInfo struct {
	URL    string
	Start  time.Time // by the JWKS clock
	Keys   int       // usable keys fetched; 0 on failure
	Expiry time.Time // when the fetched keys expire; zero on failure
	Err    error     // nil on success
}

// JWKSStats is a snapshot of a JWKS cache's counters.
type JWKSStats struct {
	Fetches     int64     // fetches started
	Failures    int64     // fetches that failed
	LastSuccess time.Time // when the latest successful fetch started; zero if none
	LastError   error     // the latest fetch's error; nil if it succeeded
	Keys        int       // usable keys cached
	Expiry      time.Time // when the cached keys expire; zero if none
}

// A JWKSOption configures a JWKS.
type JWKSOption func(*JWKS)

// WithJWKSHTTPClient sets the client used for fetches (default: a client
// with a 10 second timeout). Whatever the client, redirects to plain http
// (other than loopback) are refused before they are followed.
func WithJWKSHTTPClient(c *http.Client) JWKSOption {
	return func(j *JWKS) { j.client = c }
}

// WithJWKSClock sets the function the cache reads the current time from
// (default time.Now).
func WithJWKSClock(now func() time.Time) JWKSOption {
	return func(j *JWKS) { j.now = now }
}

// WithTTL sets the lifetime of fetched keys when the response has no
// Cache-Control max-age (default DefaultJWKSTTL, one hour). It is clamped to
// [MinJWKSTTL, MaxJWKSTTL].
func WithTTL(d time.Duration) JWKSOption {
	return func(j *JWKS) { j.ttl = d }
}

// WithCooldown sets the least time between two fetches after a failed fetch,
// and between refreshes caused by signatures no cached key verifies (default
// DefaultCooldown, one minute). It bounds the fetches forged deliveries can
// cause.
func WithCooldown(d time.Duration) JWKSOption {
	return func(j *JWKS) { j.cooldown = d }
}

// WithMaxStale sets how long past their expiry the last good keys keep
// serving while fetches fail (default DefaultMaxStale, 24 hours). Zero
// disables stale serving.
func WithMaxStale(d time.Duration) JWKSOption {
	return func(j *JWKS) { j.maxStale = d }
}

// WithFetchTimeout bounds one fetch, independently of the contexts of the
// callers waiting for it (default DefaultFetchTimeout, 10 seconds).
func WithFetchTimeout(d time.Duration) JWKSOption {
	return func(j *JWKS) { j.fetchTimeout = d }
}

// WithJWKSLogger logs each fetch to l: successes at Info, failures at Warn.
func WithJWKSLogger(l *slog.Logger) JWKSOption {
	return func(j *JWKS) { j.logger = l }
}

// WithRefreshHook calls f after each fetch, successful or not, from the
// goroutine that ran it. f must not block.
func WithRefreshHook(f func(RefreshInfo)) JWKSOption {
	return func(j *JWKS) { j.onRefresh = f }
}

// NewJWKS returns a cache of the keys published at url. It does no I/O.
// url must be https; plain http is accepted only for loopback hosts
// (localhost, 127.0.0.0/8, ::1), for tests and local development. A bad URL
// surfaces as ErrKeysUnavailable from PublicKeys.
func NewJWKS(url string, opts ...JWKSOption) *JWKS {
	j := &JWKS{
		url:          url,
		now:          time.Now,
		ttl:          DefaultJWKSTTL,
		cooldown:     DefaultCooldown,
		maxStale:     DefaultMaxStale,
		fetchTimeout: DefaultFetchTimeout,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(j)
		}
	}
	if j.client == nil {
		j.client = &http.Client{Timeout: DefaultFetchTimeout}
	}
	j.client = withSchemeCheck(j.client)
	if j.now == nil {
		j.now = time.Now
	}
	j.ttl = clampTTL(j.ttl)
	if j.cooldown < 0 {
		j.cooldown = 0
	}
	if j.maxStale < 0 {
		j.maxStale = 0
	}
	if j.fetchTimeout <= 0 {
		j.fetchTimeout = DefaultFetchTimeout
	}
	return j
}

// URL returns the address the keys are fetched from.
func (j *JWKS) URL() string { return j.url }

// PublicKeys returns the cached keys, fetching them first when there are
// none or they have expired. See JWKS for the rules.
func (j *JWKS) PublicKeys(ctx context.Context) ([]ed25519.PublicKey, error) {
	now := j.now()
	if s := j.cur.Load(); s != nil && now.Before(s.expiry) {
		return s.keys, nil
	}

	j.mu.Lock()
	if s := j.cur.Load(); s != nil && now.Before(s.expiry) {
		j.mu.Unlock()
		return s.keys, nil
	}
	c := j.call
	if c == nil {
		if j.lastErr != nil && now.Before(j.lastAttempt.Add(j.cooldown)) {
			cause := j.lastErr
			j.mu.Unlock()
			return j.staleOr(now, fmt.Errorf("last fetch failed, next attempt after cooldown: %w", cause))
		}
		c = j.startLocked(ctx, now)
	}
	j.mu.Unlock()

	// Expired keys still within the max-stale bound serve while the fetch
	// runs in the background, so a slow key server never holds up a
	// delivery. A delivery they do not verify waits for that fetch through
	// RefreshKeys.
	if s := j.cur.Load(); s != nil && now.Before(s.expiry.Add(j.maxStale)) {
		return s.keys, nil
	}

	select {
	case <-c.done:
		if c.err == nil {
			return c.keys, nil
		}
		return j.staleOr(now, c.err)
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: gave up waiting for the JWKS fetch: %w", ErrKeysUnavailable, ctx.Err())
	}
}

// staleOr returns the last good keys if they are within the max-stale
// bound at now, and otherwise an ErrKeysUnavailable wrapping cause.
func (j *JWKS) staleOr(now time.Time, cause error) ([]ed25519.PublicKey, error) {
	if s := j.cur.Load(); s != nil && now.Before(s.expiry.Add(j.maxStale)) {
		return s.keys, nil
	}
	return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, cause)
}

// RefreshKeys fetches the keys anew unless a fetch started less than the
// cooldown ago, in which case it returns at once the keys cached now, with
// refreshed == false. A fetch already in flight is joined. It implements
// KeyRefresher.
func (j *JWKS) RefreshKeys(ctx context.Context) (keys []ed25519.PublicKey, refreshed bool, err error) {
	now := j.now()
	j.mu.Lock()
	c := j.call
	if c == nil {
		if !j.lastAttempt.IsZero() && now.Before(j.lastAttempt.Add(j.cooldown)) {
			j.mu.Unlock()
			if s := j.cur.Load(); s != nil {
				return s.keys, false, nil // possibly newer than the caller's
			}
			return nil, false, nil
		}
		c = j.startLocked(ctx, now)
	}
	j.mu.Unlock()
	return j.wait(ctx, c)
}

// Refresh fetches the keys now, whatever the cache state and cooldown (a
// fetch already in flight is joined), for example to warm the cache at
// startup. On failure the cached keys are kept.
func (j *JWKS) Refresh(ctx context.Context) error {
	j.mu.Lock()
	c := j.call
	if c == nil {
		c = j.startLocked(ctx, j.now())
	}
	j.mu.Unlock()
	_, _, err := j.wait(ctx, c)
	return err
}

func (j *JWKS) wait(ctx context.Context, c *fetchCall) ([]ed25519.PublicKey, bool, error) {
	select {
	case <-c.done:
		if c.err != nil {
			return nil, false, fmt.Errorf("%w: %w", ErrKeysUnavailable, c.err)
		}
		return c.keys, true, nil
	case <-ctx.Done():
		return nil, false, fmt.Errorf("%w: gave up waiting for the JWKS fetch: %w", ErrKeysUnavailable, ctx.Err())
	}
}

// Stats returns a snapshot of the cache's counters.
func (j *JWKS) Stats() JWKSStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := JWKSStats{
		Fetches:     j.fetches,
		Failures:    j.failures,
		LastSuccess: j.lastSuccess,
		LastError:   j.lastErr,
	}
	if s := j.cur.Load(); s != nil {
		st.Keys = len(s.keys)
		st.Expiry = s.expiry
	}
	return st
}

// startLocked starts a fetch and records it as the one in flight. j.mu must
// be held. The fetch keeps ctx's values but not its cancellation: it is
// shared, and bounded by the fetch timeout instead.
func (j *JWKS) startLocked(ctx context.Context, now time.Time) *fetchCall {
	c := &fetchCall{done: make(chan struct{})}
	j.call = c
	j.lastAttempt = now
	j.fetches++
	fctx := context.WithoutCancel(ctx)
	go j.run(fctx, c, now)
	return c
}

func (j *JWKS) run(ctx context.Context, c *fetchCall, start time.Time) {
	ctx, cancel := context.WithTimeout(ctx, j.fetchTimeout)
	defer cancel()
	keys, ttl, err := j.fetch(ctx)

	info := RefreshInfo{URL: j.url, Start: start, Keys: len(keys), Err: err}
	j.mu.Lock()
	if err == nil {
		info.Expiry = start.Add(ttl)
		j.cur.Store(&keySet{keys: keys, fetched: start, expiry: info.Expiry})
		j.lastErr = nil
		j.lastSuccess = start
	} else {
		j.lastErr = err
		j.failures++
	}
	c.keys, c.err = keys, err
	j.call = nil
	j.mu.Unlock()
	close(c.done)

	if j.logger != nil {
		if err == nil {
			j.logger.Info("falwebhook: JWKS fetched", "url", j.url, "keys", len(keys), "ttl", ttl)
		} else {
			j.logger.Warn("falwebhook: JWKS fetch failed", "url", j.url, "err", err)
		}
	}
	if j.onRefresh != nil {
		j.onRefresh(info)
	}
}

// fetch GETs and parses the document, returning the keys and their TTL.
func (j *JWKS) fetch(ctx context.Context) ([]ed25519.PublicKey, time.Duration, error) {
	u, err := url.Parse(j.url)
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
	if resp.Request != nil && resp.Request.URL != nil {
		if err := checkScheme(resp.Request.URL); err != nil {
			return nil, 0, fmt.Errorf("JWKS redirected: %w", err)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("fetching JWKS: status %d, want 200", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("reading JWKS: %w", err)
	}
	if len(data) > MaxJWKSSize {
		return nil, 0, fmt.Errorf("%w: document larger than %d bytes", ErrMalformedJWKS, MaxJWKSSize)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		return nil, 0, err
	}
	return keys, cacheTTL(resp.Header, j.ttl), nil
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
	if host == "localhost" {
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
			return errors.New("too many redirects")
		}
		return nil
	}
	return &cc
}

// cacheTTL derives the keys' lifetime from Cache-Control max-age (less Age),
// clamped to [MinJWKSTTL, MaxJWKSTTL]; without max-age it is def. no-store
// and no-cache give the minimum.
func cacheTTL(h http.Header, def time.Duration) time.Duration {
	ttl := def
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return MinJWKSTTL
			case strings.HasPrefix(d, "max-age="):
				secs, ok := parseDigits(strings.Trim(d[len("max-age="):], `"`))
				if !ok {
					continue
				}
				if age, ok := parseDigits(h.Get("Age")); ok {
					secs -= min(age, secs)
				}
				if secs > int64(MaxJWKSTTL/time.Second) {
					secs = int64(MaxJWKSTTL / time.Second)
				}
				ttl = time.Duration(secs) * time.Second
			}
		}
	}
	return clampTTL(ttl)
}

func clampTTL(d time.Duration) time.Duration {
	return min(max(d, MinJWKSTTL), MaxJWKSTTL)
}

// String describes the cache for logs.
func (j *JWKS) String() string {
	return "falwebhook.JWKS(" + strconv.Quote(j.url) + ")"
}
