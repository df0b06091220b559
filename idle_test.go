//go:build unix

package falwebhook

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// Bodiless requests: a request that passes the cheap checks and then sends
// no body, or a byte now and then, must not hold a share of the body budget
// that genuine deliveries need. Before the budget charged only bytes read,
// 4,096 such requests took the whole default budget.
const (
	idleHTTP1 = 4200 // connections, half of them trickling a byte a second
	idleHTTP2 = 5000 // streams, over idleHTTP2/250 connections
)

// idleEnv is a server running the middleware with its default options
// (static keys and a fixed clock aside), counting the requests that entered
// it.
type idleEnv struct {
	signer  *faltest.Signer
	at      time.Time
	v       *Verifier
	entered atomic.Int64
	handler http.Handler
}

func newIdleEnv() *idleEnv {
	e := &idleEnv{signer: faltest.SignerFromName("idle"), at: time.Unix(1_700_000_000, 0)}
	e.v = NewVerifier(WithKeys(StaticKeys(e.signer.PublicKey())), WithClock(func() time.Time { return e.at }))
	mw := e.v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(HeaderSignature) == strings.Repeat("0", 128) {
			e.entered.Add(1)
		}
		mw.ServeHTTP(w, r)
	})
	return e
}

// idleHeaders returns the fal headers of a delivery whose body never comes:
// well formed, current, with a signature nobody made.
func (e *idleEnv) idleHeaders(i int) http.Header {
	h := http.Header{}
	e.signer.Sign(faltest.Delivery{RequestID: fmt.Sprintf("idle-%d", i), Time: e.at, Body: []byte("{}")}).Set(h)
	h.Set(HeaderSignature, strings.Repeat("0", 128))
	return h
}

// waitEntered waits until n idle requests are in the middleware, or, at
// most 30 s, until no more come for a second (those refused go away).
func (e *idleEnv) waitEntered(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last, since := int64(-1), time.Now()
	for got := e.entered.Load(); got < n; got = e.entered.Load() {
		switch {
		case time.Now().After(deadline):
			t.Fatalf("only %d of %d idle requests reached the middleware", got, n)
		case got != last:
			last, since = got, time.Now()
		case time.Since(since) > time.Second:
			t.Logf("%d of %d idle requests reached the middleware", got, n)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// genuine sends n genuine 1 KiB deliveries, 4 at a time, and returns how
// many were answered 200.
func (e *idleEnv) genuine(t *testing.T, client *http.Client, url string, n int) int {
	t.Helper()
	var ok atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			body := faltest.OKBody(fmt.Sprintf("genuine-%d", i), map[string]any{"pad": strings.Repeat("x", 1000)})
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
			e.signer.Sign(faltest.Delivery{RequestID: fmt.Sprintf("genuine-%d", i), Time: e.at, Body: body}).Set(req.Header)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			resp, err := client.Do(req.WithContext(ctx))
			if err != nil {
				t.Logf("genuine delivery %d: %v", i, err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ok.Add(1)
			} else if i == 0 || resp.StatusCode != http.StatusServiceUnavailable {
				t.Logf("genuine delivery %d: status %d", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

// needFiles skips the test unless the process may open n more files.
func needFiles(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < n+256 {
		t.Skipf("needs %d open files, the limit is %d", n+256, lim.Cur)
	}
}

// TestIdleConnectionsKeepBudget holds 4,200 HTTP/1.1 requests that sent
// their headers and no body, half of them trickling a byte a second, while
// genuine deliveries are sent: at least 99% of those must be answered 200.
// It also logs what an idle connection costs the server.
func TestIdleConnectionsKeepBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("holds thousands of connections")
	}
	needFiles(t, 2*idleHTTP1)
	e := newIdleEnv()
	srv := httptest.NewServer(e.handler)
	defer srv.Close()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	conns := make([]net.Conn, 0, idleHTTP1)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range idleHTTP1 {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		var head strings.Builder
		fmt.Fprintf(&head, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n", srv.Listener.Addr())
		_ = e.idleHeaders(i).Write(&head)
		head.WriteString("\r\n")
		if _, err := io.WriteString(c, head.String()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	e.waitEntered(t, idleHTTP1)

	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	held := int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)
	t.Logf("%d idle connections: %.2f goroutines and %.1f KiB (heap and stacks, both ends) each; %d bytes charged to the budget",
		idleHTTP1, float64(runtime.NumGoroutine()-goroutines)/idleHTTP1, float64(held)/idleHTTP1/1024, e.v.budget.used.Load())

	// Half the connections trickle a byte a second while the genuine
	// deliveries go.
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			for _, c := range conns[:idleHTTP1/2] {
				_, _ = c.Write([]byte{'{'})
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	const n = 120
	ok := e.genuine(t, srv.Client(), srv.URL, n)
	close(stop)
	<-trickled
	if ok*100 < n*99 {
		t.Errorf("%d of %d genuine deliveries answered 200 while %d idle connections were held, want at least 99%%", ok, n, idleHTTP1)
	}
}

// TestIdleStreamsKeepBudget holds 5,000 HTTP/2 streams (h2c) that sent
// their headers and no DATA frame while genuine deliveries are sent: at
// least 99% of those must be answered 200.
func TestIdleStreamsKeepBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("holds thousands of streams")
	}
	if raceEnabled {
		t.Skip("two goroutines a stream exceed the race detector's limit of 8128")
	}
	e := newIdleEnv()
	srv := httptest.NewUnstartedServer(e.handler)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	h2c := func() *http.Client {
		tr := &http.Transport{Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: tr}
	}
	idle := h2c()
	defer idle.CloseIdleConnections()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i := range idleHTTP2 {
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, pr)
		req.Header = e.idleHeaders(i)
		req.ContentLength = 100000
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pw.Close()
			if resp, err := idle.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	e.waitEntered(t, idleHTTP2)
	t.Logf("%d idle streams: %d bytes charged to the budget", idleHTTP2, e.v.budget.used.Load())

	const n = 100
	client := h2c()
	defer client.CloseIdleConnections()
	if ok := e.genuine(t, client, srv.URL, n); ok*100 < n*99 {
		t.Errorf("%d of %d genuine deliveries answered 200 while %d idle streams were held, want at least 99%%", ok, n, idleHTTP2)
	}
}
