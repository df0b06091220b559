package falwebhook

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
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
	// Duplicates do not count: the same key 1000 times is one key.
	same := entries(1)
	var many []string
	for range 1000 {
		many = append(many, same[0])
	}
	if keys, err := ParseJWKS(jwksDoc(many...)); err != nil || len(keys) != 1 {
		t.Fatalf("one key 1000 times: %d keys, %v; want 1", len(keys), err)
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
