package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/redisdedupe"
)

const listenDescription = `
Listen runs a webhook receiver that verifies every delivery with falwebhook's
Verifier and Middleware, at --path (default /fal/webhook; a path ending in /
takes everything under it, so --path / takes any path; other paths get 404),
and prints one line per delivery: time, HTTP status answered, request id,
user id, event status, verdict. What the sender chose (request and user
id, method, path) is shown cut to 128 bytes, marked with its full length,
and in text lines with control characters and bytes that are not UTF-8
escaped (\n, \xff), so that a forgery costs one short line of log.
Genuine deliveries are answered 200; forged or malformed ones 400/401;
503 when keys cannot be fetched, so that fal retries. Bodies are limited
to --max-body (default 25MiB), and the bytes of bodies not yet verified,
across all deliveries, to --body-budget (default 64MiB or twice
--max-body; beyond it 503, so that fal retries); a body must arrive
within 30s.

The user id is the fal account a delivery is for. Every fal customer can
have genuine deliveries sent to your URL, so listen needs --user-id
(repeatable): only deliveries for those users are accepted, any other is
answered 403. --any-user accepts every account's deliveries instead: run
with it once to see your user id on each line, or in front of an app that
checks the user id itself.

Deliveries are deduplicated in memory by request id: a repeat of one that
was handled with a 2xx (a retry by fal, or a replayed capture inside the
timestamp window) is answered 200 and not handled again. With --redis the
record is kept in Redis instead, shared by every listen pointed at it, so
that replicas behind a load balancer handle each delivery once between them
(while Redis cannot be reached, deliveries are answered 503 and fal
retries). --no-dedupe turns dedupe off.

With --forward URL, each verified delivery is POSTed to your app, in any
language, at exactly URL (the delivery's own query string is dropped), with
the body byte for byte and only these headers: the four X-Fal-Webhook-*
(so the app can verify it again), Content-Type: application/json,
Content-Length, X-Forwarded-For (the sender's IP address, as listen saw
it) and X-Forwarded-Proto: http (the sender's own forwarding headers, and
the Host it sent, are dropped; the app gets its own host as Host),
Falwebhook-Verified: true (trust it only when nothing but listen can reach
the app) and a W3C traceparent naming the delivery's
trace (the sender's own is dropped). The app's answer is relayed back to
fal; when the app cannot be reached within --forward-timeout the answer is
502. Deliveries that fail verification never reach the app.

With --inbox sqlite:PATH or --inbox postgres://URL (or postgresql://;
needs --forward), each verified delivery is stored in a durable inbox (a
River job queue) and answered 200 once the store has committed, in
milliseconds however slow the app is; a repeat of a stored request id is
answered 200 (Falwebhook-Duplicate: completed) and not stored again; while
the database fails, deliveries get 503 and fal retries: nothing is
acknowledged that is not stored. Workers in the same process (at most
--inbox-workers at once, default 16) then POST each stored delivery to the
app as above, adding Idempotency-Key (the request id), Falwebhook-Attempt
(1, 2, ...) and Falwebhook-Source (webhook, or reconcile), but without
X-Fal-Webhook-Timestamp, X-Fal-Webhook-Signature and X-Forwarded-*: the
signature is checked here at receipt, and an attempt may come hours later.
Each attempt may take --forward-timeout (default 5m with --inbox). Any
answer but 2xx, 4xx included (the app may be misconfigured), or none, is
retried with backoff: 15s doubling to 1h, 12 attempts over about 4h, then
the delivery is discarded. Toward the app this is at-least-once: only a
delivery being forwarded when the gateway died may reach it twice, with
the same Idempotency-Key, so have the app skip keys it has processed.
A SQLite file belongs to one process (a second listen on it is refused),
which on start resumes at once what a killed predecessor was forwarding.
For replicas, point them all at one Postgres database (River's tables are
migrated at start): each delivery is stored once between them, and what a
killed replica was forwarding is resumed by another once --forward-timeout
plus 1m has passed since the attempt began. The inbox is the dedupe:
--redis and --no-dedupe are refused with it. /readyz also fails while the
database does not answer within 1s; /metrics adds falwebhook_inbox_*:
queue depth, oldest waiting delivery, jobs by state, forward attempts and
failures. On SIGINT or SIGTERM, forwards in flight finish too, within
--shutdown-timeout; those cut off are forwarded again later.

Keys come from --jwks: fal's JWKS URL by default (cached, refreshed as fal
rotates keys), another URL, or a JWKS file such as keygen writes.

A second listener, --admin-addr (default 127.0.0.1:8788; "" turns it
off), serves /healthz (200 while the process runs), /readyz (200 when keys
are loaded and, with --redis, Redis answers a PING within 1s; otherwise 503
saying what is not ready, and keys not loaded are fetched again, at most
every 10s) and /metrics (Prometheus text: deliveries by
outcome, verification time, JWKS fetches, keys and their age, Go runtime).
Keep it off the public network. It answers only requests whose Host is
localhost, an IP address or a name given with --admin-host (repeatable or
comma-separated); any other gets 421, so that a web page that points its
own DNS name at this address cannot read it from a browser.

The first line on stdout is "listening on http://ADDR" (with --json, the
object {"listening":"http://ADDR"}), so --addr 127.0.0.1:0 picks a free port;
the second is "admin on http://ADDR" ({"admin":"http://ADDR"}). With --json
the delivery lines are JSON objects carrying the trace id, and the messages
on stderr are JSON too (log/slog). On SIGINT or SIGTERM /readyz turns 503,
the server stops accepting and waits, up to --shutdown-timeout, for
deliveries in flight and their dedupe bookkeeping to finish; exit status 0
then.`

// headerVerified marks a request forwarded to the app as verified.
const headerVerified = "Falwebhook-Verified"

// listenFlags are listen's flags.
type listenFlags struct {
	addr, jwks, forward string
	path, adminAddr     string
	redis               string
	jsonOut, noDedupe   bool
	anyUser             bool
	userIDs             stringList
	adminHosts          stringList
	maxBody, bodyBudget sizeFlag
	forwardTimeout      *time.Duration
	tolerance           *time.Duration
	shutdownTimeout     *time.Duration
	inbox               inboxFlags
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
	TraceID       string `json:"trace_id,omitempty"`
}

// receiver is the listen command's HTTP handler, and the Observer of its
// Verifier and JWKS.
type receiver struct {
	verify  http.Handler           // the Verifier's middleware around accept
	proxy   *httputil.ReverseProxy // nil: answer 200 ourselves
	forward *url.URL
	timeout time.Duration // per forward
	userIDs []string      // pinned; nil: any user
	path    string        // --path
	jsonOut bool
	out     *syncWriter
	now     func() time.Time
	tracer  trace.Tracer        // the delivery's span, around the middleware
	otel    falwebhook.Observer // metrics and the verification's span
	ready   *readiness

	mu      sync.Mutex // guards fetched
	fetched int        // usable keys of the last successful JWKS fetch
}

// record collects what happened to one delivery, for its log line. It is
// used by one request's goroutine only.
type record struct {
	d         falwebhook.DeliveryInfo // the Verifier's account of it
	traceID   string
	ev        *falwebhook.Event
	status    int // what accept or the proxy answered; 0 when the Verifier did
	forwarded bool
	fwdStatus int
	fwdErr    error
	aborted   bool   // the relay of the app's answer broke off
	queued    string // with --inbox: what became of it (its verdict)
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
	lg := newListenLog(stderr, f.jsonOut)
	info := lg.info
	redisLogTo.Store(lg)
	defer redisLogTo.CompareAndSwap(lg, nil)

	tel, err := newTelemetry(ctx)
	if err != nil {
		return fail("%v", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.shutdown(sctx)
	}()
	rc := &receiver{
		timeout: *f.forwardTimeout, userIDs: f.userIDs, path: f.path, jsonOut: f.jsonOut,
		out: &syncWriter{w: e.stdout}, now: time.Now,
		tracer: tel.tp.Tracer("github.com/falwebhook/falwebhook/cmd/falwebhook"),
		otel:   tel.obs,
		ready:  &readiness{now: time.Now},
	}
	if f.forward != "" {
		u, err := url.Parse(f.forward)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail("--forward %q: want http://host[:port]/path", f.forward)
		}
		rc.forward = u
		rc.proxy = rc.newProxy(lg)
	}
	var rdb *redis.Client
	if f.redis != "" {
		o, err := redisOptions(f.redis)
		if err != nil {
			return fail("--redis: %v", err)
		}
		rdb = redis.NewClient(o)
		defer rdb.Close()
		pinger := pingClient(o)
		defer pinger.Close()
		rc.ready.ping = func(ctx context.Context) error { return pinger.Ping(ctx).Err() }
	}
	opts, warm, dd, err := rc.verifierOptions(f, rdb, lg)
	if err != nil {
		return fail("%v", err)
	}
	var next http.Handler = http.HandlerFunc(rc.accept)
	if dd != nil {
		next = dd.Middleware(next)
	}
	v := falwebhook.NewVerifier(opts...)
	rc.verify = v.Middleware(next)
	var ib *gatewayInbox
	if f.inbox.spec != "" {
		if ib, err = openInbox(ctx, f, rc, tel, lg); err != nil {
			return fail("--inbox: %v", err)
		}
		defer ib.close()
		rc.verify, rc.ready.db = ib.serveHTTP(v), ib.ping
	}

	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fail("%v", err)
	}
	var adminLn net.Listener
	if f.adminAddr != "" {
		if adminLn, err = net.Listen("tcp", f.adminAddr); err != nil {
			ln.Close()
			return fail("--admin-addr: %v", err)
		}
	}
	rc.announce("listening", "http://"+ln.Addr().String())
	if adminLn != nil {
		rc.announce("admin", "http://"+adminLn.Addr().String())
	}
	rc.describeSetup(ctx, f, warm, rdb, info)
	sv := servers{ln: ln, adminLn: adminLn}
	if ib != nil {
		ib.describe(info)
		if err := ib.run(ctx); err != nil {
			ln.Close()
			if adminLn != nil {
				adminLn.Close()
			}
			return fail("%v", err)
		}
		sv.drain = ib.drain
	}

	var admin http.Handler
	if adminLn != nil {
		admin = adminHostGuard(f.adminHosts, adminHandler(rc.ready, tel.reg, lg.std("metrics: ")))
	}
	sv.admin = admin
	if err := serve(ctx, sv, rc, *f.shutdownTimeout, dd, lg); err != nil {
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
	fs.StringVar(&f.path, "path", "/fal/webhook", "take deliveries at this `path` (ending in /: everything under it)")
	fs.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:8788", "serve /healthz, /readyz and /metrics on `host:port` (\"\": off)")
	fs.Var(&f.adminHosts, "admin-host", "answer admin requests for this host `name` too, besides localhost and IP addresses (repeatable or comma-separated); others get 421")
	fs.StringVar(&f.redis, "redis", "", "dedupe in the Redis at `host:port or redis:// URL`, shared by replicas (default: in memory)")
	fs.Var(&f.maxBody, "max-body", "largest body accepted, in `bytes` (or KiB, MiB, GiB; default 25MiB); larger gets 413")
	fs.Var(&f.bodyBudget, "body-budget", "most `bytes` of bodies not yet verified held at once, all deliveries together (default 64MiB or twice --max-body); beyond it 503")
	fs.StringVar(&f.jwks, "jwks", falwebhook.DefaultJWKSURL, "JWKS `URL or file` holding the public keys")
	fs.BoolVar(&f.jsonOut, "json", false, "print one JSON object per delivery instead of a text line, and log JSON on stderr")
	fs.StringVar(&f.forward, "forward", "", "pass verified deliveries to the app at `URL` and relay its answer")
	fs.Var(&f.userIDs, "user-id", "accept only deliveries for this fal user `ID` (repeatable; required unless --any-user); others get 403")
	fs.BoolVar(&f.anyUser, "any-user", false, "accept deliveries for any fal user instead of --user-id (each line shows the user id)")
	fs.BoolVar(&f.noDedupe, "no-dedupe", false, "handle (and forward) every verified delivery, even a repeat of a request id already handled")
	f.forwardTimeout = durationVar(fs, "forward-timeout", 15*time.Second, "give up on the app after this `duration` (502); fal itself waits 15s (with --inbox: per attempt, default 5m)")
	f.tolerance = durationVar(fs, "tolerance", 5*time.Minute, "largest accepted `skew` between a delivery's timestamp and now")
	f.shutdownTimeout = durationVar(fs, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, wait this `duration` for deliveries in flight")
	f.inbox.register(fs)
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
	case len(f.userIDs) == 0 && !f.anyUser:
		return fail("--user-id is required: every fal customer can have genuine deliveries sent to your URL, and without it listen would accept them all as verified. Pin your fal account with --user-id ID (run once with --any-user to see it on each delivery's line), or pass --any-user to accept every account")
	case len(f.userIDs) > 0 && f.anyUser:
		return fail("--user-id and --any-user contradict each other")
	case !validPath(f.path):
		return fail("--path %q: want an absolute URL path such as /fal/webhook", f.path)
	case f.redis != "" && f.noDedupe:
		return fail("--redis and --no-dedupe contradict each other")
	}
	var hosts stringList
	for _, v := range f.adminHosts {
		for n := range strings.SplitSeq(v, ",") {
			if n = strings.TrimSpace(n); !validAdminHost(n) {
				return fail("--admin-host %q: want host names without a port, such as falwebhook.internal", v)
			}
			hosts = append(hosts, n)
		}
	}
	f.adminHosts = hosts
	if msg := checkInboxFlags(fs, f); msg != "" {
		return fail("%s", msg)
	}
	return f, 0, true
}

// verifierOptions returns the Verifier's options as the flags say; warm is
// the JWKS to load at startup (nil for a file), dd the Dedupe (nil with
// --no-dedupe).
func (rc *receiver) verifierOptions(f *listenFlags, rdb *redis.Client, lg *listenLog) (opts []falwebhook.Option, warm *falwebhook.JWKS, dd *falwebhook.Dedupe, err error) {
	opts = []falwebhook.Option{
		falwebhook.WithTolerance(*f.tolerance),
		falwebhook.WithObserver(rc),
		falwebhook.WithMaxBodySize(f.maxBody.n),
		falwebhook.WithBodyBudget(f.bodyBudget.n),
	}
	if !f.anyUser { // parseListenFlags made sure there are some: WithUserIDs with none would refuse everything
		opts = append(opts, falwebhook.WithUserIDs(f.userIDs...))
	}
	switch {
	case f.inbox.spec != "": // the inbox's unique job is the dedupe
	case rdb != nil:
		dd = &falwebhook.Dedupe{Store: redisdedupe.New(rdb), Logger: lg.slog}
	case !f.noDedupe:
		dd = &falwebhook.Dedupe{Logger: lg.slog}
	}
	if isURL(f.jwks) {
		warm = &falwebhook.JWKS{URL: f.jwks, Observer: rc, Logger: lg.slog}
		rc.ready.refresh = warm.Refresh
		return append(opts, falwebhook.WithKeys(warm)), warm, dd, nil
	}
	keys, err := loadJWKSFile(f.jwks)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--jwks: %w", err)
	}
	rc.fetched = len(keys)
	rc.ready.static = true
	return append(opts, falwebhook.WithKeys(falwebhook.StaticKeys(keys...))), nil, dd, nil
}

// validPath reports whether p can be --path: absolute, and free of
// characters a request path never holds.
func validPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?# ") {
		return false
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// matchPath reports whether a request for path p is a delivery.
func (rc *receiver) matchPath(p string) bool {
	if strings.HasSuffix(rc.path, "/") {
		return strings.HasPrefix(p, rc.path)
	}
	return p == rc.path
}

// announce prints an address on stdout: "listening on URL" or "admin on
// URL".
func (rc *receiver) announce(what, base string) {
	if rc.jsonOut {
		b, _ := json.Marshal(map[string]string{what: base})
		rc.out.printf("%s\n", b)
		return
	}
	if what == "admin" {
		rc.out.printf("admin on %s\n", base)
		return
	}
	rc.out.printf("listening on %s\n", base)
}

// describeSetup loads the keys from a URL, so that a bad one shows now and
// not at the first delivery, and says on stderr how deliveries are handled.
func (rc *receiver) describeSetup(ctx context.Context, f *listenFlags, warm *falwebhook.JWKS, rdb *redis.Client, info func(string, ...any)) {
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
		info("accepting deliveries for any fal user (--any-user): each line shows the user id; pin yours with --user-id")
	}
	switch {
	case rdb != nil:
		info("dedupe in Redis at %s by request id, shared by every listen using it: a repeat of a handled delivery is answered 200 and not handled again", rdb.Options().Addr)
		if err := rc.ready.ping(ctx); err != nil {
			info("warning: Redis at %s did not answer PING: %v (deliveries get 503 until it does)", rdb.Options().Addr, err)
		}
	case f.inbox.spec != "":
		info("dedupe by the inbox: one job per request id, kept a day after it is forwarded; a repeat is answered 200 and not forwarded again")
	case f.noDedupe:
		info("dedupe off: a repeat of a delivery is handled again")
	default:
		info("dedupe in memory by request id: a repeat of a handled delivery is answered 200 and not handled again")
	}
	if rc.forward != nil {
		info("forwarding verified deliveries to %s", rc.forward.Redacted())
	}
}

// servers are listen's listeners: deliveries, and the admin endpoints
// (adminLn nil when off).
type servers struct {
	ln, adminLn net.Listener
	admin       http.Handler
	drain       func(context.Context) error // with --inbox: stops the forwarder
}

// serve serves rc on sv.ln, and the admin handler on sv.adminLn, until ctx
// is done, then shuts down gracefully: /readyz turns 503, no new
// connections, deliveries in flight finish within timeout, and the
// dedupe's bookkeeping of answered deliveries is done; then the admin
// listener stops.
func serve(ctx context.Context, sv servers, rc *receiver, timeout time.Duration, dd *falwebhook.Dedupe, lg *listenLog) error {
	srv := &http.Server{
		Handler:           rc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          lg.std(""),
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(sv.ln) }()
	var adminSrv *http.Server
	if sv.adminLn != nil {
		adminSrv = &http.Server{
			Handler:           sv.admin,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      time.Minute,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          lg.std("admin: "),
		}
		go func() {
			if err := adminSrv.Serve(sv.adminLn); !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("admin: %w", err)
			}
		}()
	}
	select {
	case err := <-served:
		srv.Close()
		if adminSrv != nil {
			adminSrv.Close()
		}
		return err
	case <-ctx.Done():
	}
	rc.ready.stopping.Store(true)
	// Shutdown closes the listener, then runs this hook, then waits for
	// the deliveries in flight.
	closed := make(chan struct{})
	srv.RegisterOnShutdown(func() {
		lg.info("shutting down: no new connections; waiting up to %s for deliveries in flight", timeout)
		close(closed)
	})
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	defer func() {
		if adminSrv != nil {
			actx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if adminSrv.Shutdown(actx) != nil {
				adminSrv.Close()
			}
		}
	}()
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
	if sv.drain != nil {
		if err := sv.drain(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	lg.info("stopped")
	return nil
}

// ServeHTTP handles one delivery. Its span starts here, before the
// Verifier's middleware, so that it covers the forward too and its trace
// context reaches the app; the Verifier's own span (falotel's
// falwebhook.delivery) is its child. A traceparent sent with the delivery
// is not trusted (it is not extracted): each delivery starts a trace.
func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !rc.matchPath(r.URL.Path) {
		http.NotFound(w, r)
		return
	}
	ctx, span := rc.tracer.Start(r.Context(), r.Method+" "+rc.path,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.HTTPRoute(rc.path),
			semconv.URLPath(r.URL.Path),
			semconv.URLScheme("http"),
		))
	rec := &record{traceID: span.SpanContext().TraceID().String()}
	defer func() {
		// The proxy aborts the response with a panic when relaying the
		// app's answer breaks off; log the delivery all the same.
		p := recover()
		rec.aborted = p != nil
		status := rc.log(r, rec)
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		if status >= 500 {
			span.SetStatus(codes.Error, "")
		}
		span.End()
		if p != nil {
			panic(p)
		}
	}()
	rc.verify.ServeHTTP(w, r.WithContext(context.WithValue(ctx, recordKey{}, rec)))
}

// ObserveDelivery records the Verifier's account of a delivery and passes
// it on to the telemetry.
func (rc *receiver) ObserveDelivery(ctx context.Context, d falwebhook.DeliveryInfo) {
	recordOf(ctx).d = d
	if rc.otel != nil {
		rc.otel.ObserveDelivery(ctx, d)
	}
}

// ObserveFetch records how many keys a JWKS fetch brought, for the setup
// message and readiness, and passes it on to the telemetry.
func (rc *receiver) ObserveFetch(ctx context.Context, f falwebhook.FetchInfo) {
	if f.Err == nil {
		rc.mu.Lock()
		rc.fetched = f.Keys
		rc.mu.Unlock()
	}
	if rc.ready != nil {
		rc.ready.fetched(f)
	}
	if rc.otel != nil {
		rc.otel.ObserveFetch(ctx, f)
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
	r = r.WithContext(ctx)
	if n := r.ContentLength; n > 0 && n <= inMemoryForward && r.GetBody != nil {
		// A body net/http knows to be in memory goes out with the
		// headers in one write, not in a write of its own.
		// r.Body is left as it is unless the copy is whole.
		if src, err := r.GetBody(); err == nil {
			b := make([]byte, n)
			if _, err := io.ReadFull(src, b); err == nil {
				r.Body = io.NopCloser(bytes.NewReader(b))
			}
		}
	}
	rc.proxy.ServeHTTP(w, r)
}

// forwardIdleConns is how many idle connections to the app the proxy
// keeps: as many as there are deliveries in flight, up to this many, so
// that each delivery reuses one instead of opening its own (a connection
// closed after use sits a minute in TIME_WAIT, and a busy gateway would
// run its host out of ephemeral ports).
const forwardIdleConns = 256

// inMemoryForward is the largest verified body copied before it is
// forwarded, so that the request to the app takes one write.
const inMemoryForward = 64 << 10

// newProxy returns the reverse proxy to the app, logging to stderr.
func (rc *receiver) newProxy(lg *listenLog) *httputil.ReverseProxy {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // ask for no gzip: relay the app's answer byte for byte
	tr.MaxIdleConns = forwardIdleConns
	tr.MaxIdleConnsPerHost = forwardIdleConns // one host: the app
	return &httputil.ReverseProxy{
		Rewrite:    rc.rewrite,
		Transport:  tr,
		BufferPool: &copyBuffers{},
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
		ErrorLog: lg.std(""),
	}
}

// copyBuffers lends the proxy the buffers it relays the app's answers
// through, instead of it allocating 32 KiB for each.
type copyBuffers struct{ pool sync.Pool }

func (c *copyBuffers) Get() []byte {
	if b, ok := c.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (c *copyBuffers) Put(b []byte) { c.pool.Put(&b) }

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
	// Not pr.SetXForwarded: it passes the sender's Host on as
	// X-Forwarded-Host. The peer's address is what listen saw, not what
	// the sender claims.
	if ip, _, err := net.SplitHostPort(pr.In.RemoteAddr); err == nil {
		pr.Out.Header.Set("X-Forwarded-For", ip)
	}
	pr.Out.Header.Set("X-Forwarded-Proto", "http") // listen serves no TLS
	// The delivery's span, started by ServeHTTP.
	propagation.TraceContext{}.Inject(pr.In.Context(), propagation.HeaderCarrier(pr.Out.Header))
}

// The most bytes a delivery's line shows of a value the sender chose, none
// of it verified when the delivery is rejected: logMax of the method, path,
// request id and user id, logErrMax of an error's text, which may quote one.
// Longer values are cut and marked with their length, so that a forger's
// megabyte of request id costs a line of log, not a megabyte.
const (
	logMax    = 128
	logErrMax = 512
)

// clip returns s cut to at most max bytes, at a character boundary, and
// marked with the length it had: "abc…(1048576 bytes)".
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// escape returns s with control and other unprintable characters, and
// bytes that are not UTF-8, escaped as in a Go string literal (\n, \x1b,
// \u202e, \xff), so that a sender can neither start a line of its own
// nor make a terminal show what it was not sent.
func escape(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case !unicode.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

// log prints the delivery's line and returns the status answered.
func (rc *receiver) log(r *http.Request, rec *record) int {
	l := listenLine{
		Time:          rc.now().UTC().Format(time.RFC3339),
		Method:        clip(r.Method, logMax),
		Path:          clip(r.URL.Path, logMax),
		Status:        rec.status,
		RequestID:     clip(rec.d.RequestID, logMax),
		UserID:        clip(rec.d.UserID, logMax),
		Verdict:       "accepted",
		ForwardStatus: rec.fwdStatus,
		TraceID:       rec.traceID,
	}
	if l.Status == 0 {
		l.Status = rec.d.Status
	}
	if rec.ev != nil {
		l.EventStatus = clip(string(rec.ev.Status), logMax)
	}
	switch rec.d.Outcome {
	case "duplicate", "in_progress":
		l.Verdict = "duplicate"
	}
	if err := rec.d.Err; err != nil {
		l.Verdict, l.Reason, l.Error = "rejected", reason(err), clip(err.Error(), logErrMax)
	}
	if rec.fwdErr != nil {
		l.ForwardError = rec.fwdErr.Error()
	}
	if rc.jsonOut {
		b, _ := json.Marshal(l)
		rc.out.printf("%s\n", b)
		return l.Status
	}
	rc.out.printf("%s  %d  %-36s  %-16s  %-5s  %s\n", l.Time, l.Status, escape(dash(l.RequestID)), escape(dash(l.UserID)), escape(dash(l.EventStatus)), rc.verdict(rec, l.UserID))
	return l.Status
}

// verdict describes what became of a delivery, for its text line; userID
// is the delivery's, clipped.
func (rc *receiver) verdict(rec *record, userID string) string {
	err := rec.d.Err
	switch {
	case errors.Is(err, falwebhook.ErrUnexpectedUser):
		return rejection(err) + ": " + escape(userHint(userID, rc.userIDs))
	case err != nil && errDetail(err) != "":
		return rejection(err) + ": " + escape(clip(errDetail(err), logErrMax))
	case err != nil:
		return rejection(err)
	case rec.d.Outcome == "duplicate" && rc.proxy != nil:
		return "duplicate: already handled; not forwarded again"
	case rec.d.Outcome == "duplicate":
		return "duplicate: already handled"
	case rec.d.Outcome == "in_progress":
		return "duplicate: still being handled; answered 409 so that fal retries"
	case rec.queued != "":
		return rec.queued
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
