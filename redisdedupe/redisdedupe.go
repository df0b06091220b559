// Package redisdedupe is a falwebhook.DedupeStore on Redis, so that
// replicas of a webhook receiver sharing one Redis run the handler of each
// fal delivery once between them.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"}) // and the timeouts below
//	d := &falwebhook.Dedupe{Store: redisdedupe.New(rdb)}
//	mux.Handle("POST /fal/webhook", v.Middleware(d.Middleware(handler)))
//
// # Keys
//
// Each delivery has one string key, the prefix (DefaultPrefix,
// "falwebhook:dedupe:", unless WithPrefix) followed verbatim by the key
// falwebhook.Dedupe names it by: the length of the fal user id in decimal,
// ":", the user id, ":", the request id, as in
// "falwebhook:dedupe:7:user-42:5057fca7-2eb3-468f-b95d-cefe92b0b9d4". Its
// value is one of
//
//	inprogress:<token>   claimed by the claim with that token; expires after the lease
//	done:<token>         completed by the claim with that token; expires after the completed TTL
//
// where the token is 26 random base32 characters (128 bits, from
// crypto/rand.Text), drawn once per Claim. Any other value is not a dedupe
// record: the store changes nothing and returns an error that does not
// wrap falwebhook.ErrClaimLost.
//
// Claim, Complete and Release are each one Lua script (EVALSHA, or EVAL
// when Redis does not have it cached) that reads the key and writes it only
// when its value allows:
//
//   - Claim sets inprogress:<token> expiring after the lease when the key
//     is absent. It also reports the claim acquired when the key already
//     holds inprogress:<token> with its own token: then the client retried
//     the script after losing the reply of an attempt that went through.
//   - Complete sets done:<token> expiring after the TTL when the key holds
//     the claim's inprogress:<token>, or when it is absent (the lease ran
//     out and no one claimed it since). When the key already holds the
//     claim's own done:<token>, a Complete retried after a lost reply, it
//     succeeds and changes nothing.
//   - Release deletes the key when it holds the claim's inprogress:<token>.
//     When the key holds the claim's own done:<token>, the claim was
//     completed (a Complete whose reply was lost went through): Release
//     changes nothing and returns an error saying so, which does not wrap
//     falwebhook.ErrClaimLost.
//
// So only the owner of a claim ends it, and an operation that go-redis
// retries after a lost reply reports what its first attempt did rather than
// finding its own record in the way. Every operation touches one key, so
// the store works on Redis Cluster too. The store needs Redis 2.6.12 or
// later (EVALSHA, SET with PX).
//
// # Timeouts and retries
//
// The store sets no deadline of its own: each operation is one command,
// bounded by the client's options. go-redis v9.22.0 defaults to
//
//	DialTimeout            5 s per dial attempt
//	DialerRetries          5 dial attempts per connection, 100 ms apart
//	ReadTimeout            5 s
//	WriteTimeout           ReadTimeout (5 s)
//	PoolTimeout            ReadTimeout + 1 s (6 s) waiting for a free connection
//	MaxRetries             3: a command is sent up to 4 times
//	Min/MaxRetryBackoff    10 ms and 1 s: retry n waits 10 ms plus up to 10 ms·2^n at random
//	ContextTimeoutEnabled  false
//
// go-redis retries a command after a read or write timeout on a pooled
// connection, a dropped connection, a failed dial or a pool timeout. So
// with the defaults a Redis that accepts connections but does not answer
// (paused, swapping, overloaded) holds an operation for up to 4 × 5 s =
// 20 s, and a host that drops packets for up to 4 attempts × 5 dials × 5 s:
// longer than fal waits for an answer (15 s) before it gives up and
// retries. With
// ContextTimeoutEnabled false, go-redis does not apply the context's
// deadline to socket reads and writes: it sees a done context only
// between attempts, while waiting for a pooled connection and while
// waiting for a dial. With it true, the context's deadline also cuts a
// read or write short (a context cancelled without a deadline still does
// not).
//
// For a webhook receiver, where the claim, the handler and the completion
// must all fit in fal's 15 s:
//
//	rdb := redis.NewClient(&redis.Options{
//		Addr:                  "127.0.0.1:6379",
//		DialTimeout:           time.Second,
//		ReadTimeout:           time.Second, // WriteTimeout follows it
//		PoolTimeout:           time.Second,
//		MaxRetries:            2,
//		DialerRetries:         1,
//		ContextTimeoutEnabled: true,
//	})
//
// An operation then gives up within about 3 × 1 s plus under 0.1 s of
// backoff, so a Redis outage becomes a 503 within about 3 s and fal
// retries the delivery later. Keep MaxRetries at 1 or more: the store's
// scripts are safe to retry, and a retry rides over a pooled connection
// that Redis or a proxy closed while it sat idle; a failed dial is retried
// by MaxRetries too, so DialerRetries need not multiply it. A second is
// generous for Redis on the same network; for a distant Redis raise the
// timeouts rather than lower MaxRetries. ContextTimeoutEnabled lets a
// deadline on the context handed to the store bound its operations.
//
// # Durability
//
// Exactly-once holds as long as Redis keeps its keys. A Redis restarted
// without persistence, or a failover to a replica that had not yet
// received a write (replication is asynchronous), forgets claims and
// completions, and a retry then runs the handler again. Turn on
// persistence (appendonly yes) where that matters.
package redisdedupe

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/redis/go-redis/v9"
)

// DefaultPrefix is the prefix of the keys a Store writes, unless
// WithPrefix.
const DefaultPrefix = "falwebhook:dedupe:"

// The values of a key; see the package doc.
const (
	inProgressPrefix = "inprogress:" // followed by the claim's token
	donePrefix       = "done:"       // followed by the token of the claim that completed it
)

// errCompletedByClaim is wrapped by Release's error when the claim's own
// Complete already recorded the request as completed.
var errCompletedByClaim = errors.New("redisdedupe: nothing to release, completed by this claim")

// The results of the scripts.
const (
	resultOK          = 1 // claimed, completed or released
	resultHeld        = 2 // another claim holds the key
	resultDone        = 3 // completed, by another claim or by a version without tokens
	resultDoneByClaim = 4 // completed by the caller's claim (Release only)
	resultForeign     = 5 // the key holds something else (Complete and Release)
)

// claimScript creates the claim ARGV[1] ("inprogress:<token>") expiring
// after ARGV[2] ms when the key is absent. It returns 1 when it did or
// when the key already holds ARGV[1], and the key's value otherwise.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 1
end
if v == ARGV[1] then
	return 1
end
return v
`)

// completeScript records the request as done ARGV[2] ("done:<token>"),
// expiring after ARGV[3] ms, when the claim ARGV[1] ("inprogress:<token>")
// holds the key or no one does. It returns one of the result constants.
var completeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
	redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
	return 1
end
if v == ARGV[2] then
	return 1
end
if string.sub(v, 1, 5) == 'done:' then
	return 3
end
if string.sub(v, 1, 11) == 'inprogress:' then
	return 2
end
return 5
`)

// releaseScript deletes the key when the claim ARGV[1]
// ("inprogress:<token>") holds it; ARGV[2] is the same claim's done record
// ("done:<token>"). It returns one of the result constants.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
	return 1
end
if v == ARGV[1] then
	redis.call('DEL', KEYS[1])
	return 1
end
if v == ARGV[2] then
	return 4
end
if string.sub(v, 1, 5) == 'done:' then
	return 3
end
if string.sub(v, 1, 11) == 'inprogress:' then
	return 2
end
return 5
`)

// Store is a falwebhook.DedupeStore on Redis. Create one with New. It is
// safe for concurrent use by multiple goroutines and by multiple processes
// sharing the Redis.
//
// Its operations are bounded by the client's timeouts and retries only;
// the package doc gives go-redis's defaults and settings for a webhook
// receiver.
type Store struct {
	client redis.UniversalClient
	prefix string
}

var _ falwebhook.DedupeStore = (*Store)(nil)

// An Option configures New.
type Option func(*Store)

// WithPrefix sets the prefix of every key the store writes (default
// DefaultPrefix). Give each service its own prefix when several share a
// Redis database.
func WithPrefix(prefix string) Option {
	return func(s *Store) { s.prefix = prefix }
}

// New returns a Store keeping its records in client, which may be a
// *redis.Client, *redis.ClusterClient, *redis.Ring or any other
// redis.UniversalClient. New does no I/O.
func New(client redis.UniversalClient, opts ...Option) *Store {
	s := &Store{client: client, prefix: DefaultPrefix}
	for _, opt := range opts {
		if opt != nil {
			opt(s)
		}
	}
	return s
}

// Key returns the Redis key holding the record Dedupe names key: the
// prefix followed by key.
func (s *Store) Key(key string) string { return s.prefix + key }

// Claim implements falwebhook.DedupeStore with a Lua script that sets the
// key when it is absent. Its fresh token is drawn before the first
// attempt, so a retried attempt that finds the claim an earlier attempt
// made reports it acquired. A lease under one millisecond counts as one
// millisecond.
func (s *Store) Claim(ctx context.Context, requestID string, lease time.Duration) (falwebhook.ClaimState, string, error) {
	return s.claim(ctx, requestID, rand.Text(), lease)
}

// claim is Claim with the token given.
func (s *Store) claim(ctx context.Context, requestID, token string, lease time.Duration) (falwebhook.ClaimState, string, error) {
	key := s.Key(requestID)
	r, err := claimScript.Run(ctx, s.client, []string{key}, inProgressPrefix+token, millis(lease)).Result()
	if err != nil {
		return 0, "", fmt.Errorf("redisdedupe: claim %s: %w", key, err)
	}
	switch v := r.(type) {
	case int64:
		if v == resultOK {
			return falwebhook.ClaimAcquired, token, nil
		}
	case string:
		switch {
		case strings.HasPrefix(v, inProgressPrefix):
			return falwebhook.ClaimInProgress, "", nil
		case strings.HasPrefix(v, donePrefix):
			return falwebhook.ClaimCompleted, "", nil
		}
		return 0, "", fmt.Errorf("redisdedupe: claim %s: the key holds %q, not a dedupe record", key, truncate(v))
	}
	return 0, "", fmt.Errorf("redisdedupe: claim %s: unexpected script result %v", key, r)
}

// Complete implements falwebhook.DedupeStore with a Lua script that
// compares the token. It returns nil, changing nothing, when the claim
// with token already completed requestID: a Complete retried after a lost
// reply. A ttl under one millisecond counts as one millisecond.
func (s *Store) Complete(ctx context.Context, requestID, token string, ttl time.Duration) error {
	key := s.Key(requestID)
	n, err := completeScript.Run(ctx, s.client, []string{key}, inProgressPrefix+token, donePrefix+token, millis(ttl)).Int()
	if err != nil {
		return fmt.Errorf("redisdedupe: complete %s: %w", key, err)
	}
	return scriptResult("complete", key, requestID, n)
}

// Release implements falwebhook.DedupeStore with a Lua script that
// compares the token. When the claim with token already completed
// requestID (a Complete whose reply was lost went through), it changes
// nothing and returns an error saying so, which does not wrap
// falwebhook.ErrClaimLost: the delivery stays completed.
func (s *Store) Release(ctx context.Context, requestID, token string) error {
	key := s.Key(requestID)
	n, err := releaseScript.Run(ctx, s.client, []string{key}, inProgressPrefix+token, donePrefix+token).Int()
	if err != nil {
		return fmt.Errorf("redisdedupe: release %s: %w", key, err)
	}
	return scriptResult("release", key, requestID, n)
}

// scriptResult maps the result n of completeScript or releaseScript,
// run by op on key, to an error.
func scriptResult(op, key, requestID string, n int) error {
	switch n {
	case resultOK:
		return nil
	case resultHeld:
		return fmt.Errorf("%w: request %s is held by another claim", falwebhook.ErrClaimLost, requestID)
	case resultDone:
		return fmt.Errorf("%w: request %s was completed by another claim", falwebhook.ErrClaimLost, requestID)
	case resultDoneByClaim:
		return fmt.Errorf("%w: request %s", errCompletedByClaim, requestID)
	case resultForeign:
		return fmt.Errorf("redisdedupe: %s %s: the key holds a value that is not a dedupe record", op, key)
	}
	return fmt.Errorf("redisdedupe: %s %s: unexpected script result %d", op, key, n)
}

// millis returns d in whole milliseconds, at least 1.
func millis(d time.Duration) int64 {
	return max(d.Milliseconds(), 1)
}

// truncate shortens a foreign value for an error message.
func truncate(v string) string {
	const n = 64
	if len(v) <= n {
		return v
	}
	return v[:n] + "..."
}
