package falriver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/falriver/falsqlite"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
)

// The tests run on both backends: SQLite files in a temporary directory,
// and a Postgres server named by FALWEBHOOK_POSTGRES_URL (.ci/with-postgres.sh
// starts one). Without that variable the Postgres half skips, except under
// CI=true, where it fails.
const postgresEnv = "FALWEBHOOK_POSTGRES_URL"

// backend is one database for one test.
type backend[TTx any] struct {
	name   string
	driver riverdriver.Driver[TTx]
	// sqlite is the SQLite file (empty on Postgres); pgURL is the test's
	// own Postgres database (empty on SQLite).
	sqlite string
	pgURL  string
	// db and pool are the handles the driver is built on.
	db   *falsqlite.DB
	pool *pgxpool.Pool
}

// both runs a test body on SQLite and on Postgres.
func both(t *testing.T, onSQLite func(*testing.T, *backend[*sql.Tx]), onPostgres func(*testing.T, *backend[pgx.Tx])) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { onSQLite(t, newSQLite(t)) })
	t.Run("postgres", func(t *testing.T) { onPostgres(t, newPostgres(t)) })
}

func newSQLite(t testing.TB) *backend[*sql.Tx] {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inbox.db")
	db, err := falsqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return &backend[*sql.Tx]{name: "sqlite", driver: riversqlite.New(db.DB), sqlite: path, db: db}
}

// postgresURL returns the server's URL, or skips (fails under CI=true).
func postgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(postgresEnv)
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: CI runs these tests with a real Postgres (bash .ci/with-postgres.sh go test ./...)", postgresEnv)
		}
		t.Skipf("no Postgres: set %s (bash .ci/with-postgres.sh starts a throwaway server and sets it)", postgresEnv)
	}
	return u
}

// newDatabase creates a fresh database on the Postgres server, migrated,
// dropped when the test ends, and returns its URL.
func newDatabase(t testing.TB) string {
	t.Helper()
	base := postgresURL(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to %s: %v", postgresEnv, err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "falriver_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func newPostgres(t testing.TB) *backend[pgx.Tx] {
	t.Helper()
	u := newDatabase(t)
	pool, err := pgxpool.New(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return &backend[pgx.Tx]{name: "postgres", driver: riverpgxv5.New(pool), pgURL: u, pool: pool}
}

// client returns a River client on b; with workers it also works the
// default queue. It is stopped when the test ends.
func (b *backend[TTx]) client(t testing.TB, workers *river.Workers, cfg *river.Config) *river.Client[TTx] {
	t.Helper()
	if cfg == nil {
		cfg = &river.Config{}
	}
	cfg.TestOnly = true
	if workers != nil {
		cfg.Workers = workers
		if cfg.Queues == nil {
			cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 8}}
		}
		if cfg.FetchCooldown == 0 {
			cfg.FetchCooldown = 20 * time.Millisecond
			cfg.FetchPollInterval = 50 * time.Millisecond
		}
	}
	c, err := river.NewClient(b.driver, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if workers != nil {
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = c.Stop(ctx)
		})
	}
	return c
}

// jobs returns every delivery job, in id order.
func jobs[TTx any](t testing.TB, c *river.Client[TTx]) []*rivertype.JobRow {
	t.Helper()
	p := river.NewJobListParams().Kinds(falriver.Kind).First(10000).
		States(rivertype.JobStateAvailable, rivertype.JobStateCancelled, rivertype.JobStateCompleted, rivertype.JobStateDiscarded,
			rivertype.JobStatePending, rivertype.JobStateRetryable, rivertype.JobStateRunning, rivertype.JobStateScheduled)
	res, err := c.JobList(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return res.Jobs
}

// waitFor polls cond every 20 ms until it holds or 30 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after 30 s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pollFor polls cond every 20 ms until it holds or d passes, and reports
// whether it held; the caller checks what it waited for.
func pollFor(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// The fal account the test verifiers accept.
const userID = "fal-user-1"

// fixture is a signer and a verifier pinned to userID that trusts it.
type fixture struct {
	signer *faltest.Signer
	v      *falwebhook.Verifier
}

func newFixture(opts ...falwebhook.Option) *fixture {
	s := faltest.SignerFromName("falriver test")
	opts = append([]falwebhook.Option{falwebhook.WithKeys(falwebhook.StaticKeys(s.PublicKey())), falwebhook.WithUserIDs(userID)}, opts...)
	return &fixture{signer: s, v: falwebhook.NewVerifier(opts...)}
}

// body is an OK delivery of id whose payload holds a seed above 2^53,
// which a float64 would round.
func body(id string) []byte {
	return []byte(`{"request_id":"` + id + `","gateway_request_id":"g-` + id + `","status":"OK","payload":{"seed":9007199254740993,"images":[{"url":"https://v3.fal.media/files/x.png"}]}}`)
}

// send POSTs a signed delivery of body to url as user and returns the
// status and the duplicate header.
func (f *fixture) send(t testing.TB, url, user string, b []byte) (int, string) {
	t.Helper()
	req, err := f.signer.NewClientRequest(context.Background(), url, faltest.Delivery{UserID: user, Body: b})
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var sink bytes.Buffer
	_, _ = sink.ReadFrom(res.Body)
	return res.StatusCode, res.Header.Get(falwebhook.HeaderDuplicate)
}

// serve starts an httptest server for h.
func serve(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// recorder records the events a worker was given, by request id.
type recorder struct {
	mu     sync.Mutex
	events map[string][]*falwebhook.Event
	source map[string]falriver.Source
}

func newRecorder() *recorder {
	return &recorder{events: map[string][]*falwebhook.Event{}, source: map[string]falriver.Source{}}
}

func (r *recorder) add(job *river.Job[falriver.Args], ev *falwebhook.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events[ev.RequestID] = append(r.events[ev.RequestID], ev)
	r.source[ev.RequestID] = job.Args.Source
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events[id])
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, evs := range r.events {
		n += len(evs)
	}
	return n
}

// checkOnce fails unless every id in ids was processed exactly once, with
// the exact payload of body(id), and nothing else was processed.
func (r *recorder) checkOnce(t testing.TB, ids []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
		evs := r.events[id]
		if len(evs) != 1 {
			t.Errorf("%s processed %d times, want once", id, len(evs))
			continue
		}
		wantEv, err := falwebhook.ParseEvent(body(id))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(evs[0].Payload, wantEv.Payload) || evs[0].GatewayRequestID != wantEv.GatewayRequestID || evs[0].Status != falwebhook.StatusOK {
			t.Errorf("%s: processed %+v (payload %s), want %+v (payload %s)", id, evs[0], evs[0].Payload, wantEv, wantEv.Payload)
		}
	}
	for id := range r.events {
		if !want[id] {
			t.Errorf("processed %s, which was never a genuine delivery", id)
		}
	}
}

// ids returns n request ids with a prefix unique to the test.
func ids(prefix string, n int) []string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%x-%04d", prefix, b, i)
	}
	return out
}

// errBoom is a work function's failure.
var errBoom = errors.New("boom")

// fastRetry is a worker whose retries come at once, for tests.
type fastRetry struct{ river.Worker[falriver.Args] }

func (fastRetry) NextRetry(*river.Job[falriver.Args]) time.Time { return time.Now() }

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
