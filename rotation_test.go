package falwebhook

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
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

	// A flood of forgeries over the next cooldowns, one a second: each is
	// 503 while the cooldown runs (signed after the last fetch), except the
	// one that arrives when a fetch is allowed: it is fetched for, and the
	// fetch settles it, 401. At most one fetch per cooldown.
	var unauthorized int
	for i := range 60 {
		clock.Advance(time.Second) // +62s … +121s
		before := ks.Fetches()
		rec := deliver(forger, clock.Now())
		fetched := ks.Fetches() > before
		switch {
		case fetched && rec.Code != 401:
			t.Fatalf("forgery %d caused a fetch and was answered %d, want 401: a fetch settles it", i, rec.Code)
		case !fetched && rec.Code != 503:
			t.Fatalf("forgery %d inside the cooldown answered %d, want 503", i, rec.Code)
		case fetched:
			unauthorized++
		}
	}
	// The fetch at +61s, then one at +121s.
	if n := ks.Fetches(); n != 3 || unauthorized != 1 {
		t.Errorf("%d fetches and %d forgeries settled as 401 over 60 s of forgeries, want 3 and 1 (one per cooldown)", n, unauthorized)
	}
	clock.Advance(time.Second)
	want(deliver(forger, clock.Now().Add(-5*time.Second)), 401, "", "forgery signed before the last fetch")
}

// TestKeyNotFetchedOnlyWhenUndecidable checks when a mismatch is settled
// as a forgery (401) and when it waits for a fetch (503), and that the
// observer and the logs tell the two apart.
func TestKeyNotFetchedOnlyWhenUndecidable(t *testing.T) {
	t0 := time.Unix(1_767_225_600, 0)
	fal, forger := faltest.SignerFromName("undecidable-fal"), faltest.SignerFromName("undecidable-forger")
	body := []byte(`{"request_id":"req-1","status":"OK"}`)
	forged := func(at time.Time) delivery { return signed(forger, "req-1", "user-1", at, body) }

	t.Run("a cold cache's fetch settles a forgery, whatever the clock says", func(t *testing.T) {
		ks := faltest.NewKeyServer(fal)
		defer ks.Close()
		// The clock stands still: fetch and delivery share one instant,
		// but the fetch began after the delivery arrived.
		frozen := func() time.Time { return t0 }
		v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: frozen}), WithClock(frozen))
		d := forged(t0)
		_, err := v.Verify(context.Background(), d.h, d.body)
		if !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeyNotFetched) {
			t.Fatalf("forgery on a cold cache: %v, want a plain ErrSignatureMismatch", err)
		}
		// The next one arrives after that fetch, signed in its second:
		// the keys may lack its key.
		_, err = v.Verify(context.Background(), d.h, d.body)
		if !errors.Is(err, ErrKeyNotFetched) {
			t.Fatalf("forgery signed in the second of the fetch, after it: %v, want ErrKeyNotFetched", err)
		}
	})

	t.Run("a fetch allowed now is made and decides", func(t *testing.T) {
		ks := faltest.NewKeyServer(fal)
		defer ks.Close()
		clock := faltest.NewClock(t0)
		v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}), WithClock(clock.Now))
		if err := v.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute) // the cooldown has just ended
		d := forged(clock.Now())
		_, err := v.Verify(context.Background(), d.h, d.body)
		if !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeyNotFetched) || ks.Fetches() != 2 {
			t.Fatalf("forgery when a fetch is allowed: %v after %d fetches, want a plain ErrSignatureMismatch after 2", err, ks.Fetches())
		}
	})

	t.Run("joining a fetch that started before the delivery arrived", func(t *testing.T) {
		ks := faltest.NewKeyServer(fal)
		defer ks.Close()
		clock := faltest.NewClock(t0)
		v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}), WithClock(clock.Now))
		release := ks.Hold()
		refreshed := make(chan error, 1)
		go func() { refreshed <- v.Refresh(context.Background()) }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ks.WaitFetches(ctx, 1); err != nil {
			t.Fatal(err)
		}
		type result struct{ after, before error }
		done := make(chan result, 1)
		go func() {
			var r result
			d := forged(t0)
			_, r.after = v.Verify(ctx, d.h, d.body)
			d = forged(t0.Add(-time.Second))
			_, r.before = v.Verify(ctx, d.h, d.body)
			done <- r
		}()
		release()
		if err := <-refreshed; err != nil {
			t.Fatal(err)
		}
		r := <-done
		if !errors.Is(r.after, ErrKeyNotFetched) {
			t.Errorf("forgery signed in the second the joined fetch began: %v, want ErrKeyNotFetched", r.after)
		}
		if !errors.Is(r.before, ErrSignatureMismatch) || errors.Is(r.before, ErrKeyNotFetched) {
			t.Errorf("forgery signed before the joined fetch began: %v, want a plain ErrSignatureMismatch", r.before)
		}
		if n := ks.Fetches(); n != 1 {
			t.Errorf("%d fetches, want 1", n)
		}
	})

	t.Run("a refetch in flight that began before the delivery arrived", func(t *testing.T) {
		ks := faltest.NewKeyServer(fal)
		defer ks.Close()
		clock := faltest.NewClock(t0)
		v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}), WithClock(clock.Now))
		if err := v.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
		release := ks.Hold()
		refreshed := make(chan error, 1)
		go func() { refreshed <- v.Refresh(context.Background()) }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ks.WaitFetches(ctx, 2); err != nil {
			t.Fatal(err)
		}
		// The cached keys fail it, and it joins the refetch: keys fetched
		// in the second it was signed may lack its key.
		waiting := &waitingContext{Context: ctx, waiting: make(chan struct{})}
		verified := make(chan error, 1)
		go func() {
			d := forged(clock.Now())
			_, err := v.Verify(waiting, d.h, d.body)
			verified <- err
		}()
		<-waiting.waiting // it waits for the refetch
		release()
		if err := <-refreshed; err != nil {
			t.Fatal(err)
		}
		if err := <-verified; !errors.Is(err, ErrKeyNotFetched) {
			t.Errorf("forgery signed in the second a refetch began, before it arrived: %v, want ErrKeyNotFetched", err)
		}
		if n := ks.Fetches(); n != 2 {
			t.Errorf("%d fetches, want 2", n)
		}
	})

	t.Run("static keys never wait for a fetch", func(t *testing.T) {
		v := NewVerifier(WithKeys(StaticKeys(fal.PublicKey())), WithClock(func() time.Time { return t0 }))
		for _, at := range []time.Time{t0, t0.Add(-time.Minute), t0.Add(time.Minute)} {
			d := forged(at)
			_, err := v.Verify(context.Background(), d.h, d.body)
			if !errors.Is(err, ErrSignatureMismatch) || errors.Is(err, ErrKeyNotFetched) || StatusCode(err) != 401 {
				t.Errorf("static keys, forgery signed at %v: %v (%d), want a plain ErrSignatureMismatch (401)", at.Sub(t0), err, StatusCode(err))
			}
		}
	})

	t.Run("observed and logged apart from forgeries", func(t *testing.T) {
		ks := faltest.NewKeyServer(fal)
		defer ks.Close()
		clock := faltest.NewClock(t0)
		obs := &outcomeObserver{}
		var logs bytes.Buffer
		v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock.Now}), WithClock(clock.Now),
			WithObserver(obs), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		if err := v.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		for _, at := range []time.Time{t0, t0.Add(-time.Second)} {
			h.ServeHTTP(httptest.NewRecorder(), forger.NewRequest("/", faltest.Delivery{RequestID: "req-1", Time: at, Body: faltest.OKBody("req-1", nil)}))
		}
		want := []string{"key_not_fetched 503", "signature_mismatch 401"}
		if got := obs.got(); !slices.Equal(got, want) {
			t.Errorf("observed %q, want %q", got, want)
		}
		if strings.Contains(logs.String(), "level=ERROR") {
			t.Errorf("a key not fetched yet was logged as an outage:\n%s", logs.String())
		}
	})
}

// outcomeObserver records each delivery's outcome and status.
type outcomeObserver struct {
	mu  sync.Mutex // guards out
	out []string
}

func (o *outcomeObserver) ObserveDelivery(_ context.Context, d DeliveryInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.out = append(o.out, d.Outcome+" "+strconv.Itoa(d.Status))
}

func (*outcomeObserver) ObserveFetch(context.Context, FetchInfo) {}

func (o *outcomeObserver) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.out)
}

// waitingContext closes waiting the first time Done is called: when a
// caller starts waiting on it.
type waitingContext struct {
	context.Context
	waiting chan struct{}
	once    sync.Once
}

func (c *waitingContext) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}
