package awslambda_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/falwebhook/falwebhook/awslambda"
)

// captured is what a handler saw of its request.
type captured struct {
	method, requestURI, path, rawQuery string
	proto                              string
	host, remoteAddr                   string
	header                             http.Header
	contentLength                      int64
	body                               string
	ctxValue                           any
}

type ctxKey struct{}

// capture runs the event in file, as AWS documents it, through Handler and
// returns what the handler saw.
func capture(t *testing.T, payload []byte) captured {
	t.Helper()
	var c captured
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading body: %v", err)
		}
		c = captured{
			method: r.Method, requestURI: r.RequestURI, path: r.URL.Path, rawQuery: r.URL.RawQuery,
			proto: r.Proto, host: r.Host, remoteAddr: r.RemoteAddr, header: r.Header,
			contentLength: r.ContentLength, body: string(b), ctxValue: r.Context().Value(ctxKey{}),
		}
	})
	ctx := context.WithValue(context.Background(), ctxKey{}, "invocation")
	if _, err := awslambda.Handler(h).Invoke(ctx, payload); err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	if c.ctxValue != "invocation" {
		t.Errorf("request context does not carry the invocation's values")
	}
	return c
}

func readFixture(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRequestFromDocumentedEvents runs each fixture unchanged and checks the
// request against the values on the AWS page it follows.
func TestRequestFromDocumentedEvents(t *testing.T) {
	tests := []struct {
		file string
		want captured
	}{
		{"function-url.json", captured{
			method: "POST", requestURI: "/my/path?parameter1=value1&parameter1=value2&parameter2=value",
			path: "/my/path", rawQuery: "parameter1=value1&parameter1=value2&parameter2=value",
			proto: "HTTP/1.1", host: "<url-id>.lambda-url.us-west-2.on.aws", remoteAddr: "123.123.123.123",
			header: http.Header{
				"Header1":        {"value1"},
				"Header2":        {"value1,value2"}, // joined by the front end; never split
				"Cookie":         {"cookie1; cookie2"},
				"Content-Length": {"18"},
			},
			contentLength: 18, body: "Hello from client!",
		}},
		{"http-api-v2.json", captured{
			method: "POST", requestURI: "/my/path?parameter1=value1&parameter1=value2&parameter2=value",
			path: "/my/path", rawQuery: "parameter1=value1&parameter1=value2&parameter2=value",
			proto: "HTTP/1.1", host: "id.execute-api.us-east-1.amazonaws.com", remoteAddr: "IP",
			header: http.Header{
				"Header1":        {"value1"},
				"Header2":        {"value1,value2"},
				"Cookie":         {"cookie1; cookie2"},
				"Content-Length": {"17"},
			},
			contentLength: 17, body: "Hello from Lambda",
		}},
		{"http-api-v1.json", captured{
			method: "GET", requestURI: "/my/path?parameter1=value1&parameter1=value2&parameter2=value",
			path: "/my/path", rawQuery: "parameter1=value1&parameter1=value2&parameter2=value",
			proto: "HTTP/1.1", host: "id.execute-api.us-east-1.amazonaws.com", remoteAddr: "IP",
			header: http.Header{
				"Header1":        {"value1"},
				"Header2":        {"value1", "value2"}, // from multiValueHeaders; headers' "value2" is one of them
				"Content-Length": {"18"},
			},
			contentLength: 18, body: "Hello from Lambda!",
		}},
		{"rest-api.json", captured{
			method: "POST", requestURI: "/hello/world?multivalueName=you&multivalueName=me&name=me",
			path: "/hello/world", rawQuery: "multivalueName=you&multivalueName=me&name=me",
			proto: "HTTP/1.1", host: "gy415nuibc.execute-api.us-east-1.amazonaws.com", remoteAddr: "192.168.196.186",
			header: http.Header{
				"":                             {""},
				"Accept":                       {"*/*"},
				"Accept-Encoding":              {"gzip, deflate"},
				"Cache-Control":                {"no-cache"},
				"Cloudfront-Forwarded-Proto":   {"https"},
				"Cloudfront-Is-Desktop-Viewer": {"true"},
				"Cloudfront-Is-Mobile-Viewer":  {"false"},
				"Cloudfront-Is-Smarttv-Viewer": {"false"},
				"Cloudfront-Is-Tablet-Viewer":  {"false"},
				"Cloudfront-Viewer-Country":    {"US"},
				"Content-Type":                 {"application/json"},
				"Headername":                   {"headerValue"},
				"Postman-Token":                {"9f583ef0-ed83-4a38-aef3-eb9ce3f7a57f"},
				"User-Agent":                   {"PostmanRuntime/2.4.5"},
				"Via":                          {"1.1 d98420743a69852491bbdea73f7680bd.cloudfront.net (CloudFront)"},
				"X-Amz-Cf-Id":                  {"pn-PWIJc6thYnZm5P0NMgOUglL1DYtl0gdeJky8tqsg8iS_sgsKD1A=="},
				"X-Forwarded-For":              {"54.240.196.186, 54.182.214.83"},
				"X-Forwarded-Port":             {"443"},
				"X-Forwarded-Proto":            {"https"},
				"Content-Length":               {"13"},
			},
			contentLength: 13, body: "{\r\n\t\"a\": 1\r\n}",
		}},
		{"alb.json", captured{
			method: "GET", requestURI: "/?myKey=val2", path: "/", rawQuery: "myKey=val2",
			proto: "HTTP/1.1", host: "lambda-846800462-us-east-2.elb.amazonaws.com", remoteAddr: "",
			header: http.Header{
				"Accept":            {"text/html,application/xhtml+xml"},
				"Accept-Language":   {"en-US,en;q=0.8"},
				"Content-Type":      {"text/plain"},
				"Cookie":            {"cookies"},
				"User-Agent":        {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_6)"},
				"X-Amzn-Trace-Id":   {"Root=1-5bdb40ca-556d8b0c50dc66f0511bf520"},
				"X-Forwarded-For":   {"72.21.198.66"},
				"X-Forwarded-Port":  {"443"},
				"X-Forwarded-Proto": {"https"},
				"Content-Length":    {"12"},
			},
			contentLength: 12, body: "request_body",
		}},
		{"alb-multivalue.json", captured{
			method: "GET", requestURI: "/?myKey=val1&myKey=val2", path: "/", rawQuery: "myKey=val1&myKey=val2",
			proto: "HTTP/1.1", host: "lambda-846800462-us-east-2.elb.amazonaws.com", remoteAddr: "",
			header: http.Header{
				"Accept":            {"text/html,application/xhtml+xml"},
				"Accept-Language":   {"en-US,en;q=0.8"},
				"Content-Type":      {"text/plain"},
				"Cookie":            {"name1=value1", "name2=value2"},
				"User-Agent":        {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_6)"},
				"X-Amzn-Trace-Id":   {"Root=1-5bdb40ca-556d8b0c50dc66f0511bf520"},
				"X-Forwarded-For":   {"72.21.198.66"},
				"X-Forwarded-Port":  {"443"},
				"X-Forwarded-Proto": {"https"},
				"Content-Length":    {"12"},
			},
			contentLength: 12, body: "request_body",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := capture(t, readFixture(t, tt.file))
			tt.want.ctxValue = "invocation"
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("request\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestRequestDetails covers conversions the documented examples do not
// exercise.
func TestRequestDetails(t *testing.T) {
	fixture := readFixture(t, "function-url.json")
	mutate := func(f func(ev map[string]any)) []byte {
		var ev map[string]any
		if err := json.Unmarshal(fixture, &ev); err != nil {
			t.Fatal(err)
		}
		f(ev)
		b, _ := json.Marshal(ev)
		return b
	}
	rc := func(ev map[string]any) map[string]any { return ev["requestContext"].(map[string]any) }

	t.Run("base64 body is decoded", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) {
			ev["body"], ev["isBase64Encoded"] = "AAH/", true // 0x00 0x01 0xff
		}))
		if c.body != "\x00\x01\xff" || c.contentLength != 3 || c.header.Get("Content-Length") != "3" {
			t.Errorf("body %q, ContentLength %d, header %q; want the 3 decoded bytes", c.body, c.contentLength, c.header.Get("Content-Length"))
		}
	})
	t.Run("empty body", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) { delete(ev, "body") }))
		if c.body != "" || c.contentLength != 0 || c.header["Content-Length"] != nil {
			t.Errorf("body %q, ContentLength %d, Content-Length %q; want none", c.body, c.contentLength, c.header["Content-Length"])
		}
	})
	t.Run("Content-Length from the event is replaced", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) {
			ev["headers"].(map[string]any)["content-length"] = "999"
		}))
		if got := c.header["Content-Length"]; len(got) != 1 || got[0] != "18" {
			t.Errorf("Content-Length = %q, want the body's length [18]", got)
		}
	})
	t.Run("Content-Length from the event is dropped with an empty body", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) {
			ev["headers"].(map[string]any)["content-length"] = "999"
			delete(ev, "body")
		}))
		if got := c.header["Content-Length"]; got != nil || c.contentLength != 0 {
			t.Errorf("Content-Length = %q, ContentLength %d, want none for an empty body", got, c.contentLength)
		}
	})
	t.Run("1.0 query values are encoded again", func(t *testing.T) {
		var ev map[string]any
		if err := json.Unmarshal(readFixture(t, "rest-api.json"), &ev); err != nil {
			t.Fatal(err)
		}
		ev["multiValueQueryStringParameters"] = map[string]any{"q": []string{"a b&c=d", "é"}}
		payload, _ := json.Marshal(ev)
		if c := capture(t, payload); c.rawQuery != "q=a+b%26c%3Dd&q=%C3%A9" {
			t.Errorf("raw query %q, want the decoded values encoded again", c.rawQuery)
		}
		delete(ev, "multiValueQueryStringParameters")
		ev["queryStringParameters"] = map[string]any{"q": "a b"}
		payload, _ = json.Marshal(ev)
		if c := capture(t, payload); c.rawQuery != "q=a+b" {
			t.Errorf("raw query %q from queryStringParameters, want q=a+b", c.rawQuery)
		}
	})
	t.Run("ALB query values are passed as sent", func(t *testing.T) {
		var ev map[string]any
		if err := json.Unmarshal(readFixture(t, "alb-multivalue.json"), &ev); err != nil {
			t.Fatal(err)
		}
		ev["multiValueQueryStringParameters"] = map[string]any{"q": []string{"a%20b", "c"}, "a": []string{"1"}}
		payload, _ := json.Marshal(ev)
		if c := capture(t, payload); c.rawQuery != "a=1&q=a%20b&q=c" {
			t.Errorf("raw query %q, want the percent-encoded values as sent", c.rawQuery)
		}
	})
	t.Run("Host header wins over domainName", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) {
			ev["headers"].(map[string]any)["host"] = "example.com"
		}))
		if c.host != "example.com" || c.header["Host"] != nil {
			t.Errorf("Host %q, header %q; want example.com, moved out of Header", c.host, c.header["Host"])
		}
	})
	t.Run("rawPath missing falls back to http.path", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) {
			delete(ev, "rawPath")
			rc(ev)["http"].(map[string]any)["path"] = "/from/context"
		}))
		if c.path != "/from/context" {
			t.Errorf("path %q, want /from/context", c.path)
		}
	})
	t.Run("encoded path kept as sent", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) { ev["rawPath"] = "/a%2Fb/c%20d" }))
		if c.path != "/a/b/c d" || c.requestURI != "/a%2Fb/c%20d?parameter1=value1&parameter1=value2&parameter2=value" {
			t.Errorf("path %q, RequestURI %q", c.path, c.requestURI)
		}
	})
	t.Run("undecodable path taken literally", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) { ev["rawPath"] = "/100%" }))
		if c.path != "/100%" {
			t.Errorf("path %q, want /100%%", c.path)
		}
	})
	t.Run("HTTP/2 protocol", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) { rc(ev)["http"].(map[string]any)["protocol"] = "HTTP/2.0" }))
		if c.proto != "HTTP/2.0" {
			t.Errorf("proto %q, want HTTP/2.0", c.proto)
		}
	})
	t.Run("unknown protocol means HTTP/1.1", func(t *testing.T) {
		c := capture(t, mutate(func(ev map[string]any) { rc(ev)["http"].(map[string]any)["protocol"] = "QUIC" }))
		if c.proto != "HTTP/1.1" {
			t.Errorf("proto %q, want HTTP/1.1", c.proto)
		}
	})
	t.Run("nil context", func(t *testing.T) {
		//lint:ignore SA1012 Invoke must survive a nil context.
		if _, err := awslambda.Handler(http.NotFoundHandler()).Invoke(nil, fixture); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("error names the problem", func(t *testing.T) {
		_, err := awslambda.Handler(http.NotFoundHandler()).Invoke(context.Background(), []byte(`{"Records":[]}`))
		if !errors.Is(err, awslambda.ErrUnsupportedEvent) || err.Error() != "awslambda: unsupported event: not a function URL, API Gateway or ALB HTTP event" {
			t.Fatalf("error %q", err)
		}
	})
}

// FuzzInvoke feeds arbitrary events to a Handler. Whatever the input, Invoke
// must not panic, must fail only with ErrUnsupportedEvent, and must accept
// only valid JSON (checked with encoding/json) and answer it with a JSON
// response whose status is a valid HTTP status and whose body is the
// handler's.
func FuzzInvoke(f *testing.F) {
	entries, err := os.ReadDir("testdata")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		if filepath.Ext(e.Name()) == ".json" {
			b, err := os.ReadFile(filepath.Join("testdata", e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	for _, s := range []string{
		`{"version":"2.0","rawPath":"/","headers":{"x-fal-webhook-signature":"a,b"},"requestContext":{"http":{"method":"POST"}},"body":"AAH/","isBase64Encoded":true}`,
		`{"httpMethod":"POST","path":"/","requestContext":{},"headers":{"A":"1"},"multiValueHeaders":{"a":["1","2"],"A":["3"]},"body":"!!","isBase64Encoded":true}`,
		`{"httpMethod":"GET","path":"//x?y#z","requestContext":{"elb":{}},"multiValueQueryStringParameters":{"a":["%zz"]}}`,
		`{"httpMethod":"POST","path":"/","requestContext":{},"body":"a","Body":"b"}`,
		`{"version":"2.0","httpMethod":"POST","requestContext":{"http":{},"elb":{}}}`,
		`{"Records":[]}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	h := awslambda.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if int64(len(body)) != r.ContentLength {
			panic("request body length differs from ContentLength")
		}
		w.Header()["X-Method"] = []string{r.Method}
		w.Write(body)
	}))
	f.Fuzz(func(t *testing.T, payload []byte) {
		out, err := h.Invoke(context.Background(), payload)
		if err != nil {
			if !errors.Is(err, awslambda.ErrUnsupportedEvent) {
				t.Fatalf("error %v does not wrap ErrUnsupportedEvent", err)
			}
			if out != nil {
				t.Fatal("output returned with an error")
			}
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("accepted an event that is not valid JSON: %q", payload)
		}
		var res struct {
			StatusCode      int    `json:"statusCode"`
			Body            string `json:"body"`
			IsBase64Encoded bool   `json:"isBase64Encoded"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("response is not JSON: %v: %s", err, out)
		}
		if res.StatusCode < 200 || res.StatusCode > 599 {
			t.Fatalf("status %d", res.StatusCode)
		}
	})
}
