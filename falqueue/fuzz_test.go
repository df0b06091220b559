package falqueue

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode"
)

// oracleObject decodes body with encoding/json into a generic map, or
// reports that it is not exactly one JSON object.
func oracleObject(body []byte) (map[string]any, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil, false
	}
	if _, err := dec.Token(); err == nil || !json.Valid(body) {
		return nil, false // something follows the value
	}
	m, ok := v.(map[string]any)
	return m, ok
}

// oracleString returns m[k] when it is a string, "" when absent or null, and
// ok false otherwise.
func oracleString(m map[string]any, k string) (string, bool) {
	switch v := m[k].(type) {
	case nil:
		return "", true
	case string:
		return v, true
	}
	return "", false
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

func FuzzParseSubmit(f *testing.F) {
	for _, seed := range []string{
		submitAnswerFor("https://queue.fal.run", "80e732af-660e-45cd-bd63-580e4f2a94cc"),
		`{"request_id":"r","status_url":"a","response_url":"b","cancel_url":"c"}`,
		`{"request_id":"r","status_url":"a","response_url":"b","cancel_url":null}`,
		`{"request_id":"r","status_url":"a","response_url":"b","cancel_url":7}`,
		`{"Request_Id":"r","status_url":"a","response_url":"b","cancel_url":"c"}`,
		`{"request_id":"r\u0085","status_url":"a","response_url":"b","cancel_url":"c"}`,
		`{"request_id":"r","request_id":"","status_url":"a","response_url":"b","cancel_url":"c"}`,
		`{"request_id":"r","status_url":"a","response_url":"b","cancel_url":"c"} {}`,
		`[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseSubmit(body)
		m, isObject := oracleObject(body)
		want := isObject
		var fields [4]string
		for i, k := range []string{"request_id", "status_url", "response_url", "cancel_url"} {
			v, ok := oracleString(m, k)
			want = want && ok && v != ""
			fields[i] = v
		}
		want = want && !hasControl(fields[0])
		if err != nil {
			if !errors.Is(err, ErrInvalidResponse) {
				t.Fatalf("error %v does not wrap ErrInvalidResponse", err)
			}
			if want {
				t.Fatalf("refused an answer encoding/json reads as valid: %q: %v", body, err)
			}
			return
		}
		if !want {
			t.Fatalf("accepted an invalid answer %q: %+v", body, got)
		}
		if [4]string{got.RequestID, got.StatusURL, got.ResponseURL, got.CancelURL} != fields {
			t.Fatalf("answer %q parsed as %+v, encoding/json reads %q", body, got, fields)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	for _, seed := range []string{
		`{"status": "IN_QUEUE", "request_id": "r", "queue_position": 3}`,
		`{"status": "IN_PROGRESS", "request_id": "r", "logs": null}`,
		`{"status": "COMPLETED", "request_id": "r", "metrics": {"inference_time": 1.5}, "error": null, "error_type": "request_timeout"}`,
		`{"status": "COMPLETED", "request_id": "other"}`,
		`{"status": "IN_QUEUE", "queue_position": 1e2}`,
		`{"status": "IN_QUEUE", "queue_position": -0}`,
		`{"status": "IN_QUEUE", "queue_position": 99999999999999999999}`,
		`{"Status": "COMPLETED"}`,
		`{"status": ""}`, `{"status": null}`, `{}`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseStatus(body, "r")
		m, want := oracleObject(body)
		state, ok := m["status"].(string)
		want = want && ok && state != ""
		id, ok := oracleString(m, "request_id")
		want = want && ok && (id == "" || id == "r")
		position := -1
		switch p := m["queue_position"].(type) {
		case nil:
		case json.Number:
			n, err := p.Int64()
			want = want && err == nil && n >= 0 && n <= int64(^uint(0)>>1)
			position = int(n)
		default:
			want = false
		}
		errMsg, ok1 := oracleString(m, "error")
		errType, ok2 := oracleString(m, "error_type")
		want = want && ok1 && ok2
		if err != nil {
			if !errors.Is(err, ErrInvalidResponse) {
				t.Fatalf("error %v does not wrap ErrInvalidResponse", err)
			}
			if want {
				t.Fatalf("refused a status encoding/json reads as valid: %q: %v", body, err)
			}
			return
		}
		if !want {
			t.Fatalf("accepted an invalid status %q: %+v", body, got)
		}
		if string(got.State) != state || got.RequestID != "r" || got.QueuePosition != position || got.Error != errMsg || got.ErrorType != errType {
			t.Fatalf("status %q parsed as %+v", body, got)
		}
		if got.Metrics != nil && !json.Valid(got.Metrics) {
			t.Fatalf("metrics %q are not JSON", got.Metrics)
		}
	})
}
