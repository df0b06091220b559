package falwebhook

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// Helpers in this file are prefixed with jwks so they cannot collide with
// the other test files of the package.

// testClock is a settable clock: tests move time with Advance instead of
// sleeping. Safe for concurrent use.
type testClock struct {
	mu  sync.Mutex // guards t
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Unix(1_700_000_000, 0)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// jwksGoldenSigner returns a Signer for golden key name ("A", "B" or "C").
func jwksGoldenSigner(tb testing.TB, name string) *faltest.Signer {
	tb.Helper()
	for _, k := range loadGolden(tb).Keys {
		if k.Name == name {
			seed, err := hex.DecodeString(k.SeedHex)
			if err != nil {
				tb.Fatal(err)
			}
			s := faltest.NewSignerFromSeed(seed)
			if got := hex.EncodeToString(s.PublicKey()); got != k.PublicHex {
				tb.Fatalf("golden key %s: seed gives public key %s, vectors.json says %s", name, got, k.PublicHex)
			}
			return s
		}
	}
	tb.Fatalf("no golden key %q", name)
	return nil
}

func jwksFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "jwks", name))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// jwksKeyNames names each key by its golden name, or by its hex if it is
// not a golden key.
func jwksKeyNames(g goldenFile, keys []ed25519.PublicKey) []string {
	var names []string
	for _, k := range keys {
		name := "unknown:" + hex.EncodeToString(k)
		for _, gk := range g.Keys {
			if hex.EncodeToString(k) == gk.PublicHex {
				name = gk.Name
			}
		}
		names = append(names, name)
	}
	return names
}

func TestParseJWKSFixtures(t *testing.T) {
	g := loadGolden(t)
	type fixtureTest struct {
		file    string
		want    []string // golden key names, in order
		wantErr error
	}
	tests := []fixtureTest{
		{file: "valid_one.json", want: []string{"A"}},
		{file: "valid_two.json", want: []string{"A", "B"}},
		{file: "padded_x.json", want: []string{"A"}},
		{file: "mixed.json", want: []string{"A"}},
		{file: "wrong_length.json", wantErr: ErrNoUsableKeys},
		{file: "private.json", want: []string{"B"}},
		{file: "use_enc.json", wantErr: ErrNoUsableKeys},
		{file: "x_not_string.json", want: []string{"B"}},
		{file: "not_json.txt", wantErr: ErrMalformedJWKS},
		{file: "keys_not_array.json", wantErr: ErrMalformedJWKS},
		{file: "empty_keys.json", wantErr: ErrNoUsableKeys},
	}

	// Every fixture must have an expectation here.
	entries, err := os.ReadDir(filepath.Join("testdata", "jwks"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "README.md" {
			continue
		}
		if !slices.ContainsFunc(tests, func(tt fixtureTest) bool { return tt.file == e.Name() }) {
			t.Errorf("testdata/jwks/%s has no expected result in TestParseJWKSFixtures", e.Name())
		}
	}

	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			keys, err := ParseJWKS(jwksFixture(t, tt.file))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseJWKS error = %v, want %v", err, tt.wantErr)
				}
				// The two failures must stay distinguishable.
				other := ErrMalformedJWKS
				if tt.wantErr == ErrMalformedJWKS {
					other = ErrNoUsableKeys
				}
				if errors.Is(err, other) {
					t.Errorf("ParseJWKS error %v also matches %v", err, other)
				}
				if keys != nil {
					t.Errorf("ParseJWKS returned %d keys with an error", len(keys))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseJWKS: %v", err)
			}
			if got := jwksKeyNames(g, keys); !slices.Equal(got, tt.want) {
				t.Fatalf("ParseJWKS keys = %v, want %v", got, tt.want)
			}
			// The golden vectors verify with the parsed keys exactly when
			// they were signed by one of them.
			for _, v := range g.Vectors {
				sig, err := hex.DecodeString(v.Signature)
				if err != nil {
					t.Fatalf("vector %s: %v", v.Name, err)
				}
				verified := slices.ContainsFunc(keys, func(k ed25519.PublicKey) bool {
					return ed25519.Verify(k, []byte(v.Message), sig)
				})
				if want := slices.Contains(tt.want, v.Key); verified != want {
					t.Errorf("golden vector %s (key %s) verifies with the parsed keys: %v, want %v", v.Name, v.Key, verified, want)
				}
			}
		})
	}
}

func TestParseJWKSReturnsCopies(t *testing.T) {
	data := jwksFixture(t, "valid_two.json")
	keys, err := ParseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(keys[0])
	for i := range keys[0] {
		keys[0][i] ^= 0xff
	}
	again, err := ParseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again[0], want) {
		t.Errorf("mutating a returned key changed a later parse: got %x, want %x", again[0], want)
	}
	if bytes.Equal(keys[1], keys[0]) {
		t.Errorf("returned keys share storage")
	}
}

// jwksEntry returns one JWK object for key x with extra members appended.
func jwksEntry(x, extra string) string {
	return `{"kty":"OKP","crv":"Ed25519","x":"` + x + `"` + extra + `}`
}

func jwksDoc(entries ...string) []byte {
	return []byte(`{"keys":[` + strings.Join(entries, ",") + `]}`)
}

func TestParseJWKSDuplicates(t *testing.T) {
	g := loadGolden(t)
	a, b := g.Keys[0].X, g.Keys[1].X
	doc := jwksDoc(
		jwksEntry(a, `,"kid":"a1"`),
		jwksEntry(b, ``),
		jwksEntry(a+"=", `,"kid":"a-padded"`),
		jwksEntry(a, `,"kid":"a2","use":"sig","alg":"EdDSA"`),
		jwksEntry(b, `,"kid":"b2"`),
	)
	keys, err := ParseJWKS(doc)
	if err != nil {
		t.Fatal(err)
	}
	if got := jwksKeyNames(g, keys); !slices.Equal(got, []string{"A", "B"}) {
		t.Errorf("duplicates not returned once: keys = %v, want [A B]", got)
	}
}

func TestParseJWKSKeyRules(t *testing.T) {
	g := loadGolden(t)
	a := g.Keys[0].X
	raw, err := base64.RawURLEncoding.DecodeString(a)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		entry  string
		usable bool
	}{
		{"bare", jwksEntry(a, ``), true},
		{"unpadded x", jwksEntry(base64.RawURLEncoding.EncodeToString(raw), ``), true},
		{"padded x", jwksEntry(base64.URLEncoding.EncodeToString(raw), ``), true},
		{"x of 31 bytes", jwksEntry(base64.RawURLEncoding.EncodeToString(raw[:31]), ``), false},
		{"x of 33 bytes", jwksEntry(base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0)), ``), false},
		{"x of 64 bytes", jwksEntry(base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), raw...)), ``), false},
		{"x empty", jwksEntry(``, ``), false},
		{"x not base64", jwksEntry(`!!!!`+a[4:], ``), false},
		{"x missing", `{"kty":"OKP","crv":"Ed25519"}`, false},
		{"x a number", `{"kty":"OKP","crv":"Ed25519","x":12345}`, false},
		{"x null", `{"kty":"OKP","crv":"Ed25519","x":null}`, false},
		{"kty missing", `{"crv":"Ed25519","x":"` + a + `"}`, false},
		{"kty RSA", `{"kty":"RSA","crv":"Ed25519","x":"` + a + `","n":"AQAB","e":"AQAB"}`, false},
		{"kty EC", `{"kty":"EC","crv":"Ed25519","x":"` + a + `","y":"` + a + `"}`, false},
		{"kty lower case", `{"kty":"okp","crv":"Ed25519","x":"` + a + `"}`, false},
		{"crv missing", `{"kty":"OKP","x":"` + a + `"}`, false},
		{"crv X25519", `{"kty":"OKP","crv":"X25519","x":"` + a + `"}`, false},
		{"crv Ed448", `{"kty":"OKP","crv":"Ed448","x":"` + a + `"}`, false},
		{"crv lower case", `{"kty":"OKP","crv":"ed25519","x":"` + a + `"}`, false},
		{"use sig", jwksEntry(a, `,"use":"sig"`), true},
		{"use enc", jwksEntry(a, `,"use":"enc"`), false},
		{"use unknown", jwksEntry(a, `,"use":"foo"`), false},
		{"use not a string", jwksEntry(a, `,"use":1`), false},
		{"alg EdDSA", jwksEntry(a, `,"alg":"EdDSA"`), true},
		{"alg Ed25519", jwksEntry(a, `,"alg":"Ed25519"`), true},
		{"alg RS256", jwksEntry(a, `,"alg":"RS256"`), false},
		{"alg ES256", jwksEntry(a, `,"alg":"ES256"`), false},
		{"alg none", jwksEntry(a, `,"alg":"none"`), false},
		{"alg unknown", jwksEntry(a, `,"alg":"Ed25519ph"`), false},
		{"key_ops verify", jwksEntry(a, `,"key_ops":["verify"]`), true},
		{"key_ops sign and verify", jwksEntry(a, `,"key_ops":["sign","verify"]`), true},
		{"key_ops sign only", jwksEntry(a, `,"key_ops":["sign"]`), false},
		{"key_ops encrypt", jwksEntry(a, `,"key_ops":["encrypt"]`), false},
		{"key_ops empty", jwksEntry(a, `,"key_ops":[]`), false},
		{"key_ops not an array", jwksEntry(a, `,"key_ops":"verify"`), false},
		{"private part d", jwksEntry(a, `,"d":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"`), false},
		{"unknown members", jwksEntry(a, `,"kid":"k","x-extra":{"nested":[1,2]}`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A usable key B follows, so the document itself is always valid.
			doc := jwksDoc(tt.entry, jwksEntry(g.Keys[1].X, ``))
			keys, err := ParseJWKS(doc)
			if err != nil {
				t.Fatalf("ParseJWKS(%s): %v", doc, err)
			}
			gotA := slices.ContainsFunc(keys, func(k ed25519.PublicKey) bool { return bytes.Equal(k, raw) })
			switch {
			case gotA && !tt.usable:
				t.Errorf("unusable entry %s was returned as a key", tt.entry)
			case !gotA && tt.usable:
				t.Errorf("usable entry %s was skipped", tt.entry)
			}
			if !slices.ContainsFunc(keys, func(k ed25519.PublicKey) bool { return hex.EncodeToString(k) == g.Keys[1].PublicHex }) {
				t.Errorf("entry %s made the valid key B after it disappear", tt.entry)
			}

			// Alone, an unusable entry makes the whole set unusable.
			keys, err = ParseJWKS(jwksDoc(tt.entry))
			if tt.usable {
				if err != nil || len(keys) != 1 {
					t.Errorf("ParseJWKS of the entry alone = %d keys, %v; want 1 key", len(keys), err)
				}
			} else if !errors.Is(err, ErrNoUsableKeys) {
				t.Errorf("ParseJWKS of the unusable entry alone: error = %v, want ErrNoUsableKeys", err)
			}
		})
	}
}

func TestParseJWKSMalformed(t *testing.T) {
	a := loadGolden(t).Keys[0].X
	tests := []struct {
		name    string
		doc     string
		wantErr error
	}{
		{"empty input", ``, ErrMalformedJWKS},
		{"whitespace", " \n\t", ErrMalformedJWKS},
		{"null", `null`, ErrMalformedJWKS},
		{"array", `[` + jwksEntry(a, ``) + `]`, ErrMalformedJWKS},
		{"string", `"keys"`, ErrMalformedJWKS},
		{"empty object", `{}`, ErrMalformedJWKS},
		{"keys null", `{"keys":null}`, ErrMalformedJWKS},
		{"keys object", `{"keys":` + jwksEntry(a, ``) + `}`, ErrMalformedJWKS},
		{"keys string", `{"keys":"[]"}`, ErrMalformedJWKS},
		{"a single JWK, not a set", jwksEntry(a, ``), ErrMalformedJWKS},
		{"truncated", `{"keys":[` + jwksEntry(a, ``), ErrMalformedJWKS},
		{"trailing garbage", string(jwksDoc(jwksEntry(a, ``))) + `x`, ErrMalformedJWKS},
		{"two documents", string(jwksDoc(jwksEntry(a, ``))) + `{}`, ErrMalformedJWKS},
		{"HTML", `<html><body>502 Bad Gateway</body></html>`, ErrMalformedJWKS},
		{"keys given twice", `{"keys":[` + jwksEntry(a, ``) + `],"keys":[]}`, ErrMalformedJWKS},
		{"keys given twice, the good one last", `{"keys":[],"keys":[` + jwksEntry(a, ``) + `]}`, ErrMalformedJWKS},
		{"another member given twice", `{"keys":[` + jwksEntry(a, ``) + `],"x":1,"x":2}`, ErrMalformedJWKS},
		{"x given twice in an entry", `{"keys":[` + jwksEntry(a, `,"x":"`+a+`"`) + `]}`, ErrMalformedJWKS},
		{"kty given twice in an entry", `{"keys":[` + jwksEntry(a, `,"kty":"RSA"`) + `]}`, ErrMalformedJWKS},
		{"keys empty", `{"keys":[]}`, ErrNoUsableKeys},
		{"keys of non-objects", `{"keys":[1,"a",null,[],true]}`, ErrNoUsableKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := ParseJWKS([]byte(tt.doc))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseJWKS(%q) error = %v, want %v", tt.doc, err, tt.wantErr)
			}
			if tt.wantErr == ErrMalformedJWKS && errors.Is(err, ErrNoUsableKeys) {
				t.Errorf("malformed document reported as ErrNoUsableKeys: %v", err)
			}
			if len(keys) != 0 {
				t.Errorf("ParseJWKS returned %d keys with an error", len(keys))
			}
		})
	}
}

// Junk entries beside a good key are skipped, not fatal.
func TestParseJWKSSkipsJunkEntries(t *testing.T) {
	g := loadGolden(t)
	doc := `{"keys":[1,"a",null,[],{},` + jwksEntry(g.Keys[0].X, ``) + `]}`
	keys, err := ParseJWKS([]byte(doc))
	if err != nil {
		t.Fatalf("a good key among junk entries: %v", err)
	}
	if got := jwksKeyNames(g, keys); !slices.Equal(got, []string{"A"}) {
		t.Errorf("keys = %v, want [A]", got)
	}
}

func FuzzParseJWKS(f *testing.F) {
	entries, err := os.ReadDir(filepath.Join("testdata", "jwks"))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(jwksFixture(f, e.Name()))
	}
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w","key_ops":["verify"],"alg":"Ed25519"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="},{"kty":"OKP","crv":"Ed25519","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseJWKS(data)
		if (err == nil) != (len(keys) > 0) {
			t.Fatalf("ParseJWKS returned %d keys and error %v; want keys exactly when there is no error", len(keys), err)
		}
		if err != nil && !errors.Is(err, ErrMalformedJWKS) && !errors.Is(err, ErrNoUsableKeys) {
			t.Fatalf("ParseJWKS error %v is neither ErrMalformedJWKS nor ErrNoUsableKeys", err)
		}
		for i, k := range keys {
			if len(k) != ed25519.PublicKeySize {
				t.Fatalf("key %d is %d bytes, want %d", i, len(k), ed25519.PublicKeySize)
			}
			for _, prev := range keys[:i] {
				if prev.Equal(k) {
					t.Fatalf("key %x returned twice", k)
				}
			}
		}
	})
}

// The cache.
//
// The cache tests use only the public surface: VerifySignature (directly
// or through a Verifier), Refresh, the Observer and a faltest.KeyServer.
// They do not sleep: the clock is a testClock, a hanging key server is one
// held with Hold, and a background fetch is waited for through the
// Observer, which a JWKS calls before the fetch's waiters wake. Only
// TestJWKSFetchTimeout waits, for a 100 ms FetchTimeout.

// jwksContext returns a context for one test's calls, bounded so that a
// cache that hangs fails the test rather than the whole run.
func jwksContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// jwksCtxKey keys a context value that a fetch must carry to the Observer.
type jwksCtxKey struct{}

// jwksObserver is an Observer recording every JWKS fetch, and the
// jwksCtxKey value of the context it was told about it with.
type jwksObserver struct {
	mu      sync.Mutex // guards the fields below
	fetches []FetchInfo
	values  []any         // ctx.Value(jwksCtxKey{}) of each fetch
	changed chan struct{} // closed and replaced when a fetch is recorded
}

func newJWKSObserver() *jwksObserver { return &jwksObserver{changed: make(chan struct{})} }

func (*jwksObserver) ObserveDelivery(context.Context, DeliveryInfo) {}

func (o *jwksObserver) ObserveFetch(ctx context.Context, f FetchInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fetches = append(o.fetches, f)
	o.values = append(o.values, ctx.Value(jwksCtxKey{}))
	close(o.changed)
	o.changed = make(chan struct{})
}

// seen returns the fetches observed so far, in the order they finished.
func (o *jwksObserver) seen() []FetchInfo {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.fetches)
}

// wait waits, for at most 10 seconds, until n fetches have finished, and
// returns all the fetches observed.
func (o *jwksObserver) wait(t *testing.T, n int) []FetchInfo {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		o.mu.Lock()
		got, changed := slices.Clone(o.fetches), o.changed
		o.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("waited 10s for %d JWKS fetches to finish; %d did", n, len(got))
		}
	}
}

// nth waits for the n-th fetch (counting from 1) to finish and returns it.
func (o *jwksObserver) nth(t *testing.T, n int) FetchInfo {
	t.Helper()
	return o.wait(t, n)[n-1]
}

// jwksEnv is a JWKS of a key server's keys, reading a test clock and
// telling an observer about its fetches, and a Verifier over it with the
// same clock.
type jwksEnv struct {
	ks    *faltest.KeyServer
	clock *testClock
	obs   *jwksObserver
	j     *JWKS
	v     *Verifier
}

// newJWKSEnv starts a key server publishing signers and returns an env
// over it; configure, if not nil, adjusts e.j before first use. At
// cleanup the env checks that the test left no fetch running (quiesce).
func newJWKSEnv(t *testing.T, configure func(e *jwksEnv), signers ...*faltest.Signer) *jwksEnv {
	t.Helper()
	ks := faltest.NewKeyServer(signers...)
	t.Cleanup(ks.Close)
	e := &jwksEnv{ks: ks, clock: newTestClock(), obs: newJWKSObserver()}
	e.j = &JWKS{URL: ks.URL, Client: ks.Client(), Clock: e.clock.Now, Observer: e.obs}
	if configure != nil {
		configure(e)
	}
	e.v = NewVerifier(WithKeys(e.j), WithClock(e.clock.Now))
	t.Cleanup(func() { e.quiesce(t) }) // runs before ks.Close and after the test's own cleanups
	return e
}

// quiesce checks, at the end of a test, that no fetch was left running: it
// moves the clock on by a nanosecond and forces a fetch, which joins a fetch
// still in flight instead of starting its own, so that the last fetch
// observed would then have started earlier. It also checks that the key
// server received exactly the fetches the observer was told about.
func (e *jwksEnv) quiesce(t *testing.T) {
	if t.Failed() {
		return
	}
	e.clock.Advance(time.Nanosecond)
	at := e.clock.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.j.Refresh(ctx) // the key server may be failing on purpose
	fetches := e.obs.seen()
	if len(fetches) == 0 {
		t.Errorf("at the end of the test, Refresh returned without a fetch being observed")
		return
	}
	if last := fetches[len(fetches)-1]; !last.Start.Equal(at) {
		t.Errorf("a JWKS fetch started at %v was still running at the end of the test", last.Start)
	}
	if got := e.ks.Fetches(); got != len(fetches) {
		t.Errorf("the key server received %d fetches, the observer was told about %d", got, len(fetches))
	}
}

// wantFetches waits for n fetches to finish and checks that the key server
// received exactly n and that no more finished.
func (e *jwksEnv) wantFetches(t *testing.T, n int, when string) {
	t.Helper()
	got := e.obs.wait(t, n)
	if len(got) != n || e.ks.Fetches() != n {
		t.Fatalf("%s: %d JWKS fetches finished and the key server received %d; want %d", when, len(got), e.ks.Fetches(), n)
	}
}

// deliver verifies, through e.v, a delivery s signed at e's now.
func (e *jwksEnv) deliver(ctx context.Context, s *faltest.Signer) error {
	h, body := jwksDelivery(s, e.clock)
	_, err := e.v.Verify(ctx, h, body)
	return err
}

// verifySig verifies, directly with e.j, a message s signed.
func (e *jwksEnv) verifySig(ctx context.Context, s *faltest.Signer) error {
	return jwksVerifyDirect(ctx, e.j, s)
}

// jwksVerifyDirect verifies, directly with j, a message s signed.
func jwksVerifyDirect(ctx context.Context, j *JWKS, s *faltest.Signer) error {
	msg, sig := jwksSigned(s)
	return j.VerifySignature(ctx, msg, sig)
}

// jwksSigned returns a message and s's signature of it.
func jwksSigned(s *faltest.Signer) (msg, sig []byte) {
	msg = []byte("a message signed by " + s.KeyID())
	return msg, s.SignMessage(msg)
}

// jwksDelivery returns the headers and body of a delivery s signed at
// clock's now.
func jwksDelivery(s *faltest.Signer, clock *testClock) (http.Header, []byte) {
	body := faltest.OKBody("5057fca7-2eb3-468f-b95d-cefe92b0b9d4", map[string]any{"seed": 42})
	h := http.Header{}
	s.Sign(faltest.Delivery{Time: clock.Now(), Body: body}).Set(h)
	return h, body
}

// jwksCheapForgery returns a copy of h whose signature is well-formed (128
// hex digits) but has an out-of-range S, which ed25519.Verify rejects
// before any curve arithmetic: for floods, where only the cache's
// handling of a signature no key verifies matters.
func jwksCheapForgery(h http.Header) http.Header {
	f := h.Clone()
	sig := f.Get(HeaderSignature)
	f.Set(HeaderSignature, sig[:64]+strings.Repeat("f", 64))
	return f
}

// jwksHold holds ks's requests and returns an idempotent release, also run
// at cleanup so that no handler outlives the test.
func jwksHold(t *testing.T, ks *faltest.KeyServer) (release func()) {
	t.Helper()
	release = sync.OnceFunc(ks.Hold())
	t.Cleanup(release)
	return release
}

// jwksWaitFetches waits until ks has received n fetches (which may still be
// held).
func jwksWaitFetches(t *testing.T, ks *faltest.KeyServer, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ks.WaitFetches(ctx, n); err != nil {
		t.Fatalf("the key server never received %d fetches (it received %d): %v", n, ks.Fetches(), err)
	}
}

// jwksWaitCtx is a context that calls onWait each time its Done method is
// called. In this package only a caller waiting for a JWKS fetch calls
// Done (a fetch keeps its caller's values, not its cancellation), so
// onWait tells which callers wait for a fetch, and when they start to.
type jwksWaitCtx struct {
	context.Context
	onWait func()
}

func (c jwksWaitCtx) Done() <-chan struct{} {
	c.onWait()
	return c.Context.Done()
}

// jwksWaiters starts n calls of call, each with its own jwksWaitCtx over
// ctx, and returns once every one of them waits for a fetch; a call that
// returns first fails the test with why. The results arrive on the returned
// channel.
func jwksWaiters(t *testing.T, ctx context.Context, n int, why string, call func(ctx context.Context) error) <-chan error {
	t.Helper()
	waiting := make(chan struct{}, n)
	results := make(chan error, n)
	for range n {
		wctx := jwksWaitCtx{ctx, sync.OnceFunc(func() { waiting <- struct{}{} })}
		go func() { results <- call(wctx) }()
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i := range n {
		select {
		case <-waiting:
		case err := <-results:
			t.Fatalf("%s: a call returned (error %v) instead of waiting for the fetch in flight", why, err)
		case <-timeout.C:
			t.Fatalf("%s: after 10s only %d of %d calls wait for the fetch", why, i, n)
		}
	}
	return results
}

// jwksRoundTripper adapts a function to http.RoundTripper.
type jwksRoundTripper func(*http.Request) (*http.Response, error)

func (f jwksRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// jwksEditResponses returns a client sending its requests through c's
// transport and letting edit change each response before the JWKS sees it.
func jwksEditResponses(c *http.Client, edit func(*http.Response)) *http.Client {
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	return &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
		resp, err := base.RoundTrip(r)
		if err == nil {
			edit(resp)
		}
		return resp, err
	})}
}

// jwksNoNetwork returns a client whose transport fails the test if called.
func jwksNoNetwork(t *testing.T) *http.Client {
	return &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
		t.Errorf("JWKS fetch sent a request to %s; want it refused before any network use", r.URL)
		return nil, errors.New("test transport: no network")
	})}
}

// jwksDocOfSize returns a JWKS document holding s's key padded to exactly n
// bytes.
func jwksDocOfSize(s *faltest.Signer, n int) []byte {
	head := `{"keys":[` + string(s.JWK()) + `],"pad":"`
	const tail = `"}`
	return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
}

func TestJWKSColdCacheFetchesOnce(t *testing.T) {
	const n = 200
	signer := faltest.SignerFromName("cold")
	tests := []struct {
		name string
		call func(ctx context.Context, e *jwksEnv) error
	}{
		{"VerifySignature", func(ctx context.Context, e *jwksEnv) error { return e.verifySig(ctx, signer) }},
		{"Verifier.Verify", func(ctx context.Context, e *jwksEnv) error { return e.deliver(ctx, signer) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWKSEnv(t, nil, signer)
			release := jwksHold(t, e.ks)
			ctx := jwksContext(t)

			// The server answers only once all n callers wait.
			results := jwksWaiters(t, ctx, n, "cold cache", func(ctx context.Context) error { return tt.call(ctx, e) })
			release()
			for range n {
				if err := <-results; err != nil {
					t.Errorf("concurrent caller on a cold cache: %v", err)
				}
			}
			e.wantFetches(t, 1, fmt.Sprintf("%d concurrent callers on a cold cache", n))
			if f := e.obs.seen()[0]; f.Err != nil || f.Keys != 1 {
				t.Errorf("the shared fetch: %d keys, error %v; want 1 key", f.Keys, f.Err)
			}
		})
	}
}

func TestJWKSTTLExpiryRefetchesOnce(t *testing.T) {
	const n = 50
	signer := faltest.SignerFromName("ttl")
	e := newJWKSEnv(t, nil, signer)
	ctx := jwksContext(t)

	start := e.clock.Now()
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatal(err)
	}
	if f := e.obs.nth(t, 1); !f.Start.Equal(start) || !f.Expiry.Equal(start.Add(time.Hour)) {
		t.Errorf("first fetch: Start %v, Expiry %v; want %v and an hour later", f.Start, f.Expiry, start)
	}
	e.clock.Advance(time.Hour - time.Second)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatal(err)
	}
	e.wantFetches(t, 1, "one second before the keys expire")

	// At expiry, deliveries keep verifying with the expired keys while one
	// refetch runs in the background: none waits for it, although the key
	// server hangs. A watcher releases the server if one does, so that the
	// test fails at once rather than at the deadline.
	e.clock.Advance(time.Second)
	refetch := e.clock.Now()
	release := jwksHold(t, e.ks)
	var waited atomic.Int32
	wctx := jwksWaitCtx{ctx, func() { waited.Add(1); release() }}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if err := e.deliver(wctx, signer); err != nil {
				t.Errorf("delivery while the keys are refetched: %v", err)
			}
		})
	}
	wg.Wait()
	if w := waited.Load(); w != 0 {
		t.Errorf("%d of %d deliveries at expiry waited for the refetch; want the expired keys used meanwhile", w, n)
	}
	jwksWaitFetches(t, e.ks, 2)
	release()
	f := e.obs.nth(t, 2)
	if f.Err != nil || !f.Start.Equal(refetch) || !f.Expiry.Equal(refetch.Add(time.Hour)) {
		t.Errorf("refetch at expiry: Start %v, Expiry %v, error %v; want %v, an hour later, nil", f.Start, f.Expiry, f.Err, refetch)
	}
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatal(err)
	}
	e.wantFetches(t, 2, fmt.Sprintf("%d deliveries once the keys expired", n))
}

func TestJWKSCacheControl(t *testing.T) {
	tests := []struct {
		name         string
		cacheControl string      // of the key server's response
		header       http.Header // added to the response
		ttl          time.Duration
		want         time.Duration
	}{
		{name: "none", want: time.Hour},
		{name: "max-age=600", cacheControl: "max-age=600", want: 10 * time.Minute},
		{name: "max-age=60 raised to 5m", cacheControl: "max-age=60", want: 5 * time.Minute},
		{name: "max-age=0 raised to 5m", cacheControl: "max-age=0", want: 5 * time.Minute},
		{name: "max-age=300", cacheControl: "max-age=300", want: 5 * time.Minute},
		{name: "max-age=86400", cacheControl: "max-age=86400", want: 24 * time.Hour},
		{name: "max-age=100000 lowered to 24h", cacheControl: "max-age=100000", want: 24 * time.Hour},
		{name: "max-age whose nanoseconds overflow int64", cacheControl: "max-age=18446744074", want: 24 * time.Hour},
		{name: "among other directives", cacheControl: "public, max-age=7200", want: 2 * time.Hour},
		{name: "spaces", cacheControl: " public ,  max-age=7200 ", want: 2 * time.Hour},
		{name: "upper case", cacheControl: "Max-Age=7200", want: 2 * time.Hour},
		{name: "quoted", cacheControl: `max-age="7200"`, want: 2 * time.Hour},
		{name: "in a second header", cacheControl: "public", header: http.Header{"Cache-Control": {"max-age=7200"}}, want: 2 * time.Hour},
		{name: "no-store", cacheControl: "no-store", want: 5 * time.Minute},
		{name: "no-cache", cacheControl: "no-cache", want: 5 * time.Minute},
		{name: "NO-STORE", cacheControl: "NO-STORE", want: 5 * time.Minute},
		{name: "no-store after max-age", cacheControl: "max-age=3600, no-store", want: 5 * time.Minute},
		{name: "no-cache before max-age", cacheControl: "no-cache, max-age=3600", want: 5 * time.Minute},
		{name: "max-age garbage", cacheControl: "max-age=soon", want: time.Hour},
		{name: "max-age negative", cacheControl: "max-age=-60", want: time.Hour},
		{name: "max-age empty", cacheControl: "max-age=", want: time.Hour},
		{name: "max-age less Age", cacheControl: "max-age=3600", header: http.Header{"Age": {"600"}}, want: 50 * time.Minute},
		{name: "max-age less Age, lowered to 24h", cacheControl: "max-age=100000", header: http.Header{"Age": {"10000"}}, want: 24 * time.Hour},
		{name: "max-age less Age, under 24h", cacheControl: "max-age=86400", header: http.Header{"Age": {"3600"}}, want: 23 * time.Hour},
		{name: "Age equal to max-age", cacheControl: "max-age=3600", header: http.Header{"Age": {"3600"}}, want: 5 * time.Minute},
		{name: "Age beyond max-age", cacheControl: "max-age=3600", header: http.Header{"Age": {"7200"}}, want: 5 * time.Minute},
		{name: "Age garbage", cacheControl: "max-age=3600", header: http.Header{"Age": {"soon"}}, want: time.Hour},
		{name: "Age negative", cacheControl: "max-age=7200", header: http.Header{"Age": {"-600"}}, want: 2 * time.Hour},
		{name: "Age without max-age", header: http.Header{"Age": {"600"}}, want: time.Hour},
		{name: "max-age too large to hold: the largest", cacheControl: "max-age=99999999999999999999", want: 24 * time.Hour},
		{name: "Age too large to hold: the largest", cacheControl: "max-age=3600", header: http.Header{"Age": {"99999999999999999999"}}, want: 5 * time.Minute},
		{name: "TTL 2h", ttl: 2 * time.Hour, want: 2 * time.Hour},
		{name: "TTL 5m", ttl: 5 * time.Minute, want: 5 * time.Minute},
		{name: "TTL 24h", ttl: 24 * time.Hour, want: 24 * time.Hour},
		{name: "TTL 1m raised to 5m", ttl: time.Minute, want: 5 * time.Minute},
		{name: "TTL 1ns raised to 5m", ttl: time.Nanosecond, want: 5 * time.Minute},
		{name: "TTL negative raised to 5m", ttl: -time.Hour, want: 5 * time.Minute},
		{name: "TTL 48h lowered to 24h", ttl: 48 * time.Hour, want: 24 * time.Hour},
		{name: "max-age wins over TTL", cacheControl: "max-age=600", ttl: 2 * time.Hour, want: 10 * time.Minute},
		{name: "Age with TTL and no max-age", header: http.Header{"Age": {"600"}}, ttl: 2 * time.Hour, want: 2 * time.Hour},
		{name: "garbage max-age with TTL", cacheControl: "max-age=soon", ttl: 2 * time.Hour, want: 2 * time.Hour},
	}
	signer := faltest.SignerFromName("cc")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWKSEnv(t, func(e *jwksEnv) {
				e.j.TTL = tt.ttl
				e.j.Client = jwksEditResponses(e.ks.Client(), func(resp *http.Response) {
					for k, vs := range tt.header {
						for _, v := range vs {
							resp.Header.Add(k, v)
						}
					}
				})
			}, signer)
			e.ks.SetCacheControl(tt.cacheControl)
			ctx := jwksContext(t)
			if err := e.verifySig(ctx, signer); err != nil {
				t.Fatal(err)
			}
			if f := e.obs.nth(t, 1); f.Expiry.Sub(f.Start) != tt.want {
				t.Errorf("Cache-Control %q, %v, TTL %v: keys live %v, want %v", tt.cacheControl, tt.header, tt.ttl, f.Expiry.Sub(f.Start), tt.want)
			}

			// They serve until then without a fetch, and are refetched at
			// expiry.
			e.clock.Advance(tt.want - time.Second)
			if err := e.verifySig(ctx, signer); err != nil {
				t.Fatal(err)
			}
			e.wantFetches(t, 1, "one second before expiry")
			e.clock.Advance(time.Second)
			if err := e.verifySig(ctx, signer); err != nil {
				t.Fatal(err)
			}
			e.wantFetches(t, 2, "at expiry")
		})
	}
}

func TestJWKSRotation(t *testing.T) {
	oldKey, newKey := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	e := newJWKSEnv(t, nil, oldKey)
	ctx := jwksContext(t)

	if err := e.deliver(ctx, oldKey); err != nil {
		t.Fatalf("delivery signed by the published key: %v", err)
	}

	// fal adds a key. Inside the cooldown after the first fetch, a delivery
	// signed with it cannot cause a fetch.
	e.ks.SetSigners(oldKey, newKey)
	if err := e.deliver(ctx, newKey); !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("new key inside the cooldown: error = %v, want only ErrSignatureMismatch", err)
	}
	e.wantFetches(t, 1, "new key inside the cooldown")

	// After the cooldown, one refetch picks it up.
	e.clock.Advance(time.Minute)
	if err := e.deliver(ctx, newKey); err != nil {
		t.Fatalf("new key after the cooldown: %v; want a refetch to pick it up", err)
	}
	e.wantFetches(t, 2, "new key after the cooldown")
	for _, s := range []*faltest.Signer{oldKey, newKey} {
		if err := e.deliver(ctx, s); err != nil {
			t.Errorf("key %s stopped verifying while published: %v", s.KeyID(), err)
		}
	}
	e.wantFetches(t, 2, "both keys published")

	// fal removes the old key. It keeps verifying until the cached set is
	// replaced: at expiry the first delivery is checked against the expired
	// set while the refetch runs (held here, so that it cannot win the race).
	e.ks.SetSigners(newKey)
	if err := e.deliver(ctx, oldKey); err != nil {
		t.Errorf("removed key stopped verifying before the keys expired: %v", err)
	}
	e.clock.Advance(time.Hour)
	release := jwksHold(t, e.ks)
	if err := e.deliver(ctx, oldKey); err != nil {
		t.Errorf("delivery while the expired keys are refetched: %v", err)
	}
	jwksWaitFetches(t, e.ks, 3)
	release()
	if f := e.obs.nth(t, 3); f.Err != nil || f.Keys != 1 {
		t.Fatalf("refetch at expiry: %d keys, error %v; want 1 key", f.Keys, f.Err)
	}
	if err := e.deliver(ctx, oldKey); !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("removed key after the key set was replaced: error = %v, want only ErrSignatureMismatch", err)
	}
	if err := e.deliver(ctx, newKey); err != nil {
		t.Errorf("current key stopped verifying: %v", err)
	}
	e.wantFetches(t, 3, "after the old key was removed")

	// A refetch caused by the removed key does not bring it back.
	e.clock.Advance(time.Minute)
	if err := e.deliver(ctx, oldKey); !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("removed key after a refetch on mismatch: error = %v, want only ErrSignatureMismatch", err)
	}
	e.wantFetches(t, 4, "removed key after the cooldown")
}

// A signature no cached key verifies, while a fetch is in flight, waits for
// that fetch and is checked against the keys it brings, even inside the
// cooldown.
func TestJWKSMismatchJoinsFetchInFlight(t *testing.T) {
	const n = 20
	oldKey, newKey := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	e := newJWKSEnv(t, nil, oldKey)
	ctx := jwksContext(t)
	if err := e.verifySig(ctx, oldKey); err != nil {
		t.Fatal(err)
	}

	e.ks.SetSigners(oldKey, newKey)
	e.clock.Advance(time.Minute)
	release := jwksHold(t, e.ks)
	first := make(chan error, 1)
	go func() { first <- e.verifySig(ctx, newKey) }()
	jwksWaitFetches(t, e.ks, 2)

	// Inside the cooldown of that refetch, more signatures by the new key
	// arrive: they must join it rather than fail at once.
	results := jwksWaiters(t, ctx, n, "new key during the refetch", func(ctx context.Context) error { return e.verifySig(ctx, newKey) })
	release()
	if err := <-first; err != nil {
		t.Errorf("the signature that caused the refetch: %v", err)
	}
	for range n {
		if err := <-results; err != nil {
			t.Errorf("a signature that joined the refetch bringing its key: %v", err)
		}
	}
	e.wantFetches(t, 2, "new key during the refetch")
}

// jwksTrapClock is a clock whose reads can be stopped: trap makes one read
// block until released.
type jwksTrapClock struct {
	clock *testClock

	mu      sync.Mutex    // guards the fields below
	reads   int           // reads to let through before the trap; -1: no trap
	trapped chan struct{} // closed when the trap catches a read
	gate    chan struct{} // closed to let it go
}

// trap makes the n-th read from now (counting from 1) block until release
// is called; trapped is closed when it does.
func (c *jwksTrapClock) trap(n int) (trapped <-chan struct{}, release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads, c.trapped, c.gate = n-1, make(chan struct{}), make(chan struct{})
	return c.trapped, sync.OnceFunc(func() { close(c.gate) })
}

func (c *jwksTrapClock) Now() time.Time {
	c.mu.Lock()
	var trapped, gate chan struct{}
	switch {
	case c.reads == 0:
		trapped, gate = c.trapped, c.gate
		c.reads = -1
	case c.reads > 0:
		c.reads--
	}
	c.mu.Unlock()
	if gate != nil {
		close(trapped)
		<-gate
	}
	return c.clock.Now()
}

// A signature the cached keys do not verify is checked against the keys a
// fetch that finished meanwhile brought, without a fetch of its own.
func TestJWKSMismatchUsesKeysAFetchBroughtMeanwhile(t *testing.T) {
	oldKey, newKey := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	trap := &jwksTrapClock{reads: -1}
	e := newJWKSEnv(t, func(e *jwksEnv) {
		trap.clock = e.clock
		e.j.Clock = trap.Now
	}, oldKey)
	ctx := jwksContext(t)
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	e.ks.SetSigners(oldKey, newKey)

	// VerifySignature reads its clock to look the keys up, and again once
	// none of them verifies the signature: stop it there.
	trapped, releaseClock := trap.trap(2)
	t.Cleanup(releaseClock)
	res := make(chan error, 1)
	go func() { res <- e.verifySig(ctx, newKey) }()
	select {
	case <-trapped:
	case err := <-res:
		t.Fatalf("VerifySignature returned %v without reading the clock twice; this test needs it to read the clock after the cached keys fail", err)
	case <-ctx.Done():
		t.Fatal("VerifySignature never read the clock a second time")
	}

	// Meanwhile a fetch brings the new key, and restarts the cooldown.
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	releaseClock()
	if err := <-res; err != nil {
		t.Errorf("signature by a key a fetch brought while it was checked: %v", err)
	}
	e.wantFetches(t, 2, "a fetch during the check")
}

func TestJWKSRefreshOnMismatchCooldown(t *testing.T) {
	const (
		n       = 10_000
		workers = 8
		joiners = 100
	)
	published, forger := faltest.SignerFromName("published"), faltest.SignerFromName("forger")
	e := newJWKSEnv(t, nil, published)
	ctx := jwksContext(t)
	if err := e.deliver(ctx, published); err != nil {
		t.Fatal(err)
	}

	// wantForged checks the answer to a forged delivery.
	wantForged := func(t *testing.T, err error) bool {
		t.Helper()
		if !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
			t.Errorf("forged delivery: error = %v, want only ErrSignatureMismatch", err)
			return false
		}
		return true
	}
	// flood sends count forged deliveries, signed at the current time, from
	// several goroutines with ctx: one in a hundred signed by forger, the
	// others cheap forgeries.
	flood := func(t *testing.T, ctx context.Context, count int) {
		t.Helper()
		h, body := jwksDelivery(forger, e.clock)
		cheap := jwksCheapForgery(h)
		var bad atomic.Int32
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < count; i += workers {
					hi := cheap
					if i%100 == 0 {
						hi = h
					}
					_, err := e.v.Verify(ctx, hi, body)
					if (!errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable)) && bad.Add(1) <= 3 {
						t.Errorf("forged delivery %d: error = %v, want only ErrSignatureMismatch", i, err)
					}
				}
			})
		}
		wg.Wait()
	}

	// After the cooldown, a concurrent flood refetches exactly once: the
	// first mismatch fetches, those during the fetch join it, the rest fall
	// inside the new cooldown.
	e.clock.Advance(time.Minute)
	flood(t, ctx, n)
	e.wantFetches(t, 2, "10,000 concurrent forged deliveries after the cooldown")

	// After the next cooldown the first forged delivery refetches. Inside
	// that fetch's cooldown the others are answered at once: none waits for
	// a fetch, and the key server is held, so one that fetched would hang.
	// A watcher releases the server if it is reached, to fail at once.
	e.clock.Advance(time.Minute)
	wantForged(t, e.deliver(ctx, forger))
	e.wantFetches(t, 3, "the first forged delivery after the next cooldown")
	release := jwksHold(t, e.ks)
	watch, stopWatch := context.WithCancel(ctx)
	go func() {
		if e.ks.WaitFetches(watch, 4) == nil {
			release()
		}
	}()
	var waited atomic.Int32
	flood(t, jwksWaitCtx{ctx, func() { waited.Add(1) }}, n-1)
	stopWatch()
	release()
	if w := waited.Load(); w != 0 {
		t.Errorf("%d forged deliveries inside the cooldown waited for a fetch; want each answered at once", w)
	}
	e.wantFetches(t, 3, "9,999 forged deliveries inside the cooldown")

	// After the next cooldown, forged deliveries that arrive while the
	// refetch is in flight join it: they wait for it and then fail,
	// without a fetch of their own.
	e.clock.Advance(time.Minute)
	release = jwksHold(t, e.ks)
	first := make(chan error, 1)
	go func() { first <- e.deliver(ctx, forger) }()
	jwksWaitFetches(t, e.ks, 4)
	results := jwksWaiters(t, ctx, joiners, "forged delivery during a refetch", func(ctx context.Context) error { return e.deliver(ctx, forger) })
	release()
	wantForged(t, <-first)
	for range joiners {
		if !wantForged(t, <-results) {
			break
		}
	}
	e.wantFetches(t, 4, "forged deliveries during a refetch")

	// The published key kept verifying throughout.
	if err := e.deliver(ctx, published); err != nil {
		t.Errorf("published key stopped verifying after the floods: %v", err)
	}
	e.wantFetches(t, 4, "the published key after the floods")
}

// When the refetch caused by a mismatch fails, the delivery may be signed
// by a key that could not be fetched: the error is also ErrKeysUnavailable
// (503, so fal retries).
func TestJWKSMismatchRefetchFails(t *testing.T) {
	oldKey, newKey := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	e := newJWKSEnv(t, nil, oldKey)
	ctx := jwksContext(t)
	if err := e.deliver(ctx, oldKey); err != nil {
		t.Fatal(err)
	}

	e.clock.Advance(time.Minute)
	e.ks.SetSigners(oldKey, newKey)
	e.ks.FailNext(1, http.StatusBadGateway)
	err := e.deliver(ctx, newKey)
	if !errors.Is(err, ErrSignatureMismatch) || !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("new key, refetch failed: error = %v, want both ErrSignatureMismatch and ErrKeysUnavailable", err)
	}
	if got := StatusCode(err); got != http.StatusServiceUnavailable {
		t.Errorf("new key, refetch failed: StatusCode = %d, want 503", got)
	}
	e.wantFetches(t, 2, "the failed refetch")
	if f := e.obs.seen()[1]; f.Err == nil {
		t.Errorf("the failed refetch was observed without an error")
	}

	// The cached keys are kept; inside the cooldown nothing is fetched.
	if err := e.deliver(ctx, oldKey); err != nil {
		t.Errorf("cached key after a failed refetch: %v", err)
	}
	if err := e.deliver(ctx, newKey); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("new key inside the cooldown after the failed refetch: error = %v, want ErrSignatureMismatch", err)
	}
	e.wantFetches(t, 2, "inside the cooldown after the failed refetch")

	// After it, the server is back and the new key verifies.
	e.clock.Advance(time.Minute)
	if err := e.deliver(ctx, newKey); err != nil {
		t.Errorf("new key after the cooldown, server back: %v", err)
	}
	e.wantFetches(t, 3, "after the cooldown")
}

func TestJWKSServesStaleKeysWhileServerDown(t *testing.T) {
	signer := faltest.SignerFromName("stale")
	e := newJWKSEnv(t, nil, signer)
	ctx := jwksContext(t)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatal(err)
	}
	expiry := e.obs.nth(t, 1).Expiry

	// At expiry, with the server down, the expired keys serve while the
	// refetch fails in the background.
	e.ks.FailNext(1000, http.StatusServiceUnavailable)
	e.clock.Advance(time.Hour)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatalf("server down at expiry: %v; want the expired keys to serve", err)
	}
	if f := e.obs.nth(t, 2); f.Err == nil {
		t.Fatalf("refetch from a failing server succeeded")
	}
	e.wantFetches(t, 2, "server down at expiry")

	// Inside the cooldown after the failure: served, without a fetch.
	e.clock.Advance(30 * time.Second)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatalf("server down, inside the cooldown: %v", err)
	}
	e.wantFetches(t, 2, "server down, inside the cooldown")

	// Up to the max-stale bound (24 hours past expiry by default): one
	// second before it, past the cooldown, served while another refetch
	// fails.
	e.clock.Advance(24*time.Hour - 30*time.Second - time.Second)
	if !e.clock.Now().Equal(expiry.Add(24*time.Hour - time.Second)) {
		t.Fatalf("test bug: now is %v, want a second before %v", e.clock.Now(), expiry.Add(24*time.Hour))
	}
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatalf("server down, one second before the max-stale bound: %v", err)
	}
	e.obs.nth(t, 3)
	e.wantFetches(t, 3, "server down, just before the max-stale bound")

	// At the bound, inside the cooldown: the keys are too old.
	e.clock.Advance(time.Second)
	err := e.deliver(ctx, signer)
	if !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("server down at the max-stale bound: error = %v, want only ErrKeysUnavailable", err)
	}
	e.wantFetches(t, 3, "at the max-stale bound, inside the cooldown")

	// Past the bound and the cooldown: the delivery waits for the fetch,
	// which fails.
	e.clock.Advance(time.Minute)
	if err := e.deliver(ctx, signer); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("server down past the max-stale bound: error = %v, want ErrKeysUnavailable", err)
	}
	e.wantFetches(t, 4, "past the max-stale bound and the cooldown")

	// The server is back: after the cooldown, the delivery waits for the
	// fetch and verifies.
	e.ks.FailNext(0, http.StatusServiceUnavailable)
	e.clock.Advance(time.Minute)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatalf("server back after the cooldown: %v", err)
	}
	e.wantFetches(t, 5, "server back")
	if f := e.obs.seen()[4]; f.Err != nil || !f.Expiry.Equal(e.clock.Now().Add(time.Hour)) {
		t.Errorf("fetch once the server is back: Expiry %v, error %v; want an hour from now", f.Expiry, f.Err)
	}
}

func TestJWKSMaxStale(t *testing.T) {
	tests := []struct {
		name     string
		maxStale time.Duration
		bound    time.Duration // how long past expiry the keys serve
	}{
		{"zero means 24h", 0, 24 * time.Hour},
		{"2h", 2 * time.Hour, 2 * time.Hour},
		{"24h", 24 * time.Hour, 24 * time.Hour},
		{"48h lowered to 24h", 48 * time.Hour, 24 * time.Hour},
		{"negative turns it off", -time.Nanosecond, 0},
		{"-1h turns it off", -time.Hour, 0},
	}
	signer := faltest.SignerFromName("maxstale")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWKSEnv(t, func(e *jwksEnv) { e.j.MaxStale = tt.maxStale }, signer)
			ctx := jwksContext(t)
			if err := e.verifySig(ctx, signer); err != nil {
				t.Fatal(err)
			}
			e.ks.FailNext(1000, http.StatusServiceUnavailable)
			if tt.bound > 0 {
				e.clock.Advance(time.Hour + tt.bound - time.Second)
				if err := e.verifySig(ctx, signer); err != nil {
					t.Fatalf("server down, a second before expiry + %v: %v; want the expired keys to serve", tt.bound, err)
				}
				e.wantFetches(t, 2, "a second before the bound")
				e.clock.Advance(time.Second)
			} else {
				e.clock.Advance(time.Hour)
			}
			if err := e.verifySig(ctx, signer); !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrSignatureMismatch) {
				t.Fatalf("server down, at expiry + %v: error = %v, want only ErrKeysUnavailable", tt.bound, err)
			}
			e.wantFetches(t, 2, "at the bound")
		})
	}
}

func TestJWKSFirstFetchFails(t *testing.T) {
	signer := faltest.SignerFromName("first")
	e := newJWKSEnv(t, nil, signer)
	e.ks.FailNext(1, http.StatusInternalServerError)
	ctx := jwksContext(t)

	if err := e.deliver(ctx, signer); !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("first fetch failed: error = %v, want only ErrKeysUnavailable", err)
	}
	e.wantFetches(t, 1, "the first fetch failed")

	// The failure is not cached for good, but the next fetch waits for the
	// cooldown.
	e.clock.Advance(time.Minute - time.Second)
	if err := e.deliver(ctx, signer); !errors.Is(err, ErrKeysUnavailable) || errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("inside the cooldown after a failed first fetch: error = %v, want only ErrKeysUnavailable", err)
	}
	if err := e.verifySig(ctx, faltest.SignerFromName("forger")); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("forged signature inside the cooldown, no keys: error = %v, want ErrKeysUnavailable", err)
	}
	e.wantFetches(t, 1, "inside the cooldown after a failed first fetch")

	e.clock.Advance(time.Second)
	if err := e.deliver(ctx, signer); err != nil {
		t.Fatalf("server recovered, cooldown over: %v", err)
	}
	e.wantFetches(t, 2, "after the cooldown")
}

// A successful fetch ends the cooldown after a failed one: keys that expire
// inside that cooldown (a cooldown longer than the TTL) are fetched at once.
func TestJWKSSuccessEndsFailureCooldown(t *testing.T) {
	signer := faltest.SignerFromName("recover")
	e := newJWKSEnv(t, func(e *jwksEnv) {
		e.j.Cooldown = 10 * time.Minute
		e.j.TTL = 5 * time.Minute
		e.j.MaxStale = -1
	}, signer)
	ctx := jwksContext(t)
	e.ks.FailNext(1, http.StatusInternalServerError)
	if err := e.j.Refresh(ctx); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Refresh from a failing server: error = %v, want ErrKeysUnavailable", err)
	}
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatalf("Refresh once the server is back: %v", err)
	}
	e.clock.Advance(5 * time.Minute)
	if err := e.verifySig(ctx, signer); err != nil {
		t.Fatalf("keys expired inside the cooldown of a failure that a success followed: %v; want them fetched", err)
	}
	e.wantFetches(t, 3, "a failure, a success, then expiry")
}

func TestJWKSFetchErrors(t *testing.T) {
	signer := faltest.SignerFromName("errors")
	failNext := func(code int) func(ks *faltest.KeyServer) {
		return func(ks *faltest.KeyServer) { ks.FailNext(1, code) }
	}
	serve := func(doc []byte, contentType string) func(ks *faltest.KeyServer) {
		return func(ks *faltest.KeyServer) { ks.SetDocument(doc, contentType) }
	}
	withStatus := func(code int) func(e *jwksEnv) {
		return func(e *jwksEnv) {
			e.j.Client = jwksEditResponses(e.ks.Client(), func(resp *http.Response) { resp.StatusCode = code })
		}
	}
	const js = "application/json"
	tests := []struct {
		name      string
		configure func(e *jwksEnv)
		setup     func(ks *faltest.KeyServer)
		inner     error // the fetch error's sentinel, if any
	}{
		{name: "status 500", setup: failNext(http.StatusInternalServerError)},
		{name: "status 404", setup: failNext(http.StatusNotFound)},
		{name: "status 503", setup: failNext(http.StatusServiceUnavailable)},
		{name: "status 203 with a valid document", configure: withStatus(http.StatusNonAuthoritativeInfo)},
		{name: "status 500 with a valid document", configure: withStatus(http.StatusInternalServerError)},
		{name: "transport error", configure: func(e *jwksEnv) {
			// The request reaches the server; its answer is lost.
			base := e.ks.Client().Transport
			e.j.Client = &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
				if resp, err := base.RoundTrip(r); err == nil {
					resp.Body.Close()
				}
				return nil, errors.New("test transport: connection reset")
			})}
		}},
		{name: "HTML error page with status 200", setup: serve(jwksFixture(t, "not_json.txt"), "text/html"), inner: ErrMalformedJWKS},
		{name: "empty body", setup: serve(nil, js), inner: ErrMalformedJWKS},
		{name: "keys not an array", setup: serve(jwksFixture(t, "keys_not_array.json"), js), inner: ErrMalformedJWKS},
		{name: "2 MiB document", setup: serve(jwksDocOfSize(signer, 2<<20), js), inner: ErrMalformedJWKS},
		{name: "one byte over 1 MiB", setup: serve(jwksDocOfSize(signer, 1<<20+1), js), inner: ErrMalformedJWKS},
		{name: "1 MiB document then a newline", setup: serve(append(jwksDocOfSize(signer, 1<<20), '\n'), js), inner: ErrMalformedJWKS},
		{name: "zero usable keys", setup: serve(jwksFixture(t, "use_enc.json"), js), inner: ErrNoUsableKeys},
		{name: "empty key set", setup: func(ks *faltest.KeyServer) { ks.SetSigners() }, inner: ErrNoUsableKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWKSEnv(t, tt.configure, signer)
			if tt.setup != nil {
				tt.setup(e.ks)
			}
			ctx := jwksContext(t)
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrKeysUnavailable) {
					t.Errorf("%s: error = %v, want ErrKeysUnavailable", what, err)
				}
				for _, s := range []error{ErrMalformedJWKS, ErrNoUsableKeys, ErrSignatureMismatch} {
					if got, want := errors.Is(err, s), s == tt.inner; got != want {
						t.Errorf("%s: error = %v; matches %v: %v, want %v", what, err, s, got, want)
					}
				}
			}
			check("VerifySignature", e.verifySig(ctx, signer))
			f := e.obs.nth(t, 1)
			if f.Keys != 0 || !f.Expiry.IsZero() {
				t.Errorf("failed fetch observed as %+v, want no keys and no expiry", f)
			}
			if f.Err == nil || (tt.inner != nil && !errors.Is(f.Err, tt.inner)) {
				t.Errorf("failed fetch observed with error %v, want one matching %v", f.Err, tt.inner)
			}

			// Through a Verifier, inside the cooldown, the error keeps its
			// meaning (503, not 401) and nothing is fetched.
			err := e.deliver(ctx, signer)
			check("Verify", err)
			if got := StatusCode(err); got != http.StatusServiceUnavailable {
				t.Errorf("Verify: StatusCode = %d, want 503", got)
			}
			if got := len(e.obs.seen()); got != 1 {
				t.Errorf("%d fetches; want 1", got)
			}
			e.ks.SetSigners(signer) // a small document for the check at cleanup
		})
	}
}

func TestJWKSMaxSizeAccepted(t *testing.T) {
	signer := faltest.SignerFromName("size")
	e := newJWKSEnv(t, nil, signer)
	e.ks.SetDocument(jwksDocOfSize(signer, 1<<20), "application/json")
	if err := e.verifySig(jwksContext(t), signer); err != nil {
		t.Fatalf("document of exactly 1 MiB: %v", err)
	}
	e.wantFetches(t, 1, "a document of 1 MiB")
	e.ks.SetSigners(signer) // a small document for the check at cleanup
}

func TestJWKSFetchTimeout(t *testing.T) {
	signer := faltest.SignerFromName("timeout")
	e := newJWKSEnv(t, func(e *jwksEnv) { e.j.FetchTimeout = 100 * time.Millisecond }, signer)
	jwksHold(t, e.ks) // the server never answers
	ctx := jwksContext(t)

	err := e.verifySig(ctx, signer)
	if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging server: error = %v, want ErrKeysUnavailable and context.DeadlineExceeded", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the caller's deadline ended the fetch, not FetchTimeout")
	}
	if f := e.obs.nth(t, 1); !errors.Is(f.Err, context.DeadlineExceeded) {
		t.Errorf("timed-out fetch observed with error %v, want context.DeadlineExceeded", f.Err)
	}
	e.wantFetches(t, 1, "a timed-out fetch")
}

func TestJWKSWaiterCancelled(t *testing.T) {
	signer := faltest.SignerFromName("cancel")
	e := newJWKSEnv(t, nil, signer)
	release := jwksHold(t, e.ks)
	ctx := jwksContext(t)
	ctxA, cancelA := context.WithCancel(ctx)
	defer cancelA()

	resA := make(chan error, 1)
	go func() { resA <- e.verifySig(ctxA, signer) }()
	jwksWaitFetches(t, e.ks, 1)
	resB := jwksWaiters(t, ctx, 1, "a second caller", func(ctx context.Context) error { return e.verifySig(ctx, signer) })

	cancelA()
	select {
	case err := <-resA:
		if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter: error = %v, want ErrKeysUnavailable and context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled waiter did not return while the fetch hangs")
	}
	select {
	case err := <-resB:
		t.Fatalf("the other waiter returned %v before the fetch completed", err)
	default:
	}

	release()
	if err := <-resB; err != nil {
		t.Fatalf("the other waiter, once the shared fetch completed: %v", err)
	}
	e.wantFetches(t, 1, "one cancelled waiter and one patient one")
	if f := e.obs.seen()[0]; f.Err != nil || f.Keys != 1 {
		t.Errorf("the cancelled waiter failed the shared fetch: %d keys, error %v", f.Keys, f.Err)
	}
}

func TestJWKSContextCancelled(t *testing.T) {
	signer := faltest.SignerFromName("ctx")
	tests := []struct {
		name string
		call func(ctx context.Context, e *jwksEnv) error
	}{
		{"VerifySignature", func(ctx context.Context, e *jwksEnv) error { return e.verifySig(ctx, signer) }},
		{"Refresh", func(ctx context.Context, e *jwksEnv) error { return e.j.Refresh(ctx) }},
		{"Verifier.Verify", func(ctx context.Context, e *jwksEnv) error { return e.deliver(ctx, signer) }},
		{"Verifier.Refresh", func(ctx context.Context, e *jwksEnv) error { return e.v.Refresh(ctx) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWKSEnv(t, nil, signer)
			release := jwksHold(t, e.ks)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := tt.call(ctx, e)
			if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled ctx on a cold cache: error = %v, want ErrKeysUnavailable and context.Canceled", err)
			}

			// The fetch it started still completes and fills the cache.
			jwksWaitFetches(t, e.ks, 1)
			release()
			if f := e.obs.nth(t, 1); f.Err != nil || f.Keys != 1 {
				t.Fatalf("the abandoned fetch: %d keys, error %v; want it to complete", f.Keys, f.Err)
			}
			if err := e.verifySig(jwksContext(t), signer); err != nil {
				t.Fatalf("after the abandoned fetch completed: %v", err)
			}
			e.wantFetches(t, 1, "a cancelled caller, then a patient one")
		})
	}
}

func TestJWKSRefusesPlainHTTP(t *testing.T) {
	signer := faltest.SignerFromName("http")
	for _, u := range []string{
		"http://example.invalid/jwks",
		"HTTP://example.invalid/jwks",
		"http://rest.fal.ai/.well-known/jwks.json",
		"http://10.0.0.1/jwks",
		"http://169.254.169.254/latest/meta-data",
		"http://0.0.0.0/jwks",
		"http://[::]/jwks",
		"http://[::ffff:10.0.0.1]/jwks",
		"http://127.0.0.1.example.invalid/jwks",
		"http://localhost.example.invalid/jwks",
		"ftp://127.0.0.1/jwks",
		"file:///etc/passwd",
		"//example.invalid/jwks",
		"example.invalid/jwks",
		"",
		"https://[::1",
		"https://example.invalid/\x00",
	} {
		t.Run(u, func(t *testing.T) {
			clock, obs := newTestClock(), newJWKSObserver()
			j := &JWKS{URL: u, Client: jwksNoNetwork(t), Clock: clock.Now, Observer: obs}
			ctx := jwksContext(t)
			msg, sig := jwksSigned(signer)
			if err := j.VerifySignature(ctx, msg, sig); !errors.Is(err, ErrKeysUnavailable) {
				t.Errorf("VerifySignature with JWKS URL %q: error %v, want ErrKeysUnavailable", u, err)
			}
			if err := j.Refresh(ctx); !errors.Is(err, ErrKeysUnavailable) {
				t.Errorf("Refresh with JWKS URL %q: error %v, want ErrKeysUnavailable", u, err)
			}
			for _, f := range obs.seen() {
				if f.Err == nil || f.Keys != 0 {
					t.Errorf("fetch of %q observed as %+v, want a failure", u, f)
				}
			}
			v := NewVerifier(WithKeys(j), WithClock(clock.Now))
			h, body := jwksDelivery(signer, clock)
			if _, err := v.Verify(ctx, h, body); StatusCode(err) != http.StatusServiceUnavailable {
				t.Errorf("Verifier with JWKS URL %q: error %v, want a 503", u, err)
			}
		})
	}
}

// The scheme rule alone, with a transport that answers every request.
func TestJWKSAllowedURLs(t *testing.T) {
	signer := faltest.SignerFromName("allowed")
	for _, u := range []string{
		"https://rest.fal.ai/.well-known/jwks.json",
		"https://example.invalid:8443/jwks",
		"HTTPS://example.invalid/jwks",
		"http://localhost/jwks",
		"http://localhost:8080/jwks",
		"http://LocalHost:8080/jwks",
		"http://127.0.0.1/jwks",
		"http://127.9.9.9:1/jwks",
		"http://[::1]:1/jwks",
		"http://[::ffff:127.0.0.1]/jwks",
	} {
		t.Run(u, func(t *testing.T) {
			var calls atomic.Int32
			client := &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
				calls.Add(1)
				return &http.Response{
					StatusCode: http.StatusOK,
					Header:     http.Header{"Content-Type": {"application/json"}},
					Body:       io.NopCloser(bytes.NewReader(faltest.JWKS(signer))),
					Request:    r,
				}, nil
			})}
			j := &JWKS{URL: u, Client: client, Clock: newTestClock().Now}
			if err := jwksVerifyDirect(jwksContext(t), j, signer); err != nil {
				t.Errorf("JWKS URL %q: %v", u, err)
			}
			if got := calls.Load(); got != 1 {
				t.Errorf("JWKS URL %q: %d requests, want 1", u, got)
			}
		})
	}
}

func TestJWKSRedirects(t *testing.T) {
	signer := faltest.SignerFromName("redirect")
	var loops atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(faltest.JWKS(signer))
	})
	srv := httptest.NewServer(mux) // a KeyServer cannot redirect
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	redirect := func(path, to string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, to, http.StatusFound) })
	}
	redirect("/to-plain-http", "http://example.invalid/jwks")
	// 0.0.0.0 is not a loopback address, yet on Linux a connection to it
	// reaches this host: a redirect followed there would succeed.
	redirect("/to-any-address", fmt.Sprintf("http://0.0.0.0:%d/jwks", port))
	redirect("/to-ftp", "ftp://127.0.0.1/jwks")
	redirect("/to-loopback", "/jwks")
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		loops.Add(1)
		http.Redirect(w, r, "/loop", http.StatusFound)
	})

	// loopbackOnly returns a client that fails the test if it is sent
	// anywhere but a loopback address.
	loopbackOnly := func(t *testing.T) *http.Client {
		base := srv.Client().Transport
		return &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
			if ip := net.ParseIP(r.URL.Hostname()); ip == nil || !ip.IsLoopback() {
				t.Errorf("JWKS fetch followed a redirect to %s", r.URL)
				return nil, errors.New("test transport: non-loopback request")
			}
			return base.RoundTrip(r)
		})}
	}
	clients := []struct {
		name   string
		client func(t *testing.T) *http.Client
		loops  bool // its redirect policy stops a loop
	}{
		{"default client", func(*testing.T) *http.Client { return nil }, true},
		{"caller's client", loopbackOnly, true},
		{"caller's client with its own CheckRedirect", func(t *testing.T) *http.Client {
			c := loopbackOnly(t)
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return nil }
			return c
		}, false},
	}
	tests := []struct {
		path string
		ok   bool
	}{
		{"/to-plain-http", false},
		{"/to-any-address", false},
		{"/to-ftp", false},
		{"/to-loopback", true},
		{"/loop", false},
	}
	for _, c := range clients {
		for _, tt := range tests {
			if tt.path == "/loop" && !c.loops {
				continue
			}
			t.Run(c.name+tt.path, func(t *testing.T) {
				loops.Store(0)
				obs := newJWKSObserver()
				j := &JWKS{URL: srv.URL + tt.path, Client: c.client(t), Clock: newTestClock().Now, Observer: obs, FetchTimeout: 5 * time.Second}
				err := jwksVerifyDirect(jwksContext(t), j, signer)
				switch {
				case tt.ok && err != nil:
					t.Errorf("redirect to loopback http: %v", err)
				case !tt.ok && !errors.Is(err, ErrKeysUnavailable):
					t.Errorf("redirect refused? error = %v, want ErrKeysUnavailable", err)
				case !tt.ok && errors.Is(obs.nth(t, 1).Err, context.DeadlineExceeded):
					t.Errorf("redirect refused only by the fetch timeout: %v", err)
				}
				if tt.path == "/loop" {
					if got := loops.Load(); got != 5 {
						t.Errorf("redirect loop: %d requests, want 5 (the fifth redirect refused)", got)
					}
				}
			})
		}
	}

	// A caller's CheckRedirect is still applied after the scheme check.
	t.Run("caller's CheckRedirect refusing", func(t *testing.T) {
		c := loopbackOnly(t)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return errors.New("test: no redirects") }
		j := &JWKS{URL: srv.URL + "/to-loopback", Client: c, Clock: newTestClock().Now}
		if err := jwksVerifyDirect(jwksContext(t), j, signer); !errors.Is(err, ErrKeysUnavailable) {
			t.Errorf("redirect that the caller's CheckRedirect refuses: error = %v, want ErrKeysUnavailable", err)
		}
	})
}

func TestJWKSRefresh(t *testing.T) {
	a, b := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	e := newJWKSEnv(t, nil, a)
	ctx := jwksContext(t)

	// On a cold cache, Refresh loads the keys: verifying fetches nothing
	// more.
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatalf("Refresh on a cold cache: %v", err)
	}
	if err := e.verifySig(ctx, a); err != nil {
		t.Fatal(err)
	}
	e.wantFetches(t, 1, "Refresh warmed the cache")

	// With fresh keys and inside every cooldown, Refresh still fetches, and
	// replaces the whole key set: a removed key stops verifying.
	e.ks.SetSigners(b)
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.verifySig(ctx, b); err != nil {
		t.Errorf("new key after Refresh: %v", err)
	}
	if err := e.verifySig(ctx, a); !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("removed key after Refresh: error = %v, want only ErrSignatureMismatch", err)
	}
	e.wantFetches(t, 2, "Refresh of a fresh cache")

	// A failed Refresh reports ErrKeysUnavailable and keeps the cached keys.
	e.ks.FailNext(1, http.StatusBadGateway)
	if err := e.j.Refresh(ctx); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("Refresh from a failing server: error = %v, want ErrKeysUnavailable", err)
	}
	if err := e.verifySig(ctx, b); err != nil {
		t.Errorf("cached key after a failed Refresh: %v", err)
	}
	e.wantFetches(t, 3, "a failed Refresh")

	// Inside the cooldown after a failure, Refresh still fetches; so does
	// the Verifier's.
	if err := e.j.Refresh(ctx); err != nil {
		t.Errorf("Refresh right after a failure: %v", err)
	}
	if err := e.v.Refresh(ctx); err != nil {
		t.Errorf("Verifier.Refresh: %v", err)
	}
	e.wantFetches(t, 5, "Refresh after a failure, then Verifier.Refresh")
}

func TestJWKSRefreshJoinsFetchInFlight(t *testing.T) {
	signer := faltest.SignerFromName("join")
	e := newJWKSEnv(t, nil, signer)
	release := jwksHold(t, e.ks)
	ctx := jwksContext(t)

	first := make(chan error, 1)
	go func() { first <- e.verifySig(ctx, signer) }()
	jwksWaitFetches(t, e.ks, 1)
	results := jwksWaiters(t, ctx, 2, "Refresh during a fetch", func(ctx context.Context) error { return e.j.Refresh(ctx) })
	release()
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("Refresh that joined a fetch: %v", err)
		}
	}
	if err := <-first; err != nil {
		t.Errorf("the call that started the fetch: %v", err)
	}
	e.wantFetches(t, 1, "two Refreshes during a fetch")
}

func TestJWKSCooldown(t *testing.T) {
	tests := []struct {
		name     string
		cooldown time.Duration
		want     time.Duration
	}{
		{"zero means 1m", 0, time.Minute},
		{"2m", 2 * time.Minute, 2 * time.Minute},
		{"10s", 10 * time.Second, 10 * time.Second},
		{"9s raised to 10s", 9 * time.Second, 10 * time.Second},
		{"1ns raised to 10s", time.Nanosecond, 10 * time.Second},
		{"negative raised to 10s", -time.Minute, 10 * time.Second},
	}
	published, forger := faltest.SignerFromName("cooldown"), faltest.SignerFromName("cooldown-forger")
	for _, tt := range tests {
		configure := func(e *jwksEnv) { e.j.Cooldown = tt.cooldown }
		t.Run(tt.name+"/after a mismatch", func(t *testing.T) {
			e := newJWKSEnv(t, configure, published)
			ctx := jwksContext(t)
			if err := e.verifySig(ctx, published); err != nil {
				t.Fatal(err)
			}
			for _, at := range []time.Duration{tt.want / 2, tt.want - time.Second} {
				e.clock.Advance(at - (e.clock.Now().Sub(e.obs.nth(t, 1).Start)))
				if err := e.verifySig(ctx, forger); !errors.Is(err, ErrSignatureMismatch) {
					t.Fatalf("forged signature %v after a fetch: error = %v, want ErrSignatureMismatch", at, err)
				}
				e.wantFetches(t, 1, fmt.Sprintf("forged signature %v after a fetch", at))
			}
			e.clock.Advance(time.Second)
			if err := e.verifySig(ctx, forger); !errors.Is(err, ErrSignatureMismatch) {
				t.Fatalf("forged signature %v after a fetch: error = %v, want ErrSignatureMismatch", tt.want, err)
			}
			e.wantFetches(t, 2, fmt.Sprintf("forged signature %v after a fetch", tt.want))
		})
		t.Run(tt.name+"/after a failed fetch", func(t *testing.T) {
			e := newJWKSEnv(t, configure, published)
			e.ks.FailNext(1, http.StatusInternalServerError)
			ctx := jwksContext(t)
			if err := e.verifySig(ctx, published); !errors.Is(err, ErrKeysUnavailable) {
				t.Fatalf("failing server: error = %v, want ErrKeysUnavailable", err)
			}
			e.clock.Advance(tt.want - time.Second)
			if err := e.verifySig(ctx, published); !errors.Is(err, ErrKeysUnavailable) {
				t.Fatalf("%v after a failed fetch: error = %v, want ErrKeysUnavailable", tt.want-time.Second, err)
			}
			e.wantFetches(t, 1, fmt.Sprintf("%v after a failed fetch", tt.want-time.Second))
			e.clock.Advance(time.Second)
			if err := e.verifySig(ctx, published); err != nil {
				t.Fatalf("%v after a failed fetch: %v", tt.want, err)
			}
			e.wantFetches(t, 2, fmt.Sprintf("%v after a failed fetch", tt.want))
		})
	}
}

func TestJWKSZeroValueDefaults(t *testing.T) {
	signer := faltest.SignerFromName("defaults")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	ctx := jwksContext(t)

	// Only the URL: the default client, clock and policy.
	j := &JWKS{URL: ks.URL}
	if err := jwksVerifyDirect(ctx, j, signer); err != nil {
		t.Fatalf("JWKS with only a URL: %v", err)
	}
	if err := j.Refresh(ctx); err != nil {
		t.Fatalf("Refresh of a JWKS with only a URL: %v", err)
	}
	if got := ks.Fetches(); got != 2 {
		t.Errorf("key server received %d fetches, want 2", got)
	}

	// With an observer to read the fetch: keys live an hour, by the real
	// clock.
	obs := newJWKSObserver()
	j = &JWKS{URL: ks.URL, Observer: obs}
	before := time.Now()
	if err := j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	f := obs.nth(t, 1)
	if f.URL != ks.URL || f.Keys != 1 || f.Err != nil || f.Expiry.Sub(f.Start) != time.Hour || f.Start.Before(before) || f.Start.After(after) {
		t.Errorf("default JWKS fetch observed as %+v; want %d keys from %s, starting between %v and %v, living 1h", f, 1, ks.URL, before, after)
	}

	// No URL at all: unavailable, not a panic.
	var zero JWKS
	if err := jwksVerifyDirect(ctx, &zero, signer); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("zero JWKS: error = %v, want ErrKeysUnavailable", err)
	}
}

func TestJWKSObserver(t *testing.T) {
	a, b := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	e := newJWKSEnv(t, nil, a, b)
	e.ks.SetCacheControl("max-age=600")
	ctx := context.WithValue(jwksContext(t), jwksCtxKey{}, "trace-1")
	start := e.clock.Now()

	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Told before Refresh returned.
	got := e.obs.seen()
	if len(got) != 1 {
		t.Fatalf("observer told about %d fetches when Refresh returned, want 1", len(got))
	}
	if f := got[0]; f.URL != e.ks.URL || !f.Start.Equal(start) || f.Keys != 2 || !f.Expiry.Equal(start.Add(10*time.Minute)) || f.Err != nil || f.Duration < 0 {
		t.Errorf("successful fetch observed as %+v; want URL %s, Start %v, 2 keys, Expiry 10m later, no error", f, e.ks.URL, start)
	}

	e.clock.Advance(time.Minute)
	e.ks.FailNext(1, http.StatusInternalServerError)
	if err := e.j.Refresh(ctx); err == nil {
		t.Fatal("Refresh from a failing server succeeded")
	}
	if f := e.obs.seen()[1]; !f.Start.Equal(start.Add(time.Minute)) || f.Keys != 0 || !f.Expiry.IsZero() || f.Err == nil {
		t.Errorf("failed fetch observed as %+v; want Start a minute later, no keys, no expiry, an error", f)
	}

	e.ks.SetDocument(jwksFixture(t, "use_enc.json"), "application/json")
	if err := e.j.Refresh(ctx); !errors.Is(err, ErrNoUsableKeys) {
		t.Fatalf("Refresh of a document without usable keys: error = %v, want ErrNoUsableKeys", err)
	}
	if f := e.obs.seen()[2]; f.Keys != 0 || !errors.Is(f.Err, ErrNoUsableKeys) {
		t.Errorf("fetch of no usable keys observed as %+v, want ErrNoUsableKeys", f)
	}

	// The fetch carries the caller's context values to the observer.
	e.obs.mu.Lock()
	values := slices.Clone(e.obs.values)
	e.obs.mu.Unlock()
	for i, v := range values {
		if v != "trace-1" {
			t.Errorf("fetch %d: observer's context value = %v, want the caller's", i, v)
		}
	}

	// Verifying with the cached keys (the failures kept them) is no fetch.
	if err := e.verifySig(ctx, b); err != nil {
		t.Fatal(err)
	}
	e.wantFetches(t, 3, "verifying with cached keys")
}

// jwksLogHandler is a slog.Handler handing each record to a receiver on
// records, blocking until one takes it or done is closed.
type jwksLogHandler struct {
	records chan slog.Record
	done    chan struct{}
}

func (h jwksLogHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h jwksLogHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.records <- r.Clone():
	case <-h.done:
	}
	return nil
}
func (h jwksLogHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h jwksLogHandler) WithGroup(string) slog.Handler      { return h }

// Each fetch logs one line. It logs it after its waiters wake, so that a
// slow Logger does not hold up deliveries, whereas the Observer is told
// before: here the Logger blocks until the test reads the line, and each
// Refresh must return, with its fetch observed, before that.
func TestJWKSLogger(t *testing.T) {
	signer := faltest.SignerFromName("log")
	h := jwksLogHandler{records: make(chan slog.Record), done: make(chan struct{})}
	e := newJWKSEnv(t, func(e *jwksEnv) { e.j.Logger = slog.New(h) }, signer)
	t.Cleanup(func() { close(h.done) }) // runs before the env's cleanup
	ctx := jwksContext(t)

	// next returns the next line logged.
	next := func() slog.Record {
		t.Helper()
		select {
		case r := <-h.records:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no log line after a fetch")
			return slog.Record{}
		}
	}
	attrs := func(r slog.Record) map[string]string {
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		return m
	}

	observed := func(n int) {
		t.Helper()
		if got := len(e.obs.seen()); got != n {
			t.Fatalf("Refresh returned with %d fetches observed, want %d: the Observer must be told before the waiters wake", got, n)
		}
	}

	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	observed(1)
	r := next()
	if m := attrs(r); r.Level != slog.LevelInfo || m["url"] != e.ks.URL || m["keys"] != "1" || m["ttl"] != "1h0m0s" {
		t.Errorf("successful fetch logged at %v as %q %v; want Info with url, keys 1 and ttl 1h", r.Level, r.Message, m)
	}

	e.ks.FailNext(1, http.StatusInternalServerError)
	if err := e.j.Refresh(ctx); err == nil {
		t.Fatal("Refresh from a failing server succeeded")
	}
	observed(2)
	r = next()
	if m := attrs(r); r.Level != slog.LevelWarn || m["url"] != e.ks.URL || m["err"] == "" {
		t.Errorf("failed fetch logged at %v as %q %v; want Warn with url and err", r.Level, r.Message, m)
	}

	// Verifying with cached keys logs nothing; one more fetch, one more line.
	if err := e.verifySig(ctx, signer); err != nil {
		t.Fatal(err)
	}
	if err := e.j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	observed(3)
	next()
	select {
	case r := <-h.records:
		t.Errorf("extra log line %q for 3 fetches", r.Message)
	default:
	}
	e.wantFetches(t, 3, "three Refreshes")
}

// Genuine and forged signatures, Refresh and a moving clock, all at once:
// for the race detector, and the genuine key must always verify.
func TestJWKSConcurrentUse(t *testing.T) {
	const (
		workers = 4
		rounds  = 25
	)
	published, forger := faltest.SignerFromName("concurrent"), faltest.SignerFromName("concurrent-forger")
	e := newJWKSEnv(t, nil, published)
	ctx := jwksContext(t)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				if err := e.verifySig(ctx, published); err != nil {
					t.Errorf("genuine signature: %v", err)
					return
				}
				if err := e.verifySig(ctx, forger); !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
					t.Errorf("forged signature: error = %v, want only ErrSignatureMismatch", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			if err := e.j.Refresh(ctx); err != nil {
				t.Errorf("Refresh: %v", err)
				return
			}
			e.clock.Advance(10 * time.Minute)
		}
	})
	wg.Wait()
}

// weakKeys are public keys, in hex, that crypto/ed25519 accepts but that
// must not be trusted: small-order points (with the identity, R = base
// point and S = 1 verify every message) and non-canonical encodings.
var weakKeys = map[string]string{
	"identity":                    "0100000000000000000000000000000000000000000000000000000000000000",
	"all zero (order 4)":          "0000000000000000000000000000000000000000000000000000000000000000",
	"order 2":                     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"order 8":                     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
	"identity, sign bit set":      "0100000000000000000000000000000000000000000000000000000000000080",
	"identity as y = p+1":         "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"y = p+3, not of small order": "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
}

func TestParseJWKSSkipsWeakKeys(t *testing.T) {
	good := loadGolden(t).Keys[0]
	for name, h := range weakKeys {
		t.Run(name, func(t *testing.T) {
			pub, _ := hex.DecodeString(h)
			x := base64.RawURLEncoding.EncodeToString(pub)
			if keys, err := ParseJWKS(jwksDoc(jwksEntry(x, ``))); !errors.Is(err, ErrNoUsableKeys) {
				t.Fatalf("a JWKS of only the weak key: %d keys, %v; want ErrNoUsableKeys", len(keys), err)
			}
			keys, err := ParseJWKS(jwksDoc(jwksEntry(x, ``), jwksEntry(good.X, ``)))
			if err != nil || len(keys) != 1 || hex.EncodeToString(keys[0]) != good.PublicHex {
				t.Fatalf("weak key beside a good one: %d keys, %v; want only the good key", len(keys), err)
			}
		})
	}
}

// TestParseJWKSExactMembers checks that member names match exactly and
// that members ParseJWKS does not use cannot drop a key.
func TestParseJWKSExactMembers(t *testing.T) {
	a := loadGolden(t).Keys[0].X
	for _, tt := range []struct {
		name   string
		entry  string
		usable bool
	}{
		{"numeric kid", jwksEntry(a, `,"kid":42`), true},
		{"object kid", jwksEntry(a, `,"kid":{"a":1}`), true},
		{"x5c junk", jwksEntry(a, `,"x5c":7`), true},
		{"KTY upper-case", `{"KTY":"OKP","crv":"Ed25519","x":"` + a + `"}`, false},
		{"Crv mixed case", `{"kty":"OKP","Crv":"Ed25519","x":"` + a + `"}`, false},
		{"X upper-case", `{"kty":"OKP","crv":"Ed25519","X":"` + a + `"}`, false},
		{"kty okp lower-case", `{"kty":"okp","crv":"Ed25519","x":"` + a + `"}`, false},
		{"x a number", `{"kty":"OKP","crv":"Ed25519","x":12}`, false},
		{"use a number", jwksEntry(a, `,"use":1`), false},
		{"alg a number", jwksEntry(a, `,"alg":1`), false},
		{"key_ops a string", jwksEntry(a, `,"key_ops":"verify"`), false},
		{"USE upper-case is just another member", jwksEntry(a, `,"USE":"enc"`), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := ParseJWKS(jwksDoc(tt.entry))
			if tt.usable && (err != nil || len(keys) != 1) {
				t.Fatalf("usable entry rejected: %d keys, %v", len(keys), err)
			}
			if !tt.usable && !errors.Is(err, ErrNoUsableKeys) {
				t.Fatalf("unusable entry taken: %d keys, %v", len(keys), err)
			}
		})
	}
}

// TestParseJWKSKeyCap checks the bound on usable keys: a forged delivery
// costs one verification per key.
func TestParseJWKSKeyCap(t *testing.T) {
	entries := func(n int) []string {
		var e []string
		for i := range n {
			pub := faltest.SignerFromName(fmt.Sprint("cap-", i)).PublicKey()
			e = append(e, jwksEntry(base64.RawURLEncoding.EncodeToString(pub), ``))
		}
		return e
	}
	if keys, err := ParseJWKS(jwksDoc(entries(64)...)); err != nil || len(keys) != 64 {
		t.Fatalf("64 keys: %d, %v; want all 64", len(keys), err)
	}
	if _, err := ParseJWKS(jwksDoc(entries(65)...)); !errors.Is(err, ErrMalformedJWKS) {
		t.Fatalf("65 keys: %v, want ErrMalformedJWKS", err)
	}
	// Duplicates do not count as keys: the same key 256 times is one key.
	same := entries(1)
	var many []string
	for range 256 {
		many = append(many, same[0])
	}
	if keys, err := ParseJWKS(jwksDoc(many...)); err != nil || len(keys) != 1 {
		t.Fatalf("one key 256 times: %d keys, %v; want 1", len(keys), err)
	}
	// But every entry counts against the bound on entries.
	if _, err := ParseJWKS(jwksDoc(append(many, same[0])...)); !errors.Is(err, ErrMalformedJWKS) {
		t.Fatalf("one key 257 times: %v, want ErrMalformedJWKS (more than 256 entries)", err)
	}
	// Static keys keep the first 64.
	var pubs []ed25519.PublicKey
	for i := range 70 {
		pubs = append(pubs, faltest.SignerFromName(fmt.Sprint("cap-", i)).PublicKey())
	}
	if n := len(StaticKeys(pubs...).(*staticKeys).set.keys); n != 64 {
		t.Errorf("StaticKeys of 70 keys kept %d, want 64", n)
	}
}

// TestParseJWKSEntryBound checks that a document of many entries is refused
// before they are decoded: 12,000 copies of one key (about 960 KB, within
// the fetch limit) cost a few allocations per entry up to the bound of 256,
// where decoding an entry and its key to find it a duplicate costs about a
// hundred, and a document at the bound costs more than the flood.
func TestParseJWKSEntryBound(t *testing.T) {
	entry := jwksEntry(base64.RawURLEncoding.EncodeToString(faltest.SignerFromName("bound").PublicKey()), ``)
	doc := func(n int) []byte {
		e := make([]string, n)
		for i := range e {
			e[i] = entry
		}
		return jwksDoc(e...)
	}
	flood, atBound := doc(12_000), doc(256)
	if len(flood) < 800_000 || len(flood) > maxJWKSSize {
		t.Fatalf("flood document is %d bytes, want about 960 KB within the fetch limit", len(flood))
	}
	if _, err := ParseJWKS(flood); !errors.Is(err, ErrMalformedJWKS) {
		t.Fatalf("12,000 entries: %v, want ErrMalformedJWKS", err)
	}
	floodAllocs := testing.AllocsPerRun(5, func() { _, _ = ParseJWKS(flood) })
	boundAllocs := testing.AllocsPerRun(5, func() { _, _ = ParseJWKS(atBound) })
	t.Logf("allocations: 12,000 entries %.0f, 256 entries %.0f", floodAllocs, boundAllocs)
	if floodAllocs > 3*maxEntries || floodAllocs > boundAllocs {
		t.Errorf("12,000 duplicate entries cost %.0f allocations, want at most %d and fewer than the %.0f of a document at the bound: entries are decoded before they are counted", floodAllocs, 3*maxEntries, boundAllocs)
	}
}
