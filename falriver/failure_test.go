package falriver_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/falriver"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/jackc/pgx/v5"
)

// When the database is gone, deliveries get 503 with Retry-After, so that
// fal retries, and the failure is logged.
func TestInboxDatabaseDownAnswers503(t *testing.T) {
	both(t, testDatabaseDown[*sql.Tx], testDatabaseDown[pgx.Tx])
}

func testDatabaseDown[TTx any](t *testing.T, b *backend[TTx]) {
	f := newFixture()
	c := b.client(t, nil, nil)
	var logs syncBuffer
	srv := serve(t, falriver.NewInbox(f.v, c, falriver.WithInsertTimeout(2*time.Second),
		falriver.WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))))
	if b.db != nil {
		_ = b.db.DB.Close()
	} else {
		b.pool.Close()
	}
	id := ids("down", 1)[0]
	req, _ := f.signer.NewClientRequest(context.Background(), srv.URL, faltest.Delivery{UserID: userID, Body: body(id)})
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") != "30" {
		t.Fatalf("database closed: %d, Retry-After %q; want 503 with Retry-After 30", res.StatusCode, res.Header.Get("Retry-After"))
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), id) {
		t.Fatalf("the failure was not logged at Error with the request id: %q", logs.String())
	}
}

// An insert that does not commit within the timeout is answered 503; once
// the database answers again, fal's next delivery is stored.
func TestInboxInsertTimeout(t *testing.T) {
	b := newSQLite(t)
	f := newFixture()
	c := b.client(t, nil, nil)
	srv := serve(t, falriver.NewInbox(f.v, c, falriver.WithInsertTimeout(300*time.Millisecond)))

	// Another connection holds SQLite's write lock, so the insert waits
	// on the busy timeout (10 s), past the inbox's.
	other, err := sql.Open("sqlite", "file:"+b.sqlite+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	id := ids("timeout", 1)[0]
	if code, _ := f.send(t, srv.URL, userID, body(id)); code != http.StatusServiceUnavailable {
		t.Fatalf("insert blocked past the timeout: %d, want 503", code)
	}
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// The blocked insert may still commit: either way the redelivery is 200.
	waitFor(t, "a redelivery stored", func() bool {
		code, _ := f.send(t, srv.URL, userID, body(id))
		return code == http.StatusOK
	})
	if n := len(jobs(t, c)); n != 1 {
		t.Fatalf("%d jobs, want 1", n)
	}
}

// The inbox refuses a misconfiguration loudly, at construction.
func TestNewInboxRefusesBadOptions(t *testing.T) {
	b := newSQLite(t)
	c := b.client(t, nil, nil)
	f := newFixture()
	for name, opts := range map[string][]falriver.Option{
		"zero timeout":     {falriver.WithInsertTimeout(0)},
		"negative pending": {falriver.WithMaxPending(-1, 1)},
		"zero bytes":       {falriver.WithMaxPending(1, 0)},
		"nil clock":        {falriver.WithClock(nil)},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			falriver.NewInbox(f.v, c, opts...)
		})
	}
	t.Run("nil client", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Fatal("no panic")
			}
		}()
		falriver.NewInbox[*sql.Tx](f.v, nil)
	})
}

// Enqueue refuses what is not a delivery, and reports duplicates.
func TestEnqueue(t *testing.T) {
	b := newSQLite(t)
	c := b.client(t, nil, nil)
	ctx := context.Background()
	id := ids("enqueue", 1)[0]
	good := falriver.Args{RequestID: id, UserID: userID, Body: body(id), Source: falriver.SourceWebhook}
	for name, args := range map[string]falriver.Args{
		"no source":       {RequestID: id, Body: body(id)},
		"unknown source":  {RequestID: id, Body: body(id), Source: "email"},
		"no request id":   {Body: body(id), Source: falriver.SourceWebhook},
		"other request":   {RequestID: "other", Body: body(id), Source: falriver.SourceWebhook},
		"not an event":    {RequestID: id, Body: []byte(`{"request_id":"` + id + `"}`), Source: falriver.SourceWebhook},
		"not json at all": {RequestID: id, Body: []byte("hello"), Source: falriver.SourceWebhook},
	} {
		if _, err := falriver.Enqueue(ctx, c, args); !errors.Is(err, falriver.ErrInvalidArgs) {
			t.Errorf("%s: %v, want ErrInvalidArgs", name, err)
		}
	}
	if n := len(jobs(t, c)); n != 0 {
		t.Fatalf("%d jobs stored from invalid args", n)
	}
	res, err := falriver.Enqueue(ctx, c, good)
	if err != nil || res.UniqueSkippedAsDuplicate {
		t.Fatalf("Enqueue: %+v, %v", res, err)
	}
	good.Source = falriver.SourceReconcile // another source, the same request
	res, err = falriver.Enqueue(ctx, c, good)
	if err != nil || !res.UniqueSkippedAsDuplicate {
		t.Fatalf("second Enqueue: %+v, %v; want a duplicate", res, err)
	}
	// A database that is gone is ErrStore.
	_ = b.db.DB.Close()
	id2 := ids("enqueue", 1)[0]
	if _, err := falriver.Enqueue(ctx, c, falriver.Args{RequestID: id2, Body: body(id2), Source: falriver.SourceWebhook}); !errors.Is(err, falriver.ErrStore) {
		t.Fatalf("closed database: %v, want ErrStore", err)
	}
}

// ArgsFromRequest refuses a request that the middleware did not accept.
func TestArgsFromRequestNeedsTheMiddleware(t *testing.T) {
	s := faltest.SignerFromName("falriver test")
	r := s.NewRequest("/", faltest.Delivery{UserID: userID, Body: body("x")})
	if _, err := falriver.ArgsFromRequest(r); !errors.Is(err, falriver.ErrNotVerified) {
		t.Fatalf("%v, want ErrNotVerified", err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
