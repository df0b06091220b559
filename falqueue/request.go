package falqueue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Request is a request fal's queue accepted: what its submit answer said,
// plus the endpoint and the time. It has JSON tags so that it can be stored
// (as a River job's arguments, a database row) and used again, from another
// process, for Status, Result and Cancel.
//
// The URLs are the ones fal returned; they are used as they are, never
// rebuilt, since they drop the endpoint's sub-path (fal-ai/flux/dev is
// polled at …/fal-ai/flux/requests/{id}/status). A stored Request is
// checked again on every use: its URLs must be on the Client's BaseURL
// host (ErrUntrustedURL), so a tampered row cannot send the key elsewhere.
type Request struct {
	// ID is fal's request_id: the X-Fal-Webhook-Request-Id and the
	// request_id of the webhook that reports this request. It is an opaque
	// string.
	ID string `json:"request_id"`

	// Endpoint is the endpoint the request was submitted to, such as
	// fal-ai/flux/dev.
	Endpoint string `json:"endpoint"`

	StatusURL   string `json:"status_url"`   // GET: the request's status
	ResponseURL string `json:"response_url"` // GET: its result
	CancelURL   string `json:"cancel_url"`   // PUT: cancel it

	// WebhookURL is the fal_webhook URL given to Submit, verbatim; empty
	// when none was, in which case fal sends no webhook and only polling
	// finds the result.
	WebhookURL string `json:"webhook_url,omitempty"`

	// SubmittedAt is when fal's submit answer arrived, by the Client's
	// Clock, in UTC.
	SubmittedAt time.Time `json:"submitted_at"`
}

// State is a request's state in fal's queue, kept verbatim. The queue's
// states are not the webhook's outcomes (falwebhook.StatusOK and
// StatusError): a request that failed is also StateCompleted, and its
// failure comes from Result.
type State string

// The states fal documents.
const (
	StateInQueue    State = "IN_QUEUE"    // waiting for a runner; fal answers 202
	StateInProgress State = "IN_PROGRESS" // a runner is working on it; 202
	StateCompleted  State = "COMPLETED"   // finished, successfully or not; 200
)

// Status is what fal's status endpoint says about a request.
type Status struct {
	// State is the request's state, verbatim: one of the State constants,
	// or a state this package does not know, which callers should treat as
	// not finished.
	State State `json:"status"`

	// RequestID is the request's id.
	RequestID string `json:"request_id"`

	// QueuePosition is the number of requests ahead of this one, when
	// State is StateInQueue and fal said; -1 when fal did not say.
	QueuePosition int `json:"queue_position"`

	// Error and ErrorType are set, on a completed request, when it failed
	// (fal's Python client reads them from the same answer): the failure
	// itself, with its payload, comes from Result.
	Error     string `json:"error,omitempty"`
	ErrorType string `json:"error_type,omitempty"`

	// Metrics is fal's metrics object of a completed request, such as
	// {"inference_time": 1.52}, as raw JSON; nil when absent.
	Metrics json.RawMessage `json:"metrics,omitempty"`
}

// Completed reports whether the request has finished (StateCompleted), so
// that Result has its outcome.
func (s *Status) Completed() bool { return s != nil && s.State == StateCompleted }

// parseStatus parses a status answer for the request id. The answer must be
// a JSON object with a non-empty string status; request_id, when present,
// must be id; queue_position, when present and not null, a non-negative
// integer; error and error_type strings or null.
func parseStatus(body []byte, id string) (*Status, error) {
	m, err := members(body)
	if err != nil {
		return nil, err
	}
	st := &Status{RequestID: id, QueuePosition: -1}
	state, err := jsonString("status", m["status"], false)
	if err != nil {
		return nil, err
	}
	if state == "" {
		return nil, fmt.Errorf("%w: status answer has no status", ErrInvalidResponse)
	}
	st.State = State(state)
	if raw, ok := m["request_id"]; ok {
		got, err := jsonString("request_id", raw, true)
		if err != nil {
			return nil, err
		}
		if got != "" && got != id {
			return nil, fmt.Errorf("%w: status answer is for request %q, not %q", ErrInvalidResponse, oneLine(got, maxDetail), oneLine(id, maxDetail))
		}
	}
	if p := bytes.TrimSpace(m["queue_position"]); len(p) > 0 && string(p) != "null" {
		n, err := strconv.Atoi(string(p))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: queue_position %s is not a non-negative integer", ErrInvalidResponse, oneLine(string(p), maxDetail))
		}
		st.QueuePosition = n
	}
	if st.Error, err = jsonString("error", m["error"], true); err != nil {
		return nil, err
	}
	if st.ErrorType, err = jsonString("error_type", m["error_type"], true); err != nil {
		return nil, err
	}
	if mt := bytes.TrimSpace(m["metrics"]); len(mt) > 0 && string(mt) != "null" {
		st.Metrics = bytes.Clone(mt)
	}
	return st, nil
}

// submitAnswer is the part of fal's submit answer that Submit uses.
type submitAnswer struct {
	RequestID   string
	StatusURL   string
	ResponseURL string
	CancelURL   string
}

// parseSubmit parses a submit answer: a JSON object whose request_id,
// status_url, response_url and cancel_url are non-empty strings. The URLs
// are checked by the caller.
func parseSubmit(body []byte) (*submitAnswer, error) {
	m, err := members(body)
	if err != nil {
		return nil, err
	}
	var s submitAnswer
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"request_id", &s.RequestID},
		{"status_url", &s.StatusURL},
		{"response_url", &s.ResponseURL},
		{"cancel_url", &s.CancelURL},
	} {
		v, err := jsonString(f.name, m[f.name], true)
		if err != nil {
			return nil, err
		}
		if v == "" {
			return nil, fmt.Errorf("%w: submit answer has no %s", ErrInvalidResponse, f.name)
		}
		*f.dst = v
	}
	if i := controlIndex(s.RequestID); i >= 0 {
		return nil, fmt.Errorf("%w: request_id %q has a control character", ErrInvalidResponse, oneLine(s.RequestID, maxDetail))
	}
	return &s, nil
}

// members decodes body, which must be one JSON object, into its members,
// keyed exactly (not case-insensitively, as encoding/json matches struct
// fields); of a key given twice the last counts.
func members(body []byte) (map[string]json.RawMessage, error) {
	t := bytes.TrimSpace(body)
	var m map[string]json.RawMessage
	if len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: the answer is not a JSON object: %s", ErrInvalidResponse, excerpt(body))
	}
	if err := json.Unmarshal(t, &m); err != nil {
		return nil, fmt.Errorf("%w: the answer is not a JSON object: %w", ErrInvalidResponse, err)
	}
	return m, nil
}

// jsonString decodes raw, the value of the member name, as a string. An
// absent member, and a null one when nullable, give "".
func jsonString(name string, raw json.RawMessage, nullable bool) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || nullable && string(raw) == "null" {
		return "", nil
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", fmt.Errorf("%w: %s is not a string: %s", ErrInvalidResponse, name, oneLine(string(raw), maxDetail))
	}
	return s, nil
}

// controlIndex returns the index of the first control character in s, or -1.
func controlIndex(s string) int {
	for i, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return i
		}
	}
	return -1
}

// excerpt returns a short one-line form of an answer's body for error
// texts.
func excerpt(body []byte) string {
	if len(bytes.TrimSpace(body)) == 0 {
		return "empty body"
	}
	const max = 200
	if len(body) > 4*max {
		body = body[:4*max]
	}
	return oneLine(string(body), max)
}
