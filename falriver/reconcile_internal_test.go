package falriver

import (
	"encoding/json"
	"testing"

	"github.com/falwebhook/falwebhook"
)

// The body the backstop stores parses back to the event it was built
// from, payload bytes exact.
func TestWebhookBodyRoundTrip(t *testing.T) {
	for name, ev := range map[string]*falwebhook.Event{
		"ok":      {Status: falwebhook.StatusOK, GatewayRequestID: "g-1", Payload: json.RawMessage(`{"seed": 9007199254740993, "x":"\u00e9"}`)},
		"failed":  {Status: falwebhook.StatusError, Error: "Invalid status code: 422", ErrorType: "validation_error", Payload: json.RawMessage(`{"detail":[{"msg":"field required"}]}`)},
		"no body": {Status: falwebhook.StatusError, PayloadError: "could not serialize", Payload: json.RawMessage(`null`)},
		"quotes":  {Status: falwebhook.StatusOK, Error: "a \"quoted\"\nline", Payload: json.RawMessage(`[1,2]`)},
	} {
		b, err := webhookBody("req \"1\"", ev)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := falwebhook.ParseEvent(b)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		if got.RequestID != "req \"1\"" || got.Status != ev.Status || got.Error != ev.Error || got.ErrorType != ev.ErrorType ||
			got.PayloadError != ev.PayloadError || got.GatewayRequestID != ev.GatewayRequestID || string(got.Payload) != string(ev.Payload) {
			t.Errorf("%s: round trip gave %+v (payload %s), want %+v (payload %s)", name, got, got.Payload, ev, ev.Payload)
		}
	}
	if _, err := webhookBody("r", &falwebhook.Event{Status: falwebhook.StatusOK, Payload: json.RawMessage(`{`)}); err == nil {
		t.Fatal("a payload that is not JSON was accepted")
	}
}
