// Package redisdedupe is a falwebhook.DedupeStore on Redis, so that
// replicas of a webhook receiver sharing one Redis run the handler of each
// fal delivery once between them.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	v := falwebhook.NewVerifier(falwebhook.WithDedupe(redisdedupe.New(rdb)))
//	mux.Handle("POST /fal/webhook", v.Middleware(handler))
//
// # Keys
//
// Each request id has one string key, the prefix (DefaultPrefix,
// "falwebhook:dedupe:", unless WithPrefix) followed by the request id
// verbatim:
//
//	falwebhook:dedupe:<request_id> = "inprogress:<token>"   expires after the lease
//	falwebhook:dedupe:<request_id> = "done"                 expires after the completed TTL
//
// A claim is one SET key "inprogress:<token>" NX PX <lease>, with a fresh
// random 128-bit token; when the key exists a GET tells in-progress from
// done. Complete and Release are Lua scripts that compare the value with
// the caller's token before they SET "done" or DEL, so only the owner of a
// claim ends it. Every operation touches one key, so the store works on
// Redis Cluster too. The store needs Redis 2.6.12 or later (SET with NX and
// PX, EVALSHA).
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

// The values of a key.
const (
	inProgressPrefix = "inprogress:" // followed by the claim's token
	doneValue        = "done"
)

// completeScript records a delivery as done when the caller's claim still
// holds it or no one does. It returns 1 when it did, 2 when the key is
// already done, 0 when another claim holds it.
var completeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
	redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
	return 1
end
if v == 'done' then
	return 2
end
return 0
`)

// releaseScript deletes a claim when the caller's token holds it. It
// returns 1 when the key is gone afterwards, 2 when it is done, 0 when
// another claim holds it.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
	return 1
end
if v == ARGV[1] then
	redis.call('DEL', KEYS[1])
	return 1
end
if v == 'done' then
	return 2
end
return 0
`)

// Store is a falwebhook.DedupeStore on Redis. Create one with New. It is
// safe for concurrent use by multiple goroutines and by multiple processes
// sharing the Redis.
//
// Operations are bounded by the client's timeouts (go-redis defaults: 5 s
// to dial, 3 s to read and write) and retries (MaxRetries,
// DialerRetries); lower them so that a Redis outage turns into a quick 503
// rather than a slow one.
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

// Key returns the Redis key holding requestID's record: the prefix
// followed by requestID.
func (s *Store) Key(requestID string) string { return s.prefix + requestID }

// Claim implements falwebhook.DedupeStore with SET NX PX. A lease under one
// millisecond counts as one millisecond.
func (s *Store) Claim(ctx context.Context, requestID string, lease time.Duration) (falwebhook.ClaimState, string, error) {
	key := s.Key(requestID)
	token := rand.Text()
	for range 2 {
		err := s.client.Do(ctx, "SET", key, inProgressPrefix+token, "NX", "PX", millis(lease)).Err()
		if err == nil {
			return falwebhook.ClaimAcquired, token, nil
		}
		if !errors.Is(err, redis.Nil) {
			return 0, "", fmt.Errorf("redisdedupe: claim %s: %w", key, err)
		}
		v, err := s.client.Get(ctx, key).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue // released or expired in between: claim again
		case err != nil:
			return 0, "", fmt.Errorf("redisdedupe: claim %s: %w", key, err)
		case v == doneValue:
			return falwebhook.ClaimCompleted, "", nil
		case strings.HasPrefix(v, inProgressPrefix):
			return falwebhook.ClaimInProgress, "", nil
		default:
			return 0, "", fmt.Errorf("redisdedupe: claim %s: the key holds %q, not a dedupe record", key, truncate(v))
		}
	}
	// The key came and went twice under us: someone is busy with it.
	return falwebhook.ClaimInProgress, "", nil
}

// Complete implements falwebhook.DedupeStore with a Lua script that
// compares the token. A ttl under one millisecond counts as one
// millisecond.
func (s *Store) Complete(ctx context.Context, requestID, token string, ttl time.Duration) error {
	key := s.Key(requestID)
	n, err := completeScript.Run(ctx, s.client, []string{key}, inProgressPrefix+token, millis(ttl)).Int()
	if err != nil {
		return fmt.Errorf("redisdedupe: complete %s: %w", key, err)
	}
	return scriptResult(n, requestID)
}

// Release implements falwebhook.DedupeStore with a Lua script that
// compares the token.
func (s *Store) Release(ctx context.Context, requestID, token string) error {
	key := s.Key(requestID)
	n, err := releaseScript.Run(ctx, s.client, []string{key}, inProgressPrefix+token).Int()
	if err != nil {
		return fmt.Errorf("redisdedupe: release %s: %w", key, err)
	}
	return scriptResult(n, requestID)
}

// scriptResult maps the result of completeScript or releaseScript to an
// error.
func scriptResult(n int, requestID string) error {
	switch n {
	case 1:
		return nil
	case 2:
		return fmt.Errorf("%w: request %s was completed by another claim", falwebhook.ErrClaimLost, requestID)
	default:
		return fmt.Errorf("%w: request %s is held by another claim", falwebhook.ErrClaimLost, requestID)
	}
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
