package awslambda

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/aws/aws-lambda-go/events"
)

// errBadBody marks an event whose body is flagged base64 but is not: the
// client's request is answered 400, the invocation itself succeeds.
var errBadBody = errors.New("awslambda: body is not valid base64")

// An event is one decoded HTTP event of a known front end.
type event interface {
	// request returns the HTTP request the event describes, with ctx.
	request(ctx context.Context) (*http.Request, error)
	// response returns the value whose JSON answers the event.
	response(res *result) any
}

type (
	v2Event  struct{ events.APIGatewayV2HTTPRequest } // function URL, HTTP API payload 2.0
	v1Event  struct{ events.APIGatewayProxyRequest }  // REST API, HTTP API payload 1.0
	albEvent struct{ events.ALBTargetGroupRequest }   // Application Load Balancer
)

// probe holds the members that tell the event shapes apart.
type probe struct {
	Version        *string         `json:"version"`
	HTTPMethod     *string         `json:"httpMethod"`
	RequestContext json.RawMessage `json:"requestContext"`
}

type probeContext struct {
	ELB  json.RawMessage `json:"elb"`
	HTTP json.RawMessage `json:"http"`
}

// parseEvent detects the shape of payload and decodes it.
func parseEvent(payload []byte) (event, error) {
	var p probe
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
	}
	var rc probeContext
	if isObject(p.RequestContext) {
		if err := json.Unmarshal(p.RequestContext, &rc); err != nil {
			return nil, fmt.Errorf("%w: requestContext: %w", ErrUnsupportedEvent, err)
		}
	}
	isV2 := p.Version != nil && *p.Version == "2.0" && isObject(rc.HTTP)
	isALB := p.HTTPMethod != nil && isObject(rc.ELB)
	isV1 := p.HTTPMethod != nil && isObject(p.RequestContext) && !isObject(rc.ELB) &&
		(p.Version == nil || *p.Version == "1.0")

	var ev event
	switch {
	case isV2 && isALB:
		return nil, fmt.Errorf("%w: both a payload 2.0 and an ALB event", ErrUnsupportedEvent)
	case isV2:
		ev = new(v2Event)
	case isALB:
		ev = new(albEvent)
	case isV1:
		ev = new(v1Event)
	default:
		return nil, fmt.Errorf("%w: not a function URL, API Gateway or ALB HTTP event", ErrUnsupportedEvent)
	}
	if err := checkMembers(payload); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(payload, ev); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
	}
	return ev, nil
}

// isObject reports whether raw is a JSON object.
func isObject(raw json.RawMessage) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && raw[0] == '{'
}

// checkMembers returns an error when the top-level object of payload names a
// member twice, in any letter case (encoding/json matches struct fields
// case-insensitively), or when its "headers" or "multiValueHeaders" object
// names a header twice: decoding would keep only the last of them.
func checkMembers(payload []byte) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return fmt.Errorf("%w: not a JSON object", ErrUnsupportedEvent)
	}
	headers, multi := foldKey("headers"), foldKey("multiValueHeaders")
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
		}
		name, _ := tok.(string)
		key := foldKey(name)
		if seen[key] {
			return fmt.Errorf("%w: member %q appears twice", ErrUnsupportedEvent, name)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
		}
		if key == headers || key == multi {
			if err := checkHeaderNames(name, raw); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkHeaderNames returns an error when raw is a JSON object naming a
// member twice (exactly: the members decode into a map).
func checkHeaderNames(member string, raw json.RawMessage) error {
	if !isObject(raw) {
		return nil // null, or a type error that decoding reports
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
		}
		name, _ := tok.(string)
		if seen[name] {
			return fmt.Errorf("%w: header %q appears twice in %s", ErrUnsupportedEvent, name, member)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("%w: %w", ErrUnsupportedEvent, err)
		}
	}
	return nil
}

// foldKey maps each rune of s to the smallest rune of its Unicode simple
// case-folding orbit, so that foldKey(a) == foldKey(b) exactly when
// strings.EqualFold(a, b), the rule encoding/json matches member names with.
func foldKey(s string) string {
	return strings.Map(func(r rune) rune {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		return m
	}, s)
}

// eventHeader builds the request header from an event's single-value
// headers and, when not nil, its multi-value headers. Every value of multi
// is kept; an entry of single is added unless multi already holds that value
// under that name, so no value is dropped and none is ever split.
func eventHeader(single map[string]string, multi map[string][]string) http.Header {
	fromMulti := make(http.Header, len(multi))
	for _, k := range slices.Sorted(maps.Keys(multi)) {
		ck := http.CanonicalHeaderKey(k)
		fromMulti[ck] = append(fromMulti[ck], multi[k]...)
	}
	h := fromMulti.Clone()
	if h == nil {
		h = make(http.Header, len(single))
	}
	for _, k := range slices.Sorted(maps.Keys(single)) {
		ck, v := http.CanonicalHeaderKey(k), single[k]
		if !slices.Contains(fromMulti[ck], v) {
			h[ck] = append(h[ck], v)
		}
	}
	return h
}

func (e *v2Event) request(ctx context.Context) (*http.Request, error) {
	h := eventHeader(e.Headers, nil)
	if len(e.Cookies) > 0 {
		h.Add("Cookie", strings.Join(e.Cookies, "; "))
	}
	hc := &e.RequestContext.HTTP
	path := e.RawPath
	if path == "" {
		path = hc.Path
	}
	return newRequest(ctx, requestParts{
		method:   hc.Method,
		path:     path,
		rawQuery: e.RawQueryString,
		proto:    hc.Protocol,
		header:   h,
		host:     e.RequestContext.DomainName,
		remote:   hc.SourceIP,
		body:     e.Body,
		base64:   e.IsBase64Encoded,
	})
}

func (e *v1Event) request(ctx context.Context) (*http.Request, error) {
	// API Gateway decodes query parameters; encode them again.
	q := url.Values(e.MultiValueQueryStringParameters)
	if q == nil {
		q = make(url.Values, len(e.QueryStringParameters))
		for k, v := range e.QueryStringParameters {
			q.Set(k, v)
		}
	}
	return newRequest(ctx, requestParts{
		method:   e.HTTPMethod,
		path:     e.Path,
		rawQuery: q.Encode(),
		proto:    e.RequestContext.Protocol,
		header:   eventHeader(e.Headers, e.MultiValueHeaders),
		host:     e.RequestContext.DomainName,
		remote:   e.RequestContext.Identity.SourceIP,
		body:     e.Body,
		base64:   e.IsBase64Encoded,
	})
}

func (e *albEvent) request(ctx context.Context) (*http.Request, error) {
	// An ALB passes query parameters as the client sent them, still
	// percent-encoded.
	var q []string
	if e.MultiValueQueryStringParameters != nil {
		for _, k := range slices.Sorted(maps.Keys(e.MultiValueQueryStringParameters)) {
			for _, v := range e.MultiValueQueryStringParameters[k] {
				q = append(q, k+"="+v)
			}
		}
	} else {
		for _, k := range slices.Sorted(maps.Keys(e.QueryStringParameters)) {
			q = append(q, k+"="+e.QueryStringParameters[k])
		}
	}
	return newRequest(ctx, requestParts{
		method:   e.HTTPMethod,
		path:     e.Path,
		rawQuery: strings.Join(q, "&"),
		header:   eventHeader(e.Headers, e.MultiValueHeaders),
		body:     e.Body,
		base64:   e.IsBase64Encoded,
	})
}

// requestParts is what newRequest needs from an event.
type requestParts struct {
	method, path, rawQuery string
	proto                  string // "" means HTTP/1.1
	header                 http.Header
	host                   string // used when there is no Host header
	remote                 string // source IP, or ""
	body                   string
	base64                 bool // body is base64-encoded
}

// newRequest returns the server request p describes, with ctx.
func newRequest(ctx context.Context, p requestParts) (*http.Request, error) {
	if !isToken(p.method) {
		return nil, fmt.Errorf("%w: invalid method %q", ErrUnsupportedEvent, p.method)
	}
	u, err := requestURL(p.path, p.rawQuery)
	if err != nil {
		return nil, err
	}
	body := []byte(p.body)
	if p.base64 {
		if body, err = base64.StdEncoding.DecodeString(p.body); err != nil {
			return nil, fmt.Errorf("%w: %w", errBadBody, err)
		}
	}
	major, minor, ok := http.ParseHTTPVersion(p.proto)
	if !ok {
		p.proto, major, minor = "HTTP/1.1", 1, 1
	}
	h := p.header
	host := p.host
	if vs := h.Values("Host"); len(vs) > 0 {
		host = vs[0]
	}
	h.Del("Host")
	h.Del("Content-Length")
	var rc io.ReadCloser = http.NoBody
	if len(body) > 0 {
		h.Set("Content-Length", strconv.Itoa(len(body)))
		rc = io.NopCloser(bytes.NewReader(body))
	}
	r := &http.Request{
		Method:        p.method,
		URL:           u,
		Proto:         p.proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		Body:          rc,
		ContentLength: int64(len(body)),
		Host:          host,
		RemoteAddr:    p.remote,
		RequestURI:    u.RequestURI(),
	}
	return r.WithContext(ctx), nil
}

// requestURL returns the URL of a request for path and rawQuery. path is
// taken as sent (percent-encoded) when it parses as such, and as a plain
// path otherwise.
func requestURL(path, rawQuery string) (*url.URL, error) {
	if path == "" {
		path = "/"
	}
	if path[0] != '/' {
		return nil, fmt.Errorf("%w: path %q does not start with /", ErrUnsupportedEvent, path)
	}
	u, err := url.ParseRequestURI(path)
	if err != nil || u.RawQuery != "" || u.ForceQuery {
		u = &url.URL{Path: path}
	}
	u.RawQuery = rawQuery
	return u, nil
}

// isToken reports whether s is a non-empty RFC 9110 token, the grammar of a
// method.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || c <= ' ' || c == 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
