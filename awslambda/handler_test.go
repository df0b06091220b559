package awslambda_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/falwebhook/falwebhook/awslambda"
	"github.com/falwebhook/falwebhook/faltest"
)

// A shape is one front end's event format and the fixture (see
// testdata/README.md) its events start from.
type shape struct {
	name  string
	file  string
	v2    bool // payload 2.0: one comma-joined string per header name
	multi bool // the event carries multiValueHeaders
	alb   bool
}

var shapes = []shape{
	{name: "function URL", file: "function-url.json", v2: true},
	{name: "HTTP API 2.0", file: "http-api-v2.json", v2: true},
	{name: "HTTP API 1.0", file: "http-api-v1.json", multi: true},
	{name: "REST API", file: "rest-api.json", multi: true},
	{name: "ALB", file: "alb.json", alb: true},
	{name: "ALB multi-value", file: "alb-multivalue.json", alb: true, multi: true},
}

// A clientRequest is an HTTP request as a client sends it to the front end.
type clientRequest struct {
	method string              // "" means POST
	header map[string][]string // values in the order sent; a name may repeat
	body   []byte
	base64 bool // the front end base64-encodes the body
}

// loadFixture returns the JSON object in testdata/file.
func loadFixture(tb testing.TB, file string) map[string]any {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		tb.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var ev map[string]any
	if err := dec.Decode(&ev); err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	return ev
}

// event returns the event the front end of sh sends for req, following the
// AWS documentation: the fixture with req's method, headers and body. A
// repeated header becomes one comma-joined value in payload 2.0, every value
// in multiValueHeaders, and its last value in headers (an API Gateway 1.0
// event sends both; an ALB one or the other).
func (sh shape) event(tb testing.TB, req clientRequest) []byte {
	tb.Helper()
	ev := loadFixture(tb, sh.file)
	method := cmp.Or(req.method, http.MethodPost)
	if sh.v2 {
		ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = method
	} else {
		ev["httpMethod"] = method
	}
	useSingle := !sh.alb || !sh.multi
	useMulti := sh.multi
	single, _ := ev["headers"].(map[string]any)
	multi, _ := ev["multiValueHeaders"].(map[string]any)
	if useSingle && single == nil {
		single = map[string]any{}
	}
	if useMulti && multi == nil {
		multi = map[string]any{}
	}
	for name, vs := range req.header {
		if sh.v2 || sh.alb {
			name = strings.ToLower(name) // a REST API passes names as sent
		}
		for _, m := range []map[string]any{single, multi} {
			for k := range m {
				if strings.EqualFold(k, name) {
					delete(m, k)
				}
			}
		}
		switch {
		case sh.v2:
			single[name] = strings.Join(vs, ",")
		case useMulti:
			multi[name] = vs
			if useSingle {
				single[name] = vs[len(vs)-1]
			}
		default:
			single[name] = vs[len(vs)-1]
		}
	}
	if useSingle {
		ev["headers"] = single
	}
	if useMulti {
		ev["multiValueHeaders"] = multi
	}
	if req.base64 {
		ev["body"] = base64.StdEncoding.EncodeToString(req.body)
	} else {
		ev["body"] = string(req.body)
	}
	ev["isBase64Encoded"] = req.base64
	out, err := json.Marshal(ev)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// signedHeader returns the headers fal sends with body, signed by s at
// testNow, plus Content-Type.
func signedHeader(s *faltest.Signer, body []byte) map[string][]string {
	return signedHeaderAt(s, body, testNow)
}

// signedHeaderAt is signedHeader signing at the time at.
func signedHeaderAt(s *faltest.Signer, body []byte, at time.Time) map[string][]string {
	h := s.Sign(faltest.Delivery{UserID: "user-1", Time: at, Body: body})
	return map[string][]string{
		"Content-Type":          {"application/json"},
		faltest.HeaderRequestID: {h.RequestID},
		faltest.HeaderUserID:    {h.UserID},
		faltest.HeaderTimestamp: {h.Timestamp},
		faltest.HeaderSignature: {h.Signature},
	}
}

// response is the union of the response shapes.
type response struct {
	StatusCode        int                 `json:"statusCode"`
	StatusDescription *string             `json:"statusDescription"`
	Headers           map[string]string   `json:"headers"`
	MultiValueHeaders map[string][]string `json:"multiValueHeaders"`
	Cookies           []string            `json:"cookies"`
	Body              string              `json:"body"`
	IsBase64Encoded   bool                `json:"isBase64Encoded"`

	members map[string]json.RawMessage
}

// header returns the values of name in whichever header member is used.
func (r *response) header(name string) []string {
	if r.MultiValueHeaders != nil {
		return r.MultiValueHeaders[name]
	}
	if v, ok := r.Headers[name]; ok {
		return []string{v}
	}
	return nil
}

// body returns the response body, decoded when it is base64.
func (r *response) body(tb testing.TB) []byte {
	tb.Helper()
	if !r.IsBase64Encoded {
		return []byte(r.Body)
	}
	b, err := base64.StdEncoding.DecodeString(r.Body)
	if err != nil {
		tb.Fatalf("isBase64Encoded body is not base64: %v", err)
	}
	return b
}

// invoke runs h on payload through awslambda.Handler and decodes the
// response, which must match the shape of sh.
func invoke(tb testing.TB, sh shape, h http.Handler, payload []byte) *response {
	tb.Helper()
	out, err := awslambda.Handler(h).Invoke(context.Background(), payload)
	if err != nil {
		tb.Fatalf("Invoke: %v", err)
	}
	var res response
	if err := json.Unmarshal(out, &res); err != nil {
		tb.Fatalf("response is not JSON: %v\n%s", err, out)
	}
	if err := json.Unmarshal(out, &res.members); err != nil {
		tb.Fatal(err)
	}
	checkShape(tb, sh, &res)
	return &res
}

// checkShape fails unless res uses the members the front end of sh reads.
func checkShape(tb testing.TB, sh shape, res *response) {
	tb.Helper()
	has := func(m string) bool {
		raw, ok := res.members[m]
		return ok && string(raw) != "null"
	}
	var want []string
	switch {
	case sh.v2:
		want = []string{"statusCode", "headers", "body", "isBase64Encoded", "cookies"}
		if has("multiValueHeaders") || has("statusDescription") {
			tb.Errorf("payload 2.0 response has members of another shape: %v", res.members)
		}
	case sh.multi:
		want = []string{"statusCode", "multiValueHeaders"}
		if has("headers") {
			tb.Errorf("%s response has headers, want multiValueHeaders only", sh.name)
		}
	default:
		want = []string{"statusCode", "headers"}
		if has("multiValueHeaders") {
			tb.Errorf("%s response has multiValueHeaders, want headers only", sh.name)
		}
	}
	if sh.alb {
		want = append(want, "statusDescription", "isBase64Encoded")
	}
	for _, m := range want {
		if _, ok := res.members[m]; !ok {
			tb.Errorf("%s response lacks %q: %v", sh.name, m, res.members)
		}
	}
}

// deliveryBody is a fal delivery body with a non-ASCII payload, so that
// both text and base64 transport must carry exact bytes.
func deliveryBody(requestID string) []byte {
	return faltest.OKBody(requestID, map[string]any{"prompt": "un chien été 🐕", "seed": uint64(17454220438242315174)})
}

func TestGenuineDelivery(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	for _, sh := range shapes {
		for _, b64 := range []bool{false, true} {
			t.Run(sh.name+map[bool]string{false: "/text", true: "/base64"}[b64], func(t *testing.T) {
				body := deliveryBody("req-genuine")
				var s seen
				res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s),
					sh.event(t, clientRequest{header: signedHeader(signer, body), body: body, base64: b64}))
				if res.StatusCode != http.StatusOK {
					t.Fatalf("genuine delivery answered %d %q, want 200", res.StatusCode, res.Body)
				}
				if s.calls != 1 || s.requestID != "req-genuine" || s.status != "OK" {
					t.Errorf("handler saw calls=%d request id %q status %q, want one call with req-genuine OK", s.calls, s.requestID, s.status)
				}
				if !bytes.Equal(s.body, body) {
					t.Errorf("handler read body\n%q\nwant the delivered bytes\n%q", s.body, body)
				}
				if got := string(res.body(t)); got != "ok" {
					t.Errorf("response body %q, want the handler's %q", got, "ok")
				}
			})
		}
	}
}

func TestTamperedBody(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	for _, sh := range shapes {
		for _, b64 := range []bool{false, true} {
			t.Run(sh.name+map[bool]string{false: "/text", true: "/base64"}[b64], func(t *testing.T) {
				body := deliveryBody("req-tampered")
				tampered := bytes.Replace(body, []byte(`"OK"`), []byte(`"ERROR"`), 1)
				var s seen
				res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s),
					sh.event(t, clientRequest{header: signedHeader(signer, body), body: tampered, base64: b64}))
				if res.StatusCode != http.StatusUnauthorized || s.calls != 0 {
					t.Fatalf("tampered body answered %d with %d handler calls, want 401 and none", res.StatusCode, s.calls)
				}
			})
		}
	}
}

// TestForgedSigner checks that a delivery signed by an untrusted key is
// refused on every front end.
func TestForgedSigner(t *testing.T) {
	trusted, forger := faltest.SignerFromName("fal"), faltest.SignerFromName("forger")
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			body := deliveryBody("req-forged")
			var s seen
			res := invoke(t, sh, newReceiver(trusted.PublicKey(), false, &s),
				sh.event(t, clientRequest{header: signedHeader(forger, body), body: body}))
			if res.StatusCode != http.StatusUnauthorized || s.calls != 0 {
				t.Fatalf("forged delivery answered %d with %d handler calls, want 401 and none", res.StatusCode, s.calls)
			}
		})
	}
}

// TestRepeatedFalHeader sends a genuine delivery whose signature or request
// id header the client repeated with the same value. Payload 2.0 joins the
// copies into one value, which must stay one (malformed signature: 400;
// request id not the one signed: 401); multiValueHeaders carry both copies
// (sent twice: 400). An ALB without multi-value headers passes only the last
// copy, so the function never sees the repetition: documented, not fixable
// here.
func TestRepeatedFalHeader(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	for _, name := range []string{faltest.HeaderSignature, faltest.HeaderRequestID} {
		for _, sh := range shapes {
			t.Run(name+"/"+sh.name, func(t *testing.T) {
				body := deliveryBody("req-repeated")
				h := signedHeader(signer, body)
				h[name] = []string{h[name][0], h[name][0]}
				var s seen
				res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s),
					sh.event(t, clientRequest{header: h, body: body}))
				want := http.StatusBadRequest
				switch {
				case sh.v2 && name == faltest.HeaderRequestID:
					want = http.StatusUnauthorized
				case sh.alb && !sh.multi:
					want = http.StatusOK
				}
				if res.StatusCode != want {
					t.Fatalf("%s sent twice answered %d, want %d", name, res.StatusCode, want)
				}
				if want != http.StatusOK && s.calls != 0 {
					t.Fatalf("handler called %d times for a rejected delivery", s.calls)
				}
			})
		}
	}
}

// TestHeadersAndMultiValueHeaders covers events naming a fal header under
// two spellings, and 1.0 events whose headers and multiValueHeaders members
// disagree: a value present in only one of them is never dropped.
func TestHeadersAndMultiValueHeaders(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	other := signedHeader(faltest.SignerFromName("other"), []byte("x"))[faltest.HeaderSignature][0]
	body := deliveryBody("req-merge")
	t.Run("payload 2.0 signature under two spellings", func(t *testing.T) {
		for _, sh := range shapes[:2] {
			var ev map[string]any
			if err := json.Unmarshal(sh.event(t, clientRequest{header: signedHeader(signer, body), body: body}), &ev); err != nil {
				t.Fatal(err)
			}
			h := ev["headers"].(map[string]any)
			h[faltest.HeaderSignature] = h[strings.ToLower(faltest.HeaderSignature)]
			payload, _ := json.Marshal(ev)
			var s seen
			if res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s), payload); res.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: answered %d, want 400", sh.name, res.StatusCode)
			}
		}
	})
	for _, sh := range shapes {
		if !sh.multi || sh.alb {
			continue
		}
		tests := []struct {
			name   string
			mutate func(single map[string]any, multi map[string]any)
			want   int
		}{
			{"fal headers only in headers", func(single, multi map[string]any) {
				for k := range multi {
					if strings.HasPrefix(strings.ToLower(k), "x-fal-") {
						delete(multi, k)
					}
				}
			}, http.StatusOK},
			{"headers holds another signature", func(single, multi map[string]any) {
				single[faltest.HeaderSignature] = other
			}, http.StatusBadRequest},
			{"signature under two spellings", func(single, multi map[string]any) {
				multi[strings.ToLower(faltest.HeaderSignature)] = multi[faltest.HeaderSignature]
			}, http.StatusBadRequest},
		}
		for _, tt := range tests {
			t.Run(sh.name+"/"+tt.name, func(t *testing.T) {
				var ev map[string]any
				if err := json.Unmarshal(sh.event(t, clientRequest{header: signedHeader(signer, body), body: body}), &ev); err != nil {
					t.Fatal(err)
				}
				tt.mutate(ev["headers"].(map[string]any), ev["multiValueHeaders"].(map[string]any))
				payload, _ := json.Marshal(ev)
				var s seen
				res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s), payload)
				if res.StatusCode != tt.want {
					t.Fatalf("answered %d, want %d", res.StatusCode, tt.want)
				}
			})
		}
	}
}

func TestMethodNotAllowed(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			body := deliveryBody("req-get")
			var s seen
			res := invoke(t, sh, newReceiver(signer.PublicKey(), false, &s),
				sh.event(t, clientRequest{method: http.MethodGet, header: signedHeader(signer, body), body: body}))
			if res.StatusCode != http.StatusMethodNotAllowed || s.calls != 0 {
				t.Fatalf("GET answered %d with %d handler calls, want 405 and none", res.StatusCode, s.calls)
			}
			if got := res.header("Allow"); !slices.Equal(got, []string{http.MethodPost}) {
				t.Errorf("Allow = %q, want [POST]", got)
			}
		})
	}
}

func TestKeysUnavailable(t *testing.T) {
	signer := faltest.SignerFromName("fal")
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			body := deliveryBody("req-cold")
			var s seen
			res := invoke(t, sh, newReceiver(signer.PublicKey(), true, &s),
				sh.event(t, clientRequest{header: signedHeader(signer, body), body: body}))
			if res.StatusCode != http.StatusServiceUnavailable || s.calls != 0 {
				t.Fatalf("answered %d with %d handler calls, want 503 and none", res.StatusCode, s.calls)
			}
			if got := res.header("Retry-After"); len(got) != 1 || got[0] == "" {
				t.Errorf("Retry-After = %q, want one value so that fal retries", got)
			}
		})
	}
}

func TestInvalidBase64Body(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			var ev map[string]any
			if err := json.Unmarshal(sh.event(t, clientRequest{}), &ev); err != nil {
				t.Fatal(err)
			}
			ev["body"], ev["isBase64Encoded"] = "not base64!", true
			payload, _ := json.Marshal(ev)
			called := false
			res := invoke(t, sh, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }), payload)
			if res.StatusCode != http.StatusBadRequest || called {
				t.Fatalf("invalid base64 body answered %d (handler called: %v), want 400 without calling it", res.StatusCode, called)
			}
			if got := res.header("Content-Type"); len(got) != 1 || !strings.HasPrefix(got[0], "text/plain") {
				t.Errorf("Content-Type = %q, want text/plain", got)
			}
		})
	}
}

// TestStart checks that the handler goes through aws-lambda-go's own
// handler wrapping, which lambda.Start applies, unchanged.
func TestStart(t *testing.T) {
	sh := shapes[0]
	payload := sh.event(t, clientRequest{body: []byte("hello")})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	direct, err := awslambda.Handler(h).Invoke(context.Background(), payload)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := lambda.NewHandler(awslambda.Handler(h)).Invoke(context.Background(), payload)
	if err != nil {
		t.Fatalf("through lambda.NewHandler: %v", err)
	}
	if !bytes.Equal(direct, wrapped) {
		t.Fatalf("through lambda.NewHandler:\n%s\nwant\n%s", wrapped, direct)
	}
	if !bytes.Contains(direct, []byte(`"statusCode":418`)) {
		t.Fatalf("response %s lacks the handler's status", direct)
	}
	// An unsupported event reaches Lambda as a function error.
	if _, err := lambda.NewHandler(awslambda.Handler(h)).Invoke(context.Background(), []byte(`{"Records":[]}`)); err == nil {
		t.Fatal("unsupported event through lambda.NewHandler: no error")
	}
}

func TestUnsupportedEvent(t *testing.T) {
	v2 := string(shapes[0].event(t, clientRequest{}))
	tests := []struct{ name, payload string }{
		{"empty", ``},
		{"not JSON", `<html>`},
		{"null", `null`},
		{"array", `[{"version":"2.0"}]`},
		{"string", `"2.0"`},
		{"empty object", `{}`},
		{"trailing data", v2 + ` {}`},
		{"S3 notification", `{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put"}]}`},
		{"SQS message", `{"Records":[{"messageId":"1","body":"x","eventSource":"aws:sqs"}]}`},
		{"WebSocket", `{"requestContext":{"routeKey":"$connect","eventType":"CONNECT","connectionId":"x"},"isBase64Encoded":false}`},
		{"scheduled", `{"version":"0","id":"x","detail-type":"Scheduled Event","source":"aws.events","detail":{}}`},
		{"version 2.0 without requestContext.http", `{"version":"2.0","rawPath":"/","requestContext":{}}`},
		{"version 2.0 with http null", `{"version":"2.0","rawPath":"/","requestContext":{"http":null}}`},
		{"version 3.0", strings.Replace(v2, `"version":"2.0"`, `"version":"3.0"`, 1)},
		{"version not a string", `{"version":2,"requestContext":{"http":{"method":"POST"}}}`},
		{"httpMethod without requestContext", `{"httpMethod":"POST","path":"/"}`},
		{"httpMethod with version 2.0 and no http", `{"version":"2.0","httpMethod":"POST","path":"/","requestContext":{}}`},
		{"payload 2.0 and ALB at once", `{"version":"2.0","httpMethod":"POST","requestContext":{"http":{"method":"POST"},"elb":{}}}`},
		{"requestContext not an object", `{"httpMethod":"POST","requestContext":"x"}`},
		{"2.0 without method", strings.Replace(v2, `"method":"POST"`, `"method":""`, 1)},
		{"2.0 invalid method", strings.Replace(v2, `"method":"POST"`, `"method":"PO ST"`, 1)},
		{"1.0 invalid method", `{"httpMethod":"GET\n","path":"/","requestContext":{}}`},
		{"path without leading slash", `{"httpMethod":"POST","path":"x","requestContext":{}}`},
		{"headers not an object", `{"httpMethod":"POST","path":"/","headers":["x"],"requestContext":{}}`},
		{"header value not a string", `{"version":"2.0","rawPath":"/","headers":{"a":1},"requestContext":{"http":{"method":"POST"}}}`},
		{"body twice", `{"httpMethod":"POST","path":"/","requestContext":{},"body":"a","body":"b"}`},
		{"body twice, other case", `{"httpMethod":"POST","path":"/","requestContext":{},"body":"a","BODY":"b"}`},
		{"headers twice, Unicode case fold", `{"httpMethod":"POST","path":"/","requestContext":{},"headers":{},"headerſ":{}}`},
		{"header named twice in headers", `{"version":"2.0","rawPath":"/","requestContext":{"http":{"method":"POST"}},"headers":{"x-fal-webhook-signature":"a","x-fal-webhook-signature":"b"}}`},
		{"header named twice in multiValueHeaders", `{"httpMethod":"POST","path":"/","requestContext":{},"multiValueHeaders":{"x-fal-webhook-signature":["a"],"x-fal-webhook-signature":["b"]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true })
			out, err := awslambda.Handler(h).Invoke(context.Background(), []byte(tt.payload))
			if !errors.Is(err, awslambda.ErrUnsupportedEvent) {
				t.Fatalf("Invoke error = %v, want ErrUnsupportedEvent (output %s)", err, out)
			}
			if out != nil || called {
				t.Fatalf("unsupported event gave output %q, handler called: %v", out, called)
			}
		})
	}
}

var registerDefault sync.Once

// TestHandlerNil checks that a nil handler serves http.DefaultServeMux, as
// http.Server does.
func TestHandlerNil(t *testing.T) {
	registerDefault.Do(func() {
		http.HandleFunc("/awslambda-test/default-mux", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusTeapot)
		})
	})
	var ev map[string]any
	if err := json.Unmarshal(shapes[0].event(t, clientRequest{}), &ev); err != nil {
		t.Fatal(err)
	}
	ev["rawPath"] = "/awslambda-test/default-mux"
	payload, _ := json.Marshal(ev)
	if res := invoke(t, shapes[0], nil, payload); res.StatusCode != http.StatusTeapot {
		t.Fatalf("nil handler answered %d, want the DefaultServeMux handler's 418", res.StatusCode)
	}
}
