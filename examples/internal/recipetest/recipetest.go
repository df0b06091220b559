// Package recipetest runs the same deliveries against every router recipe,
// over a real loopback HTTP round trip, so that each recipe is held to the
// same answers: 200 for a genuine delivery, 401 for a tampered body (on a
// cold cache, so the key fetch it causes settles it), 400 for
// a repeated fal header, 403 for another fal account, one run per request id
// (409 with Retry-After while it runs, 500 and a fresh run when it fails),
// 413 over the body limit and 503 with Retry-After when the keys cannot be
// had.
package recipetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

const (
	// Path is where every recipe receives deliveries.
	Path = "/fal/webhook"

	// MaxBodySize is the body limit the recipes are built with, in bytes.
	MaxBodySize = 4 << 10

	// UserID is the fal user id the verifiers are pinned to.
	UserID = faltest.DefaultUserID

	// Seed is the seed in the deliveries' payload. It is above int64's
	// range, so a decoder going through int64 or float64 changes it.
	Seed uint64 = 17454220438242315174

	// ImageURL is the image URL in the deliveries' payload.
	ImageURL = "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg"
)

// now is the fixed time of the verifiers' clocks and of the deliveries'
// timestamps, so that no delivery ever goes stale.
var now = time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)

// Setup is what a recipe is built from in one test.
type Setup struct {
	Verifier *falwebhook.Verifier
	Dedupe   *falwebhook.Dedupe
	Handle   func(context.Context, *falwebhook.Event) error
}

// Serve starts the recipe built from s on a loopback address, stops it when
// the test ends, and returns its base URL, such as http://127.0.0.1:41234.
type Serve func(t *testing.T, s Setup) (baseURL string)

// HTTPServer returns a Serve for recipes that build an http.Handler: it runs
// the handler under httptest.NewServer.
func HTTPServer(newHandler func(Setup) http.Handler) Serve {
	return func(t *testing.T, s Setup) string {
		srv := httptest.NewServer(newHandler(s))
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

// Body returns a successful delivery's body for request id, shaped like
// fal's, whose payload carries Seed and ImageURL.
func Body(id string) []byte {
	return faltest.OKBody(id, map[string]any{
		"images": []map[string]any{{"url": ImageURL, "content_type": "image/jpeg", "width": 1024, "height": 1024}},
		"seed":   Seed,
	})
}

// Run sends deliveries to the recipe serve starts, each subtest against a
// fresh recipe, verifier, key server and dedupe store.
func Run(t *testing.T, serve Serve) {
	t.Run("genuine", func(t *testing.T) {
		f := Start(t, serve)
		a := f.Deliver(f.Signed("req-genuine", Body("req-genuine")))
		a.Want(t, http.StatusOK)
		ev := f.OnlyEvent(t)
		if ev.RequestID != "req-genuine" || ev.Status != falwebhook.StatusOK {
			t.Fatalf("handler saw request %q status %q, want req-genuine OK", ev.RequestID, ev.Status)
		}
		out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
		if err != nil {
			t.Fatalf("decoding the payload: %v", err)
		}
		if out.Seed != Seed || len(out.Images) != 1 || out.Images[0].URL != ImageURL {
			t.Fatalf("handler saw seed %d images %+v, want seed %d and %s", out.Seed, out.Images, Seed, ImageURL)
		}
	})

	t.Run("tampered body", func(t *testing.T) {
		f := Start(t, serve)
		d := f.Signed("req-tampered", Body("req-tampered"))
		d.Body = bytes.Replace(d.Body, []byte("17454220438242315174"), []byte("17454220438242315175"), 1)
		f.Deliver(d).Want(t, http.StatusUnauthorized)
		f.NoEvents(t)
	})

	// A repeated header is refused whichever copy is genuine: a router
	// that kept only the first or only the last value would answer 200
	// to one of these.
	t.Run("signature sent twice, the last one genuine", func(t *testing.T) {
		f := Start(t, serve)
		d := f.Signed("req-twice", Body("req-twice"))
		d.Header[falwebhook.HeaderSignature] = []string{strings.Repeat("0", 128), d.Header.Get(falwebhook.HeaderSignature)}
		f.Deliver(d).Want(t, http.StatusBadRequest)
		f.NoEvents(t)
	})
	t.Run("user id sent twice, the first one genuine", func(t *testing.T) {
		f := Start(t, serve)
		d := f.Signed("req-twice", Body("req-twice"))
		d.Header[falwebhook.HeaderUserID] = []string{UserID, "someone-else"}
		f.Deliver(d).Want(t, http.StatusBadRequest)
		f.NoEvents(t)
	})

	t.Run("another fal account", func(t *testing.T) {
		f := Start(t, serve)
		d := f.sign(faltest.Delivery{RequestID: "req-foreign", UserID: "someone-else", Time: now, Body: Body("req-foreign")})
		f.Deliver(d).Want(t, http.StatusForbidden)
		f.NoEvents(t)
	})

	t.Run("redelivery runs the handler once", func(t *testing.T) {
		f := Start(t, serve)
		f.Deliver(f.Signed("req-again", Body("req-again"))).Want(t, http.StatusOK)
		f.WaitBookkeeping(t, "req-again")
		// fal signs each retry afresh.
		d := f.sign(faltest.Delivery{RequestID: "req-again", Time: now.Add(time.Second), Body: Body("req-again")})
		a := f.Deliver(d)
		a.Want(t, http.StatusOK)
		if got := a.Header.Get(falwebhook.HeaderDuplicate); got != "completed" {
			t.Errorf("redelivery answered %s %q, want \"completed\"", falwebhook.HeaderDuplicate, got)
		}
		if n := len(f.Events()); n != 1 {
			t.Fatalf("handler ran %d times for one request id, want 1", n)
		}
	})

	t.Run("redelivery while the handler runs", func(t *testing.T) {
		f := Start(t, serve)
		entered, release := f.HoldNext()
		t.Cleanup(release) // before the server's cleanup, which waits for the handler
		first := make(chan Answer, 1)
		go func() { first <- f.Deliver(f.Signed("req-busy", Body("req-busy"))) }()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the handler never received the first delivery")
		}
		d := f.sign(faltest.Delivery{RequestID: "req-busy", Time: now.Add(time.Second), Body: Body("req-busy")})
		a := f.Deliver(d)
		a.Want(t, http.StatusConflict)
		if got := a.Header.Get(falwebhook.HeaderDuplicate); got != "in-progress" {
			t.Errorf("redelivery during the handler answered %s %q, want \"in-progress\"", falwebhook.HeaderDuplicate, got)
		}
		if a.Header.Get("Retry-After") == "" {
			t.Error("409 without Retry-After: fal is not told to retry later")
		}
		release()
		(<-first).Want(t, http.StatusOK)
		if n := len(f.Events()); n != 1 {
			t.Fatalf("handler ran %d times for one request id, want 1", n)
		}
	})

	t.Run("a failed handler runs again on redelivery", func(t *testing.T) {
		f := Start(t, serve)
		f.FailNext()
		f.Deliver(f.Signed("req-fail", Body("req-fail"))).Want(t, http.StatusInternalServerError)
		f.WaitBookkeeping(t, "req-fail")
		d := f.sign(faltest.Delivery{RequestID: "req-fail", Time: now.Add(time.Second), Body: Body("req-fail")})
		a := f.Deliver(d)
		a.Want(t, http.StatusOK)
		if got := a.Header.Get(falwebhook.HeaderDuplicate); got != "" {
			t.Errorf("retry of a failed delivery answered %s %q: the failure was recorded as done", falwebhook.HeaderDuplicate, got)
		}
		if n := len(f.Events()); n != 2 {
			t.Fatalf("handler ran %d times, want 2 (the failure, then the retry)", n)
		}
	})

	t.Run("body over the limit", func(t *testing.T) {
		f := Start(t, serve)
		body := faltest.OKBody("req-large", map[string]any{"seed": Seed, "pad": strings.Repeat("x", MaxBodySize)})
		f.Deliver(f.Signed("req-large", body)).Want(t, http.StatusRequestEntityTooLarge)
		f.NoEvents(t)
	})

	t.Run("keys unavailable", func(t *testing.T) {
		f := Start(t, serve)
		f.Keys.FailNext(1, http.StatusInternalServerError)
		a := f.Deliver(f.Signed("req-nokeys", Body("req-nokeys")))
		a.Want(t, http.StatusServiceUnavailable)
		if a.Header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After: fal is not told to retry later")
		}
		f.NoEvents(t)
	})

	// The signature covers the body as sent: a router that undid a
	// Content-Encoding before verifying would check other bytes.
	t.Run("content encoding left alone", func(t *testing.T) {
		f := Start(t, serve)
		d := f.Signed("req-encoded", Body("req-encoded"))
		d.Header.Set("Content-Encoding", "gzip")
		f.Deliver(d).Want(t, http.StatusOK)
		f.OnlyEvent(t)
	})
}

// Fixture is one running recipe with its key server and what its handler
// saw.
type Fixture struct {
	URL    string              // the recipe's base URL
	Signer *faltest.Signer     // stands in for fal
	Keys   *faltest.KeyServer  // publishes Signer's key
	Setup  Setup               // what the recipe was built from
	client *http.Client        // to URL
	done   chan string         // request ids completed or released by the dedupe store
	mu     sync.Mutex          // guards events, fail and hold
	events []*falwebhook.Event // every event Handle received
	fail   bool                // Handle fails once
	hold   *gate               // Handle waits at it once
}

// gate is where a held handler waits.
type gate struct {
	entered chan struct{} // closed when the handler arrives
	release chan struct{} // closed to let it return
	once    sync.Once     // guards closing release
}

// Start builds a verifier pinned to UserID, with MaxBodySize, a fixed
// clock and keys from a fresh KeyServer, and an in-memory Dedupe, starts the
// recipe with serve, and returns the fixture.
func Start(t *testing.T, serve Serve) *Fixture {
	t.Helper()
	f := &Fixture{Signer: faltest.SignerFromName("fal"), done: make(chan string, 64)}
	f.Keys = faltest.NewKeyServer(f.Signer)
	t.Cleanup(f.Keys.Close)
	clock := func() time.Time { return now }
	d := &falwebhook.Dedupe{Store: notifyingStore{falwebhook.NewMemoryStore(0), f.done}, Clock: clock}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("dedupe bookkeeping still running at the end: %v", err)
		}
	})
	f.Setup = Setup{
		Verifier: falwebhook.NewVerifier(
			falwebhook.WithKeys(&falwebhook.JWKS{URL: f.Keys.URL, Client: f.Keys.Client(), Clock: clock}),
			falwebhook.WithClock(clock),
			falwebhook.WithMaxBodySize(MaxBodySize),
			falwebhook.WithUserIDs(UserID),
		),
		Dedupe: d,
		Handle: f.handle,
	}
	f.URL = serve(t, f.Setup)
	f.client = &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	t.Cleanup(f.client.CloseIdleConnections)
	return f
}

// handle records ev, waiting when HoldNext asked it to and failing when
// FailNext did.
func (f *Fixture) handle(_ context.Context, ev *falwebhook.Event) error {
	f.mu.Lock()
	g := f.hold
	f.hold = nil
	f.mu.Unlock()
	if g != nil {
		close(g.entered)
		<-g.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	if f.fail {
		f.fail = false
		return errors.New("handler failed on purpose")
	}
	return nil
}

// HoldNext makes the next call of the handler wait until release is
// called; entered is closed when it starts waiting. release may be called
// more than once.
func (f *Fixture) HoldNext() (entered <-chan struct{}, release func()) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold = g
	return g.entered, func() { g.once.Do(func() { close(g.release) }) }
}

// FailNext makes the next call of the handler fail.
func (f *Fixture) FailNext() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = true
}

// Events returns the events the handler received, in order.
func (f *Fixture) Events() []*falwebhook.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*falwebhook.Event(nil), f.events...)
}

// OnlyEvent returns the one event the handler received, failing the test
// when it received another number.
func (f *Fixture) OnlyEvent(t *testing.T) *falwebhook.Event {
	t.Helper()
	evs := f.Events()
	if len(evs) != 1 {
		t.Fatalf("handler received %d events, want 1", len(evs))
	}
	return evs[0]
}

// NoEvents fails the test when the handler received any event.
func (f *Fixture) NoEvents(t *testing.T) {
	t.Helper()
	if evs := f.Events(); len(evs) != 0 {
		t.Fatalf("handler received %d events from a rejected delivery, first %q", len(evs), evs[0].RequestID)
	}
}

// WaitBookkeeping waits until the dedupe store has completed or released
// request id, which the middleware does just after answering.
func (f *Fixture) WaitBookkeeping(t *testing.T, id string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-f.done:
			if got == id {
				return
			}
		case <-timeout:
			t.Fatalf("the dedupe store never completed or released %q", id)
		}
	}
}

// Delivery is a request to send: headers and the raw body.
type Delivery struct {
	Header http.Header
	Body   []byte
}

// Signed returns a delivery of body for request id, signed by Signer for
// UserID at the fixture's fixed time.
func (f *Fixture) Signed(id string, body []byte) Delivery {
	return f.sign(faltest.Delivery{RequestID: id, Time: now, Body: body})
}

func (f *Fixture) sign(d faltest.Delivery) Delivery {
	h := http.Header{"Content-Type": {"application/json"}}
	f.Signer.Sign(d).Set(h)
	return Delivery{Header: h, Body: d.Body}
}

// Answer is a recipe's response.
type Answer struct {
	Status int
	Header http.Header
	Body   string
}

// Want fails the test unless the answer has status code.
func (a Answer) Want(t *testing.T, code int) {
	t.Helper()
	if a.Status != code {
		t.Fatalf("answered %d %q, want %d", a.Status, a.Body, code)
	}
}

// Deliver POSTs d to the recipe's Path and returns the answer.
func (f *Fixture) Deliver(d Delivery) Answer {
	return f.Do(http.MethodPost, Path, d)
}

// Do sends a request to the recipe and returns the answer. Transport errors
// are returned as status 0 with the error as the body.
func (f *Fixture) Do(method, path string, d Delivery) Answer {
	req, err := http.NewRequest(method, f.URL+path, bytes.NewReader(d.Body))
	if err != nil {
		return Answer{Body: err.Error()}
	}
	for k, vs := range d.Header {
		req.Header[k] = vs
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return Answer{Body: err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Answer{Body: fmt.Sprintf("reading the answer: %v", err)}
	}
	return Answer{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}

// notifyingStore tells done about each request id it completed or
// released.
type notifyingStore struct {
	falwebhook.DedupeStore
	done chan<- string
}

func (s notifyingStore) Complete(ctx context.Context, id, token string, ttl time.Duration) error {
	err := s.DedupeStore.Complete(ctx, id, token, ttl)
	if err == nil {
		s.notify(id)
	}
	return err
}

func (s notifyingStore) Release(ctx context.Context, id, token string) error {
	err := s.DedupeStore.Release(ctx, id, token)
	if err == nil {
		s.notify(id)
	}
	return err
}

// notify sends id to done unless done is full (then WaitBookkeeping fails
// the test rather than the server hanging).
func (s notifyingStore) notify(key string) {
	// The store's key is "<len>:<user id>:<request id>"; tell the request id.
	id := key
	if _, rest, ok := strings.Cut(key, ":"); ok {
		if _, reqID, ok := strings.Cut(rest[len(UserID):], ":"); ok && strings.HasPrefix(rest, UserID) {
			id = reqID
		}
	}
	select {
	case s.done <- id:
	default:
	}
}
