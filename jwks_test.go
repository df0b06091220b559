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
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// jwksTestCache returns a cache of ks's keys reading clock.
func jwksTestCache(ks *faltest.KeyServer, clock *testClock, opts ...JWKSOption) *JWKS {
	j := NewJWKS(ks.URL, append([]JWKSOption{WithJWKSHTTPClient(ks.Client()), WithJWKSClock(clock.Now)}, opts...)...)
	jwksCaches.Store(j, ks)
	return j
}

// jwksCaches maps each cache made by jwksTestCache to its key server, so
// that jwksWantFetches can let background refreshes finish first.
var jwksCaches sync.Map

// settle waits for the fetch in flight, if any, to finish: expired keys
// within max-stale are served while a background fetch runs.
func (j *JWKS) settle() {
	j.mu.Lock()
	c := j.call
	j.mu.Unlock()
	if c != nil {
		<-c.done
	}
}

// jwksTestVerifier returns a Verifier over j with the same clock.
func jwksTestVerifier(j *JWKS, clock *testClock) *Verifier {
	return NewVerifier(WithKeySource(j), WithClock(clock.Now))
}

// jwksDelivery returns the headers and body of a delivery s signed now.
func jwksDelivery(s *faltest.Signer, clock *testClock) (http.Header, []byte) {
	body := faltest.OKBody("5057fca7-2eb3-468f-b95d-cefe92b0b9d4", map[string]any{"seed": 42})
	h := http.Header{}
	s.Sign(faltest.Delivery{Time: clock.Now(), Body: body}).Set(h)
	return h, body
}

// jwksVerify verifies a fresh delivery by s against v.
func jwksVerify(ctx context.Context, v *Verifier, s *faltest.Signer, clock *testClock) error {
	h, body := jwksDelivery(s, clock)
	return v.Verify(ctx, h, body)
}

// jwksHold holds ks's requests and returns an idempotent release, also run
// at cleanup so no handler outlives the test.
func jwksHold(t *testing.T, ks *faltest.KeyServer) (release func()) {
	t.Helper()
	release = sync.OnceFunc(ks.Hold())
	t.Cleanup(release)
	return release
}

func jwksWaitFetches(t *testing.T, ks *faltest.KeyServer, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ks.WaitFetches(ctx, n); err != nil {
		t.Fatalf("key server never saw %d fetches (saw %d): %v", n, ks.Fetches(), err)
	}
}

func jwksWantFetches(t *testing.T, ks *faltest.KeyServer, want int, when string) {
	t.Helper()
	jwksCaches.Range(func(j, server any) bool {
		if server == ks {
			j.(*JWKS).settle()
		}
		return true
	})
	if got := ks.Fetches(); got != want {
		t.Fatalf("%s: key server saw %d fetches, want %d", when, got, want)
	}
}

func TestJWKSColdCacheFetchesOnce(t *testing.T) {
	const n = 200
	signer := faltest.SignerFromName("cold")
	tests := []struct {
		name string
		call func(ctx context.Context, j *JWKS, v *Verifier, clock *testClock) error
	}{
		{"PublicKeys", func(ctx context.Context, j *JWKS, _ *Verifier, _ *testClock) error {
			keys, err := j.PublicKeys(ctx)
			if err == nil && (len(keys) != 1 || !keys[0].Equal(signer.PublicKey())) {
				return fmt.Errorf("got %d keys, want the signer's key", len(keys))
			}
			return err
		}},
		{"Verify", func(ctx context.Context, _ *JWKS, v *Verifier, clock *testClock) error {
			return jwksVerify(ctx, v, signer, clock)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := faltest.NewKeyServer(signer)
			defer ks.Close()
			clock := newTestClock()
			j := jwksTestCache(ks, clock)
			v := jwksTestVerifier(j, clock)
			release := jwksHold(t, ks)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var ready, done sync.WaitGroup
			errs := make(chan error, n)
			for range n {
				ready.Add(1)
				done.Add(1)
				go func() {
					defer done.Done()
					ready.Done()
					errs <- tt.call(ctx, j, v, clock)
				}()
			}
			ready.Wait()
			jwksWaitFetches(t, ks, 1)
			release()
			done.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("concurrent caller on a cold cache: %v", err)
				}
			}
			jwksWantFetches(t, ks, 1, fmt.Sprintf("%d concurrent callers on a cold cache", n))
			if st := j.Stats(); st.Fetches != 1 || st.Keys != 1 {
				t.Errorf("Stats() = %+v, want 1 fetch and 1 key", st)
			}
		})
	}
}

func TestJWKSTTLExpiryRefetchesOnce(t *testing.T) {
	signer := faltest.SignerFromName("ttl")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	ctx := context.Background()

	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Advance(DefaultJWKSTTL - time.Second)
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	jwksWantFetches(t, ks, 1, "one second before the keys expire")

	clock.Advance(time.Second)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := j.PublicKeys(ctx); err != nil {
				t.Errorf("PublicKeys after expiry: %v", err)
			}
		}()
	}
	wg.Wait()
	jwksWantFetches(t, ks, 2, "50 callers once the keys expired")
	if got, want := j.Stats().Expiry, clock.Now().Add(DefaultJWKSTTL); !got.Equal(want) {
		t.Errorf("after the refetch Expiry = %v, want %v", got, want)
	}
}

func TestJWKSCacheControl(t *testing.T) {
	tests := []struct {
		cacheControl string
		opts         []JWKSOption
		want         time.Duration
	}{
		{cacheControl: "", want: DefaultJWKSTTL},
		{cacheControl: "max-age=600", want: 10 * time.Minute},
		{cacheControl: "max-age=60", want: MinJWKSTTL},
		{cacheControl: "max-age=0", want: MinJWKSTTL},
		{cacheControl: "max-age=100000", want: MaxJWKSTTL},
		{cacheControl: "max-age=86400", want: 24 * time.Hour},
		{cacheControl: "public, max-age=7200", want: 2 * time.Hour},
		{cacheControl: "Max-Age=7200", want: 2 * time.Hour},
		{cacheControl: "no-store", want: MinJWKSTTL},
		{cacheControl: "no-cache", want: MinJWKSTTL},
		{cacheControl: "max-age=3600, no-store", want: MinJWKSTTL},
		{cacheControl: "max-age=soon", want: DefaultJWKSTTL},
		{cacheControl: "", opts: []JWKSOption{WithTTL(2 * time.Hour)}, want: 2 * time.Hour},
		{cacheControl: "", opts: []JWKSOption{WithTTL(time.Minute)}, want: MinJWKSTTL},
		{cacheControl: "", opts: []JWKSOption{WithTTL(48 * time.Hour)}, want: MaxJWKSTTL},
		{cacheControl: "max-age=600", opts: []JWKSOption{WithTTL(2 * time.Hour)}, want: 10 * time.Minute},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%q", tt.cacheControl)
		if len(tt.opts) > 0 {
			name += fmt.Sprintf("/WithTTL(%s)", tt.want)
		}
		t.Run(name, func(t *testing.T) {
			ks := faltest.NewKeyServer(faltest.SignerFromName("cc"))
			defer ks.Close()
			ks.SetCacheControl(tt.cacheControl)
			clock := newTestClock()
			j := jwksTestCache(ks, clock, tt.opts...)
			start := clock.Now()
			if _, err := j.PublicKeys(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := j.Stats().Expiry.Sub(start); got != tt.want {
				t.Errorf("Cache-Control %q: keys live %s, want %s", tt.cacheControl, got, tt.want)
			}

			// Keys are served until exactly then, and refetched after.
			clock.Advance(tt.want - time.Second)
			if _, err := j.PublicKeys(context.Background()); err != nil {
				t.Fatal(err)
			}
			jwksWantFetches(t, ks, 1, "just before expiry")
			clock.Advance(time.Second)
			if _, err := j.PublicKeys(context.Background()); err != nil {
				t.Fatal(err)
			}
			jwksWantFetches(t, ks, 2, "at expiry")
		})
	}
}

func TestJWKSRotation(t *testing.T) {
	oldKey, newKey := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	ks := faltest.NewKeyServer(oldKey)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	v := jwksTestVerifier(j, clock)
	ctx := context.Background()

	if err := jwksVerify(ctx, v, oldKey, clock); err != nil {
		t.Fatalf("delivery signed by the published key: %v", err)
	}

	// fal adds a key. Inside the cooldown after the first fetch, a
	// delivery signed with it cannot trigger a refresh.
	ks.SetSigners(oldKey, newKey)
	if err := jwksVerify(ctx, v, newKey, clock); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("new key inside the cooldown: error = %v, want ErrSignatureMismatch", err)
	}
	jwksWantFetches(t, ks, 1, "new key inside the cooldown")

	// After the cooldown, one refresh picks it up.
	clock.Advance(DefaultCooldown)
	if err := jwksVerify(ctx, v, newKey, clock); err != nil {
		t.Fatalf("new key does not verify after a refresh: %v", err)
	}
	jwksWantFetches(t, ks, 2, "new key after the cooldown")
	for _, s := range []*faltest.Signer{oldKey, newKey} {
		if err := jwksVerify(ctx, v, s, clock); err != nil {
			t.Errorf("key %s stopped verifying while published: %v", s.KeyID(), err)
		}
	}
	jwksWantFetches(t, ks, 2, "both keys published")

	// fal removes the old key. It keeps verifying until the cached set is
	// replaced, and stops then.
	ks.SetSigners(newKey)
	if err := jwksVerify(ctx, v, oldKey, clock); err != nil {
		t.Errorf("removed key stopped verifying before the cache expired: %v", err)
	}
	clock.Advance(DefaultJWKSTTL)
	// The first delivery after expiry is checked against the expired set
	// while the refetch runs in the background (stale-while-revalidate).
	if err := jwksVerify(ctx, v, oldKey, clock); err != nil {
		t.Errorf("delivery during the background refetch: %v", err)
	}
	jwksWantFetches(t, ks, 3, "after the old key was removed")
	if err := jwksVerify(ctx, v, oldKey, clock); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("removed key still verifies after the key set was replaced: error = %v", err)
	}
	jwksWantFetches(t, ks, 3, "after the old key was removed")
	if err := jwksVerify(ctx, v, newKey, clock); err != nil {
		t.Errorf("current key stopped verifying: %v", err)
	}
	clock.Advance(DefaultCooldown)
	if err := jwksVerify(ctx, v, oldKey, clock); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("removed key verifies again after a refresh-on-mismatch: error = %v", err)
	}
	jwksWantFetches(t, ks, 4, "removed key after the cooldown")
}

func TestJWKSRefreshOnMismatchCooldown(t *testing.T) {
	const (
		n       = 10_000
		workers = 8
	)
	published, forger := faltest.SignerFromName("published"), faltest.SignerFromName("forger")
	ks := faltest.NewKeyServer(published)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	v := jwksTestVerifier(j, clock)
	if err := jwksVerify(context.Background(), v, published, clock); err != nil {
		t.Fatal(err)
	}
	h, body := jwksDelivery(forger, clock) // well-formed, in the window, wrong key

	// flood verifies the forged delivery count times from several
	// goroutines; each must fail with ErrSignatureMismatch.
	flood := func(ctx context.Context, t *testing.T, count int) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex // guards bad
		bad := 0
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < count; i += workers {
					err := v.Verify(ctx, h, body)
					if !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeysUnavailable) {
						mu.Lock()
						if bad++; bad <= 3 {
							t.Errorf("forged delivery %d: error = %v, want only ErrSignatureMismatch", i, err)
						}
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// After the cooldown, a concurrent flood refreshes exactly once: the
	// first mismatch fetches, those during the fetch join it, the rest are
	// inside the new cooldown.
	clock.Advance(DefaultCooldown)
	flood(ctx, t, n)
	jwksWantFetches(t, ks, 2, "10,000 concurrent forged deliveries after the cooldown")

	// Once more after the next cooldown: the first forged delivery makes
	// one refresh. The rest are inside its cooldown and must fail at once
	// without touching the network: the server is held, so a verify that
	// fetched or waited for a fetch would hang instead.
	clock.Advance(DefaultCooldown)
	if err := v.Verify(ctx, h, body); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("forged delivery after the cooldown: error = %v, want ErrSignatureMismatch", err)
	}
	jwksWantFetches(t, ks, 3, "the first forged delivery after the next cooldown")
	release := jwksHold(t, ks)
	watch, stopWatch := context.WithCancel(ctx)
	go func() {
		// A fetch inside the cooldown is a failure; unblock it so that the
		// test reports it at once rather than at ctx's deadline.
		if ks.WaitFetches(watch, 4) == nil {
			release()
		}
	}()
	flood(ctx, t, n-1)
	stopWatch()
	release()
	jwksWantFetches(t, ks, 3, "10,000 forged deliveries inside the cooldown")

	// The genuine key kept verifying throughout.
	if err := jwksVerify(ctx, v, published, clock); err != nil {
		t.Errorf("published key stopped verifying after the flood: %v", err)
	}
}

func TestJWKSServesStaleKeysWhileServerDown(t *testing.T) {
	signer := faltest.SignerFromName("stale")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	v := jwksTestVerifier(j, clock)
	ctx := context.Background()
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatal(err)
	}
	expiry := j.Stats().Expiry

	ks.FailNext(2, http.StatusServiceUnavailable)
	clock.Advance(DefaultJWKSTTL)
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatalf("server down at expiry: cached keys no longer verify: %v", err)
	}
	jwksWantFetches(t, ks, 2, "server down at expiry")
	if st := j.Stats(); st.Failures != 1 || st.LastError == nil || !st.Expiry.Equal(expiry) || st.Keys != 1 {
		t.Errorf("after a failed refetch Stats() = %+v, want 1 failure, a LastError and the old keys and expiry", st)
	}

	clock.Advance(DefaultCooldown / 2)
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatalf("server down, inside the cooldown: %v", err)
	}
	jwksWantFetches(t, ks, 2, "server down, inside the cooldown")

	clock.Advance(DefaultMaxStale - DefaultCooldown/2 - time.Second) // expiry + max-stale - 1s
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatalf("server down, one second before the max-stale bound: %v", err)
	}
	jwksWantFetches(t, ks, 3, "server down, just before the max-stale bound")

	clock.Advance(time.Second) // expiry + max-stale, inside the cooldown
	if err := jwksVerify(ctx, v, signer, clock); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("server down past the max-stale bound: error = %v, want ErrKeysUnavailable", err)
	}
	jwksWantFetches(t, ks, 3, "past the max-stale bound, inside the cooldown")

	// The server is back (FailNext is used up): after the cooldown it serves.
	clock.Advance(DefaultCooldown)
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatalf("server back after the cooldown: %v", err)
	}
	jwksWantFetches(t, ks, 4, "server back")
}

func TestJWKSMaxStaleZero(t *testing.T) {
	signer := faltest.SignerFromName("nostale")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock, WithMaxStale(0))
	ctx := context.Background()
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	ks.FailNext(1, http.StatusInternalServerError)
	clock.Advance(DefaultJWKSTTL)
	if keys, err := j.PublicKeys(ctx); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("WithMaxStale(0), server down at expiry: %d keys, error %v; want ErrKeysUnavailable", len(keys), err)
	}
}

func TestJWKSFirstFetchFails(t *testing.T) {
	signer := faltest.SignerFromName("first")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	ks.FailNext(1, http.StatusInternalServerError)
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	v := jwksTestVerifier(j, clock)
	ctx := context.Background()

	if err := jwksVerify(ctx, v, signer, clock); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("first fetch failed: error = %v, want ErrKeysUnavailable", err)
	}
	clock.Advance(DefaultCooldown - time.Second)
	if err := jwksVerify(ctx, v, signer, clock); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("inside the cooldown after a failed first fetch: error = %v, want ErrKeysUnavailable", err)
	}
	if _, refreshed, err := j.RefreshKeys(ctx); refreshed || err != nil {
		t.Errorf("RefreshKeys inside the cooldown = refreshed %v, %v; want a declined refresh", refreshed, err)
	}
	jwksWantFetches(t, ks, 1, "inside the cooldown after a failed first fetch")

	clock.Advance(time.Second)
	if err := jwksVerify(ctx, v, signer, clock); err != nil {
		t.Fatalf("server recovered, cooldown over: %v", err)
	}
	jwksWantFetches(t, ks, 2, "after the cooldown")
	if st := j.Stats(); st.LastError != nil || st.Failures != 1 || st.Fetches != 2 {
		t.Errorf("Stats() = %+v, want 2 fetches, 1 failure, no LastError", st)
	}
}

// jwksDocOfSize returns a JWKS document holding s's key padded to exactly n
// bytes.
func jwksDocOfSize(s *faltest.Signer, n int) []byte {
	head := `{"keys":[` + string(s.JWK()) + `],"pad":"`
	const tail = `"}`
	return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
}

func TestJWKSFetchErrors(t *testing.T) {
	signer := faltest.SignerFromName("errors")
	tests := []struct {
		name    string
		setup   func(ks *faltest.KeyServer)
		wantErr []error
		notErr  []error
	}{
		{
			name:    "500",
			setup:   func(ks *faltest.KeyServer) { ks.FailNext(1, http.StatusInternalServerError) },
			wantErr: []error{ErrKeysUnavailable},
			notErr:  []error{ErrMalformedJWKS, ErrNoUsableKeys},
		},
		{
			name:    "404",
			setup:   func(ks *faltest.KeyServer) { ks.FailNext(1, http.StatusNotFound) },
			wantErr: []error{ErrKeysUnavailable},
		},
		{
			name:    "HTML error page with status 200",
			setup:   func(ks *faltest.KeyServer) { ks.SetDocument(jwksFixture(t, "not_json.txt"), "text/html") },
			wantErr: []error{ErrKeysUnavailable, ErrMalformedJWKS},
			notErr:  []error{ErrNoUsableKeys},
		},
		{
			name:    "empty body",
			setup:   func(ks *faltest.KeyServer) { ks.SetDocument(nil, "application/json") },
			wantErr: []error{ErrKeysUnavailable, ErrMalformedJWKS},
		},
		{
			name:    "2 MiB document",
			setup:   func(ks *faltest.KeyServer) { ks.SetDocument(jwksDocOfSize(signer, 2<<20), "application/json") },
			wantErr: []error{ErrKeysUnavailable, ErrMalformedJWKS},
		},
		{
			name:    "one byte over MaxJWKSSize",
			setup:   func(ks *faltest.KeyServer) { ks.SetDocument(jwksDocOfSize(signer, MaxJWKSSize+1), "application/json") },
			wantErr: []error{ErrKeysUnavailable, ErrMalformedJWKS},
		},
		{
			name:    "zero usable keys",
			setup:   func(ks *faltest.KeyServer) { ks.SetDocument(jwksFixture(t, "use_enc.json"), "application/json") },
			wantErr: []error{ErrKeysUnavailable, ErrNoUsableKeys},
			notErr:  []error{ErrMalformedJWKS},
		},
		{
			name:    "empty key set",
			setup:   func(ks *faltest.KeyServer) { ks.SetSigners() },
			wantErr: []error{ErrKeysUnavailable, ErrNoUsableKeys},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := faltest.NewKeyServer(signer)
			defer ks.Close()
			tt.setup(ks)
			clock := newTestClock()
			j := jwksTestCache(ks, clock)
			keys, err := j.PublicKeys(context.Background())
			if len(keys) != 0 {
				t.Errorf("PublicKeys returned %d keys with a failed fetch", len(keys))
			}
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("PublicKeys error = %v, want it to match %v", err, want)
				}
			}
			for _, not := range tt.notErr {
				if errors.Is(err, not) {
					t.Errorf("PublicKeys error = %v, must not match %v", err, not)
				}
			}
			st := j.Stats()
			if st.Fetches != 1 || st.Failures != 1 || st.LastError == nil || st.Keys != 0 || !st.Expiry.IsZero() || !st.LastSuccess.IsZero() {
				t.Errorf("Stats() after a failed fetch = %+v", st)
			}
			// Through a Verifier the error keeps its meaning (503, not 401).
			v := jwksTestVerifier(j, clock)
			err = jwksVerify(context.Background(), v, signer, clock)
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("Verify error = %v, want it to match %v", err, want)
				}
			}
			if errors.Is(err, ErrSignatureMismatch) {
				t.Errorf("Verify error = %v: unavailable keys reported as a bad signature", err)
			}
		})
	}
}

func TestJWKSMaxSizeAccepted(t *testing.T) {
	signer := faltest.SignerFromName("size")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	ks.SetDocument(jwksDocOfSize(signer, MaxJWKSSize), "application/json")
	j := jwksTestCache(ks, newTestClock())
	if keys, err := j.PublicKeys(context.Background()); err != nil || len(keys) != 1 {
		t.Fatalf("document of exactly MaxJWKSSize bytes: %d keys, %v; want 1 key", len(keys), err)
	}
}

func TestJWKSFetchTimeout(t *testing.T) {
	ks := faltest.NewKeyServer(faltest.SignerFromName("timeout"))
	defer ks.Close()
	jwksHold(t, ks) // the server never answers
	j := jwksTestCache(ks, newTestClock(), WithFetchTimeout(200*time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := j.PublicKeys(ctx)
	if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging server: error = %v, want ErrKeysUnavailable and context.DeadlineExceeded", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the fetch timeout did not end the fetch; the caller's deadline did")
	}
	if st := j.Stats(); st.Failures != 1 {
		t.Errorf("Stats().Failures = %d after a timed-out fetch, want 1", st.Failures)
	}
}

func TestJWKSWaiterCancelled(t *testing.T) {
	signer := faltest.SignerFromName("cancel")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	release := jwksHold(t, ks)

	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	ctxB, cancelB := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelB()

	type result struct {
		keys []ed25519.PublicKey
		err  error
	}
	resA, resB := make(chan result, 1), make(chan result, 1)
	go func() { k, err := j.PublicKeys(ctxA); resA <- result{k, err} }()
	jwksWaitFetches(t, ks, 1)
	go func() { k, err := j.PublicKeys(ctxB); resB <- result{k, err} }()

	cancelA()
	select {
	case r := <-resA:
		if !errors.Is(r.err, ErrKeysUnavailable) || !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled waiter: error = %v, want ErrKeysUnavailable and context.Canceled", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled waiter did not return while the fetch hangs")
	}
	select {
	case r := <-resB:
		t.Fatalf("other waiter returned before the fetch completed: %d keys, %v", len(r.keys), r.err)
	default:
	}

	release()
	r := <-resB
	if r.err != nil || len(r.keys) != 1 || !r.keys[0].Equal(signer.PublicKey()) {
		t.Fatalf("other waiter after the shared fetch completed: %d keys, %v; want the signer's key", len(r.keys), r.err)
	}
	jwksWantFetches(t, ks, 1, "one cancelled waiter and one patient one")
	if st := j.Stats(); st.Failures != 0 || st.Keys != 1 {
		t.Errorf("the cancelled waiter affected the shared fetch: Stats() = %+v", st)
	}
}

func TestJWKSContextCancelled(t *testing.T) {
	signer := faltest.SignerFromName("ctx")
	tests := []struct {
		name string
		call func(ctx context.Context, j *JWKS, v *Verifier, clock *testClock) error
	}{
		{"PublicKeys", func(ctx context.Context, j *JWKS, _ *Verifier, _ *testClock) error {
			_, err := j.PublicKeys(ctx)
			return err
		}},
		{"RefreshKeys", func(ctx context.Context, j *JWKS, _ *Verifier, _ *testClock) error {
			_, _, err := j.RefreshKeys(ctx)
			return err
		}},
		{"Refresh", func(ctx context.Context, j *JWKS, _ *Verifier, _ *testClock) error {
			return j.Refresh(ctx)
		}},
		{"Verify", func(ctx context.Context, _ *JWKS, v *Verifier, clock *testClock) error {
			return jwksVerify(ctx, v, signer, clock)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := faltest.NewKeyServer(signer)
			defer ks.Close()
			clock := newTestClock()
			j := jwksTestCache(ks, clock)
			v := jwksTestVerifier(j, clock)
			release := jwksHold(t, ks)

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err := tt.call(ctx, j, v, clock)
			if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled ctx on a cold cache: error = %v, want ErrKeysUnavailable and context.Canceled", err)
			}

			// The fetch it started still completes and fills the cache: a
			// later caller joins it or finds its keys, with no new fetch.
			jwksWaitFetches(t, ks, 1)
			release()
			if _, err := j.PublicKeys(context.Background()); err != nil {
				t.Fatalf("after the abandoned fetch completed: %v", err)
			}
			jwksWantFetches(t, ks, 1, "a cancelled caller, then a patient one")
			if st := j.Stats(); st.Failures != 0 {
				t.Errorf("the cancelled caller failed the shared fetch: Stats() = %+v", st)
			}
		})
	}
}

// jwksRoundTripper adapts a function to http.RoundTripper.
type jwksRoundTripper func(*http.Request) (*http.Response, error)

func (f jwksRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// jwksNoNetwork returns a client whose transport fails the test if called.
func jwksNoNetwork(t *testing.T) *http.Client {
	return &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
		t.Errorf("JWKS fetch sent a request to %s; want it refused before any network use", r.URL)
		return nil, errors.New("test transport: no network")
	})}
}

func TestJWKSRefusesPlainHTTP(t *testing.T) {
	for _, u := range []string{
		"http://example.invalid/jwks",
		"http://rest.fal.ai/.well-known/jwks.json",
		"http://10.0.0.1/jwks",
		"http://169.254.169.254/latest/meta-data",
		"http://127.0.0.1.example.invalid/jwks",
		"http://localhost.example.invalid/jwks",
		"ftp://127.0.0.1/jwks",
		"file:///etc/passwd",
		"//example.invalid/jwks",
		"example.invalid/jwks",
		"",
		"https://[::1",
	} {
		t.Run(u, func(t *testing.T) {
			clock := newTestClock()
			j := NewJWKS(u, WithJWKSHTTPClient(jwksNoNetwork(t)), WithJWKSClock(clock.Now))
			if keys, err := j.PublicKeys(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
				t.Errorf("JWKS URL %q: %d keys, error %v; want ErrKeysUnavailable", u, len(keys), err)
			}
			v := NewVerifier(WithJWKSURL(u), WithHTTPClient(jwksNoNetwork(t)), WithClock(clock.Now))
			if err := jwksVerify(context.Background(), v, faltest.SignerFromName("http"), clock); !errors.Is(err, ErrKeysUnavailable) {
				t.Errorf("Verifier with JWKS URL %q: error %v; want ErrKeysUnavailable", u, err)
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
		"http://localhost/jwks",
		"http://localhost:8080/jwks",
		"http://127.0.0.1/jwks",
		"http://127.9.9.9:1/jwks",
		"http://[::1]:1/jwks",
	} {
		t.Run(u, func(t *testing.T) {
			calls := 0
			client := &http.Client{Transport: jwksRoundTripper(func(r *http.Request) (*http.Response, error) {
				calls++
				return &http.Response{
					StatusCode: http.StatusOK,
					Header:     http.Header{"Content-Type": {"application/json"}},
					Body:       io.NopCloser(bytes.NewReader(faltest.JWKS(signer))),
					Request:    r,
				}, nil
			})}
			j := NewJWKS(u, WithJWKSHTTPClient(client), WithJWKSClock(newTestClock().Now))
			if keys, err := j.PublicKeys(context.Background()); err != nil || len(keys) != 1 {
				t.Errorf("JWKS URL %q: %d keys, %v; want 1 key", u, len(keys), err)
			}
			if calls != 1 {
				t.Errorf("JWKS URL %q: %d requests, want 1", u, calls)
			}
		})
	}
}

func TestJWKSRefusesRedirectToPlainHTTP(t *testing.T) {
	signer := faltest.SignerFromName("redirect")
	mux := http.NewServeMux()
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(faltest.JWKS(signer))
	})
	mux.HandleFunc("/to-plain-http", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.invalid/jwks", http.StatusFound)
	})
	mux.HandleFunc("/to-ftp", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "ftp://127.0.0.1/jwks", http.StatusFound)
	})
	mux.HandleFunc("/to-loopback", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/jwks", http.StatusFound)
	})
	srv := httptest.NewServer(mux) // the key server cannot redirect
	defer srv.Close()

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
	tests := []struct {
		path    string
		wantErr error
	}{
		{"/to-plain-http", ErrKeysUnavailable},
		{"/to-ftp", ErrKeysUnavailable},
		{"/to-loopback", nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			for _, client := range []struct {
				name string
				opts []JWKSOption
			}{
				{"caller's client", []JWKSOption{WithJWKSHTTPClient(loopbackOnly(t))}},
				{"caller's client with its own CheckRedirect", []JWKSOption{WithJWKSHTTPClient(func() *http.Client {
					c := loopbackOnly(t)
					c.CheckRedirect = func(*http.Request, []*http.Request) error { return nil }
					return c
				}())}},
			} {
				j := NewJWKS(srv.URL+tt.path, append(client.opts, WithJWKSClock(newTestClock().Now))...)
				keys, err := j.PublicKeys(context.Background())
				if tt.wantErr == nil {
					if err != nil || len(keys) != 1 {
						t.Errorf("%s: redirect to loopback http: %d keys, %v; want 1 key", client.name, len(keys), err)
					}
					continue
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("%s: redirect refused? error = %v, want %v", client.name, err, tt.wantErr)
				}
			}
		})
	}
}

func TestJWKSStats(t *testing.T) {
	a, b := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	ks := faltest.NewKeyServer(a, b)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	ctx := context.Background()

	if st := j.Stats(); st != (JWKSStats{}) {
		t.Errorf("Stats() of a new cache = %+v, want zero", st)
	}
	jwksWantFetches(t, ks, 0, "NewJWKS")

	t0 := clock.Now()
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	want := JWKSStats{Fetches: 1, LastSuccess: t0, Keys: 2, Expiry: t0.Add(DefaultJWKSTTL)}
	if st := j.Stats(); st != want {
		t.Errorf("Stats() after a fetch = %+v, want %+v", st, want)
	}

	clock.Advance(time.Minute)
	ks.FailNext(1, http.StatusBadGateway)
	if err := j.Refresh(ctx); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Refresh against a failing server: error = %v, want ErrKeysUnavailable", err)
	}
	st := j.Stats()
	if st.LastError == nil {
		t.Errorf("Stats().LastError is nil after a failed fetch")
	}
	st.LastError = nil
	want = JWKSStats{Fetches: 2, Failures: 1, LastSuccess: t0, Keys: 2, Expiry: t0.Add(DefaultJWKSTTL)}
	if st != want {
		t.Errorf("Stats() after a failed fetch = %+v, want %+v (old keys kept)", st, want)
	}

	clock.Advance(time.Minute)
	t2 := clock.Now()
	ks.SetSigners(b)
	if err := j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	want = JWKSStats{Fetches: 3, Failures: 1, LastSuccess: t2, Keys: 1, Expiry: t2.Add(DefaultJWKSTTL)}
	if st := j.Stats(); st != want {
		t.Errorf("Stats() after a recovery = %+v, want %+v", st, want)
	}
	if got := int64(ks.Fetches()); got != j.Stats().Fetches {
		t.Errorf("Stats().Fetches = %d, key server saw %d", j.Stats().Fetches, got)
	}
}

func TestJWKSRefreshHook(t *testing.T) {
	signer := faltest.SignerFromName("hook")
	ks := faltest.NewKeyServer(signer)
	defer ks.Close()
	ks.SetCacheControl("max-age=600")
	clock := newTestClock()
	infos := make(chan RefreshInfo, 10)
	j := jwksTestCache(ks, clock, WithRefreshHook(func(ri RefreshInfo) { infos <- ri }))
	ctx := context.Background()

	next := func() RefreshInfo {
		t.Helper()
		select {
		case ri := <-infos:
			return ri
		case <-time.After(10 * time.Second):
			t.Fatal("refresh hook not called after a fetch")
			return RefreshInfo{}
		}
	}

	t0 := clock.Now()
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if ri := next(); ri.URL != ks.URL || !ri.Start.Equal(t0) || ri.Keys != 1 || !ri.Expiry.Equal(t0.Add(10*time.Minute)) || ri.Err != nil {
		t.Errorf("hook after a successful fetch got %+v", ri)
	}

	clock.Advance(time.Minute)
	ks.FailNext(1, http.StatusInternalServerError)
	_ = j.Refresh(ctx)
	if ri := next(); ri.Err == nil || ri.Keys != 0 || !ri.Expiry.IsZero() || !ri.Start.Equal(t0.Add(time.Minute)) {
		t.Errorf("hook after a failed fetch got %+v", ri)
	}

	// No fetch, no call.
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case ri := <-infos:
		t.Errorf("hook called without a fetch: %+v", ri)
	default:
	}
	if got := ks.Fetches(); got != 2 {
		t.Errorf("key server saw %d fetches, want 2", got)
	}
}

func TestJWKSRefreshForcesFetch(t *testing.T) {
	a, b := jwksGoldenSigner(t, "A"), jwksGoldenSigner(t, "B")
	ks := faltest.NewKeyServer(a)
	defer ks.Close()
	clock := newTestClock()
	j := jwksTestCache(ks, clock)
	ctx := context.Background()

	if err := j.Refresh(ctx); err != nil {
		t.Fatalf("Refresh on a cold cache: %v", err)
	}
	if _, err := j.PublicKeys(ctx); err != nil {
		t.Fatal(err)
	}
	jwksWantFetches(t, ks, 1, "Refresh warmed the cache")

	// Fresh keys and inside every cooldown: Refresh still fetches.
	ks.SetSigners(b)
	if err := j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	jwksWantFetches(t, ks, 2, "Refresh of a fresh cache")
	keys, err := j.PublicKeys(ctx)
	if err != nil || len(keys) != 1 || !keys[0].Equal(b.PublicKey()) {
		t.Fatalf("after Refresh PublicKeys = %d keys, %v; want only key B", len(keys), err)
	}

	// RefreshKeys, in contrast, declines inside the cooldown.
	if keys, refreshed, err := j.RefreshKeys(ctx); refreshed || err != nil || len(keys) != 1 || !keys[0].Equal(b.PublicKey()) {
		t.Errorf("RefreshKeys inside the cooldown = %d keys, refreshed %v, %v; want declined, with the cached key B", len(keys), refreshed, err)
	}
	jwksWantFetches(t, ks, 2, "RefreshKeys inside the cooldown")
	clock.Advance(DefaultCooldown)
	if keys, refreshed, err := j.RefreshKeys(ctx); !refreshed || err != nil || len(keys) != 1 {
		t.Errorf("RefreshKeys after the cooldown = %d keys, refreshed %v, %v; want a refresh", len(keys), refreshed, err)
	}
	jwksWantFetches(t, ks, 3, "RefreshKeys after the cooldown")
}

func TestJWKSDefaults(t *testing.T) {
	j := NewJWKS(DefaultJWKSURL)
	if j.URL() != DefaultJWKSURL {
		t.Errorf("URL() = %q, want %q", j.URL(), DefaultJWKSURL)
	}
	if st := j.Stats(); st != (JWKSStats{}) {
		t.Errorf("NewJWKS did I/O or set state: Stats() = %+v", st)
	}
	if !strings.Contains(j.String(), DefaultJWKSURL) {
		t.Errorf("String() = %q does not name the URL", j.String())
	}
}
