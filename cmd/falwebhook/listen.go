package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/falwebhook/falwebhook"
)

const listenDescription = `
Listen runs a webhook receiver that verifies every delivery with falwebhook's
Verifier and Middleware, on any path, and prints one line per delivery: time,
HTTP status answered, request id, user id, event status, verdict. Genuine
deliveries are answered 200; forged or malformed ones 400/401; 503 when keys
cannot be fetched, so that fal retries.

The user id is the fal account a delivery is for. With --user-id
(repeatable) only deliveries for those users are accepted; any other is
answered 403, since every fal customer can have genuine deliveries sent to
your URL. Run without it once to see yours.

Deliveries are deduplicated in memory by request id: a repeat of one that
was handled with a 2xx (a retry by fal, or a replayed capture inside the
timestamp window) is answered 200 and not handled again. --no-dedupe turns
this off.

With --forward URL, each verified delivery is POSTed to your app, in any
language, at exactly URL (the delivery's own query string is dropped), with
the body byte for byte and only these headers: the four X-Fal-Webhook-*
(so the app can verify it again), Content-Type: application/json,
Content-Length, X-Forwarded-For/-Host/-Proto (ours; the sender's are
dropped) and Falwebhook-Verified: true (trust it only when nothing but
listen can reach the app). The app's answer is relayed back to fal; when the
app cannot be reached within --forward-timeout the answer is 502.
Deliveries that fail verification never reach the app.

Keys come from --jwks: fal's JWKS URL by default (cached, refreshed as fal
rotates keys), another URL, or a JWKS file such as keygen writes.

The first line on stdout is "listening on http://ADDR" (with --json, the
object {"listening":"http://ADDR"}), so --addr 127.0.0.1:0 picks a free port.
On SIGINT or SIGTERM the server stops accepting and waits, up to
--shutdown-timeout, for deliveries in flight to finish; exit status 0 then.`

// headerVerified marks a request forwarded to the app as verified.
const headerVerified = "Falwebhook-Verified"

// listenFlags are listen's flags.
type listenFlags struct {
	addr, jwks, forward string
	jsonOut, noDedupe   bool
	userIDs             stringList
	forwardTimeout      *time.Duration
	tolerance           *time.Duration
	shutdownTimeout     *time.Duration
}

// listenLine is one delivery in --json output.
type listenLine struct {
	Time          string `json:"time"`
	Method        string `json:"method"`
	Path          string `json:"path"`
	Status        int    `json:"status"`
	RequestID     string `json:"request_id"`
	UserID        string `json:"user_id"`
	EventStatus   string `json:"event_status,omitempty"`
	Verdict       string `json:"verdict"` // accepted, duplicate or rejected
	Reason        string `json:"reason,omitempty"`
	Error         string `json:"error,omitempty"`
	ForwardStatus int    `json:"forward_status,omitempty"`
	ForwardError  string `json:"forward_error,omitempty"`
}

// receiver is the listen command's HTTP handler, and the Observer of its
// Verifier and JWKS.
type receiver struct {
	verify  http.Handler           // the Verifier's middleware around accept
	proxy   *httputil.ReverseProxy // nil: answer 200 ourselves
	forward *url.URL
	timeout time.Duration // per forward
	userIDs []string      // pinned; nil: any user
	jsonOut bool
	out     *syncWriter
	now     func() time.Time

	mu      sync.Mutex // guards fetched
	fetched int        // usable keys of the last successful JWKS fetch
}

// record collects what happened to one delivery, for its log line. It is
// used by one request's goroutine only.
type record struct {
	d         falwebhook.DeliveryInfo // the Verifier's account of it
	ev        *falwebhook.Event
	status    int // what accept or the proxy answered; 0 when the Verifier did
	forwarded bool
	fwdStatus int
	fwdErr    error
	aborted   bool // the relay of the app's answer broke off
}

type recordKey struct{}

func recordOf(ctx context.Context) *record {
	if rec, ok := ctx.Value(recordKey{}).(*record); ok {
		return rec
	}
	return &record{}
}

func runListen(ctx context.Context, e *env, args []string) int {
	f, code, ok := parseListenFlags(e, args)
	if !ok {
		return code
	}
	// Handlers, the server's error log and shutdown all write to stderr.
	stderr := &syncWriter{w: e.stderr}
	e = &env{stdin: e.stdin, stdout: e.stdout, stderr: stderr}
	fail := func(format string, args ...any) int { return e.errorf(exitUsage, "listen", format, args...) }
	info := func(format string, args ...any) { e.errorf(0, "listen", format, args...) }

	rc := &receiver{timeout: *f.forwardTimeout, userIDs: f.userIDs, jsonOut: f.jsonOut, out: &syncWriter{w: e.stdout}, now: time.Now}
	if f.forward != "" {
		u, err := url.Parse(f.forward)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail("--forward %q: want http://host[:port]/path", f.forward)
		}
		rc.forward = u
		rc.proxy = rc.newProxy(stderr)
	}
	opts, warm, dd, err := rc.verifierOptions(f)
	if err != nil {
		return fail("%v", err)
	}
	rc.verify = falwebhook.NewVerifier(opts...).Middleware(http.HandlerFunc(rc.accept))

	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fail("%v", err)
	}
	rc.announce("http://" + ln.Addr().String())
	rc.describeSetup(ctx, f, warm, info)

	if err := serve(ctx, ln, rc, *f.shutdownTimeout, dd, stderr, info); err != nil {
		return fail("%v", err)
	}
	return exitOK
}

// parseListenFlags parses listen's arguments. When ok is false the command
// is over: return code.
func parseListenFlags(e *env, args []string) (f *listenFlags, code int, ok bool) {
	fs := newFlagSet(e, "listen", "[flags]", listenDescription)
	f = &listenFlags{}
	fs.StringVar(&f.addr, "addr", "127.0.0.1:8787", "listen on `host:port` (port 0 picks a free one)")
	fs.StringVar(&f.jwks, "jwks", falwebhook.DefaultJWKSURL, "JWKS `URL or file` holding the public keys")
	fs.BoolVar(&f.jsonOut, "json", false, "print one JSON object per delivery instead of a text line")
	fs.StringVar(&f.forward, "forward", "", "pass verified deliveries to the app at `URL` and relay its answer")
	fs.Var(&f.userIDs, "user-id", "accept only deliveries for this fal user `ID` (repeatable); others get 403")
	fs.BoolVar(&f.noDedupe, "no-dedupe", false, "handle (and forward) every verified delivery, even a repeat of a request id already handled")
	f.forwardTimeout = durationVar(fs, "forward-timeout", 15*time.Second, "give up on the app after this `duration` (502); fal itself waits 15s")
	f.tolerance = durationVar(fs, "tolerance", 5*time.Minute, "largest accepted `skew` between a delivery's timestamp and now")
	f.shutdownTimeout = durationVar(fs, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, wait this `duration` for deliveries in flight")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return nil, code, false
	}
	fail := func(format string, args ...any) (*listenFlags, int, bool) {
		return nil, e.errorf(exitUsage, "listen", format, args...), false
	}
	switch {
	case len(pos) > 0:
		return fail("unexpected argument %q", pos[0])
	case *f.tolerance < time.Second || *f.forwardTimeout <= 0 || *f.shutdownTimeout <= 0:
		return fail("--tolerance, --forward-timeout and --shutdown-timeout must be positive (tolerance at least 1s)")
	case slices.Contains(f.userIDs, ""):
		return fail("--user-id must not be empty")
	}
	return f, 0, true
}

// verifierOptions returns the Verifier's options as the flags say; warm is
// the JWKS to load at startup (nil for a file), dd the Dedupe (nil with
// --no-dedupe).
func (rc *receiver) verifierOptions(f *listenFlags) (opts []falwebhook.Option, warm *falwebhook.JWKS, dd *falwebhook.Dedupe, err error) {
	opts = []falwebhook.Option{
		falwebhook.WithTolerance(*f.tolerance),
		falwebhook.WithObserver(rc),
		falwebhook.WithUserIDs(f.userIDs...),
	}
	if !f.noDedupe {
		dd = &falwebhook.Dedupe{}
		opts = append(opts, falwebhook.WithDedupe(dd))
	}
	if isURL(f.jwks) {
		warm = &falwebhook.JWKS{URL: f.jwks, Observer: rc}
		return append(opts, falwebhook.WithKeys(warm)), warm, dd, nil
	}
	keys, err := loadJWKSFile(f.jwks)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--jwks: %w", err)
	}
	rc.fetched = len(keys)
	return append(opts, falwebhook.WithKeys(falwebhook.StaticKeys(keys...))), nil, dd, nil
}

// announce prints the address, the first line on stdout.
func (rc *receiver) announce(base string) {
	if rc.jsonOut {
		b, _ := json.Marshal(map[string]string{"listening": base})
		rc.out.printf("%s\n", b)
		return
	}
	rc.out.printf("listening on %s\n", base)
}

// describeSetup loads the keys from a URL, so that a bad one shows now and
// not at the first delivery, and says on stderr how deliveries are handled.
func (rc *receiver) describeSetup(ctx context.Context, f *listenFlags, warm *falwebhook.JWKS, info func(string, ...any)) {
	keysOK := true
	if warm != nil {
		if err := warm.Refresh(ctx); err != nil {
			keysOK = false
			info("warning: %s (deliveries get 503 until keys can be fetched)", errText(err))
		}
	}
	if keysOK {
		rc.mu.Lock()
		info("keys: %s from %s", plural(rc.fetched, "Ed25519 key"), f.jwks)
		rc.mu.Unlock()
	}
	if len(rc.userIDs) > 0 {
		info("accepting only deliveries for user ids %s (others get 403)", strings.Join(rc.userIDs, ", "))
	} else {
		info("accepting deliveries for any fal user: each line shows the user id; pin yours with --user-id")
	}
	if f.noDedupe {
		info("dedupe off: a repeat of a delivery is handled again")
	} else {
		info("dedupe in memory by request id: a repeat of a handled delivery is answered 200 and not handled again")
	}
	if rc.forward != nil {
		info("forwarding verified deliveries to %s", rc.forward.Redacted())
	}
}

// serve serves rc on ln until ctx is done, then shuts down gracefully:
// no new connections, deliveries in flight finish within timeout, and the
// dedupe's bookkeeping of answered deliveries is done.
func serve(ctx context.Context, ln net.Listener, rc *receiver, timeout time.Duration, dd *falwebhook.Dedupe, stderr io.Writer, info func(string, ...any)) error {
	srv := &http.Server{
		Handler:           rc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(stderr, "falwebhook listen: ", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Shutdown closes the listener, then runs this hook, then waits for
	// the deliveries in flight.
	closed := make(chan struct{})
	srv.RegisterOnShutdown(func() {
		info("shutting down: no new connections; waiting up to %s for deliveries in flight", timeout)
		close(closed)
	})
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-closed
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w; deliveries still in flight were cut off", err)
	}
	<-served // http.ErrServerClosed
	if dd != nil {
		if err := dd.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutdown: dedupe bookkeeping unfinished: %w", err)
		}
	}
	info("stopped")
	return nil
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &record{}
	defer func() {
		// The proxy aborts the response with a panic when relaying the
		// app's answer breaks off; log the delivery all the same.
		p := recover()
		rec.aborted = p != nil
		rc.log(r, rec)
		if p != nil {
			panic(p)
		}
	}()
	rc.verify.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), recordKey{}, rec)))
}

// ObserveDelivery records the Verifier's account of a delivery.
func (rc *receiver) ObserveDelivery(ctx context.Context, d falwebhook.DeliveryInfo) {
	recordOf(ctx).d = d
}

// ObserveFetch records how many keys a JWKS fetch brought.
func (rc *receiver) ObserveFetch(_ context.Context, f falwebhook.FetchInfo) {
	if f.Err == nil {
		rc.mu.Lock()
		rc.fetched = f.Keys
		rc.mu.Unlock()
	}
}

// accept handles a verified delivery: forward it, or answer 200.
func (rc *receiver) accept(w http.ResponseWriter, r *http.Request) {
	rec := recordOf(r.Context())
	rec.ev, _ = falwebhook.EventFromContext(r.Context())
	if rc.proxy == nil {
		rec.status = http.StatusOK
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	rec.forwarded = true
	ctx, cancel := context.WithTimeout(r.Context(), rc.timeout)
	defer cancel()
	rc.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// newProxy returns the reverse proxy to the app, logging to stderr.
func (rc *receiver) newProxy(stderr io.Writer) *httputil.ReverseProxy {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // ask for no gzip: relay the app's answer byte for byte
	return &httputil.ReverseProxy{
		Rewrite:   rc.rewrite,
		Transport: tr,
		ModifyResponse: func(resp *http.Response) error {
			rec := recordOf(resp.Request.Context())
			rec.status, rec.fwdStatus = resp.StatusCode, resp.StatusCode
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rec := recordOf(r.Context())
			rec.status, rec.fwdErr = http.StatusBadGateway, err
			http.Error(w, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		},
		ErrorLog: log.New(stderr, "falwebhook listen: ", 0),
	}
}

// rewrite makes the request to the app. Its headers are built from
// scratch, after the proxy has taken the hop-by-hop ones off its copy of
// the delivery's: only what was verified gets through, and a Connection
// header naming a fal header cannot remove it.
func (rc *receiver) rewrite(pr *httputil.ProxyRequest) {
	hs, _ := falwebhook.ParseHeaders(pr.In.Header) // the middleware checked them
	target := *rc.forward
	pr.Out.URL = &target // exactly --forward: no query string of the sender's
	pr.Out.Host = ""
	pr.Out.TransferEncoding = nil // the verified body has a length
	pr.Out.Trailer = nil
	pr.Out.Header = http.Header{
		falwebhook.HeaderRequestID: {hs.RequestID},
		falwebhook.HeaderUserID:    {hs.UserID},
		falwebhook.HeaderTimestamp: {hs.Timestamp},
		falwebhook.HeaderSignature: {hs.Signature},
		"Content-Type":             {"application/json"}, // the body is a verified JSON event
		headerVerified:             {"true"},
	}
	pr.SetXForwarded()
}

// log prints the delivery's line.
func (rc *receiver) log(r *http.Request, rec *record) {
	l := listenLine{
		Time:          rc.now().UTC().Format(time.RFC3339),
		Method:        r.Method,
		Path:          r.URL.Path,
		Status:        rec.status,
		RequestID:     rec.d.RequestID,
		UserID:        rec.d.UserID,
		Verdict:       "accepted",
		ForwardStatus: rec.fwdStatus,
	}
	if l.Status == 0 {
		l.Status = rec.d.Status
	}
	if rec.ev != nil {
		l.EventStatus = string(rec.ev.Status)
	}
	switch rec.d.Outcome {
	case "duplicate", "in_progress":
		l.Verdict = "duplicate"
	}
	if err := rec.d.Err; err != nil {
		l.Verdict, l.Reason, l.Error = "rejected", reason(err), err.Error()
	}
	if rec.fwdErr != nil {
		l.ForwardError = rec.fwdErr.Error()
	}
	if rc.jsonOut {
		b, _ := json.Marshal(l)
		rc.out.printf("%s\n", b)
		return
	}
	rc.out.printf("%s  %d  %-36s  %-16s  %-5s  %s\n", l.Time, l.Status, dash(l.RequestID), dash(l.UserID), dash(l.EventStatus), rc.verdict(rec))
}

// verdict describes what became of a delivery, for its text line.
func (rc *receiver) verdict(rec *record) string {
	err := rec.d.Err
	switch {
	case errors.Is(err, falwebhook.ErrUnexpectedUser):
		return rejection(err) + ": " + userHint(rec.d.UserID, rc.userIDs)
	case err != nil && errDetail(err) != "":
		return rejection(err) + ": " + errDetail(err)
	case err != nil:
		return rejection(err)
	case rec.d.Outcome == "duplicate" && rc.proxy != nil:
		return "duplicate: already handled; not forwarded again"
	case rec.d.Outcome == "duplicate":
		return "duplicate: already handled"
	case rec.d.Outcome == "in_progress":
		return "duplicate: still being handled; answered 409 so that fal retries"
	case !rec.forwarded:
		return "accepted"
	case rec.fwdErr != nil:
		return "accepted, forward failed: " + rec.fwdErr.Error()
	case rec.aborted:
		return fmt.Sprintf("accepted, forwarded: app answered %d, relaying its answer broke off", rec.fwdStatus)
	}
	return fmt.Sprintf("accepted, forwarded: app answered %d", rec.fwdStatus)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
