package edkey

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"filippo.io/edwards25519"
)

// mustHex decodes a hex constant of the tests.
func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// The 8 points of small order (their order divides 8), canonically encoded:
// the identity, the point of order 2, the 2 of order 4 and the 4 of order 8.
var smallOrder = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity (y = 1)
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2 (y = p-1)
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4 (y = 0)
	"0000000000000000000000000000000000000000000000000000000000000080", // order 4 (y = 0, x < 0)
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
}

// The non-canonical encodings of small-order points that crypto/ed25519
// decodes: y + p where it fits in 255 bits (y = 0 and y = 1), and the sign
// bit set on the two points with x = 0.
var smallOrderNonCanonical = []string{
	"0100000000000000000000000000000000000000000000000000000000000080", // identity, x = 0 with the sign bit
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // order 2, x = 0 with the sign bit
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // identity, y = p+1
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // identity, y = p+1, sign bit
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 4, y = p
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // order 4, y = p, sign bit
}

// Non-canonical encodings (y ≥ p) of points that are not of small order.
var nonCanonical = []string{
	"f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+3
	"f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // y = p+3, sign bit
	"f1ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+4
	"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+18, the largest
	"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // y = p+18, sign bit
}

// Encodings that are not points: no x satisfies the curve equation.
var notOnCurve = []string{
	"0200000000000000000000000000000000000000000000000000000000000000", // y = 2
	"efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p+2
	"0700000000000000000000000000000000000000000000000000000000000080", // y = 7, sign bit
}

const (
	identityKey = "0100000000000000000000000000000000000000000000000000000000000000"
	basePoint   = "5866666666666666666666666666666666666666666666666666666666666666"
	order8Point = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
	order2Point = "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
)

// seedKey returns a deterministic key pair.
func seedKey(b byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

// genuine returns a usable key, a message and its signature by the key.
func genuine(t testing.TB) (*PublicKey, []byte, []byte) {
	t.Helper()
	pub, priv := seedKey(3)
	k, err := New(pub)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("message")
	return k, msg, ed25519.Sign(priv, msg)
}

// point decodes a hex point of the tests.
func point(t testing.TB, s string) *edwards25519.Point {
	t.Helper()
	p, err := new(edwards25519.Point).SetBytes(mustHex(s))
	if err != nil {
		t.Fatalf("point %s: %v", s, err)
	}
	return p
}

// mixedKey returns pub + t: a key of mixed order when t is of small order.
func mixedKey(t testing.TB, pub []byte, torsion string) []byte {
	t.Helper()
	a, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		t.Fatal(err)
	}
	return new(edwards25519.Point).Add(a, point(t, torsion)).Bytes()
}

// TestSmallOrderTables checks the tables against edwards25519: the canonical
// ones are exactly the multiples of a point of order 8, and every entry of
// the non-canonical ones decodes to one of them.
func TestSmallOrderTables(t *testing.T) {
	want := map[string]bool{}
	for _, s := range smallOrder {
		want[s] = true
	}
	g := point(t, order8Point)
	p := edwards25519.NewIdentityPoint()
	got := map[string]bool{}
	for range 8 {
		p.Add(p, g)
		got[hex.EncodeToString(p.Bytes())] = true
	}
	if len(got) != 8 || len(want) != 8 {
		t.Fatalf("%d multiples, %d table entries, want 8 each", len(got), len(want))
	}
	for s := range got {
		if !want[s] {
			t.Errorf("small-order point %s missing from the table", s)
		}
	}
	for _, s := range smallOrderNonCanonical {
		if bytes.Equal(point(t, s).Bytes(), mustHex(s)) {
			t.Errorf("%s is canonical", s)
		}
		if !want[hex.EncodeToString(point(t, s).Bytes())] {
			t.Errorf("%s is not of small order", s)
		}
	}
	for _, s := range nonCanonical {
		if bytes.Equal(point(t, s).Bytes(), mustHex(s)) {
			t.Errorf("%s is canonical", s)
		}
	}
	for _, s := range notOnCurve {
		if _, err := new(edwards25519.Point).SetBytes(mustHex(s)); err == nil {
			t.Errorf("%s decodes", s)
		}
	}
}

func TestNew(t *testing.T) {
	pubA, _ := seedKey(1)
	pubB, _ := seedKey(2)
	type tc struct {
		name    string
		pub     []byte
		wantErr error // nil, or the reason after ErrWeakKey
	}
	tests := []tc{
		{"seed key A", pubA, nil},
		{"seed key B", pubB, nil},
		{"mixed order, order-8 part", mixedKey(t, pubA, order8Point), nil},
		{"mixed order, order-2 part", mixedKey(t, pubB, order2Point), nil},
		{"y = 3, canonical", mustHex("0300000000000000000000000000000000000000000000000000000000000000"), nil},
		{"nil", nil, errLength},
		{"empty", []byte{}, errLength},
		{"31 bytes", pubA[:31], errLength},
		{"33 bytes", append(bytes.Clone(pubA), 0), errLength},
		{"64 bytes", bytes.Repeat(pubA, 2), errLength},
		{"all zero", make([]byte, 32), errSmallOrder},
		{"identity", mustHex(identityKey), errSmallOrder},
	}
	for _, s := range smallOrder {
		tests = append(tests, tc{"small order " + s, mustHex(s), errSmallOrder})
	}
	for _, s := range smallOrderNonCanonical {
		tests = append(tests, tc{"small order, non-canonical " + s, mustHex(s), errSmallOrder})
	}
	for _, s := range nonCanonical {
		tests = append(tests, tc{"non-canonical " + s, mustHex(s), errNonCanonical})
	}
	for _, s := range notOnCurve {
		tests = append(tests, tc{"not on the curve " + s, mustHex(s), errNotOnCurve})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := New(tt.pub)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("usable key refused: %v", err)
				}
				if k == nil {
					t.Fatal("nil key without an error")
				}
				return
			}
			if !errors.Is(err, ErrWeakKey) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("New = %v, want %v and %v", err, ErrWeakKey, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr.Error()) {
				t.Errorf("error %q does not say %q", err, tt.wantErr)
			}
			if k != nil {
				t.Error("refused key returned with the error")
			}
		})
	}
}

// TestIdentityKeyForgery documents why New refuses small-order keys:
// crypto/ed25519 accepts, with the identity point as the key, the signature
// R = base point, S = 1 for every message.
func TestIdentityKeyForgery(t *testing.T) {
	pub := mustHex(identityKey)
	forgery := append(mustHex(basePoint), 1)
	forgery = append(forgery, make([]byte, 31)...)
	for _, msg := range []string{"", "anything", "req\nuser\n1700000000\n" + strings.Repeat("ab", 32)} {
		if !ed25519.Verify(pub, []byte(msg), forgery) {
			t.Fatalf("crypto/ed25519 no longer accepts the identity-key forgery on %q", msg)
		}
	}
	if _, err := New(pub); !errors.Is(err, ErrWeakKey) {
		t.Fatalf("New(identity) = %v, want %v", err, ErrWeakKey)
	}
}

func TestNewCopiesKey(t *testing.T) {
	pub, priv := seedKey(1)
	msg := []byte("message")
	sig := ed25519.Sign(priv, msg)
	in := bytes.Clone(pub)
	k, err := New(in)
	if err != nil {
		t.Fatal(err)
	}
	in[0] ^= 1
	if !k.Verify(msg, sig) {
		t.Fatal("changing the caller's slice after New changed the key")
	}
}

func TestEqual(t *testing.T) {
	pubA, _ := seedKey(1)
	pubB, _ := seedKey(2)
	a1, _ := New(pubA)
	a2, _ := New(bytes.Clone(pubA))
	b, _ := New(pubB)
	if !a1.Equal(a2) {
		t.Error("two keys from the same bytes are not equal")
	}
	if a1.Equal(b) || b.Equal(a1) {
		t.Error("different keys are equal")
	}
}

func TestVerify(t *testing.T) {
	k, msg, sig := genuine(t)
	if !k.Verify(msg, sig) {
		t.Fatal("genuine signature rejected")
	}
	if k.Verify([]byte("messagf"), sig) {
		t.Error("signature accepted for another message")
	}
	for _, bad := range [][]byte{nil, {}, sig[:63], append(bytes.Clone(sig), 0)} {
		if k.Verify(msg, bad) {
			t.Errorf("signature of %d bytes accepted", len(bad))
		}
	}
	other, _ := seedKey(4)
	ko, _ := New(other)
	if ko.Verify(msg, sig) {
		t.Error("signature accepted under another key")
	}
}

// TestVerifyConcurrent runs Verify from several goroutines on one key, for
// the race detector.
func TestVerifyConcurrent(t *testing.T) {
	k, msg, sig := genuine(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				if !k.Verify(msg, sig) || k.Verify(msg[1:], sig) {
					t.Error("concurrent Verify gave a wrong answer")
					return
				}
			}
		})
	}
	wg.Wait()
}

// golden is testdata/golden/vectors.json of the module: deliveries signed by
// node:crypto (testdata/golden/sign.mjs).
type golden struct {
	Keys []struct {
		Name      string `json:"name"`
		SeedHex   string `json:"seed_hex"`
		PublicHex string `json:"public_hex"`
	} `json:"keys"`
	Vectors []struct {
		Name          string `json:"name"`
		Key           string `json:"key"`
		RequestID     string `json:"request_id"`
		UserID        string `json:"user_id"`
		Timestamp     string `json:"timestamp"`
		BodyB64       []byte `json:"body_b64"`
		Message       string `json:"message"`
		SignatureHex  string `json:"signature_hex"`
		BodySHA256Hex string `json:"body_sha256_hex"`
	} `json:"vectors"`
}

func loadGolden(t testing.TB) *golden {
	t.Helper()
	data, err := os.ReadFile("../../testdata/golden/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Keys) == 0 || len(g.Vectors) == 0 {
		t.Fatal("no golden keys or vectors")
	}
	return &g
}

func TestGolden(t *testing.T) {
	g := loadGolden(t)
	keys := map[string]*PublicKey{}
	for _, gk := range g.Keys {
		k, err := New(mustHex(gk.PublicHex))
		if err != nil {
			t.Fatalf("golden key %s refused: %v", gk.Name, err)
		}
		keys[gk.Name] = k
	}
	for _, v := range g.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			sum := sha256.Sum256(v.BodyB64)
			if want := v.RequestID + "\n" + v.UserID + "\n" + v.Timestamp + "\n" + hex.EncodeToString(sum[:]); v.Message != want {
				t.Fatalf("vector message %q, want %q", v.Message, want)
			}
			k := keys[v.Key]
			msg, sig := []byte(v.Message), mustHex(v.SignatureHex)
			if !k.Verify(msg, sig) {
				t.Fatal("golden signature rejected")
			}
			for i := range msg {
				m := bytes.Clone(msg)
				m[i] ^= 0x01
				if k.Verify(m, sig) {
					t.Fatalf("tampered message (byte %d) accepted", i)
				}
			}
			for i := range sig {
				s := bytes.Clone(sig)
				s[i] ^= 0x80
				if k.Verify(msg, s) {
					t.Fatalf("tampered signature (byte %d) accepted", i)
				}
			}
			for name, other := range keys {
				if name != v.Key && other.Verify(msg, sig) {
					t.Fatalf("signature by %s accepted under key %s", v.Key, name)
				}
			}
		})
	}
}
