package falwebhook

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// t0 is the fixed "now" of these tests.
var t0 = time.Unix(1_700_000_000, 0)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// countingSource is a KeySource that counts lookups.
type countingSource struct {
	keys  []ed25519.PublicKey
	err   error
	calls atomic.Int64
}

func (c *countingSource) PublicKeys(context.Context) ([]ed25519.PublicKey, error) {
	c.calls.Add(1)
	return c.keys, c.err
}

// delivery is one signed request for the table tests.
type delivery struct {
	h    http.Header
	body []byte
}

func signed(s *faltest.Signer, requestID, userID string, at time.Time, body []byte) delivery {
	h := http.Header{}
	s.Sign(faltest.Delivery{RequestID: requestID, UserID: userID, Time: at, Body: body}).Set(h)
	return delivery{h: h, body: body}
}

const testBody = `{"request_id": "req-1", "status": "OK", "payload": {"seed": 17454220438242315174}, "error": null}`

func TestVerifyRules(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	other := faltest.SignerFromName("verify-other")
	base := func() delivery { return signed(signer, "req-1", "user-1", t0, []byte(testBody)) }
	// sig re-signs d's message after its headers were changed, so that only
	// the rule under test can reject it.
	resign := func(d *delivery) {
		msg := faltest.Message(d.h.Get(HeaderRequestID), d.h.Get(HeaderUserID), d.h.Get(HeaderTimestamp), d.body)
		d.h.Set(HeaderSignature, hex.EncodeToString(signer.SignMessage(msg)))
	}
	at := func(sec int64) func(*delivery) {
		return func(d *delivery) { *d = signed(signer, "req-1", "user-1", time.Unix(sec, 0), d.body) }
	}

	tests := []struct {
		name    string
		mutate  func(*delivery)
		wantErr error // nil: accepted
	}{
		{"genuine", func(*delivery) {}, nil},
		{"lower-case header keys built by hand", func(d *delivery) {
			h := http.Header{}
			for k, v := range d.h {
				h[strings.ToLower(k)] = v
			}
			d.h = h
		}, nil},
		{"upper-case signature hex", func(d *delivery) { d.h.Set(HeaderSignature, strings.ToUpper(d.h.Get(HeaderSignature))) }, nil},
		{"signature with surrounding spaces", func(d *delivery) { d.h.Set(HeaderSignature, " "+d.h.Get(HeaderSignature)+"\t") }, nil},
		{"timestamp with leading zeros, signed so", func(d *delivery) { d.h.Set(HeaderTimestamp, "000"+d.h.Get(HeaderTimestamp)); resign(d) }, nil},
		{"empty body", func(d *delivery) { *d = signed(signer, "req-1", "user-1", t0, []byte{}) }, nil},
		{"unicode user id", func(d *delivery) { *d = signed(signer, "req-1", "üser-ß", t0, d.body) }, nil},

		{"request id absent", func(d *delivery) { d.h.Del(HeaderRequestID) }, ErrMissingHeader},
		{"user id absent", func(d *delivery) { d.h.Del(HeaderUserID) }, ErrMissingHeader},
		{"timestamp absent", func(d *delivery) { d.h.Del(HeaderTimestamp) }, ErrMissingHeader},
		{"signature absent", func(d *delivery) { d.h.Del(HeaderSignature) }, ErrMissingHeader},
		{"request id empty", func(d *delivery) { d.h.Set(HeaderRequestID, "") }, ErrMissingHeader},
		{"user id empty", func(d *delivery) { d.h.Set(HeaderUserID, "") }, ErrMissingHeader},
		{"timestamp empty", func(d *delivery) { d.h.Set(HeaderTimestamp, "") }, ErrMissingHeader},
		{"signature empty", func(d *delivery) { d.h.Set(HeaderSignature, "") }, ErrMissingHeader},
		{"no headers at all", func(d *delivery) { d.h = http.Header{} }, ErrMissingHeader},

		{"request id sent twice, equal values", func(d *delivery) { d.h.Add(HeaderRequestID, d.h.Get(HeaderRequestID)) }, ErrMalformedHeader},
		{"user id sent twice", func(d *delivery) { d.h.Add(HeaderUserID, "user-2") }, ErrMalformedHeader},
		{"timestamp sent twice", func(d *delivery) { d.h.Add(HeaderTimestamp, d.h.Get(HeaderTimestamp)) }, ErrMalformedHeader},
		{"signature sent twice", func(d *delivery) { d.h.Add(HeaderSignature, d.h.Get(HeaderSignature)) }, ErrMalformedHeader},
		{"signature twice under two spellings", func(d *delivery) {
			d.h["x-fal-webhook-signature"] = []string{d.h.Get(HeaderSignature)}
		}, ErrMalformedHeader},

		{"newline in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\n1"); resign(d) }, ErrMalformedHeader},
		{"carriage return in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\r1"); resign(d) }, ErrMalformedHeader},
		{"NUL in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\x001"); resign(d) }, ErrMalformedHeader},
		{"DEL in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\x7f"); resign(d) }, ErrMalformedHeader},
		{"C1 control NEL in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\u0085"); resign(d) }, ErrMalformedHeader},
		{"tab in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\t1"); resign(d) }, ErrMalformedHeader},
		{"newline in timestamp", func(d *delivery) { d.h.Set(HeaderTimestamp, d.h.Get(HeaderTimestamp)+"\n"); resign(d) }, ErrMalformedHeader},

		{"timestamp with plus sign", func(d *delivery) { d.h.Set(HeaderTimestamp, "+1700000000"); resign(d) }, ErrMalformedHeader},
		{"negative timestamp", func(d *delivery) { d.h.Set(HeaderTimestamp, "-1"); resign(d) }, ErrMalformedHeader},
		{"timestamp with leading space", func(d *delivery) { d.h.Set(HeaderTimestamp, " 1700000000"); resign(d) }, ErrMalformedHeader},
		{"timestamp in exponent form", func(d *delivery) { d.h.Set(HeaderTimestamp, "1.7e9"); resign(d) }, ErrMalformedHeader},
		{"timestamp in hex", func(d *delivery) { d.h.Set(HeaderTimestamp, "0x6553f100"); resign(d) }, ErrMalformedHeader},
		{"timestamp not a number", func(d *delivery) { d.h.Set(HeaderTimestamp, "abc"); resign(d) }, ErrMalformedHeader},
		{"timestamp NaN", func(d *delivery) { d.h.Set(HeaderTimestamp, "NaN"); resign(d) }, ErrMalformedHeader},
		{"timestamp with fraction", func(d *delivery) { d.h.Set(HeaderTimestamp, "1700000000.5"); resign(d) }, ErrMalformedHeader},
		{"timestamp overflowing int64", func(d *delivery) { d.h.Set(HeaderTimestamp, "9223372036854775808"); resign(d) }, ErrMalformedHeader},
		{"timestamp of int64 max", func(d *delivery) { d.h.Set(HeaderTimestamp, "9223372036854775807"); resign(d) }, ErrTimestampOutOfRange},
		{"timestamp in milliseconds", func(d *delivery) { d.h.Set(HeaderTimestamp, "1700000000000"); resign(d) }, ErrTimestampOutOfRange},
		{"timestamp zero", func(d *delivery) { d.h.Set(HeaderTimestamp, "0"); resign(d) }, ErrTimestampOutOfRange},

		{"exactly 300 s old", at(t0.Unix() - 300), nil},
		{"exactly 300 s ahead", at(t0.Unix() + 300), nil},
		{"301 s old", at(t0.Unix() - 301), ErrTimestampOutOfRange},
		{"301 s ahead", at(t0.Unix() + 301), ErrTimestampOutOfRange},

		{"signature with 0x prefix", func(d *delivery) { d.h.Set(HeaderSignature, "0x"+d.h.Get(HeaderSignature)[2:]) }, ErrMalformedHeader},
		{"signature of 127 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)[1:]) }, ErrMalformedHeader},
		{"signature of 129 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)+"0") }, ErrMalformedHeader},
		{"signature of 130 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)+"00") }, ErrMalformedHeader},
		{"signature with an inner space", func(d *delivery) {
			s := d.h.Get(HeaderSignature)
			d.h.Set(HeaderSignature, s[:64]+" "+s[65:])
		}, ErrMalformedHeader},
		{"signature with a non-hex digit", func(d *delivery) { d.h.Set(HeaderSignature, "g"+d.h.Get(HeaderSignature)[1:]) }, ErrMalformedHeader},
		{"signature in base64", func(d *delivery) {
			raw, _ := hex.DecodeString(d.h.Get(HeaderSignature))
			d.h.Set(HeaderSignature, base64.StdEncoding.EncodeToString(raw))
		}, ErrMalformedHeader},

		{"tampered body", func(d *delivery) { d.body = []byte(strings.Replace(string(d.body), "OK", "ER", 1)) }, ErrSignatureMismatch},
		{"body with a trailing newline", func(d *delivery) { d.body = append(d.body, '\n') }, ErrSignatureMismatch},
		{"body re-serialized", func(d *delivery) {
			var v any
			_ = json.Unmarshal(d.body, &v)
			d.body, _ = json.Marshal(v)
		}, ErrSignatureMismatch},
		{"changed request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req-2") }, ErrSignatureMismatch},
		{"changed user id", func(d *delivery) { d.h.Set(HeaderUserID, "user-2") }, ErrSignatureMismatch},
		{"changed timestamp, same instant", func(d *delivery) { d.h.Set(HeaderTimestamp, "0"+d.h.Get(HeaderTimestamp)) }, ErrSignatureMismatch},
		{"changed timestamp within window", func(d *delivery) { d.h.Set(HeaderTimestamp, fmt.Sprint(t0.Unix()+1)) }, ErrSignatureMismatch},
		{"signed by an unknown key", func(d *delivery) { *d = signed(other, "req-1", "user-1", t0, d.body) }, ErrSignatureMismatch},
		{"signature bytes flipped", func(d *delivery) {
			raw, _ := hex.DecodeString(d.h.Get(HeaderSignature))
			raw[10] ^= 1
			d.h.Set(HeaderSignature, hex.EncodeToString(raw))
		}, ErrSignatureMismatch},
		{"fields shifted across the newline", func(d *delivery) {
			// "a\nb","c" and "a","b\nc" sign the same bytes: the control
			// character rule is what keeps this out.
			*d = signed(signer, "req", "1\nuser-1", t0, d.body)
			d.h.Set(HeaderRequestID, "req\n1")
			d.h.Set(HeaderUserID, "user-1")
		}, ErrMalformedHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &countingSource{keys: []ed25519.PublicKey{signer.PublicKey()}}
			v := NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
			d := base()
			tt.mutate(&d)
			err := v.Verify(context.Background(), d.h, d.body)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("genuine delivery rejected: %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatalf("delivery accepted, want %v", tt.wantErr)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			cheap := errors.Is(err, ErrMissingHeader) || errors.Is(err, ErrMalformedHeader) || errors.Is(err, ErrTimestampOutOfRange)
			if n := src.calls.Load(); cheap && n != 0 {
				t.Errorf("junk caused %d key lookups, want 0", n)
			}
		})
	}
}

func TestVerifyErrorDetail(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	v := NewVerifier(WithKeys(signer.PublicKey()), WithClock(fixedClock(t0)))
	d := signed(signer, "req-1", "user-1", t0.Add(-10*time.Minute), []byte(testBody))

	err := v.Verify(context.Background(), d.h, d.body)
	var te *TimestampError
	if !errors.As(err, &te) {
		t.Fatalf("stale delivery: got %v, want a *TimestampError", err)
	}
	if te.Skew() != -600 || te.Tolerance != DefaultTolerance {
		t.Errorf("skew %d tolerance %s, want -600 and %s", te.Skew(), te.Tolerance, DefaultTolerance)
	}
	if !strings.Contains(err.Error(), "-600s") {
		t.Errorf("error %q does not say the skew", err)
	}

	d.h.Del(HeaderUserID)
	if err := v.Verify(context.Background(), d.h, d.body); !strings.Contains(fmt.Sprint(err), HeaderUserID) {
		t.Errorf("error %q does not name the missing header", err)
	}

	d = signed(faltest.SignerFromName("stranger"), "req-1", "user-1", t0, []byte(testBody))
	if err := v.Verify(context.Background(), d.h, d.body); !strings.Contains(fmt.Sprint(err), "1 key") {
		t.Errorf("error %q does not say how many keys were tried", err)
	}
}

func TestTimestampErrorSkewSaturates(t *testing.T) {
	e := &TimestampError{Timestamp: maxInt64, Now: -10}
	if e.Skew() != maxInt64 {
		t.Errorf("skew overflowed: %d", e.Skew())
	}
	e = &TimestampError{Timestamp: 0, Now: 1_700_000_000}
	if e.Skew() != -1_700_000_000 {
		t.Errorf("skew %d, want -1700000000", e.Skew())
	}
}

func TestWithTolerance(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	d := signed(signer, "req-1", "user-1", t0.Add(-30*time.Second), []byte(testBody))
	for _, tt := range []struct {
		tol     time.Duration
		wantErr error
	}{
		{10 * time.Second, ErrTimestampOutOfRange},
		{30 * time.Second, nil},
		{30*time.Second + 900*time.Millisecond, nil},
		{0, nil}, // default
		{-time.Second, nil},
	} {
		v := NewVerifier(WithKeys(signer.PublicKey()), WithClock(fixedClock(t0)), WithTolerance(tt.tol))
		if err := v.Verify(context.Background(), d.h, d.body); !errors.Is(err, tt.wantErr) {
			t.Errorf("tolerance %s, skew 30s: got %v, want %v", tt.tol, err, tt.wantErr)
		}
	}
}

func TestVerifyHeaders(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	body := []byte(testBody)
	hs := Headers(signer.Sign(faltest.Delivery{RequestID: "req-1", UserID: "user-1", Time: t0, Body: body}))
	v := NewVerifier(WithKeys(signer.PublicKey()), WithClock(fixedClock(t0)))
	if err := v.VerifyHeaders(context.Background(), hs, body); err != nil {
		t.Fatalf("genuine delivery rejected: %v", err)
	}
	bad := hs
	bad.UserID = ""
	if err := v.VerifyHeaders(context.Background(), bad, body); !errors.Is(err, ErrMissingHeader) {
		t.Errorf("empty user id: got %v, want ErrMissingHeader", err)
	}
	if err := v.VerifyHeaders(context.Background(), hs, append(body, ' ')); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("tampered body accepted or misreported: %v", err)
	}
}

func TestKeySources(t *testing.T) {
	a, b, c := faltest.SignerFromName("k-a"), faltest.SignerFromName("k-b"), faltest.SignerFromName("k-c")
	d := signed(c, "req-1", "user-1", t0, []byte(testBody))
	ctx := context.Background()

	tests := []struct {
		name    string
		opt     Option
		wantErr error
	}{
		{"third of three keys", WithKeys(a.PublicKey(), b.PublicKey(), c.PublicKey()), nil},
		{"short keys skipped", WithKeys(ed25519.PublicKey{1, 2, 3}, c.PublicKey()), nil},
		{"no keys", WithKeys(), ErrNoUsableKeys},
		{"only a short key", WithKeys(ed25519.PublicKey{1, 2, 3}), ErrNoUsableKeys},
		{"only a 64-byte private key", WithKeys(ed25519.PublicKey(c.PrivateKey())), ErrNoUsableKeys},
		{"wrong keys", WithKeys(a.PublicKey(), b.PublicKey()), ErrSignatureMismatch},
		{"source fails", WithKeySource(&countingSource{err: errors.New("disk on fire")}), ErrKeysUnavailable},
		{"source returns an empty list", WithKeySource(&countingSource{}), ErrNoUsableKeys},
		{"source returns junk keys", WithKeySource(&countingSource{keys: []ed25519.PublicKey{nil, {0}}}), ErrNoUsableKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := NewVerifier(tt.opt, WithClock(fixedClock(t0)))
			for i := 0; i < 3; i++ { // again, to exercise the last-key hint
				err := v.Verify(ctx, d.h, d.body)
				if (tt.wantErr == nil) != (err == nil) || !errors.Is(err, tt.wantErr) {
					t.Fatalf("try %d: got %v, want %v", i, err, tt.wantErr)
				}
			}
		})
	}
}

func TestLastKeyHint(t *testing.T) {
	a, b := faltest.SignerFromName("k-a"), faltest.SignerFromName("k-b")
	v := NewVerifier(WithKeys(a.PublicKey(), b.PublicKey()), WithClock(fixedClock(t0)))
	ctx := context.Background()
	for i, s := range []*faltest.Signer{b, b, a, b, a, a} {
		d := signed(s, fmt.Sprint("req-", i), "user-1", t0, []byte(testBody))
		if err := v.Verify(ctx, d.h, d.body); err != nil {
			t.Fatalf("delivery %d rejected: %v", i, err)
		}
	}
	// A source whose key list shrinks under the hint must not go out of range.
	src := &countingSource{keys: []ed25519.PublicKey{a.PublicKey(), b.PublicKey()}}
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	d := signed(b, "req-1", "user-1", t0, []byte(testBody))
	if err := v.Verify(ctx, d.h, d.body); err != nil {
		t.Fatal(err)
	}
	src.keys = []ed25519.PublicKey{a.PublicKey()}
	if err := v.Verify(ctx, d.h, d.body); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("removed key still verifies: %v", err)
	}
}

// refreshingSource is a KeyRefresher whose refresh returns next.
type refreshingSource struct {
	countingSource
	next      []ed25519.PublicKey
	refreshed bool
	err       error
	refreshes atomic.Int64
}

func (r *refreshingSource) RefreshKeys(context.Context) ([]ed25519.PublicKey, bool, error) {
	r.refreshes.Add(1)
	return r.next, r.refreshed, r.err
}

func TestRefreshOnMismatch(t *testing.T) {
	old, rotated := faltest.SignerFromName("old"), faltest.SignerFromName("rotated")
	d := signed(rotated, "req-1", "user-1", t0, []byte(testBody))
	ctx := context.Background()

	src := &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}, next: []ed25519.PublicKey{rotated.PublicKey()}, refreshed: true}
	v := NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	if err := v.Verify(ctx, d.h, d.body); err != nil {
		t.Fatalf("rotated key not picked up by the refresh: %v", err)
	}
	if n := src.refreshes.Load(); n != 1 {
		t.Errorf("%d refreshes, want 1", n)
	}

	src = &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}, refreshed: false}
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	if err := v.Verify(ctx, d.h, d.body); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("declined refresh: got %v, want ErrSignatureMismatch", err)
	}

	// Declined, but keys fetched meanwhile by someone else are used.
	src = &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}, next: []ed25519.PublicKey{rotated.PublicKey()}, refreshed: false}
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	if err := v.Verify(ctx, d.h, d.body); err != nil {
		t.Errorf("declined refresh with newer keys: %v", err)
	}

	// Declined, returning the very keys already tried: no second attempt.
	src = &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}}
	src.next = src.keys
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	if err := v.Verify(ctx, d.h, d.body); !errors.Is(err, ErrSignatureMismatch) || !strings.Contains(err.Error(), "none of 1 keys verified") {
		t.Errorf("declined refresh with the same keys: got %v", err)
	}

	src = &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}, err: errors.New("down")}
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	err := v.Verify(ctx, d.h, d.body)
	if !errors.Is(err, ErrSignatureMismatch) || !strings.Contains(err.Error(), "down") {
		t.Errorf("failed refresh: got %v, want ErrSignatureMismatch naming the cause", err)
	}

	// Junk never triggers a refresh.
	src = &refreshingSource{countingSource: countingSource{keys: []ed25519.PublicKey{old.PublicKey()}}, refreshed: true}
	v = NewVerifier(WithKeySource(src), WithClock(fixedClock(t0)))
	d.h.Set(HeaderSignature, "zz")
	_ = v.Verify(ctx, d.h, d.body)
	if n := src.refreshes.Load() + src.calls.Load(); n != 0 {
		t.Errorf("malformed signature caused %d key lookups", n)
	}
}

func TestParseHeaders(t *testing.T) {
	h := http.Header{}
	h["x-fal-webhook-request-id"] = []string{"r"}
	h["X-FAL-WEBHOOK-USER-ID"] = []string{"u"}
	h.Set(HeaderTimestamp, "1")
	h.Set(HeaderSignature, "s")
	h.Set("X-Fal-Webhook-Other", "ignored")
	h.Set("X-Fal-Webhook-", "ignored")
	got, err := ParseHeaders(h)
	if err != nil {
		t.Fatal(err)
	}
	want := Headers{RequestID: "r", UserID: "u", Timestamp: "1", Signature: "s"}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	back := http.Header{}
	got.Set(back)
	if again, err := ParseHeaders(back); err != nil || again != want {
		t.Errorf("Set then ParseHeaders: %+v, %v", again, err)
	}
	h[HeaderRequestID] = []string{} // present with no value
	delete(h, "x-fal-webhook-request-id")
	if _, err := ParseHeaders(h); !errors.Is(err, ErrMissingHeader) {
		t.Errorf("header with no values: got %v, want ErrMissingHeader", err)
	}
}

// goldenFile is testdata/golden/vectors.json, made by sign.mjs beside it
// with node:crypto.
type goldenFile struct {
	Keys []struct {
		Name      string `json:"name"`
		SeedHex   string `json:"seed_hex"`
		PublicHex string `json:"public_hex"`
		X         string `json:"x"` // base64url, unpadded
	} `json:"keys"`
	JWKS    json.RawMessage `json:"jwks"`
	Vectors []struct {
		Name      string `json:"name"`
		Key       string `json:"key"`
		RequestID string `json:"request_id"`
		UserID    string `json:"user_id"`
		Timestamp string `json:"timestamp"`
		BodyB64   string `json:"body_b64"`
		BodySHA   string `json:"body_sha256_hex"`
		Message   string `json:"message"`
		Signature string `json:"signature_hex"`
	} `json:"vectors"`
}

func loadGolden(tb testing.TB) goldenFile {
	tb.Helper()
	data, err := os.ReadFile("testdata/golden/vectors.json")
	if err != nil {
		tb.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(data, &g); err != nil {
		tb.Fatal(err)
	}
	if len(g.Vectors) < 10 {
		tb.Fatalf("only %d golden vectors", len(g.Vectors))
	}
	return g
}

// TestGolden checks deliveries signed by an independent implementation
// (node:crypto): the message is rebuilt byte for byte, and every signature by
// a key in the vectors' JWKS verifies.
func TestGolden(t *testing.T) {
	g := loadGolden(t)
	keys, err := ParseJWKS(g.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	inJWKS := map[string]bool{}
	for _, k := range g.Keys {
		for _, pk := range keys {
			if hex.EncodeToString(pk) == k.PublicHex {
				inJWKS[k.Name] = true
			}
		}
	}
	for _, vec := range g.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			body, err := base64.StdEncoding.DecodeString(vec.BodyB64)
			if err != nil {
				t.Fatal(err)
			}
			if msg := string(AppendMessage(nil, vec.RequestID, vec.UserID, vec.Timestamp, body)); msg != vec.Message {
				t.Fatalf("message differs from node's:\n got %q\nwant %q", msg, vec.Message)
			}
			ts, _ := parseDigits(vec.Timestamp)
			v := NewVerifier(WithKeys(keys...), WithClock(fixedClock(time.Unix(ts, 0))))
			hs := Headers{RequestID: vec.RequestID, UserID: vec.UserID, Timestamp: vec.Timestamp, Signature: vec.Signature}
			err = v.VerifyHeaders(context.Background(), hs, body)
			if inJWKS[vec.Key] && err != nil {
				t.Fatalf("genuine golden delivery rejected: %v", err)
			}
			if !inJWKS[vec.Key] && !errors.Is(err, ErrSignatureMismatch) {
				t.Fatalf("delivery signed by a key outside the JWKS: got %v, want ErrSignatureMismatch", err)
			}
			if len(body) > 0 {
				body[len(body)/2] ^= 0x20
				if err := v.VerifyHeaders(context.Background(), hs, body); !errors.Is(err, ErrSignatureMismatch) {
					t.Fatalf("tampered body: got %v, want ErrSignatureMismatch", err)
				}
			}
		})
	}
}

// FuzzVerify checks that Verify never panics, accepts every genuine delivery
// with well-formed identifiers, and never accepts one whose body or headers
// were changed after signing.
func FuzzVerify(f *testing.F) {
	g := loadGolden(f)
	for _, vec := range g.Vectors {
		body, _ := base64.StdEncoding.DecodeString(vec.BodyB64)
		f.Add(vec.RequestID, vec.UserID, vec.Timestamp, vec.Signature, body, uint16(7))
	}
	f.Add("a\nb", "c", "1700000000", "", []byte("{}"), uint16(0))
	f.Add("", "", "+1", "0x00", []byte(nil), uint16(1))

	signer := faltest.SignerFromName("fuzz")
	v := NewVerifier(WithKeys(signer.PublicKey()), WithClock(fixedClock(t0)))
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, requestID, userID, timestamp, signature string, body []byte, flip uint16) {
		// Arbitrary input: must not panic, and anything accepted must carry
		// a real signature over exactly these inputs.
		hs := Headers{RequestID: requestID, UserID: userID, Timestamp: timestamp, Signature: signature}
		if err := v.VerifyHeaders(ctx, hs, body); err == nil {
			sig, _ := hex.DecodeString(strings.Trim(signature, " \t"))
			if !ed25519.Verify(signer.PublicKey(), faltest.Message(requestID, userID, timestamp, body), sig) {
				t.Fatalf("accepted a delivery without a valid signature: %+v", hs)
			}
		}

		// Genuine signature over the fuzzed identifiers and body.
		good := Headers(signer.Sign(faltest.Delivery{RequestID: requestID, UserID: userID, Time: t0, Body: body}))
		good.RequestID, good.UserID = requestID, userID // no defaults
		good.Signature = hex.EncodeToString(signer.SignMessage(faltest.Message(requestID, userID, good.Timestamp, body)))
		err := v.VerifyHeaders(ctx, good, body)
		wellFormed := requestID != "" && userID != "" && controlIndex(requestID) < 0 && controlIndex(userID) < 0
		if wellFormed && err != nil {
			t.Fatalf("genuine delivery rejected: %v", err)
		}
		if !wellFormed && err == nil {
			t.Fatalf("malformed identifiers accepted: %q %q", requestID, userID)
		}
		if err != nil {
			return
		}
		changed := append([]byte(nil), body...)
		if len(changed) > 0 {
			i := int(flip) % len(changed)
			changed[i] ^= byte(1 + flip%255)
		} else {
			changed = append(changed, byte(flip))
		}
		if v.VerifyHeaders(ctx, good, changed) == nil {
			t.Fatalf("changed body accepted")
		}
		for i, mutate := range []func(*Headers){
			func(h *Headers) { h.RequestID += "x" },
			func(h *Headers) { h.UserID = "x" + h.UserID },
			func(h *Headers) { h.Timestamp = "0" + h.Timestamp },
		} {
			h := good
			mutate(&h)
			if v.VerifyHeaders(ctx, h, body) == nil {
				t.Fatalf("changed header %d accepted: %+v", i, h)
			}
		}
	})
}
