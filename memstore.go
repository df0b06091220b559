package falwebhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

const defaultMemoryStoreEntries = 100_000

// errStoreFull is returned by the in-memory store's Claim when every entry
// is a live claim, so none can be evicted without risking a second run.
var errStoreFull = errors.New("store full of live claims")

// NewMemoryStore returns a DedupeStore in process memory, for a single
// replica, holding at most maxEntries deliveries (default 100,000, enough
// for a sustained rate of about one delivery a second over the 24 hour
// TTL). When full it drops an expired claim or else the oldest completed
// record; it never evicts a live claim, since that would let a retry run
// the handler while it still runs: when every entry is a live claim, Claim
// fails and Dedupe answers 503 (fal retries). Evicting a completed record
// before its TTL means a later retry of that delivery runs the handler
// again. Records expire lazily, on lookup or eviction; a few expired ones
// are dropped on each Claim.
//
// The store is safe for concurrent use by multiple goroutines.
func NewMemoryStore(maxEntries int) DedupeStore {
	if maxEntries <= 0 {
		maxEntries = defaultMemoryStoreEntries
	}
	return &memoryStore{now: time.Now, max: maxEntries, entries: make(map[string]*memEntry)}
}

type memoryStore struct {
	now func() time.Time
	max int

	mu      sync.Mutex // guards the fields below
	entries map[string]*memEntry
	claims  memList // live or expired claims, in claim order
	done    memList // completed records, in completion order
	seq     uint64  // the last token issued
}

// memEntry is a record of a memoryStore, on one of its lists.
type memEntry struct {
	id         string
	token      string // the claim's token, kept when done
	done       bool
	expires    time.Time
	prev, next *memEntry
}

// memList is a doubly linked list of entries, oldest first.
type memList struct{ head, tail *memEntry }

func (l *memList) pushBack(e *memEntry) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *memList) remove(e *memEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (s *memoryStore) Claim(ctx context.Context, key string, lease time.Duration) (ClaimState, string, error) {
	if err := ctx.Err(); err != nil {
		return 0, "", err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[key]; e != nil {
		if now.Before(e.expires) {
			if e.done {
				return ClaimCompleted, "", nil
			}
			return ClaimInProgress, "", nil
		}
		s.drop(e)
	}
	s.sweep(now)
	if len(s.entries) >= s.max && !s.evict(now) {
		return 0, "", fmt.Errorf("%w: %d live claims", errStoreFull, len(s.entries))
	}
	s.seq++
	e := &memEntry{id: key, token: strconv.FormatUint(s.seq, 10), expires: now.Add(lease)}
	s.entries[key] = e
	s.claims.pushBack(e)
	return ClaimAcquired, e.token, nil
}

func (s *memoryStore) Complete(ctx context.Context, key, token string, ttl time.Duration) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[key]
	if e != nil && now.Before(e.expires) && e.token != token {
		if e.done {
			return fmt.Errorf("%w: delivery %s was completed by another claim", ErrClaimLost, key)
		}
		return fmt.Errorf("%w: delivery %s is held by another claim", ErrClaimLost, key)
	}
	switch {
	case e != nil && e.done && now.Before(e.expires):
		return nil // completed by this very claim before
	case e != nil && !e.done:
		s.claims.remove(e) // reused below: no allocation on the hot path
	case e != nil:
		s.done.remove(e)
	case len(s.entries) >= s.max && !s.evict(now):
		return fmt.Errorf("%w: %d live claims", errStoreFull, len(s.entries))
	default:
		e = &memEntry{id: key}
		s.entries[key] = e
	}
	e.token, e.done, e.expires = token, true, now.Add(ttl)
	s.done.pushBack(e)
	return nil
}

func (s *memoryStore) Release(ctx context.Context, key, token string) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[key]
	switch {
	case e == nil:
		return nil
	case !now.Before(e.expires):
		s.drop(e)
		return nil
	case e.done:
		return fmt.Errorf("%w: delivery %s is completed", ErrClaimLost, key)
	case e.token != token:
		return fmt.Errorf("%w: delivery %s is held by another claim", ErrClaimLost, key)
	}
	s.drop(e)
	return nil
}

// drop removes e from the store. s.mu must be held.
func (s *memoryStore) drop(e *memEntry) {
	if e.done {
		s.done.remove(e)
	} else {
		s.claims.remove(e)
	}
	delete(s.entries, e.id)
}

// sweep drops a few expired records from the heads of the lists, so that
// the store shrinks when traffic drops. s.mu must be held.
func (s *memoryStore) sweep(now time.Time) {
	for range 2 {
		if e := s.claims.head; e != nil && !now.Before(e.expires) {
			s.drop(e)
		}
		if e := s.done.head; e != nil && !now.Before(e.expires) {
			s.drop(e)
		}
	}
}

// evict makes room for one record by dropping the oldest claim if it has
// expired, or else the oldest completed record. It reports whether it
// dropped one. s.mu must be held.
func (s *memoryStore) evict(now time.Time) bool {
	if e := s.claims.head; e != nil && !now.Before(e.expires) {
		s.drop(e)
		return true
	}
	if e := s.done.head; e != nil {
		s.drop(e)
		return true
	}
	return false
}
