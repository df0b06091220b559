package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/falwebhook/falwebhook/faltest"
)

const keygenDescription = `
Keygen writes a dev Ed25519 signing key and the JWKS document publishing its
public key, for a local loop without fal: "listen --jwks" trusts the JWKS
file and "send --key" signs with the key.

The key file is a PEM-encoded PKCS #8 private key (RFC 8410), the format of
"openssl genpkey -algorithm ed25519", written with mode 0600. The JWKS file
holds one {"kty":"OKP","crv":"Ed25519","x":...,"kid":...} key; its kid is the
first 16 hex digits of sha256(public key).

Existing files are not overwritten unless --force is given. With --seed-name
the key is derived from the name, as "send --seed-name" does: reproducible,
and public knowledge, so never trust it outside development.`

func runKeygen(_ context.Context, e *env, args []string) int {
	fl := newFlagSet(e, "keygen", "[flags]", keygenDescription)
	var (
		outKey   = fl.String("out-key", "falwebhook-dev.key.pem", "write the private key to `FILE` (mode 0600)")
		outJWKS  = fl.String("out-jwks", "falwebhook-dev.jwks.json", "write the JWKS document to `FILE`")
		force    = fl.Bool("force", false, "overwrite existing files")
		seedName = fl.String("seed-name", "", "derive the key from `NAME` instead of generating a random one")
	)
	pos, code, ok := parseArgs(fl, args)
	if !ok {
		return code
	}
	fail := func(code int, format string, args ...any) int { return e.errorf(code, "keygen", format, args...) }
	if len(pos) > 0 {
		return fail(exitUsage, "unexpected argument %q", pos[0])
	}
	if *outKey == "" || *outJWKS == "" {
		return fail(exitUsage, "--out-key and --out-jwks must not be empty")
	}
	if *outKey == *outJWKS {
		return fail(exitUsage, "--out-key and --out-jwks name the same file")
	}
	if !*force {
		for _, p := range []string{*outKey, *outJWKS} {
			if _, err := os.Lstat(p); err == nil {
				return fail(exitUsage, "%s exists; pass --force to overwrite it", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fail(exitUsage, "%v", err)
			}
		}
	}

	signer := faltest.NewSigner()
	if *seedName != "" {
		signer = faltest.SignerFromName(*seedName)
	}
	keyPEM, err := encodePrivateKey(signer.PrivateKey())
	if err != nil {
		return fail(exitUsage, "encoding the key: %v", err)
	}
	if err := writeFile(*outKey, keyPEM, 0o600, *force); err != nil {
		return fail(exitUsage, "%v", err)
	}
	jwks := append(faltest.JWKS(signer), '\n')
	if err := writeFile(*outJWKS, jwks, 0o644, *force); err != nil {
		return fail(exitUsage, "%v", err)
	}

	pub := signer.PublicKey()
	fmt.Fprintf(e.stdout, "wrote %s (private key, PEM PKCS #8, mode 0600)\n", *outKey)
	fmt.Fprintf(e.stdout, "wrote %s (JWKS, 1 Ed25519 key)\n", *outJWKS)
	fmt.Fprintf(e.stdout, "  kid %s\n  x   %s\n", signer.KeyID(), keyX(pub))
	fmt.Fprintf(e.stdout, "\nreceive: falwebhook listen --jwks %s --user-id %s\n", *outJWKS, faltest.DefaultUserID)
	fmt.Fprintf(e.stdout, "send:    falwebhook send --key %s http://127.0.0.1:8787/fal/webhook\n", *outKey)
	return exitOK
}

// writeFile writes data to path with mode perm. Without overwrite it fails
// if path exists; with it, an existing file is truncated and its mode set
// to perm, so a key file never stays readable by others.
func writeFile(path string, data []byte, perm os.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; pass --force to overwrite it", path)
		}
		return err
	}
	if overwrite {
		if err := f.Chmod(perm); err != nil {
			_ = f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
