//go:build !amd64 || purego || falwebhook_stdlib

package edkey

import "errors"

// fastPath reports whether this build has the expanded-key path: only amd64,
// where curve25519-voi has assembly, and neither with the purego tag (no
// assembly, no gain) nor with the falwebhook_stdlib tag.
const fastPath = false

const fastImpl = "crypto/ed25519"

// expandedKey is never built here.
type expandedKey struct{}

// expand always fails: this build verifies with crypto/ed25519.
func expand([]byte) (*expandedKey, error) {
	return nil, errors.New("edkey: no expanded-key path in this build")
}

// verifyExpanded is never called: expand returns no key to call it with.
func verifyExpanded(*expandedKey, []byte, []byte) bool {
	return false
}
