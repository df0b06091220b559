package falwebhook

import (
	"bytes"
	"encoding/binary"
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
	// returned by ParseEvent. In an Event from Verify, VerifyRequest or the
	// middleware it equals the signed X-Fal-Webhook-Request-Id header: a
	// body naming another request is refused with ErrInvalidEvent.
	RequestID string `json:"request_id"`

	// UserID is the signed X-Fal-Webhook-User-Id of the delivery: the fal
	// user it is for. Verify, VerifyRequest and the middleware set it;
	// ParseEvent leaves it empty (it is not in the body).
	UserID string `json:"-"`

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

	// ErrorType is fal's machine-readable category of a failure, such as
	// "request_timeout" or "runner_disconnected": the body's error_type when
	// a delivery carries one, or the X-Fal-Error-Type header of the queue's
	// answer when the event was fetched from fal's queue (package falqueue).
	// It is empty when absent or null. Event.Err falls back to the payload's
	// own error_type, which fal's infrastructure errors carry.
	ErrorType string `json:"error_type,omitempty"`
}

// ParseEvent parses a webhook body. The body must be exactly one JSON object
// with a non-empty string request_id and a non-empty string status.
// gateway_request_id, error, payload_error and error_type are optional and
// may be null;
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
	return parseEvent(body, true, "")
}

// parseEvent parses body; with copyPayload false the event's Payload shares
// body's memory, for callers that own body and never change it. requestID
// is as for Event.parse.
func parseEvent(body []byte, copyPayload bool, requestID string) (*Event, error) {
	e := new(Event)
	if err := e.parse(body, copyPayload, requestID); err != nil {
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
	seenErrorType
)

// parse parses body into e in one pass that also checks the whole body's
// JSON syntax, exactly as json.Valid would. requestID, when not empty, is
// the delivery's X-Fal-Webhook-Request-Id, which the body's request_id must
// equal; spelled the same, that string is reused instead of allocating a
// copy.
func (e *Event) parse(body []byte, copyPayload bool, requestID string) error {
	sc := objectScanner{scanner: scanner{b: body}}
	switch sc.open() {
	case openEmpty:
		return fmt.Errorf("%w: empty body", ErrInvalidEvent)
	case openNotObject:
		trimmed := bytes.Trim(body, jsonSpace)
		if !json.Valid(trimmed) {
			return syntaxError(trimmed)
		}
		return fmt.Errorf("%w: body is a JSON %s, not an object", ErrInvalidEvent, jsonKind(trimmed))
	}
	// The members are decoded as they are scanned, but a body whose syntax
	// breaks later is reported as such, whatever was wrong before.
	var (
		seen int
		bad  error // the first member error
	)
	for {
		m, ok := sc.next()
		if !ok {
			break
		}
		if bad == nil {
			bad = e.member(&m, &seen, requestID)
		}
	}
	if !sc.ok() {
		return syntaxError(bytes.Trim(body, jsonSpace))
	}
	switch {
	case bad != nil:
		return bad
	case seen&seenRequestID == 0:
		return fmt.Errorf("%w: missing request_id", ErrInvalidEvent)
	case e.RequestID == "":
		return fmt.Errorf("%w: request_id is empty", ErrInvalidEvent)
	case requestID != "" && e.RequestID != requestID:
		// Signed, but not what fal sends: the signed header and the body
		// must name the same request, or a handler keyed by one and a
		// dedupe keyed by the other would disagree.
		return fmt.Errorf("%w: request_id %q is not the signed %s %q", ErrInvalidEvent, truncate(e.RequestID), HeaderRequestID, truncate(requestID))
	case seen&seenStatus == 0:
		return fmt.Errorf("%w: missing status", ErrInvalidEvent)
	case e.Status == "":
		return fmt.Errorf("%w: status is empty", ErrInvalidEvent)
	}
	if copyPayload && e.Payload != nil {
		e.Payload = bytes.Clone(e.Payload)
	}
	return nil
}

// member decodes one top-level member into e, if its key is one of the
// event's, and records the key in seen.
func (e *Event) member(m *member, seen *int, requestID string) error {
	var (
		bit int
		err error
	)
	// The keys are compared as raw bytes (switch string(b) does not
	// allocate); only a key with an escape is decoded.
	key := m.key
	if m.escaped {
		k, ok := unescapeKey(m.key)
		if !ok {
			return nil // cannot happen: the scanner checked the string
		}
		key = []byte(k)
	}
	switch string(key) {
	case "request_id":
		bit = seenRequestID
		if s := m.value; requestID != "" && len(s) == len(requestID)+2 && s[0] == '"' &&
			string(s[1:len(s)-1]) == requestID && plainASCII(s[1:len(s)-1]) {
			e.RequestID = requestID
		} else {
			err = decodeString(m.value, &e.RequestID, false)
		}
	case "gateway_request_id":
		bit, err = seenGatewayRequestID, decodeString(m.value, &e.GatewayRequestID, true)
	case "status":
		bit = seenStatus
		switch string(m.value) {
		case `"OK"`:
			e.Status = StatusOK
		case `"ERROR"`:
			e.Status = StatusError
		default:
			var s string
			err = decodeString(m.value, &s, false)
			e.Status = Status(s)
		}
	case "error":
		bit, err = seenError, decodeString(m.value, &e.Error, true)
	case "payload":
		bit, e.Payload = seenPayload, m.value
	case "payload_error":
		bit, err = seenPayloadError, decodeString(m.value, &e.PayloadError, true)
	case "error_type":
		bit, err = seenErrorType, decodeString(m.value, &e.ErrorType, true)
	default:
		return nil
	}
	if *seen&bit != 0 {
		return fmt.Errorf("%w: duplicate key %q", ErrInvalidEvent, key)
	}
	*seen |= bit
	if err != nil {
		return fmt.Errorf("%w: %s %w", ErrInvalidEvent, key, err)
	}
	return nil
}

// unescapeKey decodes the contents of a JSON string that has escapes.
func unescapeKey(raw []byte) (string, bool) {
	var k string
	if err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &k); err != nil {
		return "", false
	}
	return k, true
}

// syntaxError returns the error for a body that is not valid JSON, saying
// where its syntax breaks as encoding/json reports it.
func syntaxError(trimmed []byte) error {
	err := json.Unmarshal(trimmed, new(json.RawMessage))
	if err == nil { // cannot happen: the scanner agrees with encoding/json
		err = errors.New("invalid JSON")
	}
	return fmt.Errorf("%w: body is not a JSON value: %w", ErrInvalidEvent, err)
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

// What objectScanner.open found.
const (
	openObject    = iota // a '{', the scanner is inside it
	openEmpty            // nothing but white space
	openNotObject        // something other than an object, valid JSON or not
)

// objectScanner walks the members of a JSON text that should be one
// object, checking its syntax on the way exactly as json.Valid does: every
// member value is checked in full, nested values included, and nothing
// but white space may follow the object. It decodes nothing.
type objectScanner struct {
	scanner
	started bool // a member was returned, or the object found empty
	done    bool // no more members: the object closed, or the syntax broke
	valid   bool // the object closed and only white space followed
}

// member is one member of an object: its key and value as they appear in
// the text.
type member struct {
	key     []byte // the key without its quotes, escapes not decoded
	escaped bool   // whether key has an escape
	value   []byte // the raw value
}

// open moves past the white space and the '{' that begin the text.
func (s *objectScanner) open() int {
	s.space()
	switch {
	case s.i == len(s.b):
		return openEmpty
	case s.b[s.i] != '{':
		return openNotObject
	}
	s.i++
	return openObject
}

// next returns the next member, or ok == false when there is none: the
// object closed or its syntax broke (see ok).
func (s *objectScanner) next() (m member, ok bool) {
	if s.done {
		return member{}, false
	}
	s.space()
	if !s.started {
		s.started = true
		if s.peek() == '}' {
			return member{}, s.close()
		}
	} else {
		switch s.peek() {
		case ',':
			s.i++
			s.space()
		case '}':
			return member{}, s.close()
		default:
			return member{}, s.fail()
		}
	}
	if s.peek() != '"' {
		return member{}, s.fail()
	}
	start := s.i
	escaped, ok := s.str()
	if !ok {
		return member{}, s.fail()
	}
	m.key, m.escaped = s.b[start+1:s.i-1], escaped
	s.space()
	if s.peek() != ':' {
		return member{}, s.fail()
	}
	s.i++
	s.space()
	start = s.i
	if !s.value(1) {
		return member{}, s.fail()
	}
	m.value = s.b[start:s.i]
	return m, true
}

// close moves past the object's '}' and the white space after it, and
// records whether the text ends there. It returns false, for next.
func (s *objectScanner) close() bool {
	s.i++
	s.space()
	s.valid = s.i == len(s.b)
	s.done = true
	return false
}

// fail records that the syntax broke. It returns false, for next.
func (s *objectScanner) fail() bool {
	s.done = true
	return false
}

// ok reports whether the whole text was one valid JSON object, once next
// has returned false.
func (s *objectScanner) ok() bool { return s.valid }

// validObject reports whether b is exactly one valid JSON object, with
// white space around it allowed: json.Valid(b) with an object at the top.
func validObject(b []byte) bool {
	s := objectScanner{scanner: scanner{b: b}}
	if s.open() != openObject {
		return false
	}
	for {
		if _, ok := s.next(); !ok {
			return s.ok()
		}
	}
}

// maxDepth is the deepest nesting of arrays and objects json.Valid accepts
// (encoding/json's maxNestingDepth); the outermost value is at depth 1.
const maxDepth = 10000

// scanner checks JSON syntax (RFC 8259, as encoding/json reads it: bytes
// of strings are not checked as UTF-8) from b[i] on, moving i past what it
// accepts.
type scanner struct {
	b []byte
	i int
}

// peek returns the byte at i, or 0 at the end (0 is never valid there).
func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// space moves past JSON white space.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// value moves past the value at i, which the caller found after any white
// space, reporting whether it is valid. depth is the depth of the value's
// container.
func (s *scanner) value(depth int) bool {
	switch s.peek() {
	case '{', '[':
		return s.nested(depth)
	default:
		return s.scalar()
	}
}

// scalar moves past the string, number, true, false or null at i,
// reporting whether it is valid.
func (s *scanner) scalar() bool {
	switch s.peek() {
	case '"':
		_, ok := s.str()
		return ok
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

// literal moves past lit, reporting whether it is at i.
func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// number moves past the number at i: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		if i++; i == len(b) || !isDigit(b[i]) {
			return false
		}
		i = digits(b, i+1)
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || !isDigit(b[i]) {
			return false
		}
		i = digits(b, i+1)
	}
	s.i = i
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// digits returns the index of the first byte from i on that is not a digit.
func digits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

// str moves past the string whose opening quote is at i, reporting whether
// it is valid and whether it has escapes. Bytes below 0x20 must be escaped;
// an escape is one of \" \\ \/ \b \f \n \r \t or \u and four hex digits.
//
// The closing quote is found with bytes.IndexByte and the bytes before it
// are checked a word at a time, so that long strings (a large payload is
// mostly strings) cost little more than a memory scan. Every byte is looked
// at a bounded number of times, whatever the escapes.
func (s *scanner) str() (escaped, ok bool) {
	b := s.b
	i := s.i + 1
	for {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return escaped, false
		}
		q += i // the next quote; it ends the string unless escaped
		for {
			bs := bytes.IndexByte(b[i:q], '\\')
			if bs < 0 {
				if !noControl(b[i:q]) {
					return escaped, false
				}
				s.i = q + 1
				return escaped, true
			}
			bs += i
			if !noControl(b[i:bs]) {
				return escaped, false
			}
			escaped = true
			n := escapeLen(b[bs:])
			if n == 0 {
				return escaped, false
			}
			i = bs + n
			if i > q { // the escape was \" at q: look for the next quote
				break
			}
		}
	}
}

// escapeLen returns the length of the escape at the start of b, which
// begins with a backslash, or 0 if it is not a valid escape.
func escapeLen(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	switch b[1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2
	case 'u':
		if len(b) < 6 {
			return 0
		}
		for _, c := range b[2:6] {
			if !isHex(c) {
				return 0
			}
		}
		return 6
	}
	return 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// noControl reports whether b has no byte below 0x20, looking at eight
// bytes at a time: for each byte c of a word w, (c - 0x20) & ^c has its top
// bit set exactly when some byte up to c is below 0x20, borrows included.
func noControl(b []byte) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	var acc, acc2 uint64 // two, so that the ORs of a round do not wait on each other
	for len(b) >= 64 {
		_ = b[63]
		w0 := binary.LittleEndian.Uint64(b)
		w1 := binary.LittleEndian.Uint64(b[8:])
		w2 := binary.LittleEndian.Uint64(b[16:])
		w3 := binary.LittleEndian.Uint64(b[24:])
		w4 := binary.LittleEndian.Uint64(b[32:])
		w5 := binary.LittleEndian.Uint64(b[40:])
		w6 := binary.LittleEndian.Uint64(b[48:])
		w7 := binary.LittleEndian.Uint64(b[56:])
		acc |= (w0-0x20*ones)&^w0 | (w1-0x20*ones)&^w1 | (w2-0x20*ones)&^w2 | (w3-0x20*ones)&^w3
		acc2 |= (w4-0x20*ones)&^w4 | (w5-0x20*ones)&^w5 | (w6-0x20*ones)&^w6 | (w7-0x20*ones)&^w7
		b = b[64:]
	}
	for len(b) >= 8 {
		w := binary.LittleEndian.Uint64(b)
		acc |= (w - 0x20*ones) &^ w
		b = b[8:]
	}
	acc |= acc2
	for _, c := range b {
		if c < 0x20 {
			return false
		}
	}
	return acc&highs == 0
}

// nested moves past the array or object at i, checking it and everything
// in it, reporting whether it is valid. depth is the depth of its
// container; nothing may nest deeper than maxDepth.
func (s *scanner) nested(depth int) bool {
	// kinds holds one bit per open array or object below the first: 1 for
	// an object. A few words on the stack cover all but contrived depths.
	var small [4]uint64
	kinds := small[:]
	open := 0 // containers open in this call
	for {
		// i is at the start of a value.
		if c := s.peek(); c == '{' || c == '[' {
			if depth+open >= maxDepth {
				return false
			}
			s.i++
			s.space()
			if s.peek() == c+2 { // '{'+2 is '}', '['+2 is ']': empty
				s.i++
			} else {
				if open/64 == len(kinds) {
					kinds = append(kinds, 0)
				}
				if c == '{' {
					kinds[open/64] |= 1 << (open % 64)
				} else {
					kinds[open/64] &^= 1 << (open % 64)
				}
				open++
				if c == '{' && !s.key() {
					return false
				}
				continue
			}
		} else if !s.scalar() {
			return false
		}
		// After a complete value: close containers, or go on to the next
		// element.
		for {
			if open == 0 {
				return true
			}
			s.space()
			object := kinds[(open-1)/64]&(1<<((open-1)%64)) != 0
			c := s.peek()
			if c == ',' {
				s.i++
				s.space()
				if object && !s.key() {
					return false
				}
				break
			}
			if object && c != '}' || !object && c != ']' {
				return false
			}
			s.i++
			open--
		}
	}
}

// key moves past an object key, the ':' and the white space around it,
// reporting whether they are valid.
func (s *scanner) key() bool {
	if s.peek() != '"' {
		return false
	}
	if _, ok := s.str(); !ok {
		return false
	}
	s.space()
	if s.peek() != ':' {
		return false
	}
	s.i++
	s.space()
	return true
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
// parsed from the payload's "detail" when there is one. Its ErrorType is the
// event's ErrorType or, when that is empty, the payload's "error_type" string
// (fal's infrastructure errors have the flat shape {"detail": "Request timed
// out", "error_type": "request_timeout"}, and fal documents the
// X-Fal-Error-Type header as carrying the same value).
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
		ErrorType:        e.ErrorType,
		Payload:          e.Payload,
	}
	if e.hasPayload() {
		var p struct {
			Detail *ErrorDetail `json:"detail"`
		}
		if json.Unmarshal(e.Payload, &p) == nil {
			re.Detail = p.Detail
		}
		if re.ErrorType == "" {
			// Separately: a detail of an unknown shape must not hide it.
			var t struct {
				ErrorType string `json:"error_type"`
			}
			if json.Unmarshal(e.Payload, &t) == nil {
				re.ErrorType = t.ErrorType
			}
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
	ErrorType        string          // fal's category of the failure, such as "request_timeout", if known (see Event.Err)
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
// An error type follows the message in brackets, as in "Invalid status code:
// 504 [request_timeout]: Request timed out". The status is named unless it is
// StatusError. The raw payload appears,
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
	if t := oneLine(e.ErrorType, maxErrorPart); t != "" {
		if e.Message == "" {
			b.WriteString(":")
		}
		b.WriteString(" [")
		b.WriteString(t)
		b.WriteString("]")
	}
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

// truncate returns s, cut to its first 64 bytes (with "…" appended) when
// longer, for error texts quoting ids.
func truncate(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
