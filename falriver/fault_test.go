package falriver_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
)

// replicaEnv names the database a child process serves as a replica.
const replicaEnv = "FALRIVER_TEST_REPLICA"

func TestMain(m *testing.M) {
	if url := os.Getenv(replicaEnv); url != "" {
		replica(url)
		return
	}
	os.Exit(m.Run())
}

// replica runs one inbox replica on the database at url, with workers
// that record each delivery in the processed table in the job's completion
// transaction, until it is killed or its stdin closes. Work on ids with
// "slow" takes 1.5 s; work on ids with "fail" fails its first attempt.
func replica(url string) {
	ctx := context.Background()
	fatal := func(err error) { fmt.Fprintln(os.Stderr, "replica:", err); os.Exit(1) }
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		fatal(err)
	}
	name := fmt.Sprint(os.Getpid())
	workers := river.NewWorkers()
	river.AddWorker(workers, river.Worker[falriver.Args](shortTimeout{fastRetry{falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		if strings.Contains(ev.RequestID, "slow") {
			select {
			case <-time.After(1500 * time.Millisecond): // the work itself: slower than a sender waits
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if strings.Contains(ev.RequestID, "fail") && job.Attempt == 1 {
			return errBoom
		}
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `INSERT INTO processed (request_id, replica, payload) VALUES ($1, $2, $3)`, ev.RequestID, name, string(ev.Payload)); err != nil {
			return err
		}
		if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})}}))
	c, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers:              workers,
		FetchCooldown:        10 * time.Millisecond,
		FetchPollInterval:    50 * time.Millisecond,
		JobTimeout:           5 * time.Second,
		RescueStuckJobsAfter: 6 * time.Second,
		Logger:               slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		fatal(err)
	}
	f := newFixture()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	fmt.Printf("http://%s\n", ln.Addr())
	go func() { _ = http.Serve(ln, falriver.NewInbox(f.v, c, falriver.WithInsertTimeout(2*time.Second))) }()
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the test ends
}

// shortTimeout gives attempts 5 s: River's rescuer leaves a running job
// alone until its worker's timeout has passed, whatever
// RescueStuckJobsAfter says, so the test's replicas use a short one.
type shortTimeout struct{ fastRetry }

func (shortTimeout) Timeout(*river.Job[falriver.Args]) time.Duration { return 5 * time.Second }

type replicaProc struct {
	cmd *exec.Cmd
	url string
}

func startReplica(t *testing.T, dbURL string) *replicaProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), replicaEnv+"="+dbURL)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("replica did not start: %v", err)
	}
	return &replicaProc{cmd: cmd, url: strings.TrimSpace(line)}
}

// Three replicas share one Postgres: deliveries, each sent twice to
// different replicas, some slow, some failing once; one replica is killed
// (SIGKILL) while it works, then the database restarts. Every genuine
// delivery is processed exactly once, nothing forged or foreign is
// stored, and every sender got its 200 in the end, as fal retries.
func TestFaultReplicasKilledAndDatabaseRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault test takes about half a minute")
	}
	dbURL := newDatabase(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE processed (request_id text NOT NULL, replica text NOT NULL, payload text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	reps := []*replicaProc{startReplica(t, dbURL), startReplica(t, dbURL), startReplica(t, dbURL)}
	var alive sync.Map
	for i := range reps {
		alive.Store(i, true)
	}
	f := newFixture()
	client := &http.Client{Timeout: 3 * time.Second}

	// deliver sends one delivery the way fal does: again, to any live
	// replica, until it is answered 200 (bounded).
	var sends, refusals atomic.Int64
	deliver := func(id string) error {
		for try := 0; try < 60; try++ {
			i := rand.IntN(len(reps))
			if _, ok := alive.Load(i); !ok {
				continue
			}
			sends.Add(1)
			req, _ := f.signer.NewClientRequest(ctx, reps[i].url, faltest.Delivery{UserID: userID, Body: body(id)})
			res, err := client.Do(req)
			if err == nil {
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					return nil
				}
			}
			refusals.Add(1)
			time.Sleep(100 * time.Millisecond) // fal's retry, compressed
		}
		return fmt.Errorf("%s never acknowledged", id)
	}
	var want []string
	for i := range 120 {
		kind := []string{"plain", "slow", "fail"}[i%3]
		want = append(want, fmt.Sprintf("%s-%03d", kind, i))
	}
	sendAll := func(ids []string) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for _, id := range ids {
			for range 2 { // every delivery twice
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					if err := deliver(id); err != nil {
						t.Error(err)
					}
				}()
			}
		}
		wg.Wait()
	}
	sendAll(want[:60])

	// Kill replica 0 hard while jobs run, then restart the database.
	waitFor(t, "jobs running", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running'`).Scan(&n)
		return n > 0
	})
	alive.Delete(0)
	if err := reps[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if restart := os.Getenv("FALWEBHOOK_POSTGRES_RESTART"); restart != "" {
		if out, err := exec.Command("sh", "-c", restart).CombinedOutput(); err != nil {
			t.Fatalf("restarting Postgres: %v\n%s", err, out)
		}
		pool.Reset()
	} else if os.Getenv("CI") == "true" {
		t.Fatal("FALWEBHOOK_POSTGRES_RESTART is not set: CI restarts Postgres in this test")
	}
	sendAll(want[60:])

	// Forgeries and another account's deliveries, never stored.
	forger := faltest.SignerFromName("forger")
	for i := range 10 {
		req, _ := forger.NewClientRequest(ctx, reps[1].url, faltest.Delivery{UserID: userID, Body: body(fmt.Sprintf("forged-%d", i))})
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
		}
		if code, _ := f.send(t, reps[2].url, "someone-else", body(fmt.Sprintf("foreign-%d", i))); code != http.StatusForbidden {
			t.Errorf("foreign delivery: %d, want 403", code)
		}
	}

	// The killed replica's jobs wait for River's rescuer:
	// RescueStuckJobsAfter, checked about every 30 s.
	if !pollFor(60*time.Second, func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(DISTINCT request_id) FROM processed`).Scan(&n)
		return n >= len(want)
	}) {
		t.Error("not every delivery processed within 120 s")
		rows, _ := pool.Query(ctx, `SELECT args->>'request_id', state, attempt, attempted_at, scheduled_at, errors::text FROM river_job WHERE kind = $1 AND state <> 'completed'`, falriver.Kind)
		for rows.Next() {
			var id, state string
			var attempt int
			var at, sched *time.Time
			var errs *string
			_ = rows.Scan(&id, &state, &attempt, &at, &sched, &errs)
			t.Logf("%s %s attempt %d attempted %v scheduled %v errors %v", id, state, attempt, at, sched, errs)
		}
	}
	rows, err := pool.Query(ctx, `SELECT request_id, count(*), min(payload) FROM processed GROUP BY request_id`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var id, payload string
		var n int
		if err := rows.Scan(&id, &n, &payload); err != nil {
			t.Fatal(err)
		}
		got[id] = n
		if ev, _ := falwebhook.ParseEvent(body(id)); ev == nil || payload != string(ev.Payload) {
			t.Errorf("%s: payload %s not exact", id, payload)
		}
	}
	for _, id := range want {
		if got[id] != 1 {
			t.Errorf("%s processed %d times, want once", id, got[id])
		}
		delete(got, id)
	}
	for id := range got {
		t.Errorf("%s processed, but never delivered genuinely", id)
	}
	var jobsN, rescued int
	_ = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE errors IS NOT NULL AND NOT (kind = 'x')) FROM river_job WHERE kind = $1`, falriver.Kind).Scan(&jobsN, &rescued)
	if jobsN != len(want) {
		t.Errorf("%d delivery jobs, want %d", jobsN, len(want))
	}
	t.Logf("%d deliveries sent %d times in all (%d refused or timed out and sent again), one replica killed, Postgres restarted: %d jobs, %d with an error recorded (failed once or rescued), each processed exactly once",
		len(want)*2, sends.Load(), refusals.Load(), jobsN, rescued)
}
