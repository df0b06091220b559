package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// Dev key files written by keygen and read by send are PEM-encoded PKCS #8
// Ed25519 private keys (RFC 8410), the format of
// "openssl genpkey -algorithm ed25519", so they can also be inspected and
// made with openssl.
const pemTypePrivateKey = "PRIVATE KEY"

// encodePrivateKey returns priv as a PEM PKCS #8 block.
func encodePrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypePrivateKey, Bytes: der}), nil
}

// decodePrivateKey parses a PEM PKCS #8 Ed25519 private key.
func decodePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found; want a PKCS #8 \"PRIVATE KEY\" as written by keygen")
	}
	if block.Type != pemTypePrivateKey {
		return nil, fmt.Errorf("PEM block is %q, want %q (PKCS #8)", block.Type, pemTypePrivateKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PKCS #8: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want an Ed25519 key", k)
	}
	return priv, nil
}

// loadSignerFile returns a signer for the key file at path.
func loadSignerFile(path string) (*faltest.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	priv, err := decodePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return faltest.NewSignerFromSeed(priv.Seed()), nil
}

// loadJWKSFile returns the usable keys of the JWKS document at path.
func loadJWKSFile(path string) ([]ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if block, _ := pem.Decode(data); block != nil {
		what := "a PEM " + block.Type
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			what = "a PEM private key"
		}
		return nil, fmt.Errorf("%s looks like %s; --jwks wants a JWKS document (keygen writes one as *.jwks.json)", path, what)
	}
	keys, err := falwebhook.ParseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// fetchJWKS fetches the JWKS document at url with falwebhook's JWKS (its
// https-or-loopback rule, size limit, redirect check and timeout) and
// returns the usable keys of the document that fetch read. The JWKS reports
// only how many keys it found, so the document's bytes are kept on their
// way to it.
func fetchJWKS(ctx context.Context, url string) ([]ed25519.PublicKey, error) {
	var doc bytes.Buffer // the last response body read; complete when Refresh succeeds
	keep := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil {
			doc.Reset()
			resp.Body = struct {
				io.Reader
				io.Closer
			}{io.TeeReader(resp.Body, &doc), resp.Body}
		}
		return resp, err
	})
	j := &falwebhook.JWKS{URL: url, Client: &http.Client{Transport: keep}}
	if err := j.Refresh(ctx); err != nil {
		return nil, err
	}
	return falwebhook.ParseJWKS(doc.Bytes())
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// keyX returns the JWK "x" of k: unpadded base64url.
func keyX(k ed25519.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(k)
}
