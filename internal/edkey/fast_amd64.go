//go:build amd64 && !purego && !falwebhook_stdlib

package edkey

import voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"

// fastPath reports whether this build has the expanded-key path.
const fastPath = true

const fastImpl = "curve25519-voi (expanded keys)"

// expandedKey is a public key expanded once for repeated verification.
type expandedKey = voi.ExpandedPublicKey

// stdlib selects the verification rules of crypto/ed25519: cofactorless,
// canonical S and R, any A it decodes. voi's other presets (its default,
// ZIP-215, FIPS 186-5) accept signatures crypto/ed25519 rejects.
var stdlib = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// expand expands the 32-byte pub.
func expand(pub []byte) (*expandedKey, error) {
	return voi.NewExpandedPublicKey(pub)
}

// verifyExpanded reports whether sig is a valid signature of msg by x, as
// crypto/ed25519.Verify would.
func verifyExpanded(x *expandedKey, msg, sig []byte) bool {
	return voi.VerifyExpandedWithOptions(x, msg, sig, stdlib)
}
