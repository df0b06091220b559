package falriver_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/falriver/falsqlite"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
)

// An inbox on one SQLite file: the delivery is acknowledged once stored,
// and the worker processes it afterwards, with the exact payload.
func ExampleNewInbox() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "inbox")
	defer os.RemoveAll(dir)
	db, err := falsqlite.Open(ctx, filepath.Join(dir, "inbox.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	done := make(chan struct{})
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		fmt.Printf("processing %s (%s): %s\n", ev.RequestID, job.Args.Source, ev.Payload)
		close(done)
		return nil
	}))
	client, err := river.NewClient(riversqlite.New(db.DB), &river.Config{
		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers:              workers,
		RescueStuckJobsAfter: falriver.DefaultTimeout + time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}

	signer := faltest.SignerFromName("example") // fal's key, in tests
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())),
		falwebhook.WithUserIDs(faltest.DefaultUserID),
	)
	inbox := falriver.NewInbox(v, client)

	body := []byte(`{"request_id":"req-1","status":"OK","payload":{"seed":9007199254740993}}`)
	for range 2 { // fal delivers twice
		rec := httptest.NewRecorder()
		inbox.ServeHTTP(rec, signer.NewRequest("/fal/webhook", faltest.Delivery{Body: body}))
		if dup := rec.Header().Get(falwebhook.HeaderDuplicate); dup != "" {
			fmt.Println(rec.Code, "duplicate:", dup)
		} else {
			fmt.Println(rec.Code, "stored")
		}
	}

	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	<-done
	_ = client.Stop(ctx)
	// Output:
	// 200 stored
	// 200 duplicate: completed
	// processing req-1 (webhook): {"seed":9007199254740993}
}

// The transactional recipe: the work's own rows and the job's completion
// commit together, so a crash between them leaves neither, and the job
// runs again; once committed, it never runs again.
func ExampleNewWorker_transactional() {
	var db *sql.DB // the database the River client uses (falsqlite.DB.DB, or a pgx pool with riverpgxv5)
	worker := falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, `INSERT INTO results (request_id, payload) VALUES (?, ?)`, ev.RequestID, string(ev.Payload)); err != nil {
			return err
		}
		if _, err := river.JobCompleteTx[*riversqlite.Driver](ctx, tx, job); err != nil {
			return err
		}
		return tx.Commit()
	})
	workers := river.NewWorkers()
	river.AddWorker(workers, worker)
}
