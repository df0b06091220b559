package falriver_test

import (
	"context"
	"database/sql"
	"net/http"
	"sync"
	"testing"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivertype"
)

// The transactional recipe: the work function's own rows and
// river.JobCompleteTx commit in one transaction, so a rolled-back attempt
// (here, the first of each delivery, failing after its write) leaves no
// row, and each delivery's row is written exactly once.
func TestTransactionalRecipe(t *testing.T) {
	both(t, testTxSQLite, testTxPostgres)
}

// failFirst fails each request's first attempt after its write.
type failFirst struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (f *failFirst) fails(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[id] {
		return false
	}
	f.seen[id] = true
	return true
}

func testTxSQLite(t *testing.T, b *backend[*sql.Tx]) {
	ctx := context.Background()
	if _, err := b.db.ExecContext(ctx, `CREATE TABLE images (request_id TEXT PRIMARY KEY, payload TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	ff := &failFirst{seen: map[string]bool{}}
	workers := river.NewWorkers()
	river.AddWorker(workers, river.Worker[falriver.Args](fastRetry{falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		tx, err := b.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, `INSERT INTO images (request_id, payload) VALUES (?, ?)`, ev.RequestID, string(ev.Payload)); err != nil {
			return err
		}
		if _, err := river.JobCompleteTx[*riversqlite.Driver](ctx, tx, job); err != nil {
			return err
		}
		if ff.fails(ev.RequestID) {
			return errBoom // rolled back: neither the row nor the completion
		}
		return tx.Commit()
	})}))
	c := b.client(t, workers, nil)
	runRecipe(t, c, func() (map[string]string, error) {
		rows, err := b.db.QueryContext(ctx, `SELECT request_id, payload FROM images`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		got := map[string]string{}
		for rows.Next() {
			var id, p string
			if err := rows.Scan(&id, &p); err != nil {
				return nil, err
			}
			got[id] = p
		}
		return got, rows.Err()
	})
}

func testTxPostgres(t *testing.T, b *backend[pgx.Tx]) {
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `CREATE TABLE images (request_id text PRIMARY KEY, payload text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	ff := &failFirst{seen: map[string]bool{}}
	workers := river.NewWorkers()
	river.AddWorker(workers, river.Worker[falriver.Args](fastRetry{falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `INSERT INTO images (request_id, payload) VALUES ($1, $2)`, ev.RequestID, string(ev.Payload)); err != nil {
			return err
		}
		if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
			return err
		}
		if ff.fails(ev.RequestID) {
			return errBoom
		}
		return tx.Commit(ctx)
	})}))
	c := b.client(t, workers, nil)
	runRecipe(t, c, func() (map[string]string, error) {
		rows, err := b.pool.Query(ctx, `SELECT request_id, payload FROM images`)
		if err != nil {
			return nil, err
		}
		got := map[string]string{}
		for rows.Next() {
			var id, p string
			if err := rows.Scan(&id, &p); err != nil {
				return nil, err
			}
			got[id] = p
		}
		return got, rows.Err()
	})
}

// runRecipe delivers 6 requests twice each and checks the rows and jobs.
func runRecipe[TTx any](t *testing.T, c *river.Client[TTx], rows func() (map[string]string, error)) {
	t.Helper()
	f := newFixture()
	srv := serve(t, falriver.NewInbox(f.v, c))
	want := ids("tx", 6)
	for range 2 {
		for _, id := range want {
			if code, _ := f.send(t, srv.URL, userID, body(id)); code != http.StatusOK {
				t.Fatalf("%s: %d", id, code)
			}
		}
	}
	waitFor(t, "every job completed", func() bool {
		all := jobs(t, c)
		if len(all) != len(want) {
			return false
		}
		for _, j := range all {
			if j.State != rivertype.JobStateCompleted {
				return false
			}
		}
		return true
	})
	got, err := rows()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d: %v", len(got), len(want), got)
	}
	for _, id := range want {
		ev, _ := falwebhook.ParseEvent(body(id))
		if got[id] != string(ev.Payload) {
			t.Errorf("%s: row %q, want the exact payload %s", id, got[id], ev.Payload)
		}
	}
	for _, j := range jobs(t, c) {
		if j.Attempt != 2 {
			t.Errorf("job %d: %d attempts, want 2 (the first rolled back)", j.ID, j.Attempt)
		}
	}
}
