package falwebhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors returned by ParseEvent, Event.Decode and DecodePayload. Match them
// with errors.Is; the returned errors wrap them with detail.
var (
	// ErrInvalidEvent is returned by ParseEvent when the body is not a
	// webhook event: not a single JSON object, request_id or status missing,
	// empty or not a string, a known field of the wrong type, or a known
	// field given twice.
	ErrInvalidEvent = errors.New("falwebhook: invalid event")

	// ErrNoPayload is returned when decoding the payload of an event whose
	// payload is null or absent.
	ErrNoPayload = errors.New("falwebhook: no payload")

	// ErrInvalidPayload is returned when the payload cannot be decoded into
	// the value given: it is not valid JSON, or its shape does not fit (a
	// string where a number is expected, a seed that overflows the field).
	// The error also wraps the encoding/json error, such as a
	// *json.UnmarshalTypeError, for errors.As.
	ErrInvalidPayload = errors.New("falwebhook: invalid payload")

	// ErrRequestFailed is returned, as a *RequestError, by Event.Err and by
	// the decoding functions for an event that did not succeed.
	ErrRequestFailed = errors.New("falwebhook: request failed")
)

// Status is the outcome fal reports for a request: StatusOK or StatusError.
// Other values are kept verbatim; they are not the queue statuses such as
// COMPLETED.
type Status string

// The statuses fal documents for webhook deliveries.
const (
	StatusOK    Status = "OK"    // the request succeeded; the payload is the model output
	StatusError Status = "ERROR" // the request failed; the payload, if any, describes why
)

// Event is the JSON body of a webhook delivery.
//
// The JSON tags describe the wire format; parse bodies with ParseEvent,
// which is strict where encoding/json is lax (duplicate keys, wrong types).
type Event struct {
	// RequestID is the id of the queue request; never empty in an Event
	// returned by ParseEvent. It equals the X-Fal-Webhook-Request-Id header.
	RequestID string `json:"request_id"`

	// GatewayRequestID is the id of the last attempt when fal retried the
	// model call. It is empty when absent or null.
	GatewayRequestID string `json:"gateway_request_id,omitempty"`

	// Status is the outcome, kept verbatim; never empty in an Event returned
	// by ParseEvent. Values other than StatusOK and StatusError mean failure.
	Status Status `json:"status"`

	// Error is fal's error message, such as "Invalid status code: 422". It
	// is empty when the body's error is null or absent.
	Error string `json:"error,omitempty"`

	// Payload is the model output (or, on failure, the error details),
	// exactly the bytes of the body's payload value. It is nil when the
	// payload is absent and the four bytes null when it is JSON null. Decode
	// it with DecodePayload.
	Payload json.RawMessage `json:"payload,omitempty"`

	// PayloadError is set, with a null payload, when fal could not
	// serialize the model output.
	PayloadError string `json:"payload_error,omitempty"`
}

// ParseEvent parses a webhook body. The body must be exactly one JSON object
// with a non-empty string request_id and a non-empty string status.
// gateway_request_id, error and payload_error are optional and may be null;
// when present they must be strings. payload may be any JSON value and is
// kept byte for byte. Keys match exactly (case-sensitively); unknown keys are
// ignored, but a known key given twice is rejected rather than guessed at.
//
// Every error wraps ErrInvalidEvent and says what is wrong. The returned Event
// does not share memory with body.
//
// ParseEvent does not verify the delivery; call it on a body that Verify has
// accepted.
func ParseEvent(body []byte) (*Event, error) {
	return parseEvent(body, true)
}

// parseEvent parses body; with copyPayload false the event's Payload shares
// body's memory, for callers that own body and never change it.
func parseEvent(body []byte, copyPayload bool) (*Event, error) {
	e := new(Event)
	if err := e.parse(body, copyPayload); err != nil {
		return nil, err
	}
	return e, nil
}

// Bits of Event.parse's seen mask, one per known key.
const (
	seenRequestID = 1 << iota
	seenGatewayRequestID
	seenStatus
	seenError
	seenPayload
	seenPayloadError
)

func (e *Event) parse(body []byte, copyPayload bool) error {
	trimmed := bytes.Trim(body, jsonSpace)
	if len(trimmed) == 0 {
		return fmt.Errorf("%w: empty body", ErrInvalidEvent)
	}
	if !json.Valid(trimmed) {
		// Unmarshal validates first and reports where the syntax breaks.
		err := json.Unmarshal(trimmed, new(json.RawMessage))
		if err == nil { // cannot happen; keep the error non-nil regardless
			err = errors.New("invalid JSON")
		}
		return fmt.Errorf("%w: body is not a JSON value: %w", ErrInvalidEvent, err)
	}
	if trimmed[0] != '{' {
		return fmt.Errorf("%w: body is a JSON %s, not an object", ErrInvalidEvent, jsonKind(trimmed))
	}

	// trimmed is valid JSON, so a plain scan can walk its top-level members.
	var seen int
	sc := objectScanner{b: trimmed, i: 1}
	for {
		key, raw, ok := sc.next()
		if !ok {
			break
		}
		var err error
		var bit int
		switch key {
		case "request_id":
			bit, err = seenRequestID, decodeString(raw, &e.RequestID, false)
		case "gateway_request_id":
			bit, err = seenGatewayRequestID, decodeString(raw, &e.GatewayRequestID, true)
		case "status":
			var s string
			bit, err = seenStatus, decodeString(raw, &s, false)
			e.Status = Status(s)
		case "error":
			bit, err = seenError, decodeString(raw, &e.Error, true)
		case "payload":
			bit, e.Payload = seenPayload, raw
			if copyPayload {
				e.Payload = bytes.Clone(raw)
			}
		case "payload_error":
			bit, err = seenPayloadError, decodeString(raw, &e.PayloadError, true)
		default:
			continue
		}
		if seen&bit != 0 {
			return fmt.Errorf("%w: duplicate key %q", ErrInvalidEvent, key)
		}
		seen |= bit
		if err != nil {
			return fmt.Errorf("%w: %s %w", ErrInvalidEvent, key, err)
		}
	}
	switch {
	case seen&seenRequestID == 0:
		return fmt.Errorf("%w: missing request_id", ErrInvalidEvent)
	case e.RequestID == "":
		return fmt.Errorf("%w: request_id is empty", ErrInvalidEvent)
	case seen&seenStatus == 0:
		return fmt.Errorf("%w: missing status", ErrInvalidEvent)
	case e.Status == "":
		return fmt.Errorf("%w: status is empty", ErrInvalidEvent)
	}
	return nil
}

// decodeString decodes the JSON string raw into dst. A JSON null leaves dst
// empty when nullable; any other kind of value is an error.
func decodeString(raw json.RawMessage, dst *string, nullable bool) error {
	switch raw[0] {
	case '"':
		if plainASCII(raw[1 : len(raw)-1]) {
			*dst = string(raw[1 : len(raw)-1])
			return nil
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return fmt.Errorf("is not a valid string: %w", err)
		}
		return nil
	case 'n':
		if nullable {
			*dst = ""
			return nil
		}
	}
	return fmt.Errorf("must be a string, got %s", jsonKind(raw))
}

// plainASCII reports whether b is printable ASCII without escapes, so that
// its JSON string form is the string itself.
func plainASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' || c == '"' {
			return false
		}
	}
	return true
}

// jsonSpace is the white space JSON allows around values. (bytes.TrimSpace
// would also strip Unicode spaces such as U+00A0, which JSON does not allow.)
const jsonSpace = " \t\r\n"

// jsonKind names the kind of the valid JSON value b from its first byte.
func jsonKind(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// objectScanner walks the members of a JSON object already checked by
// json.Valid, without decoding values. i starts just after the '{'.
type objectScanner struct {
	b []byte
	i int
}

// next returns the next member's key (unescaped) and raw value, or ok ==
// false at the closing '}'.
func (s *objectScanner) next() (key string, raw []byte, ok bool) {
	s.skipSpace()
	if s.i < len(s.b) && s.b[s.i] == ',' {
		s.i++
		s.skipSpace()
	}
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return "", nil, false
	}
	start := s.i
	s.skipString()
	rawKey := s.b[start:s.i]
	if bytes.IndexByte(rawKey, '\\') < 0 {
		key = string(rawKey[1 : len(rawKey)-1])
	} else if err := json.Unmarshal(rawKey, &key); err != nil {
		return "", nil, false
	}
	s.skipSpace()
	s.i++ // ':'
	s.skipSpace()
	start = s.i
	s.skipValue()
	return key, s.b[start:s.i], true
}

func (s *objectScanner) skipSpace() {
	for s.i < len(s.b) && strings.IndexByte(jsonSpace, s.b[s.i]) >= 0 {
		s.i++
	}
}

// skipString moves past the string starting at s.i.
func (s *objectScanner) skipString() {
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return
		}
	}
}

// skipValue moves past the value starting at s.i.
func (s *objectScanner) skipValue() {
	depth := 0
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '"':
			s.skipString()
			if depth == 0 {
				return
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return
			}
			depth--
			if depth == 0 {
				s.i++
				return
			}
		case ',':
			if depth == 0 {
				return
			}
		case ' ', '\t', '\r', '\n':
			if depth == 0 {
				return
			}
		}
		s.i++
	}
}

// hasPayload reports whether the payload is present and not JSON null.
func (e *Event) hasPayload() bool {
	p := bytes.Trim(e.Payload, jsonSpace)
	return len(p) > 0 && string(p) != "null"
}

// decode decodes the payload of a successful event into v, as DecodePayload
// describes.
func (e *Event) decode(v any) error {
	if e == nil {
		return fmt.Errorf("%w: nil event", ErrNoPayload)
	}
	if err := e.Err(); err != nil {
		return err
	}
	if !e.hasPayload() {
		return fmt.Errorf("%w: request %s has a null or absent payload", ErrNoPayload, oneLine(e.RequestID, maxErrorPart))
	}
	if !json.Valid(e.Payload) {
		return fmt.Errorf("%w: request %s: payload is not a single JSON value", ErrInvalidPayload, oneLine(e.RequestID, maxErrorPart))
	}
	dec := json.NewDecoder(bytes.NewReader(e.Payload))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request %s: %w", ErrInvalidPayload, oneLine(e.RequestID, maxErrorPart), err)
	}
	return nil
}

// DecodePayload decodes the payload of a successful event into a new T, as
// json.Unmarshal would but with json.Decoder.UseNumber: numbers stored into
// an interface value (any, map[string]any) become json.Number, so integers
// such as seeds above 2^53 keep every digit. A uint64 field receives seeds up
// to 18446744073709551615 exactly. Unknown fields are ignored.
//
//	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
//
// DecodePayload does not decode failure output. When the event did not
// succeed (see Event.Err) it returns that *RequestError, which matches
// ErrRequestFailed; the raw output stays available in Payload. For a
// successful event with a null or absent payload it returns an error
// wrapping ErrNoPayload. Errors from encoding/json wrap ErrInvalidPayload.
// On error it returns the zero T.
func DecodePayload[T any](e *Event) (T, error) {
	var v T
	if err := e.decode(&v); err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// Err reports how the request failed, or returns nil when it succeeded. A
// request succeeded when its status is StatusOK and it carries neither an
// error message nor a payload_error: an OK event whose output fal could not
// serialize (payload_error set, payload null) is reported as failed, since
// there is no output to use. Unknown statuses count as failure.
//
// A failure is a *RequestError, which matches ErrRequestFailed. Its Detail is
// parsed from the payload's "detail" when there is one.
func (e *Event) Err() error {
	if e == nil {
		return fmt.Errorf("%w: nil event", ErrInvalidEvent)
	}
	if e.Status == StatusOK && e.Error == "" && e.PayloadError == "" {
		return nil
	}
	re := &RequestError{
		RequestID:        e.RequestID,
		GatewayRequestID: e.GatewayRequestID,
		Status:           e.Status,
		Message:          e.Error,
		PayloadError:     e.PayloadError,
		Payload:          e.Payload,
	}
	if e.hasPayload() {
		var p struct {
			Detail *ErrorDetail `json:"detail"`
		}
		if json.Unmarshal(e.Payload, &p) == nil {
			re.Detail = p.Detail
		}
	}
	return re
}

// RequestError describes a request fal reported as failed. Event.Err and the
// decoding functions return it; it unwraps to ErrRequestFailed.
type RequestError struct {
	RequestID        string          // the event's request_id
	GatewayRequestID string          // the event's gateway_request_id, if any
	Status           Status          // the event's status, verbatim
	Message          string          // the event's error, such as "Invalid status code: 422"
	Detail           *ErrorDetail    // the payload's detail, or nil when it has none that parses
	PayloadError     string          // the event's payload_error, if any
	Payload          json.RawMessage // the event's raw payload; not a copy
}

// Maximum lengths, in bytes, of the parts of RequestError's text.
const (
	maxErrorPart    = 300
	maxErrorPayload = 200
)

// Error returns a one-line summary such as
//
//	falwebhook: request 1234 failed: Invalid status code: 422: body.prompt: field required (value_error.missing)
//
// The status is named unless it is StatusError. The raw payload appears,
// compacted, only when it has no detail. Control characters and runs of
// white space become one space and long parts are shortened; the fields hold
// the texts verbatim.
func (e *RequestError) Error() string {
	var b strings.Builder
	b.WriteString("falwebhook: request ")
	b.WriteString(oneLine(e.RequestID, maxErrorPart))
	if e.GatewayRequestID != "" && e.GatewayRequestID != e.RequestID {
		b.WriteString(" (gateway request ")
		b.WriteString(oneLine(e.GatewayRequestID, maxErrorPart))
		b.WriteString(")")
	}
	b.WriteString(" failed")
	if e.Status != StatusError {
		fmt.Fprintf(&b, " with status %q", oneLine(string(e.Status), maxErrorPart))
	}
	part := func(prefix, s string, max int) {
		if s = oneLine(s, max); s != "" {
			b.WriteString(": ")
			b.WriteString(prefix)
			b.WriteString(s)
		}
	}
	part("", e.Message, maxErrorPart)
	if e.Detail != nil {
		part("", e.Detail.String(), maxErrorPart)
	} else if p := bytes.Trim(e.Payload, jsonSpace); len(p) > 0 && string(p) != "null" {
		var c bytes.Buffer
		if json.Compact(&c, p) == nil {
			p = c.Bytes()
		}
		part("payload ", string(p), maxErrorPayload)
	}
	part("payload_error: ", e.PayloadError, maxErrorPart)
	return b.String()
}

// Unwrap returns ErrRequestFailed.
func (e *RequestError) Unwrap() error { return ErrRequestFailed }

// oneLine makes s fit on one line of at most max bytes: invalid UTF-8 becomes
// U+FFFD, control characters and runs of white space become one space, and
// a longer text is cut at a character boundary and ends in "...".
func oneLine(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
	if len(s) <= max {
		return s
	}
	cut := max - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// ErrorDetail is the detail of a failed request's payload, which fal sends in
// one of two shapes: a list of validation errors (a 422 from the model's
// input validation) or a plain message.
type ErrorDetail struct {
	// Items holds the validation errors when detail is a list; it is
	// non-nil, possibly empty, exactly then.
	Items []ValidationError

	// Message holds the text when detail is a string.
	Message string
}

// UnmarshalJSON accepts a list of validation errors or a string. A JSON null
// leaves d unchanged.
func (d *ErrorDetail) UnmarshalJSON(data []byte) error {
	data = bytes.Trim(data, jsonSpace)
	if len(data) == 0 {
		return errors.New("falwebhook: detail is empty")
	}
	switch data[0] {
	case 'n':
		return nil
	case '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*d = ErrorDetail{Message: s}
		return nil
	case '[':
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		items := []ValidationError{}
		if err := dec.Decode(&items); err != nil {
			return err
		}
		for _, it := range items {
			for _, l := range it.Loc {
				switch l.(type) {
				case string, json.Number:
				default:
					return fmt.Errorf("falwebhook: loc item must be a string or a number, got %T", l)
				}
			}
		}
		*d = ErrorDetail{Items: items}
		return nil
	}
	return fmt.Errorf("falwebhook: detail must be a list or a string, got %s", jsonKind(data))
}

// MarshalJSON encodes d as a list when Items is non-nil and as a string
// otherwise.
func (d ErrorDetail) MarshalJSON() ([]byte, error) {
	if d.Items != nil {
		return json.Marshal(d.Items)
	}
	return json.Marshal(d.Message)
}

// String returns Message, or the validation errors as "loc: msg (type)",
// the location joined by dots, joined by "; ".
func (d *ErrorDetail) String() string {
	if d == nil {
		return ""
	}
	if d.Items == nil {
		return d.Message
	}
	var b strings.Builder
	for i, it := range d.Items {
		if i > 0 {
			b.WriteString("; ")
		}
		for j, l := range it.Loc {
			if j > 0 {
				b.WriteByte('.')
			}
			fmt.Fprint(&b, l)
		}
		if len(it.Loc) > 0 {
			b.WriteString(": ")
		}
		b.WriteString(it.Msg)
		if it.Type != "" {
			b.WriteString(" (")
			b.WriteString(it.Type)
			b.WriteString(")")
		}
	}
	return b.String()
}

// ValidationError is one item of a list detail: where the input was wrong,
// what is wrong, and the error's machine-readable type, as reported by
// pydantic. ErrorDetail.String formats it as "loc: msg (type)", such as
//
//	body.images.0.url: field required (value_error.missing)
type ValidationError struct {
	// Loc is the path to the offending input, such as body.prompt: each
	// item a string (a field name) or a json.Number (a list index, exact).
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`  // such as "field required"
	Type string `json:"type"` // such as "value_error.missing"
}

// File is a file fal produced, stored on fal's CDN.
type File struct {
	URL         string `json:"url"`                    // where to download it; may expire
	ContentType string `json:"content_type,omitempty"` // its MIME type, such as "image/jpeg"
	FileName    string `json:"file_name,omitempty"`    // its name, if fal sent one
	FileSize    int64  `json:"file_size,omitempty"`    // its size in bytes, if fal sent it
}

// Image is an image fal produced: a File plus its dimensions. The File
// fields are flat in the JSON, next to width and height.
type Image struct {
	File
	Width  int `json:"width,omitempty"`  // in pixels
	Height int `json:"height,omitempty"` // in pixels
}

// ImageOutput is the output of fal's text-to-image models, such as the FLUX
// family. Decode it with DecodePayload[ImageOutput].
type ImageOutput struct {
	Images          []Image            `json:"images"`
	Seed            uint64             `json:"seed"`                        // exact over the whole uint64 range
	Prompt          string             `json:"prompt,omitempty"`            // the prompt used
	HasNSFWConcepts []bool             `json:"has_nsfw_concepts,omitempty"` // one per image, when the model checks
	Timings         map[string]float64 `json:"timings,omitempty"`           // durations in seconds, such as "inference"
}
