package faltest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"time"
)

// JWKSPath is the path a KeyServer serves its JWKS document at, the same as
// fal's.
const JWKSPath = "/.well-known/jwks.json"

// A KeyServer is an HTTP server on a loopback address that publishes a JWKS
// document, with knobs to rotate keys, fail, slow down or hang, and a count
// of the fetches it received. Requests to any path other than JWKSPath get
// 404 and are not counted; methods other than GET and HEAD get 405.
//
// A KeyServer is safe for concurrent use by multiple goroutines.
type KeyServer struct {
	// URL is the full address of the JWKS document, e.g.
	// http://127.0.0.1:41234/.well-known/jwks.json.
	URL string

	srv     *httptest.Server
	closing chan struct{} // closed by Close: aborts delayed and held requests

	mu           sync.Mutex    // guards the fields below
	doc          []byte        // the document served on success; never modified in place
	contentType  string        // its Content-Type; "" sends none
	cacheControl string        // Cache-Control of 200 responses; "" sends none
	failN        int           // how many of the next requests fail
	failStatus   int           // with this status
	delay        time.Duration // wait before answering
	gates        []*gate       // active holds; arriving requests wait on all of them
	fetches      int           // requests to JWKSPath received
	fetched      chan struct{} // closed and replaced when fetches grows
	closed       bool
}

// A gate blocks the requests that arrived while it was active until it is
// opened.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// NewKeyServer starts a KeyServer on 127.0.0.1 publishing the keys of
// signers (an empty key list if there are none). The caller must Close it.
func NewKeyServer(signers ...*Signer) *KeyServer {
	k := &KeyServer{
		closing:     make(chan struct{}),
		doc:         JWKS(signers...),
		contentType: "application/json",
		fetched:     make(chan struct{}),
	}
	k.srv = httptest.NewServer(http.HandlerFunc(k.serveHTTP))
	k.URL = k.srv.URL + JWKSPath
	return k
}

// Close releases every held or delayed request, aborting its connection,
// then shuts the server down and waits for outstanding requests to finish.
// Calling Close again has no effect.
func (k *KeyServer) Close() {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return
	}
	k.closed = true
	close(k.closing)
	k.mu.Unlock()
	k.srv.Close()
}

// Client returns an HTTP client configured for requests to the server. It
// is closed along with the server.
func (k *KeyServer) Client() *http.Client {
	return k.srv.Client()
}

// SetSigners makes the server publish exactly the keys of signers from now
// on, replacing the previous keys or a document set by SetDocument.
func (k *KeyServer) SetSigners(signers ...*Signer) {
	doc := JWKS(signers...)
	k.mu.Lock()
	k.doc, k.contentType = doc, "application/json"
	k.mu.Unlock()
}

// SetDocument makes the server answer 200 with body, whatever it is (an HTML
// error page, a JWKS with odd keys, megabytes of junk), and Content-Type
// contentType; an empty contentType sends no Content-Type header at all.
// body is copied. SetSigners switches back to a key set.
func (k *KeyServer) SetDocument(body []byte, contentType string) {
	doc := slices.Clone(body)
	if doc == nil {
		doc = []byte{}
	}
	k.mu.Lock()
	k.doc, k.contentType = doc, contentType
	k.mu.Unlock()
}

// FailNext makes the next n requests to JWKSPath answer status, which must
// be in [200, 999], with a short text body and no Cache-Control. It replaces
// any failures still pending; n <= 0 cancels them. Failed requests still
// count in Fetches and still honour SetDelay and Hold. FailNext panics on an
// invalid status.
func (k *KeyServer) FailNext(n int, status int) {
	if status < 200 || status > 999 {
		panic("faltest: FailNext status " + strconv.Itoa(status) + " not in [200, 999]")
	}
	k.mu.Lock()
	k.failN, k.failStatus = max(n, 0), status
	k.mu.Unlock()
}

// SetCacheControl sets the Cache-Control header of 200 responses; "" (the
// default) sends none.
func (k *KeyServer) SetCacheControl(v string) {
	k.mu.Lock()
	k.cacheControl = v
	k.mu.Unlock()
}

// SetDelay makes requests arriving from now on wait d before they are
// answered (0, the default, answers at once). A waiting request stops early,
// unanswered, when its client gives up (the request context ends) or the
// server is closed.
func (k *KeyServer) SetDelay(d time.Duration) {
	k.mu.Lock()
	k.delay = max(d, 0)
	k.mu.Unlock()
}

// Hold makes requests arriving from now on block, before they are answered,
// until release is called, their client gives up, or the server is closed.
// It makes a hanging server deterministic, without sleeps: Hold, start the
// fetch, WaitFetches for its arrival, assert, release. Requests that arrived
// before Hold are not affected. With several holds active a request waits
// for all of them. release may be called more than once and from any
// goroutine.
func (k *KeyServer) Hold() (release func()) {
	g := &gate{ch: make(chan struct{})}
	k.mu.Lock()
	k.gates = append(k.gates, g)
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		k.gates = slices.DeleteFunc(k.gates, func(x *gate) bool { return x == g })
		k.mu.Unlock()
		g.open()
	}
}

// Fetches returns the number of requests to JWKSPath received so far, of
// any method and outcome, including failed, delayed and held ones. A request
// is counted as soon as it arrives, before any delay or hold.
func (k *KeyServer) Fetches() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.fetches
}

// WaitFetches blocks until Fetches() >= n or ctx is done, and then returns
// ctx's error, wrapped.
func (k *KeyServer) WaitFetches(ctx context.Context, n int) error {
	for {
		k.mu.Lock()
		got, fetched := k.fetches, k.fetched
		k.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-fetched:
		case <-ctx.Done():
			return fmt.Errorf("faltest: waiting for %d JWKS fetches, got %d: %w", n, got, ctx.Err())
		}
	}
}

func (k *KeyServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != JWKSPath {
		http.NotFound(w, r)
		return
	}

	k.mu.Lock()
	k.fetches++
	close(k.fetched)
	k.fetched = make(chan struct{})
	failStatus := 0
	if k.failN > 0 {
		k.failN--
		failStatus = k.failStatus
	}
	delay := k.delay
	gates := slices.Clone(k.gates)
	k.mu.Unlock()

	if !k.wait(r.Context(), delay, gates) {
		return // the client gave up; nobody reads an answer
	}

	if failStatus != 0 {
		http.Error(w, strconv.Itoa(failStatus)+" "+http.StatusText(failStatus), failStatus)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}

	k.mu.Lock()
	doc, contentType, cacheControl := k.doc, k.contentType, k.cacheControl
	k.mu.Unlock()

	h := w.Header()
	if contentType == "" {
		h["Content-Type"] = nil // suppress net/http's sniffing
	} else {
		h.Set("Content-Type", contentType)
	}
	if cacheControl != "" {
		h.Set("Cache-Control", cacheControl)
	}
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(doc) // a client that stops reading early is not an error here
	}
}

// wait waits out delay, then every gate. It reports false when ctx ended
// first; when the server is closing it aborts the handler, so the client
// sees its connection drop.
func (k *KeyServer) wait(ctx context.Context, delay time.Duration, gates []*gate) bool {
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		case <-k.closing:
			panic(http.ErrAbortHandler)
		}
	}
	for _, g := range gates {
		select {
		case <-g.ch:
		case <-ctx.Done():
			return false
		case <-k.closing:
			panic(http.ErrAbortHandler)
		}
	}
	return true
}
