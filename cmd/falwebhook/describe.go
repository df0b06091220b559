package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/falwebhook/falwebhook"
)

// reason names the class of a verification error in a few words, for
// tables and log lines; "" for nil.
func reason(err error) string {
	var te *falwebhook.TimestampError
	switch {
	case err == nil:
		return ""
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
	case errors.Is(err, falwebhook.ErrSignatureMismatch):
		return "signature mismatch"
	case errors.Is(err, falwebhook.ErrNoUsableKeys):
		return "no usable keys"
	case errors.Is(err, falwebhook.ErrKeysUnavailable):
		return "keys unavailable"
	case errors.Is(err, falwebhook.ErrMethodNotAllowed):
		return "method not allowed"
	case errors.Is(err, falwebhook.ErrBodyTooLarge):
		return "body too large"
	case errors.Is(err, falwebhook.ErrReadBody):
		return "body unreadable"
	case errors.Is(err, falwebhook.ErrInvalidEvent):
		return "not a fal event"
	default:
		return "error"
	}
}

// failureText joins fal's error message, the payload's detail (or the raw
// payload) and payload_error.
func failureText(re *falwebhook.RequestError) string {
	var parts []string
	if re.Message != "" {
		parts = append(parts, oneLine(re.Message, 200))
	}
	if d := re.Detail.String(); d != "" {
		parts = append(parts, oneLine(d, 200))
	} else if p := bytes.TrimSpace(re.Payload); len(p) > 0 && string(p) != "null" {
		parts = append(parts, "payload "+compactJSON(p, 120))
	}
	if re.PayloadError != "" {
		parts = append(parts, "payload_error: "+oneLine(re.PayloadError, 200))
	}
	if len(parts) == 0 {
		return "no detail"
	}
	return strings.Join(parts, ": ")
}

// compactJSON returns raw compacted and cut to about max bytes.
func compactJSON(raw []byte, max int) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) == nil {
		raw = b.Bytes()
	}
	return oneLine(string(raw), max)
}

// oneLine replaces control characters and runs of white space with one space
// and cuts s to about max bytes.
func oneLine(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
	if len(s) <= max {
		return s
	}
	r := []rune(s[:max])
	return string(r[:len(r)-1]) + "…"
}
