package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/falwebhook/falwebhook"
)

// reason names the class of a verification error in a few words, for
// tables and log lines; "" for nil.
func reason(err error) string {
	var te *falwebhook.TimestampError
	var kn *falwebhook.KeyNotFetchedError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &kn):
		return fmt.Sprintf("key not fetched yet, retry in %ds", int64(kn.RetryAfter/time.Second))
	case errors.Is(err, falwebhook.ErrKeyNotFetched):
		return "key not fetched yet"
	case errors.As(err, &te) && te.Skew < 0:
		return fmt.Sprintf("stale timestamp (%+ds)", te.Skew)
	case errors.As(err, &te):
		return fmt.Sprintf("future timestamp (%+ds)", te.Skew)
	case errors.Is(err, falwebhook.ErrMissingHeader):
		return "missing header"
	case errors.Is(err, falwebhook.ErrMalformedHeader):
		return "malformed header"
	case errors.Is(err, falwebhook.ErrTimestampOutOfRange):
		return "timestamp out of window"
	case errors.Is(err, falwebhook.ErrUnexpectedUser):
		return "unexpected user"
	case errors.Is(err, falwebhook.ErrNoUsableKeys):
		return "no usable keys"
	case errors.Is(err, falwebhook.ErrKeysUnavailable):
		return "keys unavailable"
	case errors.Is(err, falwebhook.ErrSignatureMismatch):
		return "signature mismatch"
	case errors.Is(err, falwebhook.ErrMethodNotAllowed):
		return "method not allowed"
	case errors.Is(err, falwebhook.ErrBodyTooLarge):
		return "body too large"
	case errors.Is(err, falwebhook.ErrReadBody):
		return "body unreadable"
	case errors.Is(err, falwebhook.ErrInvalidEvent):
		return "not a fal event"
	case errors.Is(err, falwebhook.ErrDedupeStore):
		return "dedupe store failed"
	case errors.Is(err, falwebhook.ErrOverloaded):
		return "overloaded"
	default:
		return "error"
	}
}

// rejection names a rejected delivery's class and the status a receiver
// answers it: "rejected: unexpected user (403)".
func rejection(err error) string {
	return fmt.Sprintf("rejected: %s (%d)", reason(err), falwebhook.StatusCode(err))
}

// errText is err's message without the "falwebhook: " that the command's
// own prefix makes redundant.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "falwebhook: ")
}

// errDetail is what err says after the last of the library's sentinels in
// it, the detail that reason(err) does not already say: "the only key did
// not verify it", or "fetching JWKS: status 500, want 200" for keys that
// could not be fetched again.
func errDetail(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "falwebhook: "); i >= 0 {
		msg = msg[i+len("falwebhook: "):]
	}
	_, detail, _ := strings.Cut(msg, ": ")
	return detail
}

// userHint explains an ErrUnexpectedUser rejection: pinning is on, and the
// delivery is for another user.
func userHint(userID string, pinned []string) string {
	return fmt.Sprintf("user pinning is on (--user-id %s) and this delivery is for user %q; if that is your fal account, add --user-id %s",
		strings.Join(pinned, " --user-id "), userID, userID)
}

// failureText is fal's account of a failed request, in the words of
// RequestError (message, detail or payload, payload_error), without the
// request id and status, which are shown beside it.
func failureText(re *falwebhook.RequestError) string {
	anon := *re
	anon.RequestID, anon.GatewayRequestID, anon.Status = "", "", falwebhook.StatusError
	text, _ := strings.CutPrefix(anon.Error(), "falwebhook: request  failed")
	if text == "" {
		return "no detail"
	}
	return strings.TrimPrefix(text, ": ")
}

// compactJSON returns raw compacted (quoted when it is not JSON), cut to at
// most max characters.
func compactJSON(raw []byte, max int) string {
	var b bytes.Buffer
	s := fmt.Sprintf("%q", raw)
	if json.Compact(&b, raw) == nil {
		s = b.String()
	}
	if utf8.RuneCountInString(s) > max {
		s = fmt.Sprintf("%.*s…", max-1, s)
	}
	return s
}
