//go:build amd64 && !purego && !falwebhook_stdlib

package edkey

import (
	"crypto/ed25519"
	"testing"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// wantFast is whether this build must take the expanded-key path.
const wantFast = true

// TestOtherVoiOptionsDiffer documents why only voi's VerifyOptionsStdLib
// will do: each of its other presets disagrees with crypto/ed25519.Verify on
// some seed of the differential fuzz target.
func TestOtherVoiOptionsDiffer(t *testing.T) {
	presets := map[string]*voi.VerifyOptions{
		"default":    voi.VerifyOptionsDefault,
		"FIPS 186-5": voi.VerifyOptionsFIPS_186_5,
		"ZIP-215":    voi.VerifyOptionsZIP_215,
	}
	seeds := verifySeeds(t)
	for name, vo := range presets {
		opts := &voi.Options{Verify: vo}
		differ := 0
		for _, s := range seeds {
			x, err := voi.NewExpandedPublicKey(s.pub)
			if err != nil {
				continue
			}
			if voi.VerifyExpandedWithOptions(x, s.msg, s.sig, opts) != ed25519.Verify(s.pub, s.msg, s.sig) {
				differ++
			}
		}
		if differ == 0 {
			t.Errorf("voi preset %s agrees with crypto/ed25519 on all %d seeds", name, len(seeds))
		}
		t.Logf("voi preset %s disagrees with crypto/ed25519 on %d of %d seeds", name, differ, len(seeds))
	}
}
