package falwebhook

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/falwebhook/falwebhook/internal/edkey"
)

// keySet is an immutable list of usable keys, prepared once: by StaticKeys,
// or per fetch by a JWKS. Both key sources verify through it.
type keySet struct {
	keys []keyVerifier

	// last is the index in keys of the key that last verified a
	// signature; it is tried first. A hint only: any value is safe.
	last atomic.Int32
}

// newKeySet returns the set of the usable keys among pubs, each once:
// 32 bytes long, not of small order, canonically encoded (see
// internal/edkey), at most maxKeys of them.
func newKeySet(pubs []ed25519.PublicKey) *keySet {
	s := &keySet{}
	var seen []*edkey.PublicKey
	for _, p := range pubs {
		k, err := edkey.New(p)
		if err != nil || len(seen) == maxKeys || slices.ContainsFunc(seen, k.Equal) {
			continue
		}
		seen = append(seen, k)
		s.keys = append(s.keys, k)
	}
	return s
}

// keyVerifier is one prepared key: an *edkey.PublicKey, or a test's fake.
type keyVerifier interface {
	Verify(msg, sig []byte) bool
}

// verify reports whether a key of the set verifies sig over msg, trying the
// last key that did first.
func (s *keySet) verify(msg, sig []byte) bool {
	hint := int(s.last.Load())
	if hint < len(s.keys) && s.keys[hint].Verify(msg, sig) {
		return true
	}
	for i, k := range s.keys {
		if i != hint && k.Verify(msg, sig) {
			s.last.Store(int32(i))
			return true
		}
	}
	return false
}

// mismatch returns the error for a signature none of n keys verified.
func mismatch(n int) error {
	if n == 1 {
		return fmt.Errorf("%w: the only key did not verify it", ErrSignatureMismatch)
	}
	return fmt.Errorf("%w: none of %d keys verified it", ErrSignatureMismatch, n)
}

// A KeySource checks signatures against the public keys that may sign
// deliveries: StaticKeys, JWKS, or your own. VerifySignature must be safe
// for concurrent use. It returns nil when a key verifies sig over msg, and
// otherwise an error wrapping ErrSignatureMismatch (no key verifies it; a
// source that fetches keys may wrap ErrKeyNotFetched too, as JWKS does,
// when a key newer than its keys could have signed it and it cannot fetch
// yet), ErrKeysUnavailable (the keys cannot be had now; fal should retry)
// or ErrNoUsableKeys; the Verifier treats any other error as
// ErrKeysUnavailable.
//
// A KeySource that also has a method Refresh(ctx context.Context) error is
// loaded by Verifier.Refresh.
type KeySource interface {
	VerifySignature(ctx context.Context, msg, sig []byte) error
}

// StaticKeys returns a KeySource of fixed keys. Unusable keys are skipped:
// those not ed25519.PublicKeySize bytes long, and weak keys that would
// verify forgeries (of small order, or not canonically encoded); only the
// first 64 usable keys are kept. With no usable key every verification,
// and Refresh, fail with ErrNoUsableKeys. The keys are copied and prepared
// once.
func StaticKeys(keys ...ed25519.PublicKey) KeySource {
	sk := &staticKeys{set: newKeySet(keys)}
	if len(sk.set.keys) == 0 {
		sk.err = fmt.Errorf("%w: none of the %d static keys is usable", ErrNoUsableKeys, len(keys))
	}
	return sk
}

type staticKeys struct {
	set *keySet
	err error // ErrNoUsableKeys when set is empty
}

func (s *staticKeys) VerifySignature(_ context.Context, msg, sig []byte) error {
	if s.err != nil {
		return s.err
	}
	if s.set.verify(msg, sig) {
		return nil
	}
	return mismatch(len(s.set.keys))
}

// Refresh reports whether any static key is usable.
func (s *staticKeys) Refresh(context.Context) error { return s.err }
