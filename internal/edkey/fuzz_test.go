package edkey

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"filippo.io/edwards25519"
)

// A seed is one input of the differential fuzz target.
type seed struct {
	name          string
	pub, msg, sig []byte
}

// orderL is the order of the prime-order subgroup, 2^252 +
// 27742317777372353535851937790883648493.
var orderL, _ = new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)

// plusL returns sig with L added to its S: the same scalar, non-canonically
// encoded (S + L < 2^253, so the top three bits stay clear).
func plusL(sig []byte) []byte {
	le := bytes.Clone(sig[32:])
	for i, j := 0, len(le)-1; i < j; i, j = i+1, j-1 {
		le[i], le[j] = le[j], le[i]
	}
	s := new(big.Int).Add(new(big.Int).SetBytes(le), orderL)
	out := s.FillBytes(make([]byte, 32))
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return append(bytes.Clone(sig[:32]), out...)
}

// flip returns b with bit bit of byte i flipped.
func flip(b []byte, i int, bit uint) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1 << bit
	return c
}

// signMixed signs msg for the key A + T, where A = [a]B is the public key of
// seed and T a point of small order: R = [r]B, k = H(R || A+T || msg),
// S = r + k·a. crypto/ed25519 (cofactorless) accepts it only when [k]T is
// the identity, cofactored verifiers always do. With T the identity it is an
// ordinary Ed25519 signature.
func signMixed(t testing.TB, seed []byte, torsion *edwards25519.Point, msg []byte) (pub, sig []byte) {
	t.Helper()
	h := sha512.Sum512(seed)
	a, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		t.Fatal(err)
	}
	pub = new(edwards25519.Point).Add(new(edwards25519.Point).ScalarBaseMult(a), torsion).Bytes()
	rh := sha512.Sum512(append(bytes.Clone(h[32:]), msg...))
	r, _ := edwards25519.NewScalar().SetUniformBytes(rh[:])
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
	kh := sha512.New()
	kh.Write(R)
	kh.Write(pub)
	kh.Write(msg)
	k, _ := edwards25519.NewScalar().SetUniformBytes(kh.Sum(nil))
	S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
	return pub, append(R, S.Bytes()...)
}

// verifySeeds returns the hard cases for Ed25519 verification: weak and
// non-canonical keys, forgeries that crypto/ed25519 accepts with them,
// mixed-order keys, non-canonical S and R, genuine signatures and their bit
// flips, and the golden deliveries signed by node:crypto.
func verifySeeds(t testing.TB) []seed {
	t.Helper()
	var seeds []seed
	add := func(name string, pub, msg, sig []byte) {
		seeds = append(seeds, seed{name, pub, msg, sig})
	}
	msg := []byte("req\nuser\n1700000000\n" + string(bytes.Repeat([]byte("ab"), 32)))
	zeroSig := make([]byte, 64)
	forgery := append(mustHex(basePoint), 1) // R = B, S = 1
	forgery = append(forgery, make([]byte, 31)...)

	// Small-order keys, in every encoding, against small-order R (in every
	// encoding) with S = 0: [0]B - [k]A = R holds for some of them.
	weak := append(append([]string{}, smallOrder...), smallOrderNonCanonical...)
	for _, a := range weak {
		pub := mustHex(a)
		add("forgery "+a, pub, msg, forgery)
		add("zero sig "+a, pub, msg, zeroSig)
		for _, r := range weak {
			add("small R "+r+" key "+a, pub, msg, append(mustHex(r), make([]byte, 32)...))
		}
	}
	for _, a := range append(append([]string{}, nonCanonical...), notOnCurve...) {
		add("forgery "+a, mustHex(a), msg, forgery)
		add("zero sig "+a, mustHex(a), msg, zeroSig)
	}

	// Genuine signatures and their alterations.
	for i := byte(1); i <= 3; i++ {
		pub, priv := seedKey(i)
		sig := ed25519.Sign(priv, msg)
		add(fmt.Sprintf("genuine %d", i), pub, msg, sig)
		add(fmt.Sprintf("genuine %d, other message", i), pub, msg[1:], sig)
		add(fmt.Sprintf("genuine %d, S+L", i), pub, msg, plusL(sig))
		add(fmt.Sprintf("genuine %d, high bit of S", i), pub, msg, flip(sig, 63, 7))
		add(fmt.Sprintf("genuine %d, bit 253 of S", i), pub, msg, flip(sig, 63, 5))
		add(fmt.Sprintf("genuine %d, sign of R", i), pub, msg, flip(sig, 31, 7))
		add(fmt.Sprintf("genuine %d, zero sig", i), pub, msg, zeroSig)
		add(fmt.Sprintf("genuine %d, forgery", i), pub, msg, forgery)
		for _, j := range []int{0, 1, 16, 30, 32, 33, 48, 62} {
			add(fmt.Sprintf("genuine %d, flip byte %d", i, j), pub, msg, flip(sig, j, 0))
		}
		// A valid point, but not the signature's R.
		add(fmt.Sprintf("genuine %d, key as R", i), pub, msg, append(bytes.Clone(pub), sig[32:]...))
	}

	// Non-canonical R: with the identity key and S = 0, R must be the
	// identity; crypto/ed25519 takes only its canonical encoding.
	for _, r := range []string{identityKey, "0100000000000000000000000000000000000000000000000000000000000080", "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"} {
		add("identity key, R "+r, mustHex(identityKey), msg, append(mustHex(r), make([]byte, 32)...))
	}

	// Mixed-order keys signed with the prime-order part's scalar: accepted
	// only for the messages whose k kills the torsion.
	for _, tor := range []string{order8Point, order2Point, smallOrder[2]} {
		for i := range 12 {
			m := fmt.Appendf(nil, "mixed %d", i)
			pub, sig := signMixed(t, bytes.Repeat([]byte{7}, 32), point(t, tor), m)
			add(fmt.Sprintf("mixed %s %d", tor[:8], i), pub, m, sig)
			if i < 2 {
				add(fmt.Sprintf("mixed %s %d, S+L", tor[:8], i), pub, m, plusL(sig))
			}
		}
	}

	// The golden deliveries, genuine and with a flipped bit.
	g := loadGolden(t)
	pubs := map[string][]byte{}
	for _, k := range g.Keys {
		pubs[k.Name] = mustHex(k.PublicHex)
	}
	for _, v := range g.Vectors {
		sig := mustHex(v.SignatureHex)
		add("golden "+v.Name, pubs[v.Key], []byte(v.Message), sig)
		add("golden "+v.Name+", flipped", pubs[v.Key], []byte(v.Message), flip(sig, 10, 3))
	}
	return seeds
}

// TestSignMixed checks the mixed-order signer of the seeds: with no torsion
// it must produce crypto/ed25519's own signature.
func TestSignMixed(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, 32)
	msg := []byte("message")
	pub, sig := signMixed(t, seed, edwards25519.NewIdentityPoint(), msg)
	priv := ed25519.NewKeyFromSeed(seed)
	if !bytes.Equal(pub, priv.Public().(ed25519.PublicKey)) || !bytes.Equal(sig, ed25519.Sign(priv, msg)) {
		t.Fatal("signMixed without torsion differs from ed25519.Sign")
	}
}

// TestSeedsVerifyLikeStdlib checks New(pub).Verify against crypto/ed25519 on
// every seed whose key New accepts, and that the seeds exercise acceptance
// both with keys New accepts and with keys it refuses.
func TestSeedsVerifyLikeStdlib(t *testing.T) {
	var acceptedUsable, acceptedWeak, mixedAccepted, mixedRejected int
	for _, s := range verifySeeds(t) {
		want := ed25519.Verify(s.pub, s.msg, s.sig)
		k, err := New(s.pub)
		if err != nil {
			if want {
				acceptedWeak++
			}
			continue
		}
		if got := k.Verify(s.msg, s.sig); got != want {
			t.Errorf("%s: Verify = %v, crypto/ed25519 says %v", s.name, got, want)
		}
		if want {
			acceptedUsable++
		}
		if strings.HasPrefix(s.name, "mixed") {
			if want {
				mixedAccepted++
			} else {
				mixedRejected++
			}
		}
	}
	t.Logf("crypto/ed25519 accepts %d seeds with usable keys, %d with refused keys; mixed-order: %d accepted, %d rejected",
		acceptedUsable, acceptedWeak, mixedAccepted, mixedRejected)
	if acceptedUsable == 0 || acceptedWeak == 0 || mixedAccepted == 0 || mixedRejected == 0 {
		t.Error("the seeds no longer cover both outcomes")
	}
}

// FuzzVerifyMatchesStdlib checks that the expanded-key path, on any 32-byte
// key (weak ones included, unlike New), accepts exactly the signatures
// crypto/ed25519.Verify accepts.
func FuzzVerifyMatchesStdlib(f *testing.F) {
	if !fastPath {
		f.Skip("this build verifies with crypto/ed25519 itself")
	}
	for _, s := range verifySeeds(f) {
		f.Add(s.pub, s.msg, s.sig)
	}
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
			return // crypto/ed25519.Verify panics on a key of another length
		}
		want := ed25519.Verify(pub, msg, sig)
		x, err := expand(pub)
		if err != nil {
			// The expanded path cannot decode the key: crypto/ed25519 must
			// not decode it either (it decodes with edwards25519).
			if _, derr := new(edwards25519.Point).SetBytes(pub); derr == nil {
				t.Fatalf("expand refuses key %x that crypto/ed25519 decodes: %v", pub, err)
			}
			if want {
				t.Fatalf("crypto/ed25519 accepts a signature with key %x that expand refuses", pub)
			}
			return
		}
		if got := verifyExpanded(x, msg, sig); got != want {
			t.Fatalf("expanded path says %v, crypto/ed25519 says %v\npub %x\nmsg %x\nsig %x", got, want, pub, msg, sig)
		}
	})
}
