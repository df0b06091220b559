package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// eventLog is a receiver's record of the deliveries it accepted.
type eventLog struct {
	mu      sync.Mutex // guards the fields below
	events  []*falwebhook.Event
	headers []http.Header
}

func (l *eventLog) last(t *testing.T) (*falwebhook.Event, http.Header) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		t.Fatal("the receiver accepted no delivery")
	}
	return l.events[len(l.events)-1], l.headers[len(l.headers)-1]
}

func (l *eventLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// newReceiver starts a receiver on loopback trusting the keys in the JWKS
// file, built with the real Verifier.
func newReceiver(t *testing.T, jwksPath string) (*httptest.Server, *eventLog) {
	t.Helper()
	keys, err := loadJWKSFile(jwksPath)
	if err != nil {
		t.Fatal(err)
	}
	log := &eventLog{}
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(keys...)))
	srv := httptest.NewServer(v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {
		log.mu.Lock()
		log.events = append(log.events, ev)
		log.headers = append(log.headers, r.Header.Clone())
		log.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte("thanks"))
	}))
	t.Cleanup(srv.Close)
	return srv, log
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "dev.key.pem")
	jwks := filepath.Join(dir, "dev.jwks.json")

	r := runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", jwks)
	wantCode(t, r, exitOK)
	wantContains(t, "stdout", r.stdout, "wrote "+key, "wrote "+jwks, "listen --jwks "+jwks+" --user-id faltest-user")

	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	pemData, _ := os.ReadFile(key)
	if !bytes.HasPrefix(pemData, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("key file is not PEM PKCS #8:\n%s", pemData)
	}
	signer, err := loadSignerFile(key)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := loadJWKSFile(jwks)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Equal(signer.PublicKey()) {
		t.Fatalf("JWKS holds %d keys, want exactly the key file's public key", len(keys))
	}
	wantContains(t, "stdout", r.stdout, "kid "+signer.KeyID(), "x   "+keyX(signer.PublicKey()))

	// No overwriting without --force; nothing is touched.
	r = runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", filepath.Join(dir, "new.json"))
	wantCode(t, r, exitUsage)
	wantContains(t, "stderr", r.stderr, "exists", "--force")
	if _, err := os.Stat(filepath.Join(dir, "new.json")); err == nil {
		t.Error("keygen refused to overwrite the key but still wrote the JWKS")
	}
	if again, _ := os.ReadFile(key); !bytes.Equal(again, pemData) {
		t.Error("keygen without --force changed the existing key file")
	}

	// --force overwrites and restores mode 0600 on a loosened key file.
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", jwks, "--force", "--seed-name", "team dev")
	wantCode(t, r, exitOK)
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v after --force, want 0600", fi.Mode().Perm())
	}
	signer, err = loadSignerFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if !signer.PublicKey().Equal(faltest.SignerFromName("team dev").PublicKey()) {
		t.Error("keygen --seed-name does not give the key of send --seed-name")
	}

	r = runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", key, "--force")
	wantCode(t, r, exitUsage)
	r = runCmd(t, "", "keygen", "--out-key", filepath.Join(dir, "no/such/dir/k.pem"), "--out-jwks", filepath.Join(dir, "j.json"))
	wantCode(t, r, exitUsage)
}

func TestKeygenThenSend(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "dev.key.pem")
	jwks := filepath.Join(dir, "dev.jwks.json")
	wantCode(t, runCmd(t, "", "keygen", "--out-key", key, "--out-jwks", jwks), exitOK)
	srv, log := newReceiver(t, jwks)
	url := srv.URL + "/fal/webhook"

	// The OK sample, signed with the generated key.
	r := runCmd(t, "", "send", "--key", key, url)
	wantCode(t, r, exitOK)
	wantContains(t, "stdout", r.stdout, "POST "+url, "X-Fal-Webhook-Signature: ", "HTTP/1.1 202 Accepted", "thanks")
	ev, _ := log.last(t)
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Status != falwebhook.StatusOK || out.Seed != 17454220438242315174 || len(out.Images) != 1 {
		t.Errorf("receiver got status %s, seed %d, %d images; want OK, 17454220438242315174, 1", ev.Status, out.Seed, len(out.Images))
	}
	// A fresh request id, in the body and the header alike.
	first, h := log.last(t)
	if !uuidV4.MatchString(first.RequestID) || h.Get(falwebhook.HeaderRequestID) != first.RequestID {
		t.Errorf("sample request id %q (header %q), want the same random UUID in both", first.RequestID, h.Get(falwebhook.HeaderRequestID))
	}
	wantCode(t, runCmd(t, "", "send", "--key", key, url), exitOK)
	if again, _ := log.last(t); again.RequestID == first.RequestID {
		t.Errorf("two sample deliveries share request id %q", again.RequestID)
	}

	// The ERROR sample, with chosen ids, flags after the URL.
	r = runCmd(t, "", "send", url, "--key", key, "--sample", "error", "--request-id", "req-1", "--user-id", "user-9")
	wantCode(t, r, exitOK)
	ev, h = log.last(t)
	if ev.Status != falwebhook.StatusError || ev.RequestID != "req-1" || h.Get(falwebhook.HeaderUserID) != "user-9" {
		t.Errorf("receiver got %s %q from user %q; want ERROR req-1 from user-9", ev.Status, ev.RequestID, h.Get(falwebhook.HeaderUserID))
	}

	// A body file: sent byte for byte, request id from the body.
	body := faltest.OKBody("from-file", map[string]any{"images": []any{}, "seed": 1})
	bodyPath := writeTestFile(t, dir, "body.json", body)
	r = runCmd(t, "", "send", "--key", key, "--body", bodyPath, url)
	wantCode(t, r, exitOK)
	if ev, h = log.last(t); ev.RequestID != "from-file" || h.Get(falwebhook.HeaderRequestID) != "from-file" {
		t.Errorf("receiver got request %q (header %q), want from-file", ev.RequestID, h.Get(falwebhook.HeaderRequestID))
	}
	// And on stdin.
	r = runCmd(t, string(body), "send", "--key", key, "--body", "-", url)
	wantCode(t, r, exitOK)

	accepted := log.count()

	// A key the receiver does not trust: 401, exit 1.
	r = runCmd(t, "", "send", "--seed-name", "stranger", url)
	wantCode(t, r, exitInvalid)
	wantContains(t, "stdout", r.stdout, "401 Unauthorized")

	// An old timestamp: 401, exit 1.
	old := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	r = runCmd(t, "", "send", "--key", key, "--time", old, url)
	wantCode(t, r, exitInvalid)
	if n := log.count(); n != accepted {
		t.Errorf("forged or stale deliveries were accepted: %d accepted, want %d", n, accepted)
	}

	// Usage and I/O errors.
	for _, args := range [][]string{
		{"send", url}, // no key
		{"send", "--key", key, "--seed-name", "x", url}, // two keys
		{"send", "--key", key},                          // no URL
		{"send", "--key", key, "ftp://x/y"},             // bad URL
		{"send", "--key", key, "--sample", "meh", url},
		{"send", "--key", key, "--sample", "ok", "--body", bodyPath, url},
		{"send", "--key", filepath.Join(dir, "missing.pem"), url},
		{"send", "--key", jwks, url}, // not a key file
		{"send", "--key", key, "--body", writeTestFile(t, dir, "noid.json", []byte(`{"status":"OK"}`)), url},
		{"send", "--key", key, "--time", "later", url},
	} {
		r = runCmd(t, "", args...)
		if r.code != exitUsage || r.stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 with an error", args, r.code, r.stderr)
		}
	}

	// Nobody listening: an I/O error.
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	r = runCmd(t, "", "send", "--key", key, closedURL)
	wantCode(t, r, exitUsage)
}

func TestSendDoesNotFollowRedirects(t *testing.T) {
	var hits sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Store(r.URL.Path, true)
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/new", http.StatusPermanentRedirect)
		}
	}))
	defer srv.Close()
	r := runCmd(t, "", "send", "--seed-name", "x", srv.URL+"/old")
	wantCode(t, r, exitInvalid)
	wantContains(t, "stderr", r.stderr, "redirect")
	if _, ok := hits.Load("/new"); ok {
		t.Error("send followed a redirect")
	}
	if !strings.Contains(r.stdout, "308") {
		t.Errorf("stdout lacks the 308 status:\n%s", r.stdout)
	}
}
