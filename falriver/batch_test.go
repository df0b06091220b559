package falriver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/falriver/falsqlite"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
)

func testInbox(t *testing.T, opts ...Option) (*inbox[*sql.Tx], *river.Client[*sql.Tx], string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "batch.db")
	db, err := falsqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	c, err := river.NewClient(riversqlite.New(db.DB), &river.Config{TestOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := inboxConfig{timeout: 20 * time.Second, now: time.Now, maxPending: DefaultMaxPending, maxPendingBytes: DefaultMaxPendingBytes}
	for _, o := range opts {
		o(&cfg)
	}
	return &inbox[*sql.Tx]{cfg: cfg, client: c, flushers: 1}, c, path
}

func args(id string) Args {
	return Args{RequestID: id, Body: []byte(`{"request_id":"` + id + `","status":"OK","payload":{}}`), Source: SourceWebhook}
}

// holdWriteLock takes SQLite's write lock from another connection until
// the returned function is called.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := other.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
			_ = conn.Close()
			_ = other.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// waitState polls the inbox's queue until cond holds.
func waitState(t *testing.T, in *inbox[*sql.Tx], what string, cond func(queued int, flushing bool) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		in.mu.Lock()
		ok := cond(len(in.queue), in.flushing > 0)
		in.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Deliveries that arrive while a transaction is in flight wait, and go in
// together in the next one; a request id twice in one batch is one row,
// and the second is answered as a duplicate.
func TestGroupCommit(t *testing.T) {
	in, c, path := testInbox(t)
	release := holdWriteLock(t, path)

	type result struct {
		id string
		outcome
	}
	results := make(chan result, 32)
	storeAsync := func(id string) {
		go func() {
			dup, err := in.store(context.Background(), args(id))
			results <- result{id, outcome{dup, err}}
		}()
	}
	storeAsync("first") // its insert waits for the lock
	waitState(t, in, "the first delivery taken by the flusher", func(q int, f bool) bool { return q == 0 && f })
	for i := range 20 {
		storeAsync(fmt.Sprintf("batched-%02d", i))
	}
	storeAsync("batched-00") // the same id again, in the same batch
	waitState(t, in, "21 deliveries queued behind the first", func(q int, _ bool) bool { return q == 21 })
	release()

	dups := map[string]int{}
	for range 22 {
		o := <-results
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.duplicate {
			dups[o.id]++
		}
	}
	if len(dups) != 1 || dups["batched-00"] != 1 {
		t.Fatalf("duplicates %v, want batched-00 once (it came twice)", dups)
	}
	res, err := c.JobList(context.Background(), river.NewJobListParams().First(100))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 21 {
		t.Fatalf("%d jobs, want 21", len(res.Jobs))
	}
	// The 20 batched deliveries went in one transaction: consecutive ids
	// and one creation time. (River sets created_at from the transaction.)
	batched := map[time.Time]int{}
	for _, j := range res.Jobs {
		var a Args
		if err := json.Unmarshal(j.EncodedArgs, &a); err != nil {
			t.Fatal(err)
		}
		if a.RequestID != "first" {
			batched[j.CreatedAt]++
		}
	}
	if len(batched) != 1 {
		t.Fatalf("the 20 deliveries went in %d transactions, want 1: %v", len(batched), batched)
	}
	waitState(t, in, "the flusher done", func(q int, f bool) bool { return q == 0 && !f })
}

// Past WithMaxPending (count or bytes), a delivery is refused at once.
func TestMaxPending(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		bytes int64
	}{{"count", 1, 1 << 20}, {"bytes", 100, 70}} {
		t.Run(tc.name, func(t *testing.T) {
			in, _, path := testInbox(t, WithMaxPending(tc.n, tc.bytes))
			release := holdWriteLock(t, path)
			done := make(chan error, 2)
			go func() { _, err := in.store(context.Background(), args("one")); done <- err }()
			waitState(t, in, "the first delivery taken by the flusher", func(q int, f bool) bool { return q == 0 && f })
			go func() { _, err := in.store(context.Background(), args("two")); done <- err }()
			waitState(t, in, "the second delivery queued", func(q int, _ bool) bool { return q == 1 })
			if _, err := in.store(context.Background(), args("three")); !errors.Is(err, ErrOverloaded) {
				t.Fatalf("third delivery: %v, want ErrOverloaded", err)
			}
			release()
			for range 2 {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			in.mu.Lock()
			defer in.mu.Unlock()
			if in.bytes != 0 {
				t.Fatalf("%d bytes still counted as pending", in.bytes)
			}
		})
	}
}

// A delivery whose caller goes away stops waiting, without an answer of
// success.
func TestStoreCallerGone(t *testing.T) {
	in, _, path := testInbox(t)
	holdWriteLock(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := in.store(ctx, args("gone")); done <- err }()
	waitState(t, in, "the delivery taken by the flusher", func(q int, f bool) bool { return q == 0 && f })
	cancel()
	if err := <-done; !errors.Is(err, ErrStore) || !errors.Is(err, context.Canceled) {
		t.Fatalf("%v, want ErrStore and context.Canceled", err)
	}
}

// An insert that does not commit in time gives up, the waiter with it, and
// the flusher is free again while the database still does not answer.
func TestInsertTimeoutFreesTheFlusher(t *testing.T) {
	in, _, path := testInbox(t, WithInsertTimeout(200*time.Millisecond))
	holdWriteLock(t, path) // SQLite's busy timeout is 10 s
	if _, err := in.store(context.Background(), args("late")); !errors.Is(err, ErrStore) {
		t.Fatalf("%v, want ErrStore", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		in.mu.Lock()
		free := in.flushing == 0
		in.mu.Unlock()
		if free {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the flusher still waits on the database 5 s after the insert timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
