package awslambda

import (
	"bytes"
	"encoding/base64"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
)

// responseWriter is an in-memory http.ResponseWriter that behaves like
// net/http's where a handler can tell: the first status wins, 1xx statuses
// are interim and ignored, and headers are fixed by the first WriteHeader or
// Write.
type responseWriter struct {
	header http.Header // what Header returns
	sent   http.Header // header as of the first WriteHeader
	code   int         // 0 until WriteHeader
	body   bytes.Buffer
}

func (w *responseWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}

func (w *responseWriter) WriteHeader(code int) {
	if w.code != 0 || (code >= 100 && code <= 199) {
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError // net/http panics instead
	}
	w.code = code
	w.sent = w.Header().Clone()
}

func (w *responseWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// result is a finished response.
type result struct {
	code   int
	header http.Header // canonical names, each with at least one value
	body   []byte
}

// finish returns the response written so far, completed as net/http would:
// status 200 if none was written, and a Content-Type sniffed from the body
// when the handler set none.
func (w *responseWriter) finish() *result {
	w.WriteHeader(http.StatusOK)
	h := make(http.Header, len(w.sent)+1)
	for _, k := range slices.Sorted(maps.Keys(w.sent)) {
		if vs := w.sent[k]; len(vs) > 0 {
			ck := http.CanonicalHeaderKey(k)
			h[ck] = append(h[ck], vs...)
		}
	}
	body := w.body.Bytes()
	if _, typed := w.sent["Content-Type"]; !typed && len(body) > 0 && h.Get("Content-Encoding") == "" {
		h.Set("Content-Type", http.DetectContentType(body))
	}
	return &result{code: w.code, header: h, body: body}
}

// encodedBody returns the body as text when it is valid UTF-8 and in
// base64 otherwise, reporting which.
func (res *result) encodedBody() (string, bool) {
	if utf8.Valid(res.body) {
		return string(res.body), false
	}
	return base64.StdEncoding.EncodeToString(res.body), true
}

// joinedHeader returns h with the values of each name joined with ", ",
// leaving out the names in skip.
func joinedHeader(h http.Header, skip string) map[string]string {
	if len(h) == 0 {
		return nil
	}
	m := make(map[string]string, len(h))
	for k, vs := range h {
		if k != skip {
			m[k] = strings.Join(vs, ", ")
		}
	}
	return m
}

// response answers payload 2.0 with the five members that function URLs and
// HTTP APIs read. (events.APIGatewayV2HTTPResponse would add a
// multiValueHeaders member the 2.0 format does not define.)
func (e *v2Event) response(res *result) any {
	body, b64 := res.encodedBody()
	return events.LambdaFunctionURLResponse{
		StatusCode:      res.code,
		Headers:         joinedHeader(res.header, "Set-Cookie"),
		Body:            body,
		IsBase64Encoded: b64,
		Cookies:         res.header["Set-Cookie"],
	}
}

func (e *v1Event) response(res *result) any {
	body, b64 := res.encodedBody()
	out := events.APIGatewayProxyResponse{StatusCode: res.code, Body: body, IsBase64Encoded: b64}
	if e.MultiValueHeaders != nil {
		out.MultiValueHeaders = res.header
	} else {
		out.Headers = joinedHeader(res.header, "")
	}
	return out
}

func (e *albEvent) response(res *result) any {
	body, b64 := res.encodedBody()
	text := http.StatusText(res.code)
	if text == "" {
		text = "status code " + strconv.Itoa(res.code)
	}
	out := events.ALBTargetGroupResponse{
		StatusCode:        res.code,
		StatusDescription: strconv.Itoa(res.code) + " " + text,
		Body:              body,
		IsBase64Encoded:   b64,
	}
	// The target group's setting fixes which member the ALB reads.
	if e.MultiValueHeaders != nil {
		out.MultiValueHeaders = res.header
	} else {
		out.Headers = joinedHeader(res.header, "")
	}
	return out
}
