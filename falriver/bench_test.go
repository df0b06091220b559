package falriver_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// BenchmarkInboxAck measures, side by side in one run, how fast
// deliveries are acknowledged by the synchronous middleware (the floor: a
// handler that answers 200 at once), by the inbox on SQLite and by the
// inbox on Postgres (when FALWEBHOOK_POSTGRES_URL is set), with 32
// concurrent senders over loopback and workers busy processing what was
// stored, and by a naive inbox (one insert and one commit per delivery,
// through Enqueue) on each. It reports deliveries per second, their ratio
// to the floor, the
// acknowledgement latency's p50 and p99, and the database bytes per stored
// delivery (1 KiB payloads):
//
//	go test -run '^$' -bench InboxAck -benchtime 4000x ./falriver
//	bash .ci/with-postgres.sh go test -run '^$' -bench InboxAck -benchtime 4000x ./falriver
//
// b.N is the number of deliveries per target.
func BenchmarkInboxAck(b *testing.B) {
	const senders = 32
	f := newFixture()
	payload := make([]byte, 1024)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	bodyOf := func(id string) []byte {
		return []byte(`{"request_id":"` + id + `","status":"OK","payload":{"blob":"` + string(payload) + `"}}`)
	}
	n := b.N
	// Sign every delivery first: the senders only send.
	reqs := func(prefix string) []faltest.Headers {
		hs := make([]faltest.Headers, n)
		for i := range hs {
			id := fmt.Sprintf("%s-%06d", prefix, i)
			hs[i] = f.signer.Sign(faltest.Delivery{RequestID: id, UserID: userID, Body: bodyOf(id)})
		}
		return hs
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: senders, MaxConnsPerHost: senders}}
	run := func(url string, hs []faltest.Headers) (perSec float64, p50, p99 time.Duration) {
		lat := make([]time.Duration, len(hs))
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= len(hs) {
						return
					}
					req, _ := http.NewRequest(http.MethodPost, url, nil)
					hs[i].Set(req.Header)
					bd := bodyOf(hs[i].RequestID)
					req.Body = io.NopCloser(bytes.NewReader(bd))
					req.ContentLength = int64(len(bd))
					t0 := time.Now()
					res, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_ = res.Body.Close()
					if res.StatusCode != http.StatusOK {
						b.Errorf("%s: %d", hs[i].RequestID, res.StatusCode)
						return
					}
					lat[i] = time.Since(t0)
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		slices.Sort(lat)
		return float64(len(hs)) / el.Seconds(), lat[len(lat)/2], lat[len(lat)*99/100]
	}
	b.ResetTimer()

	floor := serve(b, f.v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {}))
	floorRate, fp50, fp99 := run(floor.URL, reqs("floor"))
	b.ReportMetric(floorRate, "floor/s")
	b.ReportMetric(float64(fp50.Microseconds())/1000, "floor-p50-ms")
	b.ReportMetric(float64(fp99.Microseconds())/1000, "floor-p99-ms")

	busyWorkers := func() *river.Workers {
		w := river.NewWorkers()
		river.AddWorker(w, falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
			return nil
		}))
		return w
	}

	// naive is an inbox without group commit: one insert and one commit per
	// delivery, through Enqueue.
	naive := func(c interface {
		enqueue(ctx context.Context, a falriver.Args) (bool, error)
	}) http.Handler {
		return f.v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, err := falriver.ArgsFromRequest(r)
			if err == nil {
				_, err = c.enqueue(r.Context(), a)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
			}
		}))
	}

	sqn := newSQLite(b)
	var p50, p99 time.Duration
	rate, _, _ := run(serve(b, naive(enqueuer[*sql.Tx]{sqn.client(b, busyWorkers(), nil)})).URL, reqs("sqlite-naive"))
	b.ReportMetric(rate/floorRate, "sqlite-naive-ratio")

	sq := newSQLite(b)
	sc := sq.client(b, busyWorkers(), nil)
	before := fileSize(sq.sqlite)
	rate, p50, p99 = run(serve(b, falriver.NewInbox(f.v, sc)).URL, reqs("sqlite"))
	b.ReportMetric(rate, "sqlite/s")
	b.ReportMetric(rate/floorRate, "sqlite-ratio")
	b.ReportMetric(float64(p50.Microseconds())/1000, "sqlite-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "sqlite-p99-ms")
	b.ReportMetric(float64(fileSize(sq.sqlite)+fileSize(sq.sqlite+"-wal")-before)/float64(n), "sqlite-B/delivery")

	if os.Getenv(postgresEnv) == "" {
		return
	}
	pgn := newPostgres(b)
	rate, _, _ = run(serve(b, naive(enqueuer[pgx.Tx]{pgn.client(b, busyWorkers(), nil)})).URL, reqs("postgres-naive"))
	b.ReportMetric(rate/floorRate, "postgres-naive-ratio")

	pg := newPostgres(b)
	pc := pg.client(b, busyWorkers(), nil)
	var pgBefore int64
	_ = pg.pool.QueryRow(context.Background(), `SELECT pg_total_relation_size('river_job')`).Scan(&pgBefore)
	rate, p50, p99 = run(serve(b, falriver.NewInbox(f.v, pc)).URL, reqs("postgres"))
	var pgAfter int64
	_ = pg.pool.QueryRow(context.Background(), `SELECT pg_total_relation_size('river_job')`).Scan(&pgAfter)
	b.ReportMetric(rate, "postgres/s")
	b.ReportMetric(rate/floorRate, "postgres-ratio")
	b.ReportMetric(float64(p50.Microseconds())/1000, "postgres-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "postgres-p99-ms")
	b.ReportMetric(float64(pgAfter-pgBefore)/float64(n), "postgres-B/delivery")
}

// enqueuer stores a delivery with Enqueue.
type enqueuer[TTx any] struct{ c *river.Client[TTx] }

func (e enqueuer[TTx]) enqueue(ctx context.Context, a falriver.Args) (bool, error) {
	res, err := falriver.Enqueue(ctx, e.c, a)
	return err == nil && res.UniqueSkippedAsDuplicate, err
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
