package falriver_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// A genuine delivery is stored before it is acknowledged, exactly as it
// came; a duplicate is acknowledged as one; forgeries, other accounts and
// malformed requests are refused and never stored.
func TestInboxStoresOnlyGenuineDeliveries(t *testing.T) {
	both(t, testInboxStores[*sql.Tx], testInboxStores[pgx.Tx])
}

func testInboxStores[TTx any](t *testing.T, b *backend[TTx]) {
	f := newFixture()
	c := b.client(t, nil, nil)
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	srv := serve(t, falriver.NewInbox(f.v, c, falriver.WithClock(func() time.Time { return at })))

	id := ids("stored", 1)[0]
	if code, dup := f.send(t, srv.URL, userID, body(id)); code != http.StatusOK || dup != "" {
		t.Fatalf("first delivery: %d (duplicate %q), want 200", code, dup)
	}
	all := jobs(t, c)
	if len(all) != 1 {
		t.Fatalf("%d jobs after one delivery, want 1", len(all))
	}
	var args falriver.Args
	if err := json.Unmarshal(all[0].EncodedArgs, &args); err != nil {
		t.Fatal(err)
	}
	want := falriver.Args{RequestID: id, UserID: userID, Body: body(id), ReceivedAt: at, Source: falriver.SourceWebhook}
	if args.RequestID != want.RequestID || args.UserID != want.UserID || string(args.Body) != string(want.Body) ||
		!args.ReceivedAt.Equal(want.ReceivedAt) || args.Source != want.Source {
		t.Fatalf("stored %+v, want %+v", args, want)
	}
	if all[0].MaxAttempts != falriver.DefaultMaxAttempts {
		t.Errorf("MaxAttempts %d, want %d", all[0].MaxAttempts, falriver.DefaultMaxAttempts)
	}

	if code, dup := f.send(t, srv.URL, userID, body(id)); code != http.StatusOK || dup != "completed" {
		t.Fatalf("second delivery: %d (duplicate %q), want 200 marked completed", code, dup)
	}

	// Refused: a forgery, another account, a body of another request.
	forger := faltest.SignerFromName("forger")
	req, _ := forger.NewClientRequest(context.Background(), srv.URL, faltest.Delivery{UserID: userID, Body: body("forged")})
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forgery: %v %v, want 401", res, err)
	}
	if code, _ := f.send(t, srv.URL, "someone-else", body("foreign")); code != http.StatusForbidden {
		t.Fatalf("another account's delivery: %d, want 403", code)
	}
	req, _ = f.signer.NewClientRequest(context.Background(), srv.URL, faltest.Delivery{RequestID: "header-id", UserID: userID, Body: body("body-id")})
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("body of another request: %v %v, want 400", res, err)
	}
	if n := len(jobs(t, c)); n != 1 {
		t.Fatalf("%d jobs, want only the genuine one", n)
	}
}

// Many deliveries of the same requests at once, some twice or more, make
// one job per request, and the worker processes each once with the exact
// payload, while a work function slower than the sender waits does not
// delay acknowledgements.
func TestInboxConcurrentDuplicatesProcessedOnce(t *testing.T) {
	both(t, testConcurrent[*sql.Tx], testConcurrent[pgx.Tx])
}

func testConcurrent[TTx any](t *testing.T, b *backend[TTx]) {
	f := newFixture()
	rec := newRecorder()
	release := make(chan struct{})
	workers := river.NewWorkers()
	river.AddWorker(workers, falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		<-release // slower than any sender waits, until the test says
		rec.add(job, ev)
		return nil
	}))
	c := b.client(t, workers, nil)
	srv := serve(t, falriver.NewInbox(f.v, c))

	want := ids("concurrent", 40)
	var wg sync.WaitGroup
	var ok, dups atomic.Int64
	for round := range 3 {
		for i, id := range want {
			if round > 0 && i%2 == 1 {
				continue // half the requests are delivered three times, the others once
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, dup := f.send(t, srv.URL, userID, body(id))
				if code == http.StatusOK {
					ok.Add(1)
				}
				if dup == "completed" {
					dups.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if ok.Load() != 80 || dups.Load() != 40 {
		t.Fatalf("%d of 80 deliveries acknowledged, %d as duplicates, want 80 and 40", ok.Load(), dups.Load())
	}
	if n := len(jobs(t, c)); n != len(want) {
		t.Fatalf("%d jobs, want %d", n, len(want))
	}
	close(release)
	waitFor(t, "every delivery processed", func() bool { return rec.total() >= len(want) })
	waitFor(t, "every job completed", func() bool {
		for _, j := range jobs(t, c) {
			if j.State != rivertype.JobStateCompleted {
				return false
			}
		}
		return true
	})
	// Deliveries after completion are still duplicates, and run nothing.
	if code, dup := f.send(t, srv.URL, userID, body(want[0])); code != http.StatusOK || dup != "completed" {
		t.Fatalf("delivery after completion: %d %q, want 200 completed", code, dup)
	}
	rec.checkOnce(t, want)
}

// Work that fails is retried and succeeds; its delivery is acknowledged
// once, at once.
func TestInboxWorkThatFailsOnceIsRetried(t *testing.T) {
	both(t, testFailsOnce[*sql.Tx], testFailsOnce[pgx.Tx])
}

func testFailsOnce[TTx any](t *testing.T, b *backend[TTx]) {
	f := newFixture()
	rec := newRecorder()
	var attempts sync.Map
	workers := river.NewWorkers()
	river.AddWorker(workers, river.Worker[falriver.Args](fastRetry{falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
		if n, _ := attempts.LoadOrStore(ev.RequestID, 0); n.(int) == 0 {
			attempts.Store(ev.RequestID, 1)
			return errBoom
		}
		rec.add(job, ev)
		return nil
	})}))
	c := b.client(t, workers, nil)
	srv := serve(t, falriver.NewInbox(f.v, c))
	want := ids("fails-once", 5)
	for _, id := range want {
		if code, _ := f.send(t, srv.URL, userID, body(id)); code != http.StatusOK {
			t.Fatalf("%s: %d, want 200", id, code)
		}
	}
	waitFor(t, "every delivery processed after one failure", func() bool { return rec.total() >= len(want) })
	rec.checkOnce(t, want)
	waitFor(t, "every job completed on its second attempt", func() bool {
		for _, j := range jobs(t, c) {
			if j.State != rivertype.JobStateCompleted || j.Attempt != 2 || len(j.Errors) != 1 {
				return false
			}
		}
		return true
	})
}
