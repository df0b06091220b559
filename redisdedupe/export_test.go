package redisdedupe

import (
	"context"
	"errors"
	"time"

	"github.com/falwebhook/falwebhook"
)

// Claimed is what a claim returned, for tests.
type Claimed struct {
	State falwebhook.ClaimState
	Token string
}

// ClaimWithToken is Claim with the token given, for tests that send an
// attempt again with its token, as a client retrying it does.
func (s *Store) ClaimWithToken(ctx context.Context, requestID, token string, lease time.Duration) (Claimed, error) {
	state, tok, err := s.claim(ctx, requestID, token, lease)
	return Claimed{state, tok}, err
}

// ClaimResult is Claim, its results in one value.
func (s *Store) ClaimResult(ctx context.Context, requestID string, lease time.Duration) (Claimed, error) {
	state, tok, err := s.Claim(ctx, requestID, lease)
	return Claimed{state, tok}, err
}

// IsCompletedByClaim reports whether err is Release's report that the
// claim's own Complete already completed the request.
func IsCompletedByClaim(err error) bool { return errors.Is(err, errCompletedByClaim) }
