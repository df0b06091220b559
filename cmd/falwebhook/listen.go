package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/falwebhook/falwebhook"
)

const listenDescription = `
Listen runs a webhook receiver that verifies every delivery with falwebhook's
Verifier and Middleware, on any path, and prints one line per delivery: time,
HTTP status answered, request id, event status, verdict. Genuine deliveries
are answered 200; forged or malformed ones 400/401; 503 when keys cannot be
fetched, so that fal retries.

With --forward URL, each verified delivery is passed on to your app, in any
language, as a POST with the original headers (the four X-Fal-Webhook-*
headers, Content-Type and the rest, minus hop-by-hop ones, plus
X-Forwarded-For/-Host/-Proto) and the body byte for byte; the delivery's
query string, if any, is appended to URL. The app's status and body are
relayed back to fal; when the app cannot be reached the answer is 502.
Deliveries that fail verification never reach the app.

Keys come from --jwks: fal's JWKS URL by default (cached, refreshed as fal
rotates keys), another URL, or a JWKS file such as keygen writes.

The first line on stdout is "listening on http://ADDR" (with --json, the
object {"listening":"http://ADDR"}), so --addr 127.0.0.1:0 picks a free port.
On SIGINT or SIGTERM the server stops accepting and waits, up to
--shutdown-timeout, for deliveries in flight to finish; exit status 0 then.`

// listenLine is one delivery in --json output.
type listenLine struct {
	Time          string `json:"time"`
	Method        string `json:"method"`
	Path          string `json:"path"`
	Status        int    `json:"status"`
	RequestID     string `json:"request_id"`
	EventStatus   string `json:"event_status,omitempty"`
	Verdict       string `json:"verdict"`
	Reason        string `json:"reason,omitempty"`
	Error         string `json:"error,omitempty"`
	ForwardStatus int    `json:"forward_status,omitempty"`
	ForwardError  string `json:"forward_error,omitempty"`
}

// receiver is the listen command's HTTP handler.
type receiver struct {
	verify  http.Handler // the Verifier's middleware around accept
	forward *url.URL     // nil: answer 200 ourselves
	client  *http.Client
	timeout time.Duration // per forward
	jsonOut bool
	out     *syncWriter
	now     func() time.Time
}

// record collects what happened to one delivery, for its log line. It is
// used by one request's goroutine only.
type record struct {
	err        error
	ev         *falwebhook.Event
	fwdStatus  int
	fwdErr     error
	forwarding bool
}

type recordKey struct{}

func runListen(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet(e, "listen", "[flags]", listenDescription)
	var (
		addr            = fs.String("addr", "127.0.0.1:8787", "listen on `host:port` (port 0 picks a free one)")
		jwks            = fs.String("jwks", falwebhook.DefaultJWKSURL, "JWKS `URL or file` holding the public keys")
		jsonOut         = fs.Bool("json", false, "print one JSON object per delivery instead of a text line")
		forward         = fs.String("forward", "", "pass verified deliveries to the app at `URL` and relay its answer")
		forwardTimeout  = durationVar(fs, "forward-timeout", 15*time.Second, "give up on the app after this `duration` (502); fal itself waits 15s")
		tolerance       = durationVar(fs, "tolerance", 5*time.Minute, "largest accepted `skew` between a delivery's timestamp and now")
		shutdownTimeout = durationVar(fs, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, wait this `duration` for deliveries in flight")
	)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	// Handlers, the server's error log and shutdown all write to stderr.
	stderr := &syncWriter{w: e.stderr}
	e = &env{stdin: e.stdin, stdout: e.stdout, stderr: stderr}
	fail := func(code int, format string, args ...any) int { return e.errorf(code, "listen", format, args...) }
	if len(pos) > 0 {
		return fail(exitUsage, "unexpected argument %q", pos[0])
	}
	if *tolerance < time.Second || *forwardTimeout <= 0 || *shutdownTimeout <= 0 {
		return fail(exitUsage, "--tolerance, --forward-timeout and --shutdown-timeout must be positive (tolerance at least 1s)")
	}
	rc := &receiver{
		client: &http.Client{
			Transport: forwardTransport(),
			// Relay an app's redirect as is; never follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: *forwardTimeout,
		jsonOut: *jsonOut,
		out:     &syncWriter{w: e.stdout},
		now:     time.Now,
	}
	if *forward != "" {
		u, err := url.Parse(*forward)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail(exitUsage, "--forward %q: want http://host[:port]/path", *forward)
		}
		rc.forward = u
	}

	opts := []falwebhook.Option{
		falwebhook.WithTolerance(*tolerance),
		falwebhook.WithErrorHandler(rc.reject),
	}
	var (
		cache    *falwebhook.JWKS
		keysInfo string
		fetches  = &lastFetch{}
	)
	if isURL(*jwks) {
		cache = &falwebhook.JWKS{URL: *jwks, Observer: fetches}
		opts = append(opts, falwebhook.WithKeys(cache))
	} else {
		keys, err := loadJWKSFile(*jwks)
		if err != nil {
			return fail(exitUsage, "--jwks: %v", err)
		}
		opts = append(opts, falwebhook.WithKeys(falwebhook.StaticKeys(keys...)))
		keysInfo = fmt.Sprintf("keys: %s from %s", plural(len(keys), "Ed25519 key"), *jwks)
	}
	rc.verify = falwebhook.NewVerifier(opts...).Middleware(http.HandlerFunc(rc.accept))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	base := "http://" + ln.Addr().String()
	if rc.jsonOut {
		b, _ := json.Marshal(map[string]string{"listening": base})
		rc.out.printf("%s\n", b)
	} else {
		rc.out.printf("listening on %s\n", base)
	}
	info := func(format string, args ...any) {
		fmt.Fprintf(e.stderr, "falwebhook listen: %s\n", fmt.Sprintf(format, args...))
	}
	if cache != nil {
		// Warm the cache so that a bad URL shows now, not at the first
		// delivery; deliveries would still be answered 503 until it works.
		if err := cache.Refresh(ctx); err != nil {
			info("warning: %v (deliveries get 503 until keys can be fetched)", err)
		} else {
			keysInfo = fmt.Sprintf("keys: %s from %s", plural(fetches.keys(), "Ed25519 key"), *jwks)
		}
	}
	if keysInfo != "" {
		info("%s", keysInfo)
	}
	if rc.forward != nil {
		info("forwarding verified deliveries to %s", rc.forward.Redacted())
	}

	srv := &http.Server{
		Handler:           rc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(e.stderr, "falwebhook listen: ", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return fail(exitUsage, "%v", err)
	case <-ctx.Done():
	}
	// Shutdown closes the listener, then runs this hook, then waits for
	// the deliveries in flight.
	closed := make(chan struct{})
	srv.RegisterOnShutdown(func() {
		info("shutting down: no new connections; waiting up to %s for deliveries in flight", *shutdownTimeout)
		close(closed)
	})
	sctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-closed
	if err != nil {
		_ = srv.Close()
		return fail(exitUsage, "shutdown: %v; deliveries still in flight were cut off", err)
	}
	<-served // http.ErrServerClosed
	info("stopped")
	return exitOK
}

// forwardTransport is the default transport without transparent gzip, so
// that the app's answer is relayed byte for byte.
func forwardTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	return t
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &record{}
	sw := &statusWriter{ResponseWriter: w}
	rc.verify.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), recordKey{}, rec)))
	rc.log(r, sw.status(), rec)
}

func recordOf(r *http.Request) *record {
	if rec, ok := r.Context().Value(recordKey{}).(*record); ok {
		return rec
	}
	return &record{}
}

// reject answers a delivery that failed verification, as the middleware
// would by default, and records why.
func (rc *receiver) reject(w http.ResponseWriter, r *http.Request, err error) {
	recordOf(r).err = err
	code := falwebhook.StatusCode(err)
	switch code {
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", http.MethodPost)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "60")
	}
	http.Error(w, http.StatusText(code), code)
}

// accept handles a verified delivery: forward it, or answer 200.
func (rc *receiver) accept(w http.ResponseWriter, r *http.Request) {
	rec := recordOf(r)
	rec.ev, _ = falwebhook.EventFromContext(r.Context())
	if rc.forward == nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
		return
	}
	rec.forwarding = true
	rc.forwardTo(w, r, rec)
}

// hopByHop lists the headers that describe one connection, not the message
// (RFC 9110, section 7.6.1), and so are not forwarded either way.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyHeader copies src to dst without hop-by-hop headers, including those
// named in src's Connection header.
func copyHeader(dst, src http.Header) {
	skip := map[string]bool{}
	for _, h := range hopByHop {
		skip[h] = true
	}
	for _, v := range src.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			skip[http.CanonicalHeaderKey(strings.TrimSpace(name))] = true
		}
	}
	for k, vs := range src {
		if skip[http.CanonicalHeaderKey(k)] {
			continue
		}
		dst[k] = append([]string(nil), vs...)
	}
}

func (rc *receiver) forwardTo(w http.ResponseWriter, r *http.Request, rec *record) {
	body, err := io.ReadAll(r.Body) // the middleware's in-memory copy
	if err != nil {
		rec.fwdErr = err
		http.Error(w, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		return
	}
	target := *rc.forward
	if r.URL.RawQuery != "" {
		if target.RawQuery != "" {
			target.RawQuery += "&"
		}
		target.RawQuery += r.URL.RawQuery
	}
	ctx, cancel := context.WithTimeout(r.Context(), rc.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		rec.fwdErr = err
		http.Error(w, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		return
	}
	copyHeader(req.Header, r.Header)
	req.Header.Del("Content-Length") // set from the body
	req.ContentLength = int64(len(body))
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		req.Header.Set("X-Forwarded-For", host)
	}
	req.Header.Set("X-Forwarded-Host", r.Host)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	req.Header.Set("X-Forwarded-Proto", proto)

	resp, err := rc.client.Do(req)
	if err != nil {
		rec.fwdErr = err
		http.Error(w, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	rec.fwdStatus = resp.StatusCode
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		rec.fwdErr = fmt.Errorf("relaying the answer: %w", err)
	}
}

// log prints the delivery's line.
func (rc *receiver) log(r *http.Request, status int, rec *record) {
	l := listenLine{
		Time:      rc.now().UTC().Format(time.RFC3339),
		Method:    r.Method,
		Path:      r.URL.Path,
		Status:    status,
		RequestID: strings.Trim(strconv.Quote(r.Header.Get(falwebhook.HeaderRequestID)), `"`),
		Verdict:   "accepted",
	}
	if rec.ev != nil {
		l.RequestID = rec.ev.RequestID
		l.EventStatus = string(rec.ev.Status)
	}
	if rec.err != nil {
		l.Verdict = "rejected"
		l.Reason = reason(rec.err)
		l.Error = rec.err.Error()
	}
	l.ForwardStatus = rec.fwdStatus
	if rec.fwdErr != nil {
		l.ForwardError = rec.fwdErr.Error()
	}
	if rc.jsonOut {
		b, _ := json.Marshal(l)
		rc.out.printf("%s\n", b)
		return
	}
	verdict := l.Verdict
	switch {
	case rec.err != nil:
		verdict += ": " + strings.TrimPrefix(l.Error, "falwebhook: ")
	case rec.forwarding && rec.fwdErr != nil && rec.fwdStatus == 0:
		verdict += ", forward failed: " + l.ForwardError
	case rec.forwarding && rec.fwdErr != nil:
		verdict += fmt.Sprintf(", forwarded: app answered %d, relay failed: %s", rec.fwdStatus, l.ForwardError)
	case rec.forwarding:
		verdict += fmt.Sprintf(", forwarded: app answered %d", rec.fwdStatus)
	}
	id := l.RequestID
	if id == "" {
		id = "-"
	}
	evStatus := l.EventStatus
	if evStatus == "" {
		evStatus = "-"
	}
	rc.out.printf("%s  %d  %-36s  %-5s  %s\n", l.Time, l.Status, id, evStatus, verdict)
}

// statusWriter remembers the status code written through it.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// syncWriter serializes writes from concurrent handlers.
type syncWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format, args...)
}

// lastFetch is an Observer remembering how many keys the last JWKS fetch
// brought.
type lastFetch struct {
	mu sync.Mutex // guards n
	n  int
}

func (*lastFetch) ObserveDelivery(context.Context, falwebhook.DeliveryInfo) {}

func (l *lastFetch) ObserveFetch(_ context.Context, f falwebhook.FetchInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n = f.Keys
}

func (l *lastFetch) keys() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}
