package falwebhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// realDelivery is a delivery body seen in public code (FAL-WEBHOOKS.md §5):
// keys sorted, Python separators, a seed above int64's maximum.
const realDelivery = `{"error": null, "gateway_request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "payload": {"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}, "request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK"}`

// realPayload is realDelivery's payload value, byte for byte.
const realPayload = `{"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}`

// error422 is an ERROR delivery for a request that failed input validation,
// with the 422 payload from fal's docs.
const error422 = `{"request_id": "1234", "gateway_request_id": "1234", "status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}}`

// error422Index is like error422 with integer items in loc.
const error422Index = `{"request_id": "1234", "status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": [{"loc": ["body", "images", 0, "url"], "msg": "field required", "type": "value_error.missing"}, {"loc": ["body", "num_images"], "msg": "ensure this value is less than or equal to 4", "type": "value_error.number.not_le"}]}}`

// errorStringDetail is an ERROR delivery whose detail is a plain string.
const errorStringDetail = `{"request_id": "1234", "status": "ERROR", "error": "Invalid status code: 500", "payload": {"detail": "Internal server error"}}`

// maxSeed is a delivery whose seed is the largest uint64.
const maxSeed = `{"request_id": "r1", "status": "OK", "error": null, "payload": {"images": [], "seed": 18446744073709551615}}`

// payloadErrorOK is an OK delivery whose output fal could not serialize.
const payloadErrorOK = `{"request_id": "r1", "status": "OK", "error": null, "payload": null, "payload_error": "Object of type bytes is not JSON serializable"}`

func TestParseEventRealDelivery(t *testing.T) {
	ev, err := ParseEvent([]byte(realDelivery))
	if err != nil {
		t.Fatalf("real delivery rejected: %v", err)
	}
	const id = "5057fca7-2eb3-468f-b95d-cefe92b0b9d4"
	if ev.RequestID != id || ev.GatewayRequestID != id {
		t.Errorf("ids = %q, %q; want both %q", ev.RequestID, ev.GatewayRequestID, id)
	}
	if ev.Status != StatusOK || ev.Error != "" || ev.PayloadError != "" {
		t.Errorf("status, error, payload_error = %q, %q, %q; want OK and empty", ev.Status, ev.Error, ev.PayloadError)
	}
	if string(ev.Payload) != realPayload {
		t.Errorf("payload bytes changed:\n got %s\nwant %s", ev.Payload, realPayload)
	}
	if err := ev.Err(); err != nil {
		t.Errorf("successful delivery reported as failed: %v", err)
	}

	out, err := DecodePayload[ImageOutput](ev)
	if err != nil {
		t.Fatalf("decoding ImageOutput: %v", err)
	}
	want := ImageOutput{
		Images: []Image{{
			File:   File{URL: "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", ContentType: "image/jpeg"},
			Width:  1024,
			Height: 1024,
		}},
		Seed:            17454220438242315174,
		Prompt:          "dog",
		HasNSFWConcepts: []bool{false},
		Timings:         map[string]float64{"inference": 2.107286686077714},
	}
	if out.Seed != 17454220438242315174 {
		t.Errorf("seed = %d, want 17454220438242315174 exactly", out.Seed)
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("ImageOutput =\n%+v\nwant\n%+v", out, want)
	}

	m, err := DecodePayload[map[string]any](ev)
	if err != nil {
		t.Fatalf("decoding into map[string]any: %v", err)
	}
	if seed, ok := m["seed"].(json.Number); !ok || seed != "17454220438242315174" {
		t.Errorf("seed in map[string]any = %#v, want json.Number(\"17454220438242315174\")", m["seed"])
	}
	var a any
	if err := ev.decode(&a); err != nil {
		t.Fatalf("decoding into any: %v", err)
	}
	if seed := a.(map[string]any)["seed"]; seed != json.Number("17454220438242315174") {
		t.Errorf("seed in any = %#v, want json.Number(\"17454220438242315174\")", seed)
	}
}

func TestParseEvent(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr error // nil: must parse
		check   func(t *testing.T, ev *Event)
	}{
		{
			name: "error null and no gateway_request_id",
			body: `{"request_id":"r1","status":"OK","error":null,"payload":{}}`,
			check: func(t *testing.T, ev *Event) {
				if ev.RequestID != "r1" || ev.GatewayRequestID != "" || ev.Error != "" || string(ev.Payload) != "{}" {
					t.Errorf("got %+v", ev)
				}
			},
		},
		{
			name: "ERROR with message",
			body: error422,
			check: func(t *testing.T, ev *Event) {
				if ev.Status != StatusError || ev.Error != "Invalid status code: 422" {
					t.Errorf("status, error = %q, %q; want ERROR, Invalid status code: 422", ev.Status, ev.Error)
				}
			},
		},
		{
			name: "unknown status kept verbatim",
			body: `{"request_id":"r1","status":"CANCELLED"}`,
			check: func(t *testing.T, ev *Event) {
				if ev.Status != "CANCELLED" {
					t.Errorf("status = %q, want CANCELLED verbatim", ev.Status)
				}
				if ev.Err() == nil {
					t.Error("CANCELLED reported as success")
				}
			},
		},
		{
			name: "lower-case status kept verbatim",
			body: `{"request_id":"r1","status":"ok"}`,
			check: func(t *testing.T, ev *Event) {
				if ev.Status != "ok" {
					t.Errorf("status = %q, want ok verbatim", ev.Status)
				}
			},
		},
		{
			name: "extra fields ignored",
			body: `{"request_id":"r1","status":"OK","logs":[{"message":"x"}],"metrics":{"inference_time":1.5},"Request_ID":42,"payload":1}`,
			check: func(t *testing.T, ev *Event) {
				if ev.RequestID != "r1" || string(ev.Payload) != "1" {
					t.Errorf("got %+v", ev)
				}
			},
		},
		{
			name: "payload null kept as null",
			body: `{"request_id":"r1","status":"OK","payload":null}`,
			check: func(t *testing.T, ev *Event) {
				if string(ev.Payload) != "null" {
					t.Errorf("payload = %q, want null", ev.Payload)
				}
			},
		},
		{
			name: "payload absent is nil",
			body: `{"request_id":"r1","status":"ERROR","error":"boom"}`,
			check: func(t *testing.T, ev *Event) {
				if ev.Payload != nil {
					t.Errorf("payload = %q, want nil", ev.Payload)
				}
			},
		},
		{
			name: "payload_error with payload null",
			body: payloadErrorOK,
			check: func(t *testing.T, ev *Event) {
				if ev.PayloadError != "Object of type bytes is not JSON serializable" || string(ev.Payload) != "null" {
					t.Errorf("payload_error, payload = %q, %q", ev.PayloadError, ev.Payload)
				}
			},
		},
		{
			name: "nulls for optional strings",
			body: `{"request_id":"r1","status":"OK","gateway_request_id":null,"payload_error":null}`,
		},
		{
			name: "payload bytes kept exactly",
			body: "{\"request_id\":\"r1\",\"status\":\"OK\",\"payload\": {\"a\" : [1.0, 2e3, \"\\u00e9\"]}\n}",
			check: func(t *testing.T, ev *Event) {
				if want := `{"a" : [1.0, 2e3, "\u00e9"]}`; string(ev.Payload) != want {
					t.Errorf("payload = %s, want %s", ev.Payload, want)
				}
			},
		},
		{
			name: "surrounding white space",
			body: "\n\t " + error422 + "\r\n",
		},
		{
			name: "escaped strings",
			body: `{"request_id":"r\u0031","status":"\u004fK"}`,
			check: func(t *testing.T, ev *Event) {
				if ev.RequestID != "r1" || ev.Status != StatusOK {
					t.Errorf("request_id, status = %q, %q; want r1, OK", ev.RequestID, ev.Status)
				}
			},
		},
		{
			name: "escaped keys",
			body: `{"request\u005fid":"r1","st\u0061tus":"OK","p\u0061yload":[1]}`,
			check: func(t *testing.T, ev *Event) {
				if ev.RequestID != "r1" || ev.Status != StatusOK || string(ev.Payload) != "[1]" {
					t.Errorf("request_id, status, payload = %q, %q, %s; want r1, OK, [1]", ev.RequestID, ev.Status, ev.Payload)
				}
			},
		},

		{name: "empty body", body: "", wantErr: ErrInvalidEvent},
		{name: "request_id given twice, once escaped", body: `{"request_id":"r1","status":"OK","request\u005fid":"r2"}`, wantErr: ErrInvalidEvent},
		{name: "only white space", body: " \n\t", wantErr: ErrInvalidEvent},
		{name: "non-breaking space around the object", body: "\u00a0" + error422, wantErr: ErrInvalidEvent},
		{name: "byte order mark", body: "\ufeff" + error422, wantErr: ErrInvalidEvent},
		{name: "not JSON", body: "request_id=r1&status=OK", wantErr: ErrInvalidEvent},
		{name: "truncated object", body: `{"request_id":"r1","status":"OK"`, wantErr: ErrInvalidEvent},
		{name: "trailing comma", body: `{"request_id":"r1","status":"OK",}`, wantErr: ErrInvalidEvent},
		{name: "trailing garbage", body: `{"request_id":"r1","status":"OK"} x`, wantErr: ErrInvalidEvent},
		{name: "two objects", body: `{"request_id":"r1","status":"OK"}{"request_id":"r2","status":"OK"}`, wantErr: ErrInvalidEvent},
		{name: "array", body: `[{"request_id":"r1","status":"OK"}]`, wantErr: ErrInvalidEvent},
		{name: "string", body: `"OK"`, wantErr: ErrInvalidEvent},
		{name: "number", body: `42`, wantErr: ErrInvalidEvent},
		{name: "null", body: `null`, wantErr: ErrInvalidEvent},
		{name: "empty object", body: `{}`, wantErr: ErrInvalidEvent},
		{name: "missing request_id", body: `{"status":"OK","payload":{}}`, wantErr: ErrInvalidEvent},
		{name: "missing status", body: `{"request_id":"r1","payload":{}}`, wantErr: ErrInvalidEvent},
		{name: "empty request_id", body: `{"request_id":"","status":"OK"}`, wantErr: ErrInvalidEvent},
		{name: "empty status", body: `{"request_id":"r1","status":""}`, wantErr: ErrInvalidEvent},
		{name: "request_id null", body: `{"request_id":null,"status":"OK"}`, wantErr: ErrInvalidEvent},
		{name: "status null", body: `{"request_id":"r1","status":null}`, wantErr: ErrInvalidEvent},
		{name: "request_id a number", body: `{"request_id":1234,"status":"OK"}`, wantErr: ErrInvalidEvent},
		{name: "status a number", body: `{"request_id":"r1","status":200}`, wantErr: ErrInvalidEvent},
		{name: "status an object", body: `{"request_id":"r1","status":{"code":"OK"}}`, wantErr: ErrInvalidEvent},
		{name: "error a number", body: `{"request_id":"r1","status":"ERROR","error":422}`, wantErr: ErrInvalidEvent},
		{name: "error an object", body: `{"request_id":"r1","status":"ERROR","error":{"msg":"x"}}`, wantErr: ErrInvalidEvent},
		{name: "gateway_request_id a number", body: `{"request_id":"r1","status":"OK","gateway_request_id":7}`, wantErr: ErrInvalidEvent},
		{name: "payload_error a boolean", body: `{"request_id":"r1","status":"OK","payload_error":true}`, wantErr: ErrInvalidEvent},
		{name: "request_id given twice", body: `{"request_id":"r1","status":"OK","request_id":"r2"}`, wantErr: ErrInvalidEvent},
		{name: "status given twice", body: `{"request_id":"r1","status":"ERROR","status":"OK"}`, wantErr: ErrInvalidEvent},
		{name: "payload given twice", body: `{"request_id":"r1","status":"OK","payload":{},"payload":null}`, wantErr: ErrInvalidEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvent([]byte(tt.body))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("body %s: error = %v, want %v", tt.body, err, tt.wantErr)
				}
				if ev != nil {
					t.Errorf("invalid body returned an event: %+v", ev)
				}
				return
			}
			if err != nil {
				t.Fatalf("valid body rejected: %v", err)
			}
			if tt.check != nil {
				tt.check(t, ev)
			}
		})
	}
}

func TestParseEventErrorText(t *testing.T) {
	tests := []struct {
		body string
		want string
	}{
		{``, "falwebhook: invalid event: empty body"},
		{`[]`, "falwebhook: invalid event: body is a JSON array, not an object"},
		{`{"status":"OK"}`, "falwebhook: invalid event: missing request_id"},
		{`{"request_id":"r1"}`, "falwebhook: invalid event: missing status"},
		{`{"request_id":1234,"status":"OK"}`, "falwebhook: invalid event: request_id must be a string, got number"},
		{`{"request_id":"r1","status":"ERROR","error":422}`, "falwebhook: invalid event: error must be a string, got number"},
		{`{"request_id":"r1","status":"OK","request_id":"r2"}`, `falwebhook: invalid event: duplicate key "request_id"`},
		{`{"request_id":"r1","status":"OK"} x`, "falwebhook: invalid event: body is not a JSON value: invalid character 'x' after top-level value"},
		// A broken syntax is reported before what was wrong with a member.
		{`{"request_id":1234,"status":"OK"} x`, "falwebhook: invalid event: body is not a JSON value: invalid character 'x' after top-level value"},
		{`{"request_id":"r1","request_id":"r2","payload":[1,]}`, "falwebhook: invalid event: body is not a JSON value: invalid character ']' looking for beginning of value"},
		{`{"request_id":"r1","status":"OK","payload":` + "\"\x01\"}", `falwebhook: invalid event: body is not a JSON value: invalid character '\x01' in string literal`},
	}
	for _, tt := range tests {
		_, err := ParseEvent([]byte(tt.body))
		if err == nil || err.Error() != tt.want {
			t.Errorf("ParseEvent(%s) error text = %v\nwant %s", tt.body, err, tt.want)
		}
	}
}

func TestParseEventDoesNotAliasBody(t *testing.T) {
	body := []byte(realDelivery)
	ev, err := ParseEvent(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = ' '
	}
	if string(ev.Payload) != realPayload {
		t.Error("overwriting the body changed the event's payload")
	}
}

func TestEventMarshalRoundTrip(t *testing.T) {
	// A marshaled Event parses back to itself. (json.Marshal compacts the
	// raw payload, so start from a compact body.)
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(error422)); err != nil {
		t.Fatal(err)
	}
	orig := mustParse(t, compact.String())
	data, err := json.Marshal(orig)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseEvent(data)
	if err != nil {
		t.Fatalf("marshaled event %s rejected: %v", data, err)
	}
	if !reflect.DeepEqual(orig, back) {
		t.Errorf("marshal round trip changed the event:\n got %+v\nwant %+v", back, orig)
	}
}

func TestDecodePayloadMaxSeed(t *testing.T) {
	ev, err := ParseEvent([]byte(maxSeed))
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodePayload[ImageOutput](ev)
	if err != nil {
		t.Fatalf("decoding ImageOutput: %v", err)
	}
	if out.Seed != 18446744073709551615 {
		t.Errorf("seed = %d, want 18446744073709551615 exactly", out.Seed)
	}

	num, err := DecodePayload[struct {
		Seed json.Number `json:"seed"`
	}](ev)
	if err != nil {
		t.Fatalf("decoding into json.Number: %v", err)
	}
	if num.Seed != "18446744073709551615" {
		t.Errorf("seed as json.Number = %q, want 18446744073709551615", num.Seed)
	}

	m, err := DecodePayload[map[string]any](ev)
	if err != nil {
		t.Fatalf("decoding into map[string]any: %v", err)
	}
	if m["seed"] != json.Number("18446744073709551615") {
		t.Errorf("seed in map[string]any = %#v, want json.Number(\"18446744073709551615\")", m["seed"])
	}

	// int64 cannot hold it: the error says so instead of truncating.
	small, err := DecodePayload[struct {
		Seed int64 `json:"seed"`
	}](ev)
	if !errors.Is(err, ErrInvalidPayload) {
		t.Fatalf("seed overflowing int64: error = %v, want ErrInvalidPayload", err)
	}
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) || typeErr.Field != "seed" {
		t.Errorf("seed overflowing int64: error %v does not name the field through *json.UnmarshalTypeError", err)
	}
	if small.Seed != 0 {
		t.Errorf("failed decode returned a partial value %+v, want the zero value", small)
	}
}

func TestDecodeImageFields(t *testing.T) {
	ev := &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(
		`{"images":[{"url":"https://v3.fal.media/files/a.png","content_type":"image/png","file_name":"a.png","file_size":9007199254740993,"width":512,"height":768}],"seed":0}`)}
	out, err := DecodePayload[ImageOutput](ev)
	if err != nil {
		t.Fatal(err)
	}
	want := Image{
		File:   File{URL: "https://v3.fal.media/files/a.png", ContentType: "image/png", FileName: "a.png", FileSize: 9007199254740993},
		Width:  512,
		Height: 768,
	}
	if len(out.Images) != 1 || out.Images[0] != want {
		t.Errorf("images = %+v, want [%+v]: the embedded File fields must decode from the flat image object", out.Images, want)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name    string
		ev      *Event
		into    any
		wantErr error
	}{
		{"nil event", nil, new(ImageOutput), ErrNoPayload},
		{"payload null", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage("null")}, new(ImageOutput), ErrNoPayload},
		{"payload absent", &Event{RequestID: "r1", Status: StatusOK}, new(any), ErrNoPayload},
		{"payload_error with payload null", mustParse(t, payloadErrorOK), new(ImageOutput), ErrRequestFailed},
		{"ERROR event", mustParse(t, error422), new(ImageOutput), ErrRequestFailed},
		{"ERROR event without payload", &Event{RequestID: "r1", Status: StatusError, Error: "boom"}, new(any), ErrRequestFailed},
		{"unknown status", mustParse(t, `{"request_id":"r1","status":"CANCELLED","payload":{}}`), new(any), ErrRequestFailed},
		{"wrong shape", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(`{"images":"none"}`)}, new(ImageOutput), ErrInvalidPayload},
		{"negative seed into uint64", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(`{"seed":-1}`)}, new(ImageOutput), ErrInvalidPayload},
		{"hand-built payload not JSON", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(`{"seed":`)}, new(any), ErrInvalidPayload},
		{"hand-built payload two values", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(`{} {}`)}, new(any), ErrInvalidPayload},
		{"not a pointer", &Event{RequestID: "r1", Status: StatusOK, Payload: json.RawMessage(`{}`)}, ImageOutput{}, ErrInvalidPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ev.decode(tt.into)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Decode error = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, ErrRequestFailed) {
				var re *RequestError
				if !errors.As(err, &re) {
					t.Errorf("failed request's decode error %v is not a *RequestError", err)
				}
			}
		})
	}
}

func TestDecodeFailedEventLeavesTargetAlone(t *testing.T) {
	ev := mustParse(t, error422)
	out := ImageOutput{Prompt: "untouched"}
	if err := ev.decode(&out); err == nil {
		t.Fatal("failed request decoded as ImageOutput")
	}
	if _, err := DecodePayload[ImageOutput](ev); err == nil {
		t.Fatal("failed request decoded as ImageOutput")
	}
	if out.Prompt != "untouched" || out.Images != nil {
		t.Errorf("failed request's error output was decoded into the target: %+v", out)
	}
}

func TestEventErr(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantText   string // empty: the event succeeded
		wantDetail *ErrorDetail
	}{
		{name: "OK", body: realDelivery},
		{
			name:     "ERROR 422",
			body:     error422,
			wantText: "falwebhook: request 1234 failed: Invalid status code: 422: body.prompt: field required (value_error.missing)",
			wantDetail: &ErrorDetail{Items: []ValidationError{
				{Loc: []any{"body", "prompt"}, Msg: "field required", Type: "value_error.missing"},
			}},
		},
		{
			name:     "ERROR 422 with integer loc items",
			body:     error422Index,
			wantText: "falwebhook: request 1234 failed: Invalid status code: 422: body.images.0.url: field required (value_error.missing); body.num_images: ensure this value is less than or equal to 4 (value_error.number.not_le)",
			wantDetail: &ErrorDetail{Items: []ValidationError{
				{Loc: []any{"body", "images", json.Number("0"), "url"}, Msg: "field required", Type: "value_error.missing"},
				{Loc: []any{"body", "num_images"}, Msg: "ensure this value is less than or equal to 4", Type: "value_error.number.not_le"},
			}},
		},
		{
			name:       "detail a string",
			body:       errorStringDetail,
			wantText:   "falwebhook: request 1234 failed: Invalid status code: 500: Internal server error",
			wantDetail: &ErrorDetail{Message: "Internal server error"},
		},
		{
			name:     "gateway id differs",
			body:     `{"request_id":"r1","gateway_request_id":"g2","status":"ERROR","error":"timeout","payload":null}`,
			wantText: "falwebhook: request r1 (gateway request g2) failed: timeout",
		},
		{
			name:     "unknown status",
			body:     `{"request_id":"r1","status":"CANCELLED","error":null,"payload":null}`,
			wantText: `falwebhook: request r1 failed with status "CANCELLED"`,
		},
		{
			name:     "OK with payload_error",
			body:     payloadErrorOK,
			wantText: `falwebhook: request r1 failed with status "OK": payload_error: Object of type bytes is not JSON serializable`,
		},
		{
			name:     "OK with an error message",
			body:     `{"request_id":"r1","status":"OK","error":"partial output"}`,
			wantText: `falwebhook: request r1 failed with status "OK": partial output`,
		},
		{
			name:     "payload without detail is shown compacted",
			body:     `{"request_id":"r1","status":"ERROR","error":"Invalid status code: 500","payload":{ "message" : "CUDA out of memory" }}`,
			wantText: `falwebhook: request r1 failed: Invalid status code: 500: payload {"message":"CUDA out of memory"}`,
		},
		{
			name:     "detail of another shape is shown raw",
			body:     `{"request_id":"r1","status":"ERROR","error":"x","payload":{"detail":[{"loc":[null],"msg":"m"}]}}`,
			wantText: `falwebhook: request r1 failed: x: payload {"detail":[{"loc":[null],"msg":"m"}]}`,
		},
		{
			name:     "multi-line message on one line",
			body:     `{"request_id":"r1","status":"ERROR","error":"Traceback:\n  File \"x.py\"\r\n\tboom\u001b[31m"}`,
			wantText: `falwebhook: request r1 failed: Traceback: File "x.py" boom [31m`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := mustParse(t, tt.body)
			err := ev.Err()
			if tt.wantText == "" {
				if err != nil {
					t.Fatalf("successful request reported as failed: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrRequestFailed) {
				t.Fatalf("failed request: Err() = %v, want ErrRequestFailed", err)
			}
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("Err() = %T, want *RequestError", err)
			}
			if got := err.Error(); got != tt.wantText {
				t.Errorf("error text\n got %s\nwant %s", got, tt.wantText)
			}
			if re.RequestID != ev.RequestID || re.GatewayRequestID != ev.GatewayRequestID || re.Status != ev.Status ||
				re.Message != ev.Error || re.PayloadError != ev.PayloadError || !bytes.Equal(re.Payload, ev.Payload) {
				t.Errorf("RequestError fields %+v do not match the event %+v", re, ev)
			}
			if !reflect.DeepEqual(re.Detail, tt.wantDetail) {
				t.Errorf("detail = %#v, want %#v", re.Detail, tt.wantDetail)
			}
		})
	}
}

func TestEventErrLongMessageShortened(t *testing.T) {
	ev := &Event{RequestID: "r1", Status: StatusError, Error: strings.Repeat("é", 1000)}
	text := ev.Err().Error()
	if len(text) > 400 {
		t.Errorf("error text is %d bytes; a long message must be shortened", len(text))
	}
	if !strings.HasSuffix(text, "...") || !strings.Contains(text, "é") {
		t.Errorf("shortened text %q does not end in ... after whole characters", text)
	}
	if strings.ContainsRune(text, '\uFFFD') {
		t.Errorf("shortening split a character: %q", text)
	}
}

func TestEventErrNil(t *testing.T) {
	var ev *Event
	if err := ev.Err(); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("nil event: Err() = %v, want ErrInvalidEvent", err)
	}
}

func TestDecodeErrorDetail(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    ErrorDetail
		wantErr bool
	}{
		{"list", `[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]`, ErrorDetail{Items: []ValidationError{
			{Loc: []any{"body", "prompt"}, Msg: "field required", Type: "value_error.missing"},
		}}, false},
		{"empty list", `[]`, ErrorDetail{Items: []ValidationError{}}, false},
		{"string", `"Internal server error"`, ErrorDetail{Message: "Internal server error"}, false},
		{"empty string", `""`, ErrorDetail{}, false},
		{"big integer index kept exact", `[{"loc":["body",18446744073709551616],"msg":"m","type":"t"}]`, ErrorDetail{Items: []ValidationError{
			{Loc: []any{"body", json.Number("18446744073709551616")}, Msg: "m", Type: "t"},
		}}, false},
		{"number", `422`, ErrorDetail{}, true},
		{"object", `{"msg":"x"}`, ErrorDetail{}, true},
		{"loc item null", `[{"loc":[null],"msg":"m"}]`, ErrorDetail{}, true},
		{"loc item boolean", `[{"loc":[true],"msg":"m"}]`, ErrorDetail{}, true},
		{"item a string", `["field required"]`, ErrorDetail{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d ErrorDetail
			err := json.Unmarshal([]byte(tt.json), &d)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("detail %s accepted as %+v", tt.json, d)
				}
				return
			}
			if err != nil {
				t.Fatalf("detail %s rejected: %v", tt.json, err)
			}
			if !reflect.DeepEqual(d, tt.want) {
				t.Fatalf("detail %s = %#v, want %#v", tt.json, d, tt.want)
			}
			out, err := json.Marshal(d)
			if err != nil {
				t.Fatalf("marshaling detail: %v", err)
			}
			var want bytes.Buffer
			if err := json.Compact(&want, []byte(tt.json)); err != nil {
				t.Fatal(err)
			}
			if string(out) != want.String() {
				t.Errorf("detail round trip = %s, want %s", out, want.String())
			}
		})
	}
}

func TestDecodeLoc(t *testing.T) {
	var d ErrorDetail
	if err := json.Unmarshal([]byte(`[{"loc":["body","images",0,"url",-1,"0"],"msg":"m"}]`), &d); err != nil {
		t.Fatal(err)
	}
	want := []any{"body", "images", json.Number("0"), "url", json.Number("-1"), "0"}
	if !reflect.DeepEqual(d.Items[0].Loc, want) {
		t.Fatalf("loc = %#v, want %#v (a name that looks like a number stays a name)", d.Items[0].Loc, want)
	}
	if got := d.String(); got != "body.images.0.url.-1.0: m" {
		t.Errorf("String() = %q", got)
	}
}

// mustParse parses body or fails the test.
func mustParse(t testing.TB, body string) *Event {
	t.Helper()
	ev, err := ParseEvent([]byte(body))
	if err != nil {
		t.Fatalf("ParseEvent(%s): %v", body, err)
	}
	return ev
}

func FuzzParseEvent(f *testing.F) {
	for _, seed := range []string{
		realDelivery, error422, error422Index, errorStringDetail, maxSeed, payloadErrorOK,
		`{"request_id":"r1","status":"CANCELLED"}`,
		`{"request_id":"r1","status":"ERROR","error_type":"request_timeout","payload":{"detail":"Request timed out","error_type":"request_timeout"}}`,
		`{"request_id":"r1","status":"OK","payload":null}`,
		`{"request_id":"r1","status":"OK","extra":{"nested":[1,2,3]}}`,
		`{"request_id":"r1","status":"ERROR","error":"x","payload":{"detail":[{"loc":[null]}]}}`,
		`{"request_id":"r1","status":"OK","request_id":"r2"}`,
		`{"request_id":1234,"status":"OK"}`,
		`{"request_id":"r1","status":"OK"} x`,
		`[{"request_id":"r1","status":"OK"}]`,
		`{"status":"OK"}`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParseEvent(body)
		if err != nil {
			if !errors.Is(err, ErrInvalidEvent) {
				t.Fatalf("error %v does not wrap ErrInvalidEvent", err)
			}
			if ev != nil {
				t.Fatal("ParseEvent returned both an event and an error")
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted a body that is not valid JSON: %q", body)
		}
		if ev.RequestID == "" || ev.Status == "" {
			t.Fatalf("accepted event with empty request_id or status: %+v", ev)
		}
		if len(ev.Payload) > 0 && !json.Valid(ev.Payload) {
			t.Fatalf("accepted payload is not valid JSON: %q", ev.Payload)
		}
		if failed := ev.Err(); failed != nil {
			_ = failed.Error()
			if !errors.Is(failed, ErrRequestFailed) {
				t.Fatalf("Err() = %v, want ErrRequestFailed", failed)
			}
		}
		_, _ = DecodePayload[any](ev)
		if _, err := ParseEvent(mustMarshal(t, ev)); err != nil {
			t.Fatalf("marshaled event does not parse back: %v", err)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syntaxValues are JSON values, valid and not, that objectSyntaxSeeds puts
// in every position an event body has: the encoding/json grammar's corners.
var syntaxValues = []string{
	// valid
	`0`, `-0`, `1`, `-1`, `10`, `1.5`, `-1.5e10`, `1E+2`, `1e-2`, `0.0`, `0e0`,
	`123456789012345678901234567890`, `""`, `"a"`, `"\"\\\/\b\f\n\r\t"`,
	`"\u0041\u00e9\uD83D\uDE00"`, `"\uDEAD"`, `"\uabcd\uABCD"`, "\"é\"", "\"\xff\xfe\"", "\"\x7f\"",
	`"` + strings.Repeat(`abc\"`, 20) + `"`, `"` + strings.Repeat("x", 100) + `\\"`,
	`true`, `false`, `null`, `[]`, `{}`, `[1,2,3]`, `{"a":1,"b":[{}]}`,
	"[ 1 ,\t[ ] ,\r\n{ } ]", `{"":""}`, `{"a":{"a":{"a":[]}}}`, `[[[[]]]]`,
	// not valid
	`01`, `-`, `-a`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x10`, `1_000`, `NaN`, `Infinity`,
	`-01`, `1.e5`, `"abc`, `"\x"`, `"\u12"`, `"\u12G4"`, `"\U0041"`, "\"\t\"", "\"\n\"",
	"\"\x00\"", "\"\x1f\"", `"` + strings.Repeat("x", 100) + "\x01" + `"`, `"\'"`, `"\`,
	"\"a\x01\\n\"", "\"\\n\x1f\\n\"", "\"\\\"\x7f\x00\"",
	`tru`, `nul`, `True`, `nulll`, `[1,]`, `{"a":1,}`, `[,1]`, `{,}`, `{"a"}`, `{"a":}`,
	`{"a" 1}`, `{1:2}`, `{'a':1}`, `[1 2]`, `{"a":1 "b":2}`, `]`, `}`, `[}`, `{]`, `[`, `{`,
	"\v1", "\f1", "\u00a01", "\ufeff1", ``,
}

// nest returns depth arrays and objects nested in one another, alternating,
// around 0.
func nest(depth int) string {
	var open, close strings.Builder
	for i := range depth {
		if i%2 == 0 {
			open.WriteString(`[`)
		} else {
			open.WriteString(`{"k":`)
		}
	}
	for i := depth - 1; i >= 0; i-- {
		if i%2 == 0 {
			close.WriteString(`]`)
		} else {
			close.WriteString(`}`)
		}
	}
	return open.String() + "0" + close.String()
}

// objectSyntaxSeeds returns bodies to compare with json.Valid: each of
// syntaxValues alone, as a member value of an event, nested, and whole
// bodies broken around the object, and nesting at encoding/json's limit.
func objectSyntaxSeeds() []string {
	seeds := []string{
		``, ` `, `{`, `}`, `{}`, ` {} `, "{}\n", `{} x`, `{}{}`, `{}]`, `{"a":1`, `{"a":1}}`,
		`{"request_id":"r1","status":"OK"}`, `{"request_id":"r1","status":"OK"} x`,
		"\t{\r\n\"request_id\" :\t\"r1\" ,\n\"status\":\"OK\"\n}\r\n",
		`{"request\u005fid":"r1","status":"OK"}`, `{"\"":1,"\\":2,"\u0000":3}`,
		realDelivery, error422, error422Index, errorStringDetail, maxSeed, payloadErrorOK,
		`{"payload":` + nest(300) + `,"request_id":"r1","status":"OK"}`,
		`{"payload":` + nest(301) + `]}`,
		// Arrays 64 deep, then an object: the kinds of open containers
		// take more than one word.
		`{"payload":` + strings.Repeat("[", 64) + `{"a":1,"b":[2,{"c":3}]}` + strings.Repeat("]", 64) + `}`,
		`{"payload":` + strings.Repeat("[", 64) + `{"a":1,2}` + strings.Repeat("]", 64) + `}`,
		`{"payload":` + strings.Repeat(`{"a":`, 64) + `[1,"b":2]` + strings.Repeat("}", 64) + `}`,
	}
	for _, v := range syntaxValues {
		seeds = append(seeds,
			v,
			`{"request_id":"r1","status":"OK","payload":`+v+`}`,
			`{"payload":[`+v+`],"request_id":"r1","status":"OK"}`,
			`{"payload":{"a":`+v+`},"request_id":`+v+`,"status":"OK"}`,
			`{"x":`+v+`,"request_id":"r1","status":"OK"}`,
			`{`+v+`:1}`,
			`{"request_id":"r1","status":"OK"}`+v,
		)
	}
	return seeds
}

// validObjectOracle is what validObject must report: the text is valid
// JSON for encoding/json, and an object.
func validObjectOracle(b []byte) bool {
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	return json.Valid(b) && len(trimmed) > 0 && trimmed[0] == '{'
}

// checkObjectSyntax fails t when the scanner and encoding/json disagree on
// body, or when ParseEvent's verdict on the syntax differs from
// encoding/json's.
func checkObjectSyntax(t *testing.T, body []byte) {
	t.Helper()
	want := validObjectOracle(body)
	if got := validObject(body); got != want {
		t.Fatalf("validObject(%q) = %v, encoding/json says %v", body, got, want)
	}
	_, err := ParseEvent(body)
	if err == nil && !want {
		t.Fatalf("ParseEvent accepted %q, which is not a valid JSON object", body)
	}
	syntax := err != nil && (strings.Contains(err.Error(), "body is not a JSON value") || strings.HasSuffix(err.Error(), "empty body"))
	if syntax == json.Valid(body) {
		t.Fatalf("ParseEvent(%q) = %v; json.Valid says %v", body, err, json.Valid(body))
	}
}

func TestValidObjectMatchesEncodingJSON(t *testing.T) {
	// The outermost object is at depth 1; encoding/json accepts nesting up
	// to 10000. (Too large to be fuzzing seeds.)
	deep := []string{
		`{"payload":` + nest(9999) + `}`, `{"payload":` + nest(10000) + `}`,
		`{"payload":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
		`{"payload":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
		`{"payload":` + strings.Repeat(`{"":`, 9999) + "1" + strings.Repeat("}", 9999) + `}`,
		`{"payload":` + strings.Repeat(`{"":`, 10000) + "1" + strings.Repeat("}", 10000) + `}`,
	}
	for _, s := range append(objectSyntaxSeeds(), deep...) {
		checkObjectSyntax(t, []byte(s))
	}
	for i, want := range []bool{true, false, true, false, true, false} {
		if got := validObject([]byte(deep[i])); got != want {
			t.Errorf("validObject(deep[%d]) = %v, want %v", i, got, want)
		}
	}
}

// FuzzValidObject compares the event scanner's syntax check with
// encoding/json, the oracle: a body is accepted exactly when json.Valid
// accepts it and it is an object.
func FuzzValidObject(f *testing.F) {
	for _, s := range objectSyntaxSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(checkObjectSyntax)
}

func TestParseEventErrorType(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    string
		wantErr error
	}{
		{name: "string", body: `{"request_id":"r1","status":"ERROR","error_type":"request_timeout"}`, want: "request_timeout"},
		{name: "null", body: `{"request_id":"r1","status":"ERROR","error_type":null}`},
		{name: "absent", body: `{"request_id":"r1","status":"ERROR"}`},
		{name: "escaped", body: `{"request_id":"r1","status":"ERROR","error_type":"a\u005fb"}`, want: "a_b"},
		{name: "a number", body: `{"request_id":"r1","status":"ERROR","error_type":504}`, wantErr: ErrInvalidEvent},
		{name: "twice", body: `{"request_id":"r1","status":"ERROR","error_type":"a","error_type":"a"}`, wantErr: ErrInvalidEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvent([]byte(tt.body))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseEvent(%s) error = %v, want %v", tt.body, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.ErrorType != tt.want {
				t.Errorf("ErrorType = %q, want %q", ev.ErrorType, tt.want)
			}
		})
	}
}

func TestEventErrErrorType(t *testing.T) {
	tests := []struct {
		name     string
		ev       Event
		wantType string
		wantText string
	}{
		{
			name:     "from the event",
			ev:       Event{RequestID: "r1", Status: StatusError, Error: "Invalid status code: 504", ErrorType: "request_timeout", Payload: json.RawMessage(`{"detail":"Request timed out"}`)},
			wantType: "request_timeout",
			wantText: "falwebhook: request r1 failed: Invalid status code: 504 [request_timeout]: Request timed out",
		},
		{
			name:     "from the payload's flat infrastructure shape",
			ev:       Event{RequestID: "r1", Status: StatusError, Error: "Invalid status code: 503", Payload: json.RawMessage(`{"detail":"Runner disconnected","error_type":"runner_disconnected"}`)},
			wantType: "runner_disconnected",
			wantText: "falwebhook: request r1 failed: Invalid status code: 503 [runner_disconnected]: Runner disconnected",
		},
		{
			name:     "the event's wins over the payload's",
			ev:       Event{RequestID: "r1", Status: StatusError, ErrorType: "header", Payload: json.RawMessage(`{"error_type":"body"}`)},
			wantType: "header",
			wantText: `falwebhook: request r1 failed: [header]: payload {"error_type":"body"}`,
		},
		{
			name:     "payload with a detail of another shape",
			ev:       Event{RequestID: "r1", Status: StatusError, Payload: json.RawMessage(`{"detail":{"x":1},"error_type":"internal_error"}`)},
			wantType: "internal_error",
			wantText: `falwebhook: request r1 failed: [internal_error]: payload {"detail":{"x":1},"error_type":"internal_error"}`,
		},
		{
			name:     "payload error_type not a string",
			ev:       Event{RequestID: "r1", Status: StatusError, Error: "x", Payload: json.RawMessage(`{"error_type":7}`)},
			wantText: `falwebhook: request r1 failed: x: payload {"error_type":7}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var re *RequestError
			if !errors.As(tt.ev.Err(), &re) {
				t.Fatalf("Err() = %v, want a *RequestError", tt.ev.Err())
			}
			if re.ErrorType != tt.wantType {
				t.Errorf("ErrorType = %q, want %q", re.ErrorType, tt.wantType)
			}
			if got := re.Error(); got != tt.wantText {
				t.Errorf("error text\n got %s\nwant %s", got, tt.wantText)
			}
		})
	}
}

func TestEventErrorTypeRoundTrip(t *testing.T) {
	ev := &Event{RequestID: "r1", Status: StatusError, ErrorType: "startup_timeout"}
	b := mustMarshal(t, ev)
	if !bytes.Contains(b, []byte(`"error_type":"startup_timeout"`)) {
		t.Errorf("marshalled event %s lacks error_type", b)
	}
	back, err := ParseEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.ErrorType != ev.ErrorType {
		t.Errorf("error_type after a round trip = %q, want %q", back.ErrorType, ev.ErrorType)
	}
	if b := mustMarshal(t, &Event{RequestID: "r1", Status: StatusOK}); bytes.Contains(b, []byte("error_type")) {
		t.Errorf("an event without an error type marshals one: %s", b)
	}
}
