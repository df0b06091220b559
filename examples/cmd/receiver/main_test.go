package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/examples/nethttp"
	"github.com/falwebhook/falwebhook/faltest"
)

// TestJWKSFlag runs the receiver's verifier with -jwks on a JWKS file
// shaped as "falwebhook keygen" writes it: a delivery signed by that key
// is accepted, one signed by another key is refused, and so is one for
// another fal account.
func TestJWKSFlag(t *testing.T) {
	dev := faltest.SignerFromName("receiver dev key")
	file := filepath.Join(t.TempDir(), "falwebhook-dev.jwks.json")
	if err := os.WriteFile(file, append(faltest.JWKS(dev), '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	v, err := newVerifier("dev-user", file, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatalf("Refresh with the JWKS file's keys: %v", err)
	}
	if !strings.Contains(logs.String(), "not fal's") {
		t.Errorf("no warning that the keys are not fal's:\n%s", logs.String())
	}
	handled := make(chan string, 4)
	srv := httptest.NewServer(nethttp.New(v, &falwebhook.Dedupe{}, func(_ context.Context, ev *falwebhook.Event) error {
		handled <- ev.RequestID
		return nil
	}))
	defer srv.Close()

	send := func(s *faltest.Signer, id, user string) int {
		t.Helper()
		req, err := s.NewClientRequest(context.Background(), srv.URL+"/fal/webhook",
			faltest.Delivery{RequestID: id, UserID: user, Body: faltest.OKBody(id, map[string]any{"images": []any{}, "seed": 1})})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if code := send(dev, "req-dev", "dev-user"); code != http.StatusOK {
		t.Errorf("delivery signed by the JWKS file's key answered %d, want 200", code)
	}
	if got := <-handled; got != "req-dev" {
		t.Errorf("handler saw %q, want req-dev", got)
	}
	if code := send(faltest.SignerFromName("not the dev key"), "req-other", "dev-user"); code != http.StatusUnauthorized {
		t.Errorf("delivery signed by another key answered %d, want 401", code)
	}
	if code := send(dev, "req-foreign", "someone-else"); code != http.StatusForbidden {
		t.Errorf("delivery for another fal account answered %d, want 403", code)
	}
	if len(handled) != 0 {
		t.Errorf("a refused delivery reached the handler: %q", <-handled)
	}
}

// TestJWKSFlagBadFile checks that a missing or unusable file stops the
// receiver with an error naming the problem, never a receiver that trusts
// nothing, or fal's keys, silently.
func TestJWKSFlagBadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, file string
		want       error
	}{
		{"missing", filepath.Join(dir, "absent.json"), os.ErrNotExist},
		{"not a JWKS", write("key.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"), falwebhook.ErrMalformedJWKS},
		{"no usable key", write("rsa.json", `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`), falwebhook.ErrNoUsableKeys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newVerifier("dev-user", tc.file, slog.New(slog.DiscardHandler))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "-jwks") {
				t.Errorf("newVerifier with -jwks %s: %v, want an error naming -jwks and wrapping %v", tc.file, err, tc.want)
			}
		})
	}
}
