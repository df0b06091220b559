package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falotel"
)

// What listen needs besides the Verifier when it runs as a gateway: its
// telemetry, a Redis for dedupe shared by replicas, and readiness.

// keysMaxStale is how long past their expiry a JWKS's last good keys keep
// serving: falwebhook.JWKS's default MaxStale, which listen does not
// change.
const keysMaxStale = 24 * time.Hour

// readyPingTimeout bounds the PING of /readyz.
const readyPingTimeout = time.Second

// readyRefreshEvery is how often, at most, /readyz starts a fetch of keys
// that are not loaded: a replica that is not ready gets no deliveries,
// and so no fetch caused by one.
const readyRefreshEvery = 10 * time.Second

// telemetry is listen's OpenTelemetry setup: metrics exported to a
// Prometheus registry of its own, and spans (not exported; they give the
// forwarded requests their traceparent and the log lines their trace id).
type telemetry struct {
	reg *prometheus.Registry
	mp  *sdkmetric.MeterProvider
	tp  *sdktrace.TracerProvider
	obs *falotel.Observer
}

func newTelemetry(ctx context.Context) (*telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("falwebhook")),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
		resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	t := &telemetry{
		reg: reg,
		mp:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res)),
		tp:  sdktrace.NewTracerProvider(sdktrace.WithResource(res)),
	}
	t.obs, err = falotel.New(falotel.WithMeterProvider(t.mp), falotel.WithTracerProvider(t.tp))
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return t, nil
}

func (t *telemetry) shutdown(ctx context.Context) error {
	return errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
}

// redisOptions returns the client options for --redis: a host:port, or a
// redis://, rediss:// or unix:// URL (redis.ParseURL). Timeouts and retries
// the URL leaves unset get redisdedupe's recommendation for a webhook
// receiver, so that a Redis outage becomes a 503 within about 3 s.
func redisOptions(s string) (*redis.Options, error) {
	var o *redis.Options
	if strings.Contains(s, "://") {
		var err error
		if o, err = redis.ParseURL(s); err != nil {
			return nil, err
		}
	} else {
		if s == "" || strings.ContainsAny(s, " /") {
			return nil, fmt.Errorf("%q: want host:port or a redis:// URL", s)
		}
		o = &redis.Options{Addr: s}
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = time.Second
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = time.Second // WriteTimeout follows it
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = time.Second
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 2
	}
	o.DialerRetries = 1
	o.ContextTimeoutEnabled = true
	return o, nil
}

// pingClient returns a client for readiness checks: its own connections,
// one attempt, everything within readyPingTimeout.
func pingClient(o *redis.Options) *redis.Client {
	p := *o
	p.MaxRetries = -1
	p.DialerRetries = 1
	p.DialTimeout = readyPingTimeout
	p.ReadTimeout = readyPingTimeout
	p.WriteTimeout = readyPingTimeout
	p.PoolTimeout = readyPingTimeout
	p.PoolSize = 2
	p.MinIdleConns = 0
	p.ContextTimeoutEnabled = true
	return redis.NewClient(&p)
}

// readiness says whether the gateway can take deliveries: keys loaded,
// Redis (with --redis) answering, and not shutting down.
type readiness struct {
	now      func() time.Time
	ping     func(ctx context.Context) error // nil without --redis
	db       func(ctx context.Context) error // the inbox's database; nil without --inbox
	refresh  func(ctx context.Context) error // fetches the keys; nil for a file
	stopping atomic.Bool

	mu          sync.Mutex // guards the fields below
	static      bool       // keys from a file: always loaded
	keysUntil   time.Time  // the fetched keys serve until then; zero: never fetched
	lastRefresh time.Time  // when check last started a refresh
	refreshes   int        // how many refreshes check started
}

// fetched records a JWKS fetch.
func (rd *readiness) fetched(f falwebhook.FetchInfo) {
	if f.Err != nil {
		return
	}
	rd.mu.Lock()
	if until := f.Expiry.Add(keysMaxStale); until.After(rd.keysUntil) {
		rd.keysUntil = until
	}
	rd.mu.Unlock()
}

// check returns what is not ready; none when ready.
func (rd *readiness) check(ctx context.Context) []string {
	var problems []string
	if rd.stopping.Load() {
		problems = append(problems, "shutting down")
	}
	now := rd.now()
	rd.mu.Lock()
	static, until := rd.static, rd.keysUntil
	kick := !static && !now.Before(until) && rd.refresh != nil && !now.Before(rd.lastRefresh.Add(readyRefreshEvery))
	if kick {
		rd.lastRefresh = now
		rd.refreshes++
	}
	rd.mu.Unlock()
	switch {
	case static:
	case until.IsZero():
		problems = append(problems, "keys: no JWKS fetch has succeeded yet")
	case !now.Before(until):
		problems = append(problems, "keys: the last good keys expired more than "+keysMaxStale.String()+" ago")
	}
	if kick {
		// In the background: the answer says what is true now. The JWKS
		// bounds the fetch (FetchTimeout) and joins one in flight.
		go func() { _ = rd.refresh(context.Background()) }()
	}
	if rd.ping != nil {
		pctx, cancel := context.WithTimeout(ctx, readyPingTimeout)
		err := rd.ping(pctx)
		cancel()
		if err != nil {
			problems = append(problems, "redis: no answer to PING within "+readyPingTimeout.String()+": "+err.Error())
		}
	}
	if rd.db != nil {
		pctx, cancel := context.WithTimeout(ctx, readyPingTimeout)
		err := rd.db(pctx)
		cancel()
		if err != nil {
			problems = append(problems, "inbox database: no answer within "+readyPingTimeout.String()+": "+err.Error())
		}
	}
	return problems
}

// adminHandler serves /healthz, /readyz and /metrics.
func adminHandler(rd *readiness, reg *prometheus.Registry, errLog promhttp.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		problems := rd.check(r.Context())
		if len(problems) == 0 {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		var b strings.Builder
		for _, p := range problems {
			b.WriteString("not ready: " + p + "\n")
		}
		_, _ = w.Write([]byte(b.String()))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: errLog}))
	return mux
}

// adminHostGuard answers 421 to a request to the admin listener whose Host
// is neither localhost, nor an IP address, nor one of names (compared
// without case or port): a page that rebinds its own DNS name to this
// address, so as to read /metrics from a browser, sends its own name as
// the Host. An IP address cannot be rebound, so probes and scrapers that
// reach the listener by address (a Kubernetes probe sends the pod's IP)
// are answered.
func adminHostGuard(names []string, next http.Handler) http.Handler {
	allowed := map[string]bool{"localhost": true}
	for _, n := range names {
		allowed[strings.ToLower(n)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !adminHostAllowed(r.Host, allowed) {
			w.Header().Set("Connection", "close")
			http.Error(w, "misdirected request: the admin listener answers only to localhost, an IP address or an --admin-host name", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// adminHostAllowed reports whether host, a request's Host (with or without
// a port), is an IP address or in allowed.
func adminHostAllowed(host string, allowed map[string]bool) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1] // [::1] without a port
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return allowed[strings.ToLower(host)]
}

// validAdminHost reports whether name can be an --admin-host: a host name
// without a port, such as falwebhook.internal.
func validAdminHost(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// sizeFlag is a byte size flag: a number of bytes, optionally with a
// KiB, MiB or GiB suffix. Zero means the library's default.
type sizeFlag struct{ n int64 }

func (f *sizeFlag) String() string {
	if f == nil || f.n == 0 {
		return ""
	}
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if f.n%(1<<u.shift) == 0 {
			return strconv.FormatInt(f.n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(f.n, 10)
}

func (f *sizeFlag) Set(s string) error {
	num, shift := s, uint(0)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = rest, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return errors.New("want a size in bytes such as 1048576, 512KiB or 25MiB")
	}
	f.n = n << shift
	return nil
}

// listenLog writes listen's messages to stderr: "falwebhook listen: …"
// lines, or with --json log/slog JSON records.
type listenLog struct {
	w    io.Writer
	slog *slog.Logger // with --json; nil otherwise
}

func newListenLog(w io.Writer, jsonOut bool) *listenLog {
	l := &listenLog{w: w}
	if jsonOut {
		l.slog = slog.New(slog.NewJSONHandler(w, nil))
	}
	return l
}

// info logs a message; one starting with "warning: " is a warning.
func (l *listenLog) info(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if l.slog == nil {
		fmt.Fprintf(l.w, "falwebhook listen: %s\n", msg)
		return
	}
	if rest, ok := strings.CutPrefix(msg, "warning: "); ok {
		l.slog.Warn(rest)
		return
	}
	l.slog.Info(msg)
}

// std returns a *log.Logger for the errors of an http.Server, a reverse
// proxy or the metrics handler, its lines starting with prefix.
func (l *listenLog) std(prefix string) *log.Logger {
	if l.slog == nil {
		return log.New(l.w, "falwebhook listen: "+prefix, 0)
	}
	lg := slog.NewLogLogger(l.slog.Handler(), slog.LevelError)
	lg.SetPrefix(prefix)
	return lg
}

// redisLogTo is where go-redis's own messages (failed dials and the like)
// go: the log of the running listen, or stderr when none runs. go-redis has
// one logger per process, which main points at redisLogger.
var redisLogTo atomic.Pointer[listenLog]

// redisLogger passes go-redis's messages on to redisLogTo, as warnings.
type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, args ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, args...))
	msg = strings.TrimPrefix(msg, "redis: ")
	if l := redisLogTo.Load(); l != nil {
		l.info("warning: redis: %s", msg)
		return
	}
	fmt.Fprintf(os.Stderr, "falwebhook: redis: %s\n", msg)
}
