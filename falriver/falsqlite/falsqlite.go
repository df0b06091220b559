// Package falsqlite opens the SQLite file of a single-process durable inbox:
// River's tables on modernc.org/sqlite (pure Go, no cgo), migrated, with
// the settings River and a durable inbox need, and owned by this process
// alone.
//
//	db, err := falsqlite.Open(ctx, "inbox.db")
//	...
//	client, err := river.NewClient(riversqlite.New(db.DB), &river.Config{...})
//
// SQLite has one writer at a time: every insert, job fetch and completion
// is serialized through one connection. The inbox's group commit makes
// that one transaction per batch of concurrent deliveries; the README
// gives the deliveries per second it reaches. For several processes, use
// Postgres.
//
// Because one process owns the file (Open takes an exclusive lock beside
// it), jobs the file shows as running when it opens were left by a process
// that died: Open makes them available again at once, where River alone
// would wait for RescueStuckJobsAfter.
package falsqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// ErrLocked is returned by Open when another process has the file open.
var ErrLocked = errors.New("falsqlite: the database is in use by another process")

// DB is an open inbox database.
type DB struct {
	// DB is the database, for riversqlite.New and the application's own
	// tables. It has one connection: SQLite has one writer, and River
	// waits on none of its own.
	*sql.DB

	// Resumed is how many jobs Open found running, left by a process
	// that died, and made available again (or discarded, when they had
	// no attempts left).
	Resumed int

	unlock func() error
}

// Open opens (creating it if need be) the SQLite database at path, runs
// River's migrations, takes an exclusive lock on path+".lock" for as long
// as the DB is open, and resumes the jobs a dead predecessor left running.
//
// The connection uses WAL, synchronous=FULL (a committed delivery survives
// power loss), a 10 s busy timeout, foreign keys and immediate
// transactions.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" || strings.ContainsAny(path, "?#") || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("falsqlite: %q: need a plain file path (no URI, query or :memory:)", path)
	}
	unlock, err := lock(path + ".lock")
	if err != nil {
		return nil, err
	}
	db, err := open(ctx, path)
	if err != nil {
		_ = unlock()
		return nil, err
	}
	d := &DB{DB: db, unlock: unlock}
	if d.Resumed, err = resume(ctx, db); err != nil {
		_ = d.Close()
		return nil, err
	}
	return d, nil
}

func open(ctx context.Context, path string) (*sql.DB, error) {
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("falsqlite: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("falsqlite: opening %s: %w", path, err)
	}
	m, err := rivermigrate.New(riversqlite.New(db), nil)
	if err == nil {
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("falsqlite: migrating %s: %w", path, err)
	}
	return db, nil
}

// Close closes the database and releases the lock.
func (d *DB) Close() error {
	err := d.DB.Close()
	if d.unlock != nil {
		err = errors.Join(err, d.unlock())
		d.unlock = nil
	}
	return err
}

// resume makes the jobs left running available again, or discards those
// with no attempt left, recording why in each job's errors, as River's
// rescuer does after RescueStuckJobsAfter.
func resume(ctx context.Context, db *sql.DB) (int, error) {
	exec := riversqlite.New(db).GetExecutor()
	now := time.Now().UTC()
	n := 0
	for after := int64(0); ; {
		jobs, err := exec.JobGetStuck(ctx, &riverdriver.JobGetStuckParams{AfterID: after, Max: 1000, StuckHorizon: now.Add(time.Hour)})
		if err != nil {
			return n, fmt.Errorf("falsqlite: listing running jobs: %w", err)
		}
		if len(jobs) == 0 {
			return n, nil
		}
		p := &riverdriver.JobRescueManyParams{StuckHorizon: now.Add(time.Hour)}
		for _, j := range jobs {
			msg, _ := json.Marshal(rivertype.AttemptError{
				At:      now,
				Attempt: max(j.Attempt, 1),
				Error:   "falsqlite: the process running this job died; resumed on open",
			})
			state, scheduled, finalized := rivertype.JobStateAvailable, now, (*time.Time)(nil)
			if j.Attempt >= j.MaxAttempts {
				state, finalized = rivertype.JobStateDiscarded, &now
			}
			p.ID = append(p.ID, j.ID)
			p.Error = append(p.Error, msg)
			p.FinalizedAt = append(p.FinalizedAt, finalized)
			p.ScheduledAt = append(p.ScheduledAt, scheduled)
			p.State = append(p.State, string(state))
			after = j.ID
		}
		if _, err := exec.JobRescueMany(ctx, p); err != nil {
			return n, fmt.Errorf("falsqlite: resuming running jobs: %w", err)
		}
		n += len(jobs)
	}
}
