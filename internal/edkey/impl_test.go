package edkey

import (
	"crypto/fips140"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestImpl checks that Impl names the path New prepares keys for.
func TestImpl(t *testing.T) {
	pub, _ := seedKey(1)
	k, err := New(pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Impl() = %q, FIPS 140-3 mode %v", Impl(), fips140.Enabled())
	switch got := Impl(); {
	case fips140.Enabled():
		if got != "crypto/ed25519" || k.x != nil {
			t.Fatalf("FIPS 140-3 mode: Impl() = %q, expanded key %v; want crypto/ed25519 and none", got, k.x != nil)
		}
	case wantFast:
		if got != "curve25519-voi (expanded keys)" || k.x == nil {
			t.Fatalf("Impl() = %q, expanded key %v; want curve25519-voi and an expanded key", got, k.x != nil)
		}
	default:
		if got != "crypto/ed25519" || k.x != nil {
			t.Fatalf("Impl() = %q, expanded key %v; want crypto/ed25519 and none", got, k.x != nil)
		}
	}
}

// TestImplFIPS runs TestImpl again in a child process in FIPS 140-3 mode.
func TestImplFIPS(t *testing.T) {
	if fips140.Enabled() {
		t.Skip("TestImpl already runs in FIPS 140-3 mode")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestImpl$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("TestImpl in FIPS 140-3 mode: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "FIPS 140-3 mode true") {
		t.Fatalf("child process did not run in FIPS 140-3 mode:\n%s", out)
	}
}

// TestVerifyAllocs checks that Verify prepares nothing per call: expanding
// the key belongs in New.
func TestVerifyAllocs(t *testing.T) {
	k, msg, sig := genuine(t)
	if n := testing.AllocsPerRun(20, func() { k.Verify(msg, sig) }); n != 0 {
		t.Fatalf("Verify allocates %v times per call, want 0", n)
	}
}
