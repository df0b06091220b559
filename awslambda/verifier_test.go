package awslambda_test

// Every use of the falwebhook API by these tests is in this file, so that a
// change to that API is adapted here alone.

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/falwebhook/falwebhook"
)

// testNow is the verifier's clock; the tests sign their deliveries at it.
var testNow = time.Unix(1_767_225_600, 0) // 2026-01-01T00:00:00Z

// seen records what the receiver's handler saw of the deliveries it was
// given.
type seen struct {
	calls     int
	requestID string // the verified event's request id
	status    string // the verified event's status
	body      []byte // the request body the handler read
}

// newReceiver returns falwebhook's middleware around a handler that records
// into s what it saw and answers 200 "ok". The verifier trusts exactly pub
// and reads the time from testNow; with keysDown its key source fails as an
// unreachable JWKS does (falwebhook.ErrKeysUnavailable).
func newReceiver(pub ed25519.PublicKey, keysDown bool, s *seen) http.Handler {
	keys := falwebhook.WithKeys(falwebhook.StaticKeys(pub))
	if keysDown {
		keys = falwebhook.WithKeys(unavailableKeys{})
	}
	v := falwebhook.NewVerifier(keys, falwebhook.WithClock(func() time.Time { return testNow }))
	return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls++
		if ev, ok := falwebhook.EventFromContext(r.Context()); ok {
			s.requestID, s.status = ev.RequestID, string(ev.Status)
		}
		s.body, _ = io.ReadAll(r.Body)
		io.WriteString(w, "ok")
	}))
}

// unavailableKeys is a key source whose keys cannot be had.
type unavailableKeys struct{}

func (unavailableKeys) VerifySignature(context.Context, []byte, []byte) error {
	return fmt.Errorf("%w: test key source is down", falwebhook.ErrKeysUnavailable)
}
