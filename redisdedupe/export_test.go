package redisdedupe

import (
	"context"
	"errors"
	"time"

	"github.com/falwebhook/falwebhook"
)

// ClaimWithToken is Claim with the token given, for tests that send an
// attempt again with its token, as a client retrying it does.
func (s *Store) ClaimWithToken(ctx context.Context, requestID, token string, lease time.Duration) (falwebhook.ClaimResult, error) {
	return s.claim(ctx, requestID, token, lease)
}

// IsCompletedByClaim reports whether err is Release's report that the
// claim's own Complete already completed the request.
func IsCompletedByClaim(err error) bool { return errors.Is(err, errCompletedByClaim) }
