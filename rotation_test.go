package falwebhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// TestKeyRotation follows a key rotation end to end, on a fake clock: fal
// adds a key right after the receiver fetched the keys, and signs with it.
// Inside the cooldown such deliveries are answered 503 with Retry-After
// until the next fetch is allowed, not 401 as forgeries; once it is, the
// delivery is accepted. Forgeries still cause at most one fetch per
// cooldown, and are 401 when the keys were fetched after they were signed.
func TestKeyRotation(t *testing.T) {
	t0 := time.Unix(1_767_225_600, 0)
	clock := faltest.NewClock(t0)
	oldKey, newKey, forger := faltest.SignerFromName("rotation-old"), faltest.SignerFromName("rotation-new"), faltest.SignerFromName("rotation-forger")
	ks := faltest.NewKeyServer(oldKey)
	defer ks.Close()
	v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}), WithClock(clock.Now))
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	ks.SetSigners(oldKey, newKey) // right after the fetch

	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	deliver := func(s *faltest.Signer, at time.Time) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, s.NewRequest("/", faltest.Delivery{RequestID: "req-1", Time: at, Body: faltest.OKBody("req-1", nil)}))
		return rec
	}
	want := func(rec *httptest.ResponseRecorder, code int, retryAfter, what string) {
		t.Helper()
		if rec.Code != code || rec.Header().Get("Retry-After") != retryAfter {
			t.Errorf("%s: answered %d with Retry-After %q, want %d with %q", what, rec.Code, rec.Header().Get("Retry-After"), code, retryAfter)
		}
	}

	want(deliver(newKey, clock.Now()), 503, "60", "new key at +0s")
	clock.Advance(30 * time.Second)
	want(deliver(newKey, clock.Now()), 503, "30", "new key at +30s")
	want(deliver(forger, clock.Now()), 503, "30", "forgery signed after the fetch, inside the cooldown")
	want(deliver(forger, t0.Add(-time.Second)), 401, "", "forgery signed before the fetch")
	want(deliver(oldKey, clock.Now()), 200, "", "old key at +30s")
	if n := ks.Fetches(); n != 1 {
		t.Fatalf("%d fetches inside the cooldown, want 1", n)
	}

	// Verify's callers see the same, with errors.Is and errors.As.
	d := signed(newKey, "req-1", "user-1", clock.Now(), []byte(`{"request_id":"req-1","status":"OK"}`))
	_, err := v.Verify(context.Background(), d.h, d.body)
	var ke *KeyNotFetchedError
	if !errors.Is(err, ErrKeyNotFetched) || !errors.As(err, &ke) || ke.RetryAfter != 30*time.Second || StatusCode(err) != 503 {
		t.Errorf("Verify of the new key's delivery inside the cooldown: %v, want a *KeyNotFetchedError with RetryAfter 30s (503)", err)
	}

	clock.Advance(31 * time.Second) // +61s: a fetch is allowed
	want(deliver(newKey, clock.Now()), 200, "", "new key at +61s")
	if n := ks.Fetches(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}

	// A flood of forgeries over the next cooldowns: at most one fetch each.
	for range 3 {
		for i := range 20 {
			clock.Advance(time.Second)
			if rec := deliver(forger, clock.Now()); rec.Code != 401 && rec.Code != 503 {
				t.Fatalf("forgery %d answered %d", i, rec.Code)
			}
		}
	}
	// 60 s after the fetch at +61s: one more fetch, at +121s.
	if n := ks.Fetches(); n != 3 {
		t.Errorf("%d fetches after 60 s of forgeries, want 3 (one per cooldown)", n)
	}
	clock.Advance(time.Second)
	want(deliver(forger, clock.Now().Add(-5*time.Second)), 401, "", "forgery signed before the last fetch")
}
