// Package edkey prepares Ed25519 public keys once and verifies signatures with
// them, accepting exactly what crypto/ed25519.Verify accepts.
//
// New refuses the keys that crypto/ed25519 would use but that must not be
// trusted: with a small-order key such as the identity point, the signature
// R = base point, S = 1 verifies every message, so anyone can forge. It also
// refuses keys that are not 32 bytes, that do not encode a curve point, or
// whose encoding is not canonical.
//
// On amd64, New expands the key once (curve25519-voi) and Verify uses the
// expanded form with the verification rules of crypto/ed25519, which is
// about 1.7 times as fast. On other architectures, in FIPS 140-3 mode
// (crypto/fips140.Enabled), and when built with the falwebhook_stdlib or
// purego tag, Verify is crypto/ed25519.Verify itself. Impl names the one in
// use.
package edkey

import (
	"bytes"
	"crypto/ed25519"
	"crypto/fips140"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
)

// ErrWeakKey is returned by New, wrapped with the reason, for every key it
// refuses: one that is not 32 bytes long, that does not encode a curve
// point, whose encoding is not canonical, or that is of small order.
var ErrWeakKey = errors.New("edkey: unusable Ed25519 public key")

// The reasons New gives after ErrWeakKey.
var (
	errLength       = errors.New("wrong length")
	errNotOnCurve   = errors.New("not a point on the curve")
	errNonCanonical = errors.New("non-canonical encoding")
	errSmallOrder   = errors.New("small order")
)

// PublicKey is an Ed25519 public key that New has checked and prepared for
// verification. It is immutable and safe for concurrent use by multiple
// goroutines.
type PublicKey struct {
	pub [ed25519.PublicKeySize]byte
	// x is pub expanded for the fast path, or nil to use crypto/ed25519.
	x *expandedKey
}

// New checks pub and returns it prepared for verification. It copies pub.
//
// The error wraps ErrWeakKey, followed by the reason, when pub is not
// ed25519.PublicKeySize (32) bytes long; when it does not decode to a curve
// point; when it is of small order (one of the 8 points whose order divides
// 8, in any encoding crypto/ed25519 decodes); or when its encoding is not
// canonical (y ≥ p, or x = 0 with the sign bit set). A key of mixed order, a
// prime-order point plus a small-order one, is accepted, as crypto/ed25519
// accepts it.
//
// On the expanded path, a PublicKey holds about 1.5 KiB.
func New(pub []byte) (*PublicKey, error) {
	if err := Check(pub); err != nil {
		return nil, err
	}
	k := &PublicKey{}
	copy(k.pub[:], pub)
	if !fips140.Enabled() {
		// expand decodes as crypto/ed25519 does; if it ever refused a key
		// that check accepted, crypto/ed25519 verifies instead.
		k.x, _ = expand(k.pub[:])
	}
	return k, nil
}

// Check reports, as New does, why pub must not be used, without preparing
// it: it is cheaper than New where the key is not kept.
func Check(pub []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: %w: %d bytes, want %d", ErrWeakKey, errLength, len(pub), ed25519.PublicKeySize)
	}
	if err := check(pub); err != nil {
		return fmt.Errorf("%w: %w", ErrWeakKey, err)
	}
	return nil
}

// check reports why the 32-byte pub must not be used, or nil. It decodes pub
// as crypto/ed25519 does (filippo.io/edwards25519, which accepts non-canonical
// encodings).
func check(pub []byte) error {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return errNotOnCurve
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return errSmallOrder
	}
	if !bytes.Equal(p.Bytes(), pub) {
		return errNonCanonical
	}
	return nil
}

// Verify reports whether sig is a valid signature of msg by k, with exactly
// the semantics of crypto/ed25519.Verify. A sig that is not
// ed25519.SignatureSize (64) bytes long is invalid.
func (k *PublicKey) Verify(msg, sig []byte) bool {
	if k.x != nil {
		return verifyExpanded(k.x, msg, sig)
	}
	return ed25519.Verify(k.pub[:], msg, sig)
}

// Equal reports whether k and o hold the same key. Keys New accepts are
// canonically encoded, so the same point always compares equal.
func (k *PublicKey) Equal(o *PublicKey) bool {
	return k.pub == o.pub
}

// Impl names the implementation Verify uses in this process:
// "curve25519-voi (expanded keys)" or "crypto/ed25519".
func Impl() string {
	if fastPath && !fips140.Enabled() {
		return fastImpl
	}
	return "crypto/ed25519"
}
