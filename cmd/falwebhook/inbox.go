package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/falriver/falsqlite"
)

// listen --inbox: deliveries are acknowledged once stored in a durable
// inbox (falriver on SQLite or Postgres), and a River worker in the same
// process forwards them to --forward from the queue.

// Headers of a delivery forwarded from the inbox, besides those the
// synchronous forwarder sends.
const (
	headerIdempotencyKey = "Idempotency-Key"    // the request id
	headerAttempt        = "Falwebhook-Attempt" // 1 for the first attempt
	headerSource         = "Falwebhook-Source"  // webhook or reconcile
)

const (
	// inboxForwardTimeout is --forward-timeout's default with --inbox:
	// the app has minutes per attempt, not fal's 15 s.
	inboxForwardTimeout = 5 * time.Minute

	// inboxWorkers is --inbox-workers' default: how many deliveries are
	// forwarded at once.
	inboxWorkers = 16

	// inboxRescueMargin is how long past the attempt timeout a job left
	// running by a replica that died waits before another takes it back
	// (River's RescueStuckJobsAfter, on Postgres).
	inboxRescueMargin = time.Minute

	// inboxRetention is how long completed deliveries are kept: their
	// unique job is the dedupe, and fal redelivers for about an hour.
	inboxRetention = 24 * time.Hour

	// inboxMetricsTimeout bounds the query /metrics makes; its result is
	// reused for inboxMetricsEvery.
	inboxMetricsTimeout = 2 * time.Second
	inboxMetricsEvery   = time.Second

	// inboxAppBodyLimit is how much of the app's answer is read (to reuse
	// the connection, and to quote in a failure).
	inboxAppBodyLimit = 64 << 10
)

// inboxRetryDelay, when positive, replaces the retry schedule of
// falriver's worker (tests only).
var inboxRetryDelay time.Duration

// inboxFlags are listen's --inbox flags.
type inboxFlags struct {
	spec    string
	workers int
}

func (f *inboxFlags) register(fs *cmdFlags) {
	fs.StringVar(&f.spec, "inbox", "", "acknowledge deliveries once stored in the inbox at `sqlite:PATH or postgres://URL`, and forward them to --forward from there, with retries")
	fs.IntVar(&f.workers, "inbox-workers", inboxWorkers, "with --inbox, forward at most this `many` deliveries at once")
}

// checkInboxFlags checks the --inbox flags against the others once they are
// parsed, and gives --forward-timeout its default with --inbox. It returns
// what is wrong, or "".
func checkInboxFlags(fs *cmdFlags, f *listenFlags) string {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if f.inbox.spec == "" {
		if set["inbox-workers"] {
			return "--inbox-workers needs --inbox"
		}
		return ""
	}
	if _, _, err := parseInboxSpec(f.inbox.spec); err != nil {
		return "--inbox " + err.Error()
	}
	switch {
	case f.forward == "":
		return "--inbox needs --forward: the app the stored deliveries are forwarded to"
	case f.redis != "":
		return "--inbox and --redis contradict each other: with --inbox, the inbox's one job per request id is the dedupe, shared by every listen on the same database"
	case f.noDedupe:
		return "--inbox and --no-dedupe contradict each other: the inbox stores one job per request id, so a repeat is never forwarded again"
	case f.inbox.workers < 1 || f.inbox.workers > 1000:
		return "--inbox-workers must be between 1 and 1000"
	}
	if !set["forward-timeout"] {
		*f.forwardTimeout = inboxForwardTimeout
	}
	return ""
}

// parseInboxSpec splits --inbox into its backend, "sqlite" or "postgres",
// and the file path or the URL.
func parseInboxSpec(s string) (backend, target string, err error) {
	if path, ok := strings.CutPrefix(s, "sqlite:"); ok {
		if path == "" || strings.HasPrefix(path, "//") {
			return "", "", fmt.Errorf("%q: want sqlite:PATH with a plain file path, such as sqlite:/var/lib/falwebhook/inbox.db", s)
		}
		return "sqlite", path, nil
	}
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if _, err := pgxpool.ParseConfig(s); err != nil {
			return "", "", fmt.Errorf("%q: %v", redactURL(s), err)
		}
		return "postgres", s, nil
	}
	return "", "", fmt.Errorf("%q: want sqlite:PATH or a postgres:// (or postgresql://) URL", redactURL(s))
}

// redactURL hides the password of a URL, for messages.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// gatewayInbox is listen's durable inbox: the River client that stores
// deliveries and forwards them, on SQLite or Postgres.
type gatewayInbox struct {
	rc      *receiver
	target  *url.URL // --forward
	timeout time.Duration
	workers int
	hc      *http.Client
	metrics *inboxMetrics

	// Set by the backend.
	desc    string // where the inbox is, for messages
	resumed string // what was taken back at start, for the setup message
	handler func(v *falwebhook.Verifier) http.Handler
	start   func(ctx context.Context) error
	stop    func(ctx context.Context) error // graceful: running forwards finish
	cancel  func(ctx context.Context) error // running forwards are cancelled
	ping    func(ctx context.Context) error
	closeDB func()

	stopOnce sync.Once
}

// openInbox opens the inbox --inbox names: the SQLite file (locked,
// migrated, a dead predecessor's jobs resumed) or the Postgres database
// (migrated), and a River client on it whose worker forwards to --forward.
func openInbox(ctx context.Context, f *listenFlags, rc *receiver, tel *telemetry, lg *listenLog) (*gatewayInbox, error) {
	backend, target, err := parseInboxSpec(f.inbox.spec)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	tr.MaxIdleConnsPerHost = f.inbox.workers
	ib := &gatewayInbox{
		rc:      rc,
		target:  rc.forward,
		timeout: *f.forwardTimeout,
		workers: f.inbox.workers,
		hc: &http.Client{
			Transport: tr,
			// A redirect is an answer that is not 2xx: retried, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		metrics: newInboxMetrics(),
	}
	ib.metrics.resumed = -1
	logger := lg.slog
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(lg.w, nil))
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &forwardWorker{Worker: falriver.NewWorker(ib.forward), ib: ib}); err != nil {
		return nil, err
	}
	cfg := &river.Config{
		Queues:                      map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: ib.workers}},
		Workers:                     workers,
		JobTimeout:                  ib.timeout,
		RescueStuckJobsAfter:        ib.timeout + inboxRescueMargin,
		CompletedJobRetentionPeriod: inboxRetention,
		// River's own messages: only warnings and errors.
		Logger: slog.New(levelHandler{Handler: logger.Handler(), min: slog.LevelWarn}),
	}
	switch backend {
	case "sqlite":
		err = ib.openSQLite(ctx, target, cfg, logger)
	default:
		err = ib.openPostgres(ctx, target, cfg, logger)
	}
	if err != nil {
		return nil, err
	}
	if err := tel.reg.Register(ib.metrics); err != nil {
		ib.closeDB()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ib, nil
}

func (ib *gatewayInbox) openSQLite(ctx context.Context, path string, cfg *river.Config, logger *slog.Logger) error {
	db, err := falsqlite.Open(ctx, path)
	if err != nil {
		return err
	}
	// One connection, polled: a stored delivery is picked up within
	// FetchPollInterval.
	cfg.FetchCooldown = 10 * time.Millisecond
	cfg.FetchPollInterval = 250 * time.Millisecond
	if err := newInboxClient(ib, riversqlite.New(db.DB), cfg, logger); err != nil {
		_ = db.Close()
		return err
	}
	ib.desc = "SQLite file " + path + " (this process owns it)"
	ib.resumed = fmt.Sprintf("%s left being forwarded by a process that stopped resumed at once", deliveries(db.Resumed))
	ib.metrics.resumed = db.Resumed
	ib.ping = func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	}
	ib.metrics.query = func(ctx context.Context) ([]stateCount, error) {
		return queryStates(ctx, db.DB, sqliteStatesQuery)
	}
	ib.closeDB = func() { _ = db.Close() }
	return nil
}

func (ib *gatewayInbox) openPostgres(ctx context.Context, u string, cfg *river.Config, logger *slog.Logger) error {
	pc, err := pgxpool.ParseConfig(u)
	if err != nil {
		return fmt.Errorf("%s: %w", redactURL(u), err)
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if pc.MaxConns < int32(ib.workers)+4 {
		pc.MaxConns = int32(ib.workers) + 4
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return fmt.Errorf("%s: %w", redactURL(u), err)
	}
	where := pc.ConnConfig.Host + ":" + strconv.Itoa(int(pc.ConnConfig.Port)) + "/" + pc.ConnConfig.Database
	if err := migratePostgres(ctx, pool); err != nil {
		pool.Close()
		return fmt.Errorf("postgres at %s: %w", where, err)
	}
	var running int
	err = pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'running'", falriver.Kind).Scan(&running)
	if err != nil {
		pool.Close()
		return fmt.Errorf("postgres at %s: %w", where, err)
	}
	if err := newInboxClient(ib, riverpgxv5.New(pool), cfg, logger); err != nil {
		pool.Close()
		return err
	}
	ib.desc = "Postgres at " + where + ", shared by every listen using it"
	ib.resumed = fmt.Sprintf("%s being forwarded by other replicas or left by one that stopped; those left are taken back %s after their attempt started (attempt timeout + %s)",
		deliveries(running), cfg.RescueStuckJobsAfter, inboxRescueMargin)
	ib.ping = pool.Ping
	ib.metrics.query = func(ctx context.Context) ([]stateCount, error) {
		rows, err := pool.Query(ctx, postgresStatesQuery, falriver.Kind)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return scanStates(rows)
	}
	ib.closeDB = pool.Close
	return nil
}

// migrateLockKey is the Postgres advisory lock that serializes River's
// migrations between gateways starting at once on one database.
const migrateLockKey = 0x66616c7269766572 // "falriver"

// migratePostgres runs River's migrations up, one gateway at a time.
func migratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrateLockKey)); err != nil {
		return err
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrateLockKey))
	}()
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrating River's tables: %w", err)
	}
	return nil
}

// newInboxClient makes ib's River client on driver.
func newInboxClient[TTx any](ib *gatewayInbox, driver riverdriver.Driver[TTx], cfg *river.Config, logger *slog.Logger) error {
	c, err := river.NewClient(driver, cfg)
	if err != nil {
		return fmt.Errorf("river: %w", err)
	}
	ib.handler = func(v *falwebhook.Verifier) http.Handler {
		return falriver.NewInbox(v, c, falriver.WithLogger(logger))
	}
	ib.start, ib.stop, ib.cancel = c.Start, c.Stop, c.StopAndCancel
	return nil
}

// deliveries is "1 delivery" or "n deliveries".
func deliveries(n int) string {
	if n == 1 {
		return "1 delivery"
	}
	return strconv.Itoa(n) + " deliveries"
}

// describe says on stderr where deliveries are stored and how they are
// forwarded.
func (ib *gatewayInbox) describe(info func(string, ...any)) {
	info("inbox: %s; a delivery is acknowledged once stored; %s", ib.desc, ib.resumed)
	info("forwarding stored deliveries to %s: up to %d at once, each attempt up to %s, any answer but 2xx retried with backoff (15s doubling to 1h, %d attempts over about 4h); headers Idempotency-Key (the request id), %s, %s",
		ib.target.Redacted(), ib.workers, ib.timeout, falriver.DefaultMaxAttempts, headerAttempt, headerSource)
}

// serveHTTP returns the handler of deliveries: the inbox behind v's
// middleware, recording what became of each for its log line.
func (ib *gatewayInbox) serveHTTP(v *falwebhook.Verifier) http.Handler {
	h := ib.handler(v)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		rec := recordOf(r.Context())
		if rec.d.Err != nil || rec.d.Outcome == "" {
			return // the Verifier's rejection, logged as such
		}
		rec.status = sw.status
		switch {
		case sw.status == http.StatusOK && w.Header().Get(falwebhook.HeaderDuplicate) != "":
			rec.queued = "duplicate: already stored; not forwarded again"
		case sw.status == http.StatusOK:
			rec.queued = "accepted, stored; forwarding from the inbox"
		case sw.status == http.StatusServiceUnavailable:
			rec.queued = "accepted, not stored (inbox database failing or overloaded); answered 503 so that fal retries"
		default:
			rec.queued = fmt.Sprintf("accepted, not stored; answered %d", sw.status)
		}
	})
}

// statusWriter records the status a handler answers.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap gives http.ResponseController the connection's writer (the
// Verifier sets the body's read deadline through it).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// run starts forwarding from the inbox.
func (ib *gatewayInbox) run(ctx context.Context) error {
	// Not ctx itself: its end is the signal, after which shutdown stops
	// the client gracefully (River stops hard when Start's context ends).
	if err := ib.start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("--inbox: starting the forwarder: %w", err)
	}
	return nil
}

// drain stops the forwarder once no deliveries arrive any more: running
// forwards finish, until ctx ends; those still running then are cancelled
// and retried at the next start (or by another replica).
func (ib *gatewayInbox) drain(ctx context.Context) error {
	err := ib.stop(ctx)
	if err == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = ib.cancel(cctx)
	return fmt.Errorf("forwards still running were cut off (they are retried): %w", err)
}

// close stops the forwarder if still running and closes the database.
func (ib *gatewayInbox) close() {
	ib.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ib.cancel(ctx)
		ib.closeDB()
	})
}

// forwardWorker is falriver's worker with listen's attempt timeout.
type forwardWorker struct {
	river.Worker[falriver.Args]
	ib *gatewayInbox
}

// Timeout is --forward-timeout.
func (w *forwardWorker) Timeout(*river.Job[falriver.Args]) time.Duration { return w.ib.timeout }

// NextRetry is falriver's schedule.
func (w *forwardWorker) NextRetry(job *river.Job[falriver.Args]) time.Time {
	if inboxRetryDelay > 0 {
		return time.Now().Add(inboxRetryDelay)
	}
	return w.Worker.NextRetry(job)
}

// errAppStatus is the error of an attempt the app answered with other than
// 2xx.
var errAppStatus = errors.New("app answered")

// forward makes one attempt at forwarding a stored delivery to the app:
// nil (the job completes) when it answers 2xx, an error (River retries)
// otherwise.
func (ib *gatewayInbox) forward(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
	a := job.Args
	ctx, span := ib.rc.tracer.Start(ctx, "forward "+ib.target.Path,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(http.MethodPost)))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, ib.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ib.target.String(), bytes.NewReader(a.Body))
	if err != nil {
		return river.JobCancel(err) // --forward was checked: cannot happen
	}
	req.Header = http.Header{
		falwebhook.HeaderRequestID: {a.RequestID},
		falwebhook.HeaderUserID:    {a.UserID},
		"Content-Type":             {"application/json"}, // the body is a verified JSON event
		headerVerified:             {"true"},
		headerIdempotencyKey:       {a.RequestID},
		headerAttempt:              {strconv.Itoa(job.Attempt)},
		headerSource:               {string(a.Source)},
	}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))

	ib.metrics.attempts.Inc()
	status, err := ib.send(req)
	if err == nil {
		ib.metrics.forwarded.Inc()
	} else {
		reason := "error"
		switch {
		case errors.Is(err, errAppStatus):
			reason = "status"
		case errors.Is(err, context.DeadlineExceeded):
			reason = "timeout"
		case errors.Is(err, context.Canceled):
			reason = "stopped"
		}
		ib.metrics.failures.WithLabelValues(reason).Inc()
	}
	ib.logForward(job, ev, span.SpanContext().TraceID().String(), status, err)
	return err
}

// send posts req to the app and returns its status: an error unless 2xx.
func (ib *gatewayInbox) send(req *http.Request) (int, error) {
	resp, err := ib.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, inboxAppBodyLimit))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	snippet := strings.ToValidUTF8(string(b[:min(len(b), 200)]), "?")
	return resp.StatusCode, fmt.Errorf("%w %d: %q", errAppStatus, resp.StatusCode, strings.TrimSpace(snippet))
}

// forwardLine is the line of one attempt at forwarding from the inbox.
type forwardLine struct {
	listenLine
	Attempt int    `json:"attempt"`
	Source  string `json:"source"`
}

// logForward prints the line of one attempt.
func (ib *gatewayInbox) logForward(job *river.Job[falriver.Args], ev *falwebhook.Event, traceID string, status int, err error) {
	rc := ib.rc
	l := forwardLine{
		listenLine: listenLine{
			Time:          rc.now().UTC().Format(time.RFC3339),
			Method:        http.MethodPost,
			Path:          ib.target.Path,
			Status:        status,
			RequestID:     job.Args.RequestID,
			UserID:        job.Args.UserID,
			EventStatus:   string(ev.Status),
			Verdict:       "forwarded",
			ForwardStatus: status,
			TraceID:       traceID,
		},
		Attempt: job.Attempt,
		Source:  string(job.Args.Source),
	}
	what := fmt.Sprintf("forwarded from the inbox (attempt %d, %s): app answered %d", job.Attempt, job.Args.Source, status)
	if err != nil {
		l.Verdict, l.ForwardError = "forward_failed", err.Error()
		next := "retrying"
		if job.Attempt >= job.MaxAttempts {
			next = fmt.Sprintf("giving up after %d attempts", job.Attempt)
		}
		what = fmt.Sprintf("forward from the inbox failed (attempt %d, %s): %s; %s", job.Attempt, job.Args.Source, err, next)
	}
	if rc.jsonOut {
		b, _ := json.Marshal(l)
		rc.out.printf("%s\n", b)
		return
	}
	rc.out.printf("%s  %s  %-36s  %-16s  %-5s  %s\n", l.Time, "fwd", dash(l.RequestID), dash(l.UserID), dash(l.EventStatus), what)
}

// levelHandler drops records below min.
type levelHandler struct {
	slog.Handler
	min slog.Level
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return levelHandler{Handler: h.Handler.WithAttrs(as), min: h.min}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{Handler: h.Handler.WithGroup(name), min: h.min}
}

// The states /metrics counts, all but completed: completed jobs are kept
// for a day and would make the count as large as a day's deliveries
// (falwebhook_inbox_forwarded_total counts them instead).
var inboxStates = []string{"available", "cancelled", "discarded", "pending", "retryable", "running", "scheduled"}

// waitingStates are the states of a delivery stored and not yet forwarded.
var waitingStates = map[string]bool{"available": true, "pending": true, "retryable": true, "running": true, "scheduled": true}

// queuedStates are the states queue depth counts: waiting for an attempt.
var queuedStates = map[string]bool{"available": true, "retryable": true, "scheduled": true}

const (
	postgresStatesQuery = `SELECT state::text, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
FROM river_job WHERE kind = $1 AND state IN ('available', 'cancelled', 'discarded', 'pending', 'retryable', 'running', 'scheduled')
GROUP BY state`
	sqliteStatesQuery = `SELECT state, count(*), COALESCE((julianday('now') - julianday(min(created_at))) * 86400.0, 0.0)
FROM river_job WHERE kind = ? AND state IN ('available', 'cancelled', 'discarded', 'pending', 'retryable', 'running', 'scheduled')
GROUP BY state`
)

// stateCount is the delivery jobs in one state: how many, and the age in
// seconds of the oldest.
type stateCount struct {
	state  string
	count  int64
	oldest float64
}

func queryStates(ctx context.Context, db *sql.DB, query string) ([]stateCount, error) {
	rows, err := db.QueryContext(ctx, query, falriver.Kind)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return scanStates(rows)
}

// scanStates reads the rows of a states query, from database/sql or pgx.
func scanStates(rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}) ([]stateCount, error) {
	var out []stateCount
	for rows.Next() {
		var s stateCount
		if err := rows.Scan(&s.state, &s.count, &s.oldest); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// inboxMetrics are the inbox's Prometheus metrics: the forwarder's
// counters, and gauges read from the database at scrape time.
type inboxMetrics struct {
	attempts  prometheus.Counter
	forwarded prometheus.Counter
	failures  *prometheus.CounterVec
	resumed   int // on SQLite; -1 on Postgres

	query func(ctx context.Context) ([]stateCount, error)

	up, depth, oldest, jobs, resumedDesc *prometheus.Desc

	mu     sync.Mutex // guards the last query's result
	at     time.Time
	states []stateCount
	err    error
}

func newInboxMetrics() *inboxMetrics {
	m := &inboxMetrics{
		attempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "falwebhook_inbox_forward_attempts_total",
			Help: "Attempts at forwarding a stored delivery to the app.",
		}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "falwebhook_inbox_forwarded_total",
			Help: "Stored deliveries the app answered with 2xx (their jobs complete).",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "falwebhook_inbox_forward_failures_total",
			Help: "Attempts at forwarding that failed and are retried (or, at the last attempt, given up), by reason: status (the app answered other than 2xx), timeout (--forward-timeout), error (the app could not be reached), stopped (shutdown cut the attempt off).",
		}, []string{"reason"}),
		up: prometheus.NewDesc("falwebhook_inbox_up",
			"1 if the inbox database answered the query of these metrics within 2s, else 0 (and the inbox gauges are absent).", nil, nil),
		depth: prometheus.NewDesc("falwebhook_inbox_queue_depth",
			"Stored deliveries waiting for an attempt at forwarding (jobs available, retryable or scheduled), across every listen on the database.", nil, nil),
		oldest: prometheus.NewDesc("falwebhook_inbox_oldest_waiting_seconds",
			"Age of the oldest stored delivery not yet forwarded (available, pending, retryable, running or scheduled), from when it was stored; 0 when none.", nil, nil),
		jobs: prometheus.NewDesc("falwebhook_inbox_jobs",
			"Delivery jobs by state, all but completed (falwebhook_inbox_forwarded_total counts those); discarded ones ran out of attempts.", []string{"state"}, nil),
		resumedDesc: prometheus.NewDesc("falwebhook_inbox_resumed_at_start",
			"Deliveries a dead predecessor left being forwarded that this process resumed when it opened the SQLite file.", nil, nil),
	}
	for _, r := range []string{"status", "timeout", "error", "stopped"} {
		m.failures.WithLabelValues(r)
	}
	return m
}

func (m *inboxMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.attempts.Describe(ch)
	m.forwarded.Describe(ch)
	m.failures.Describe(ch)
	for _, d := range []*prometheus.Desc{m.up, m.depth, m.oldest, m.jobs, m.resumedDesc} {
		ch <- d
	}
}

func (m *inboxMetrics) Collect(ch chan<- prometheus.Metric) {
	m.attempts.Collect(ch)
	m.forwarded.Collect(ch)
	m.failures.Collect(ch)
	if m.resumed >= 0 {
		ch <- prometheus.MustNewConstMetric(m.resumedDesc, prometheus.GaugeValue, float64(m.resumed))
	}
	states, err := m.read()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, 1)
	counts := map[string]int64{}
	var depth int64
	var oldest float64
	for _, s := range states {
		counts[s.state] = s.count
		if queuedStates[s.state] {
			depth += s.count
		}
		if waitingStates[s.state] && s.count > 0 {
			oldest = max(oldest, s.oldest)
		}
	}
	ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(depth))
	ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, oldest)
	for _, st := range inboxStates {
		ch <- prometheus.MustNewConstMetric(m.jobs, prometheus.GaugeValue, float64(counts[st]), st)
	}
}

// read returns the counts by state, queried at most every
// inboxMetricsEvery, each query bounded by inboxMetricsTimeout.
func (m *inboxMetrics) read() ([]stateCount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.at.IsZero() && time.Since(m.at) < inboxMetricsEvery {
		return m.states, m.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), inboxMetricsTimeout)
	defer cancel()
	m.states, m.err = m.query(ctx)
	m.at = time.Now()
	return m.states, m.err
}
