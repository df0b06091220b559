package falsqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/falriver/falsqlite"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivertype"
)

type sleepArgs struct{}

func (sleepArgs) Kind() string { return "sleep" }

// A second Open of one file is refused while the first holds it, also
// from another process, and allowed once it is closed.
func TestOpenLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inbox.db")
	db, err := falsqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := falsqlite.Open(context.Background(), path); !errors.Is(err, falsqlite.ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if os.Getenv("FALSQLITE_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenLockedChild$")
		cmd.Env = append(os.Environ(), "FALSQLITE_CHILD="+path)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("another process: %v\n%s", err, out)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = falsqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	_ = db.Close()
}

// TestOpenLockedChild runs in a child process of TestOpenLocks.
func TestOpenLockedChild(t *testing.T) {
	path := os.Getenv("FALSQLITE_CHILD")
	if path == "" {
		t.Skip("run by TestOpenLocks")
	}
	if _, err := falsqlite.Open(context.Background(), path); !errors.Is(err, falsqlite.ErrLocked) {
		t.Fatalf("Open from another process: %v, want ErrLocked", err)
	}
}

// Paths that are not plain files are refused.
func TestOpenRefusesURIs(t *testing.T) {
	t.Chdir(t.TempDir()) // whatever a broken check creates goes there
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=memory", "x.db#frag"} {
		if db, err := falsqlite.Open(context.Background(), p); err == nil {
			_ = db.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
	// Odd but plain names work: spaces, percent signs, unicode.
	p := filepath.Join(t.TempDir(), "in box %41 100% ü.db")
	db, err := falsqlite.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the database is not at the path given: %v", err)
	}
}

// Jobs left running by a dead process are available again when the file
// opens, or discarded when they have no attempt left.
func TestOpenResumesRunningJobs(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inbox.db")
	db, err := falsqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := river.NewClient(riversqlite.New(db.DB), &river.Config{TestOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, max := range []int{5, 1} {
		res, err := c.Insert(ctx, sleepArgs{}, &river.InsertOpts{MaxAttempts: max})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.Job.ID)
	}
	// As a dead process leaves them: running, attempted once.
	if _, err := db.ExecContext(ctx, `UPDATE river_job SET state = 'running', attempt = 1, attempted_at = ?`, time.Now().UTC().Format("2006-01-02 15:04:05.000")); err != nil { // River's SQLite time format
		t.Fatal(err)
	}
	_ = db.Close()

	db, err = falsqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.Resumed != 2 {
		t.Fatalf("Resumed %d, want 2", db.Resumed)
	}
	c, err = river.NewClient(riversqlite.New(db.DB), &river.Config{TestOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStateDiscarded} {
		j, err := c.JobGet(ctx, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if j.State != want || len(j.Errors) != 1 {
			t.Errorf("job %d: %s with %d errors, want %s with 1", j.ID, j.State, len(j.Errors), want)
		}
	}
	// Nothing left running: a second open resumes nothing.
	_ = db.Close()
	db, err = falsqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if db.Resumed != 0 {
		t.Fatalf("Resumed %d on a clean file", db.Resumed)
	}
}

var _ = sql.ErrNoRows
