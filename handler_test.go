package falwebhook

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// The middleware tests run on a fixed clock with static keys: mwSigner stands
// in for fal, mwForger for anyone else.
var (
	mwNow    = time.Unix(1_767_225_600, 0) // 2026-01-01T00:00:00Z
	mwSigner = faltest.SignerFromName("handler-test")
	mwForger = faltest.SignerFromName("handler-test-forger")
)

const mwRequestID = "5057fca7-2eb3-468f-b95d-cefe92b0b9d4"

// mwBody is a genuine-looking OK delivery body for mwRequestID.
const mwBody = `{"error": null, "gateway_request_id": "gw-7", "payload": {"images": [], "seed": 17454220438242315174}, "request_id": "` + mwRequestID + `", "status": "OK"}`

func mwClock() time.Time { return mwNow }

// newMWVerifier returns a Verifier that trusts mwSigner and reads mwNow, with
// opts applied after those.
func newMWVerifier(opts ...Option) *Verifier {
	return NewVerifier(append([]Option{WithKeys(StaticKeys(mwSigner.PublicKey())), WithClock(mwClock)}, opts...)...)
}

// mwSigned returns a POST of body signed by s at time at.
func mwSigned(s *faltest.Signer, at time.Time, body string) *http.Request {
	return s.NewRequest("/fal/webhook", faltest.Delivery{Time: at, Body: []byte(body)})
}

// mwGenuine returns a genuine delivery of body, signed by mwSigner now.
func mwGenuine(body string) *http.Request { return mwSigned(mwSigner, mwNow, body) }

// mwMutated returns a constructor of genuine deliveries of mwBody whose
// headers f then changes.
func mwMutated(f func(h http.Header)) func() *http.Request {
	return func() *http.Request {
		r := mwGenuine(mwBody)
		f(r.Header)
		return r
	}
}

// mwChunked makes r's body look like a chunked upload: unknown length and a
// reader that is not a *bytes.Reader (so nothing can peek at its size).
func mwChunked(r *http.Request, body io.Reader) *http.Request {
	r.Body = io.NopCloser(body)
	r.ContentLength = -1
	r.TransferEncoding = []string{"chunked"}
	r.Header.Del("Content-Length")
	return r
}

// mwCountingReader counts the bytes it hands out.
type mwCountingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *mwCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// mwEndless is an endless stream of 'x'.
type mwEndless struct{}

func (mwEndless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// mwKeySource adapts a function to KeySource.
type mwKeySource func(context.Context) error

func (f mwKeySource) VerifySignature(ctx context.Context, msg, sig []byte) error { return f(ctx) }

// mwNext is the handler behind the middleware in these tests. It counts its
// calls and keeps what the last call saw.
type mwNext struct {
	calls atomic.Int64

	mu     sync.Mutex // guards the fields below
	ev     *Event
	evOK   bool
	body   []byte
	length int64
}

func (n *mwNext) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n.calls.Add(1)
	ev, ok := EventFromContext(r.Context())
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "next could not read the body: "+err.Error(), http.StatusTeapot)
		return
	}
	n.mu.Lock()
	n.ev, n.evOK, n.body, n.length = ev, ok, body, r.ContentLength
	n.mu.Unlock()
	io.WriteString(w, "handled")
}

// mwServe runs req through v's middleware around a fresh mwNext.
func mwServe(v *Verifier, req *http.Request) (*httptest.ResponseRecorder, *mwNext) {
	next := new(mwNext)
	rec := httptest.NewRecorder()
	v.Middleware(next).ServeHTTP(rec, req)
	return rec, next
}

// mwCase is a request and how the middleware must answer it.
type mwCase struct {
	name    string
	opts    []Option             // added to newMWVerifier's
	req     func() *http.Request // a fresh request each call
	want    int                  // the status
	wantErr error                // the sentinel the error matches; nil when accepted
}

func mwCases() []mwCase {
	sigOf := func(h http.Header) string { return h.Get(HeaderSignature) }
	setRaw := func(name, value string) func() *http.Request {
		return mwMutated(func(h http.Header) { h[name] = []string{value} })
	}
	withMethod := func(method string) func() *http.Request {
		return func() *http.Request {
			r := mwGenuine(mwBody)
			r.Method = method
			return r
		}
	}
	// A genuinely signed delivery whose timestamp is in milliseconds.
	millis := func() *http.Request {
		ts := strconv.FormatInt(mwNow.UnixMilli(), 10)
		sig := mwSigner.SignMessage(faltest.Message(mwRequestID, "u", ts, []byte(mwBody)))
		r := httptest.NewRequest(http.MethodPost, "/fal/webhook", strings.NewReader(mwBody))
		faltest.Headers{RequestID: mwRequestID, UserID: "u", Timestamp: ts, Signature: hex.EncodeToString(sig)}.Set(r.Header)
		return r
	}

	cases := []mwCase{
		{name: "genuine", req: func() *http.Request { return mwGenuine(mwBody) }, want: 200},
		{name: "genuine, timestamp exactly 300 s old", req: func() *http.Request { return mwSigned(mwSigner, mwNow.Add(-300*time.Second), mwBody) }, want: 200},
		{name: "genuine, timestamp exactly 300 s ahead", req: func() *http.Request { return mwSigned(mwSigner, mwNow.Add(300*time.Second), mwBody) }, want: 200},
		{name: "genuine, signature in upper case", req: mwMutated(func(h http.Header) { h.Set(HeaderSignature, strings.ToUpper(sigOf(h))) }), want: 200},
		{name: "genuine, lower-case header keys built by hand", req: mwMutated(func(h http.Header) {
			for _, name := range headerNames {
				v := h.Get(name)
				h.Del(name)
				h[strings.ToLower(name)] = []string{v}
			}
		}), want: 200},

		// 405
		{name: "GET", req: withMethod(http.MethodGet), want: 405, wantErr: ErrMethodNotAllowed},
		{name: "PUT", req: withMethod(http.MethodPut), want: 405, wantErr: ErrMethodNotAllowed},
		{name: "GET without headers", req: func() *http.Request { return httptest.NewRequest(http.MethodGet, "/fal/webhook", nil) }, want: 405, wantErr: ErrMethodNotAllowed},

		// 413
		{name: "Content-Length over the limit", opts: []Option{WithMaxBodySize(int64(len(mwBody) - 1))}, req: func() *http.Request { return mwGenuine(mwBody) }, want: 413, wantErr: ErrBodyTooLarge},
		{name: "chunked body over the limit", opts: []Option{WithMaxBodySize(int64(len(mwBody) - 1))}, req: func() *http.Request {
			return mwChunked(mwGenuine(mwBody), iotest.OneByteReader(strings.NewReader(mwBody)))
		}, want: 413, wantErr: ErrBodyTooLarge},
		{name: "body limited by an outer http.MaxBytesReader", req: func() *http.Request {
			r := mwGenuine(mwBody)
			r.Body = http.MaxBytesReader(nil, r.Body, 10)
			r.ContentLength = -1
			return r
		}, want: 413, wantErr: ErrBodyTooLarge},

		// 400: the headers
		{name: "request id empty", req: setRaw(HeaderRequestID, ""), want: 400, wantErr: ErrMissingHeader},
		{name: "two request ids, equal", req: mwMutated(func(h http.Header) { h.Add(HeaderRequestID, h.Get(HeaderRequestID)) }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature twice, once under a lower-case key", req: mwMutated(func(h http.Header) { h["x-fal-webhook-signature"] = []string{sigOf(h)} }), want: 400, wantErr: ErrMalformedHeader},
		{name: "request id with a newline", req: setRaw(HeaderRequestID, "a\nb"), want: 400, wantErr: ErrMalformedHeader},
		{name: "user id with a carriage return", req: setRaw(HeaderUserID, "u\r"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp with a plus sign", req: setRaw(HeaderTimestamp, "+1767225600"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp negative", req: setRaw(HeaderTimestamp, "-1"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp with a fraction", req: setRaw(HeaderTimestamp, "1767225600.0"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp with a space", req: setRaw(HeaderTimestamp, " 1767225600"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp in hex", req: setRaw(HeaderTimestamp, "0x69557f00"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp as a date", req: setRaw(HeaderTimestamp, "2026-01-01T00:00:00Z"), want: 400, wantErr: ErrMalformedHeader},
		{name: "timestamp overflowing int64", req: setRaw(HeaderTimestamp, "99999999999999999999"), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature one digit short", req: mwMutated(func(h http.Header) { h.Set(HeaderSignature, sigOf(h)[1:]) }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature one digit long", req: mwMutated(func(h http.Header) { h.Set(HeaderSignature, sigOf(h)+"0") }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature with 0x", req: mwMutated(func(h http.Header) { h.Set(HeaderSignature, "0x"+sigOf(h)[2:]) }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature not hex", req: mwMutated(func(h http.Header) { h.Set(HeaderSignature, "g"+sigOf(h)[1:]) }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature with an inner space", req: mwMutated(func(h http.Header) { s := sigOf(h); h.Set(HeaderSignature, s[:64]+" "+s[65:]) }), want: 400, wantErr: ErrMalformedHeader},
		{name: "signature in base64", req: mwMutated(func(h http.Header) {
			raw, _ := hex.DecodeString(sigOf(h))
			h.Set(HeaderSignature, base64.StdEncoding.EncodeToString(raw))
		}), want: 400, wantErr: ErrMalformedHeader},

		// 400: the body
		{name: "client disconnects mid-body", req: func() *http.Request {
			r := mwGenuine(mwBody)
			r.Body = io.NopCloser(io.MultiReader(strings.NewReader(mwBody[:20]), iotest.ErrReader(io.ErrUnexpectedEOF)))
			return r
		}, want: 400, wantErr: ErrReadBody},
		{name: "signed body is a JSON array", req: func() *http.Request { return mwGenuine(`[]`) }, want: 400, wantErr: ErrInvalidEvent},
		{name: "signed body is an object but no event", req: func() *http.Request { return mwGenuine(`{"foo":1}`) }, want: 400, wantErr: ErrInvalidEvent},
		{name: "signed body is empty", req: func() *http.Request { return mwGenuine(``) }, want: 400, wantErr: ErrInvalidEvent},
		{name: "signed body is null", req: func() *http.Request { return mwGenuine(`null`) }, want: 400, wantErr: ErrInvalidEvent},
		{name: "signed body lacks status", req: func() *http.Request { return mwGenuine(`{"request_id": "r"}`) }, want: 400, wantErr: ErrInvalidEvent},
		{name: "signed body is not JSON", req: func() *http.Request { return mwGenuine(`request_id=r&status=OK`) }, want: 400, wantErr: ErrInvalidEvent},

		// 401
		{name: "timestamp 301 s old", req: func() *http.Request { return mwSigned(mwSigner, mwNow.Add(-301*time.Second), mwBody) }, want: 401, wantErr: ErrTimestampOutOfRange},
		{name: "timestamp 301 s ahead", req: func() *http.Request { return mwSigned(mwSigner, mwNow.Add(301*time.Second), mwBody) }, want: 401, wantErr: ErrTimestampOutOfRange},
		{name: "timestamp in milliseconds", req: millis, want: 401, wantErr: ErrTimestampOutOfRange},
		{name: "timestamp the largest int64", req: setRaw(HeaderTimestamp, "9223372036854775807"), want: 401, wantErr: ErrTimestampOutOfRange},
		{name: "timestamp zero", req: setRaw(HeaderTimestamp, "0"), want: 401, wantErr: ErrTimestampOutOfRange},
		{name: "tampered body", req: func() *http.Request {
			r := mwGenuine(mwBody)
			tampered := strings.Replace(mwBody, "17454220438242315174", "17454220438242315175", 1)
			r.Body = io.NopCloser(strings.NewReader(tampered))
			return r
		}, want: 401, wantErr: ErrSignatureMismatch},
		{name: "body with a trailing newline", req: func() *http.Request {
			r := mwGenuine(mwBody)
			r.Body = io.NopCloser(strings.NewReader(mwBody + "\n"))
			r.ContentLength++
			return r
		}, want: 401, wantErr: ErrSignatureMismatch},
		{name: "signed with another key", req: func() *http.Request { return mwSigned(mwForger, mwNow, mwBody) }, want: 401, wantErr: ErrSignatureMismatch},
		{name: "request id changed", req: setRaw(HeaderRequestID, "another-request"), want: 401, wantErr: ErrSignatureMismatch},
		{name: "user id changed", req: setRaw(HeaderUserID, "another-user"), want: 401, wantErr: ErrSignatureMismatch},
		{name: "timestamp changed within the window", req: setRaw(HeaderTimestamp, strconv.FormatInt(mwNow.Unix()-1, 10)), want: 401, wantErr: ErrSignatureMismatch},
		{name: "timestamp with a leading zero", req: mwMutated(func(h http.Header) { h.Set(HeaderTimestamp, "0"+h.Get(HeaderTimestamp)) }), want: 401, wantErr: ErrSignatureMismatch},
		{name: "signature of zeros", req: setRaw(HeaderSignature, strings.Repeat("0", 128)), want: 401, wantErr: ErrSignatureMismatch},

		// 403
		{name: "another fal account's genuine delivery", opts: []Option{WithUserIDs("my-user")}, req: func() *http.Request { return mwGenuine(mwBody) }, want: 403, wantErr: ErrUnexpectedUser},

		// 503
		{name: "keys unavailable", opts: []Option{WithKeys(mwKeySource(func(context.Context) error {
			return fmt.Errorf("%w: key server down", ErrKeysUnavailable)
		}))}, req: func() *http.Request { return mwGenuine(mwBody) }, want: 503, wantErr: ErrKeysUnavailable},
		{name: "key source failing with a plain error", opts: []Option{WithKeys(mwKeySource(func(context.Context) error {
			return errors.New("disk on fire")
		}))}, req: func() *http.Request { return mwGenuine(mwBody) }, want: 503, wantErr: ErrKeysUnavailable},
		{name: "no usable keys", opts: []Option{WithKeys(StaticKeys())}, req: func() *http.Request { return mwGenuine(mwBody) }, want: 503, wantErr: ErrNoUsableKeys},
	}
	for _, name := range headerNames {
		cases = append(cases, mwCase{
			name:    "missing " + name,
			req:     mwMutated(func(h http.Header) { h.Del(name) }),
			want:    400,
			wantErr: ErrMissingHeader,
		}, mwCase{
			name:    "duplicate " + name,
			req:     mwMutated(func(h http.Header) { h.Add(name, "other") }),
			want:    400,
			wantErr: ErrMalformedHeader,
		})
	}
	return cases
}

func TestMiddlewareStatusCodes(t *testing.T) {
	for _, c := range mwCases() {
		t.Run(c.name, func(t *testing.T) {
			rec, next := mwServe(newMWVerifier(c.opts...), c.req())
			if rec.Code != c.want {
				t.Fatalf("status = %d, want %d (body %q)", rec.Code, c.want, rec.Body)
			}
			if c.want == http.StatusOK {
				if n := next.calls.Load(); n != 1 {
					t.Fatalf("genuine delivery: next called %d times, want once", n)
				}
				return
			}
			if n := next.calls.Load(); n != 0 {
				t.Fatalf("rejected request reached next (%d calls)", n)
			}
			// The response is short and generic: the status text only.
			if got, want := rec.Body.String(), http.StatusText(c.want)+"\n"; got != want {
				t.Errorf("response body = %q, want the generic %q", got, want)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type = %q, want text/plain", ct)
			}
			switch c.want {
			case http.StatusMethodNotAllowed:
				if got := rec.Header().Get("Allow"); got != http.MethodPost {
					t.Errorf("405 without Allow: POST (Allow = %q)", got)
				}
			case http.StatusServiceUnavailable:
				if secs, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || secs <= 0 {
					t.Errorf("503 with Retry-After %q, want a positive number of seconds", rec.Header().Get("Retry-After"))
				}
			case http.StatusRequestEntityTooLarge:
				if got := rec.Header().Get("Connection"); got != "close" {
					t.Errorf("413 with Connection %q, want close", got)
				}
			}
		})
	}
}

func TestMiddlewareErrorHandlerGetsSentinel(t *testing.T) {
	for _, c := range mwCases() {
		if c.wantErr == nil {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			var got error
			calls := 0
			onError := WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
				calls++
				got = err
				w.WriteHeader(http.StatusTeapot)
				io.WriteString(w, "custom")
			})
			rec, next := mwServe(newMWVerifier(append(c.opts, onError)...), c.req())
			if calls != 1 {
				t.Fatalf("error handler called %d times, want once", calls)
			}
			if !errors.Is(got, c.wantErr) {
				t.Errorf("error handler got %v, want an error matching %v", got, c.wantErr)
			}
			if code := StatusCode(got); code != c.want {
				t.Errorf("StatusCode(%v) = %d, want %d", got, code, c.want)
			}
			if rec.Code != http.StatusTeapot || rec.Body.String() != "custom" {
				t.Errorf("response = %d %q, want the error handler's 418 \"custom\"", rec.Code, rec.Body)
			}
			if n := next.calls.Load(); n != 0 {
				t.Errorf("rejected request reached next (%d calls) despite the error handler", n)
			}
		})
	}
}

func TestMiddlewareDisconnectWrapsReadError(t *testing.T) {
	r := mwGenuine(mwBody)
	r.Body = io.NopCloser(io.MultiReader(strings.NewReader(mwBody[:20]), iotest.ErrReader(io.ErrUnexpectedEOF)))
	_, err := newMWVerifier().VerifyRequest(r)
	if !errors.Is(err, ErrReadBody) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("VerifyRequest = %v, want ErrReadBody wrapping io.ErrUnexpectedEOF", err)
	}
}

func TestMiddlewareAcceptsGenuineDelivery(t *testing.T) {
	bodies := map[string]func(r *http.Request) *http.Request{
		"Content-Length": func(r *http.Request) *http.Request { return r },
		"chunked": func(r *http.Request) *http.Request {
			return mwChunked(r, iotest.OneByteReader(strings.NewReader(mwBody)))
		},
	}
	for name, shape := range bodies {
		t.Run(name, func(t *testing.T) {
			rec, next := mwServe(newMWVerifier(), shape(mwGenuine(mwBody)))
			if rec.Code != http.StatusOK || rec.Body.String() != "handled" {
				t.Fatalf("genuine delivery answered %d %q, want next's 200 \"handled\"", rec.Code, rec.Body)
			}
			if n := next.calls.Load(); n != 1 {
				t.Fatalf("next called %d times, want once", n)
			}
			if !next.evOK || next.ev == nil {
				t.Fatal("next found no event in the request context")
			}
			ev := next.ev
			if ev.RequestID != mwRequestID || ev.GatewayRequestID != "gw-7" || ev.Status != StatusOK || ev.Error != "" {
				t.Errorf("event = %+v, want request %s, gateway gw-7, status OK, no error", ev, mwRequestID)
			}
			if want := `{"images": [], "seed": 17454220438242315174}`; string(ev.Payload) != want {
				t.Errorf("event payload = %s, want %s", ev.Payload, want)
			}
			if string(next.body) != mwBody {
				t.Errorf("next read body %q, want the original bytes %q", next.body, mwBody)
			}
			if next.length != int64(len(mwBody)) {
				t.Errorf("next saw ContentLength %d, want %d", next.length, len(mwBody))
			}
		})
	}
}

func TestMiddlewareBodyLimit(t *testing.T) {
	const limit = 1024
	big := `{"request_id": "r", "status": "OK", "payload": "` + strings.Repeat("x", 1<<20) + `"}`
	atLimit := `{"request_id": "r", "status": "OK", "payload": "` + strings.Repeat("x", limit-50) + `"}`
	if len(atLimit) != limit {
		t.Fatalf("test setup: body at the limit is %d bytes", len(atLimit))
	}

	t.Run("Content-Length over the limit is rejected unread", func(t *testing.T) {
		cr := &mwCountingReader{r: strings.NewReader(big)}
		r := mwGenuine(big)
		r.Body = io.NopCloser(cr)
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(limit)), r)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("status = %d, want 413", rec.Code)
		}
		if n := cr.n.Load(); n != 0 {
			t.Errorf("read %d body bytes of a request whose Content-Length is over the limit, want 0", n)
		}
		if next.calls.Load() != 0 {
			t.Error("oversized request reached next")
		}
	})
	t.Run("chunked over the limit stops after limit+1 bytes", func(t *testing.T) {
		cr := &mwCountingReader{r: strings.NewReader(big)}
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(limit)), mwChunked(mwGenuine(big), cr))
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("status = %d, want 413", rec.Code)
		}
		if n := cr.n.Load(); n > limit+1 {
			t.Errorf("read %d body bytes, want at most limit+1 = %d", n, limit+1)
		}
		if next.calls.Load() != 0 {
			t.Error("oversized request reached next")
		}
	})
	t.Run("endless chunked body stops after limit+1 bytes", func(t *testing.T) {
		cr := &mwCountingReader{r: mwEndless{}}
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(limit)), mwChunked(mwGenuine(mwBody), cr))
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("status = %d, want 413", rec.Code)
		}
		if n := cr.n.Load(); n > limit+1 {
			t.Errorf("read %d body bytes, want at most limit+1 = %d", n, limit+1)
		}
		if next.calls.Load() != 0 {
			t.Error("oversized request reached next")
		}
	})
	t.Run("Content-Length at the limit passes", func(t *testing.T) {
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(limit)), mwGenuine(atLimit))
		if rec.Code != http.StatusOK || string(next.body) != atLimit {
			t.Fatalf("body of exactly the limit: status %d, next read %d bytes; want 200 and %d bytes", rec.Code, len(next.body), limit)
		}
	})
	t.Run("chunked at the limit passes", func(t *testing.T) {
		r := mwChunked(mwGenuine(atLimit), iotest.HalfReader(strings.NewReader(atLimit)))
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(limit)), r)
		if rec.Code != http.StatusOK || string(next.body) != atLimit {
			t.Fatalf("chunked body of exactly the limit: status %d, next read %d bytes; want 200 and %d bytes", rec.Code, len(next.body), limit)
		}
	})
	t.Run("default limit", func(t *testing.T) {
		r := mwGenuine(mwBody)
		r.ContentLength = defaultMaxBodySize + 1
		rec, _ := mwServe(newMWVerifier(), r)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("Content-Length defaultMaxBodySize+1: status %d, want 413", rec.Code)
		}
	})
	t.Run("no practical limit", func(t *testing.T) {
		rec, next := mwServe(newMWVerifier(WithMaxBodySize(math.MaxInt64)), mwGenuine(mwBody))
		if rec.Code != http.StatusOK || string(next.body) != mwBody {
			t.Fatalf("WithMaxBodySize(math.MaxInt64): status %d, next read %q; want 200 and the body", rec.Code, next.body)
		}
	})
}

// TestVerifyRequestDoesNotTrustContentLength checks that a claimed
// Content-Length does not make the verifier allocate that much before any
// byte, or the signature, has been checked: anyone can send well-formed
// headers and a large Content-Length, then nothing.
func TestVerifyRequestDoesNotTrustContentLength(t *testing.T) {
	v := newMWVerifier()
	r := mwGenuine(mwBody)
	const claimed = defaultMaxBodySize // a lie: the body is short
	r.ContentLength = claimed
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _ = v.VerifyRequest(r)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("a claimed Content-Length of %d bytes made VerifyRequest allocate %d bytes up front", claimed, alloc)
	}
}

func TestVerifyRequestChecksHeadersBeforeBody(t *testing.T) {
	for _, c := range mwCases() {
		if c.want != http.StatusBadRequest && c.wantErr != ErrTimestampOutOfRange && c.want != http.StatusMethodNotAllowed {
			continue
		}
		if errors.Is(c.wantErr, ErrInvalidEvent) || errors.Is(c.wantErr, ErrReadBody) {
			continue // these are about the body
		}
		t.Run(c.name, func(t *testing.T) {
			r := c.req()
			cr := &mwCountingReader{r: strings.NewReader(mwBody)}
			r.Body = io.NopCloser(cr)
			_, err := newMWVerifier(c.opts...).VerifyRequest(r)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("VerifyRequest = %v, want %v", err, c.wantErr)
			}
			if n := cr.n.Load(); n != 0 {
				t.Errorf("read %d body bytes of a request with bad headers, want 0", n)
			}
		})
	}
}

func TestVerifyRequestBodyIsReusable(t *testing.T) {
	r := mwChunked(mwGenuine(mwBody), iotest.OneByteReader(strings.NewReader(mwBody)))
	ev, err := newMWVerifier().VerifyRequest(r)
	if err != nil {
		t.Fatalf("genuine chunked delivery rejected: %v", err)
	}
	if ev.RequestID != mwRequestID {
		t.Errorf("event request id = %q, want %q", ev.RequestID, mwRequestID)
	}
	for i := range 2 {
		got, err := io.ReadAll(r.Body)
		if err != nil || string(got) != mwBody {
			t.Fatalf("read %d of r.Body after VerifyRequest = %q, %v; want the original body", i+1, got, err)
		}
		if r.GetBody == nil {
			t.Fatal("GetBody not set after VerifyRequest")
		}
		if r.Body, err = r.GetBody(); err != nil {
			t.Fatalf("GetBody: %v", err)
		}
	}
	if r.ContentLength != int64(len(mwBody)) {
		t.Errorf("ContentLength after VerifyRequest = %d, want %d", r.ContentLength, len(mwBody))
	}
}

func TestVerifyRequestNoBody(t *testing.T) {
	r := mwGenuine("")
	r.Body = http.NoBody
	_, err := newMWVerifier().VerifyRequest(r)
	if !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("signed empty delivery: VerifyRequest = %v, want ErrInvalidEvent (the signature over the empty body holds)", err)
	}
}

func TestMiddlewareLogsPreciseReason(t *testing.T) {
	cases := []struct {
		name      string
		opts      []Option
		req       func() *http.Request
		level     string
		wantInErr string
	}{
		{"tampered body", nil, func() *http.Request {
			r := mwGenuine(mwBody)
			r.Body = io.NopCloser(strings.NewReader(strings.Replace(mwBody, `"OK"`, `"ERROR"`, 1)))
			return r
		}, "WARN", "signature mismatch"},
		{"stale timestamp", nil, func() *http.Request { return mwSigned(mwSigner, mwNow.Add(-time.Hour), mwBody) }, "WARN", "skew -3600s"},
		{"missing signature", nil, mwMutated(func(h http.Header) { h.Del(HeaderSignature) }), "WARN", "missing header: " + HeaderSignature},
		{"keys unavailable", []Option{WithKeys(mwKeySource(func(context.Context) error {
			return fmt.Errorf("%w: key server down", ErrKeysUnavailable)
		}))}, func() *http.Request { return mwGenuine(mwBody) }, "ERROR", "key server down"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			var handled error
			opts := append(c.opts,
				WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))),
				WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
					handled = err
					w.WriteHeader(StatusCode(err))
				}))
			mwServe(newMWVerifier(opts...), c.req())

			var rec struct {
				Level     string `json:"level"`
				Msg       string `json:"msg"`
				Status    int    `json:"status"`
				Err       string `json:"err"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
				t.Fatalf("want exactly one JSON log record, got %q: %v", logs.String(), err)
			}
			if rec.Level != c.level {
				t.Errorf("logged at %s, want %s", rec.Level, c.level)
			}
			if rec.Err != handled.Error() || !strings.Contains(rec.Err, c.wantInErr) {
				t.Errorf("logged err %q, want the precise error %q (containing %q)", rec.Err, handled, c.wantInErr)
			}
			if rec.Status != StatusCode(handled) {
				t.Errorf("logged status %d, want %d", rec.Status, StatusCode(handled))
			}
			if rec.RequestID != mwRequestID {
				t.Errorf("logged request_id %q, want %q", rec.RequestID, mwRequestID)
			}
		})
	}

	t.Run("accepted delivery logs nothing", func(t *testing.T) {
		var logs bytes.Buffer
		rec, _ := mwServe(newMWVerifier(WithLogger(slog.New(slog.NewJSONHandler(&logs, nil)))), mwGenuine(mwBody))
		if rec.Code != http.StatusOK || logs.Len() != 0 {
			t.Errorf("genuine delivery: status %d, logged %q; want 200 and no log", rec.Code, logs.String())
		}
	})
	t.Run("the response never carries the reason", func(t *testing.T) {
		var logs bytes.Buffer
		rec, _ := mwServe(newMWVerifier(WithLogger(slog.New(slog.NewJSONHandler(&logs, nil)))), mwSigned(mwForger, mwNow, mwBody))
		if strings.Contains(rec.Body.String(), "falwebhook") || strings.Contains(rec.Body.String(), "mismatch") {
			t.Errorf("response body %q leaks the internal error", rec.Body)
		}
	})
}

func TestHandlerEventHandlerFunc(t *testing.T) {
	v := newMWVerifier()
	var got *Event
	calls := 0
	h := v.Handler(func(w http.ResponseWriter, r *http.Request, ev *Event) {
		calls++
		got = ev
		if ctxEv, ok := EventFromContext(r.Context()); !ok || ctxEv != ev {
			t.Error("the event passed to the EventHandlerFunc is not the one in the request context")
		}
		w.WriteHeader(http.StatusAccepted)
	})

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, mwGenuine(mwBody))
	if rec.Code != http.StatusAccepted || calls != 1 {
		t.Fatalf("genuine delivery: status %d, %d calls; want 202 from the handler, 1 call", rec.Code, calls)
	}
	if got == nil || got.RequestID != mwRequestID || got.Status != StatusOK {
		t.Fatalf("handler got event %+v, want request %s with status OK", got, mwRequestID)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, mwSigned(mwForger, mwNow, mwBody))
	if rec.Code != http.StatusUnauthorized || calls != 1 {
		t.Fatalf("forged delivery: status %d, %d calls; want 401 and the handler not called", rec.Code, calls)
	}
}

func TestHandlerEventFromContext(t *testing.T) {
	if ev, ok := EventFromContext(context.Background()); ok || ev != nil {
		t.Errorf("EventFromContext(empty) = %v, %v; want nil, false", ev, ok)
	}
	if ev, ok := EventFromContext(newContext(context.Background(), nil, "")); ok || ev != nil {
		t.Errorf("EventFromContext(newContext(nil)) = %v, %v; want nil, false", ev, ok)
	}
	// A look-alike key from another package cannot forge a verified event.
	type contextKey struct{ name string }
	forged := context.WithValue(context.Background(), contextKey{"falwebhook event"}, &Event{RequestID: "x"})
	if _, ok := EventFromContext(forged); ok {
		t.Error("an event stored under a look-alike key was taken as verified")
	}
	want := &Event{RequestID: "r", Status: StatusOK}
	if ev, ok := EventFromContext(newContext(context.Background(), want, "r")); !ok || ev != want {
		t.Errorf("EventFromContext(newContext(ev)) = %v, %v; want ev, true", ev, ok)
	}
}

func TestMiddlewareKeyServerDown(t *testing.T) {
	ks := faltest.NewKeyServer(mwSigner)
	defer ks.Close()
	var now atomic.Int64
	now.Store(mwNow.Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock}), WithClock(clock))

	// Junk costs no fetch: the cheap checks come first.
	for _, c := range mwCases() {
		if c.opts != nil || (c.want != 400 && c.want != 405 && c.wantErr != ErrTimestampOutOfRange) ||
			errors.Is(c.wantErr, ErrInvalidEvent) || errors.Is(c.wantErr, ErrReadBody) {
			continue
		}
		if rec, _ := mwServe(v, c.req()); rec.Code != c.want {
			t.Errorf("%s: status %d, want %d", c.name, rec.Code, c.want)
		}
	}
	if n := ks.Fetches(); n != 0 {
		t.Fatalf("junk requests caused %d JWKS fetches, want 0", n)
	}

	ks.FailNext(1, http.StatusInternalServerError)
	rec, next := mwServe(v, mwGenuine(mwBody))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("key server down: status %d, want 503", rec.Code)
	}
	if rec.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if next.calls.Load() != 0 {
		t.Error("delivery reached next although no key could verify it")
	}
	if n := ks.Fetches(); n != 1 {
		t.Fatalf("%d JWKS fetches, want 1", n)
	}

	// Inside the cooldown no new fetch is tried; after it, the keys come.
	if rec, _ := mwServe(v, mwGenuine(mwBody)); rec.Code != http.StatusServiceUnavailable || ks.Fetches() != 1 {
		t.Fatalf("inside the cooldown: status %d after %d fetches, want 503 after 1", rec.Code, ks.Fetches())
	}
	now.Add(int64(time.Minute/time.Second) + 1)
	rec, next = mwServe(v, mwGenuine(mwBody))
	if rec.Code != http.StatusOK || next.calls.Load() != 1 {
		t.Fatalf("key server back: status %d, next called %d times; want 200 and 1", rec.Code, next.calls.Load())
	}
	if n := ks.Fetches(); n != 2 {
		t.Errorf("%d JWKS fetches, want 2", n)
	}
}

func TestMiddlewareConcurrent(t *testing.T) {
	const n = 100
	run := func(t *testing.T, v *Verifier) {
		var calls, mixups atomic.Int64
		h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			ev, _ := EventFromContext(r.Context())
			body, _ := io.ReadAll(r.Body)
			if ev == nil || ev.RequestID != r.Header.Get(HeaderRequestID) ||
				!bytes.Contains(body, []byte(`"`+ev.RequestID+`"`)) {
				mixups.Add(1)
			}
		}))
		var codes [600]atomic.Int64
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				body := fmt.Sprintf(`{"request_id": "req-%03d", "status": "OK", "payload": {"i": %d}}`, i, i)
				var r *http.Request
				switch i % 4 {
				case 0, 2:
					r = mwGenuine(body)
				case 1:
					r = mwSigned(mwForger, mwNow, body)
				case 3:
					r = mwGenuine(body)
					r.Body = io.NopCloser(strings.NewReader(strings.Replace(body, `"i": `, `"i": 1`, 1)))
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				codes[rec.Code].Add(1)
			})
		}
		wg.Wait()
		if got := calls.Load(); got != n/2 {
			t.Errorf("next called %d times, want exactly %d (one per genuine delivery)", got, n/2)
		}
		if got := mixups.Load(); got != 0 {
			t.Errorf("%d requests saw another request's event or body", got)
		}
		if ok, unauth := codes[200].Load(), codes[401].Load(); ok != n/2 || unauth != n/2 {
			t.Errorf("answered 200 %d times and 401 %d times, want %d each", ok, unauth, n/2)
		}
	}

	t.Run("static keys", func(t *testing.T) { run(t, newMWVerifier()) })
	t.Run("JWKS on a cold cache", func(t *testing.T) {
		ks := faltest.NewKeyServer(mwSigner)
		defer ks.Close()
		// The keys are fetched a second after the deliveries were signed, so
		// they cannot be missing a genuine key: the forgeries are 401, not
		// ErrKeyNotFetched.
		later := func() time.Time { return mwNow.Add(time.Second) }
		run(t, NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: later}), WithClock(mwClock)))
		if got := ks.Fetches(); got != 1 {
			t.Errorf("%d JWKS fetches for %d concurrent deliveries, want 1", got, n)
		}
	})
}

func TestMiddlewareRealServer(t *testing.T) {
	var got atomic.Pointer[Event]
	srv := httptest.NewServer(newMWVerifier().Handler(func(w http.ResponseWriter, r *http.Request, ev *Event) {
		body, _ := io.ReadAll(r.Body)
		if string(body) != mwBody {
			http.Error(w, "body changed", http.StatusInternalServerError)
			return
		}
		got.Store(ev)
		io.WriteString(w, "thanks")
	}))
	defer srv.Close()
	url := srv.URL + "/fal/webhook"

	post := func(t *testing.T, s *faltest.Signer, chunked bool) (int, string) {
		t.Helper()
		req, err := s.NewClientRequest(t.Context(), url, faltest.Delivery{Time: mwNow, Body: []byte(mwBody)})
		if err != nil {
			t.Fatal(err)
		}
		if chunked {
			req.Body = io.NopCloser(iotest.HalfReader(strings.NewReader(mwBody)))
			req.ContentLength = 0 // unknown: sent chunked
			req.GetBody = nil
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			got.Store(nil)
			if code, body := post(t, mwSigner, chunked); code != http.StatusOK || body != "thanks" {
				t.Fatalf("genuine delivery: %d %q, want 200 \"thanks\"", code, body)
			}
			if ev := got.Load(); ev == nil || ev.RequestID != mwRequestID {
				t.Fatalf("handler saw event %+v, want request %s", ev, mwRequestID)
			}
			got.Store(nil)
			if code, _ := post(t, mwForger, chunked); code != http.StatusUnauthorized {
				t.Fatalf("forged delivery: status %d, want 401", code)
			}
			if got.Load() != nil {
				t.Fatal("forged delivery reached the handler")
			}
		})
	}

	t.Run("GET", func(t *testing.T) {
		resp, err := srv.Client().Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
			t.Fatalf("GET: %d with Allow %q, want 405 with Allow: POST", resp.StatusCode, resp.Header.Get("Allow"))
		}
	})
}

func TestStatusCode(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, http.StatusOK},
		{ErrMethodNotAllowed, http.StatusMethodNotAllowed},
		{ErrBodyTooLarge, http.StatusRequestEntityTooLarge},
		{ErrMissingHeader, http.StatusBadRequest},
		{ErrMalformedHeader, http.StatusBadRequest},
		{ErrInvalidEvent, http.StatusBadRequest},
		{ErrReadBody, http.StatusBadRequest},
		{ErrTimestampOutOfRange, http.StatusUnauthorized},
		{&TimestampError{Timestamp: 0, Skew: -mwNow.Unix(), Tolerance: 5 * time.Minute}, http.StatusUnauthorized},
		{fmt.Errorf("%w: claim: down", ErrDedupeStore), http.StatusServiceUnavailable},
		{ErrSignatureMismatch, http.StatusUnauthorized},
		{ErrUnexpectedUser, http.StatusForbidden},
		{ErrKeysUnavailable, http.StatusServiceUnavailable},
		{ErrNoUsableKeys, http.StatusServiceUnavailable},
		// A fetch error reaches callers wrapped in ErrKeysUnavailable; on its
		// own it is not a verification outcome.
		{fmt.Errorf("%w: %w", ErrKeysUnavailable, ErrMalformedJWKS), http.StatusServiceUnavailable},
		// A mismatch whose key refresh failed may be a key rotation: retry.
		{fmt.Errorf("%w: refresh failed: %w", ErrSignatureMismatch, ErrKeysUnavailable), http.StatusServiceUnavailable},
		// Not verification errors: anything else is 500.
		{ErrMalformedJWKS, http.StatusInternalServerError},
		{ErrNoPayload, http.StatusInternalServerError},
		{ErrInvalidPayload, http.StatusInternalServerError},
		{ErrRequestFailed, http.StatusInternalServerError},
		{&RequestError{RequestID: "r", Status: StatusError}, http.StatusInternalServerError},
		{context.Canceled, http.StatusInternalServerError},
		{errors.New("falwebhook: signature mismatch"), http.StatusInternalServerError}, // same text, not the sentinel
	}
	for _, c := range cases {
		name := "nil"
		if c.err != nil {
			name = c.err.Error()
		}
		t.Run(name, func(t *testing.T) {
			if got := StatusCode(c.err); got != c.want {
				t.Errorf("StatusCode(%v) = %d, want %d", c.err, got, c.want)
			}
			if c.err == nil {
				return
			}
			wrapped := fmt.Errorf("handling delivery: %w", fmt.Errorf("%w: detail", c.err))
			if got := StatusCode(wrapped); got != c.want {
				t.Errorf("StatusCode(%v) = %d, want %d", wrapped, got, c.want)
			}
			joined := errors.Join(errors.New("context"), c.err)
			if got := StatusCode(joined); got != c.want {
				t.Errorf("StatusCode(errors.Join(..., %v)) = %d, want %d", c.err, got, c.want)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	for _, tt := range []struct {
		err    error
		code   int
		header string
	}{
		{fmt.Errorf("%w: detail that must not leak", ErrKeysUnavailable), http.StatusServiceUnavailable, "Retry-After"},
		{fmt.Errorf("%w: GET", ErrMethodNotAllowed), http.StatusMethodNotAllowed, "Allow"},
		{fmt.Errorf("%w: detail that must not leak", ErrSignatureMismatch), http.StatusUnauthorized, ""},
	} {
		rec := httptest.NewRecorder()
		WriteError(rec, tt.err)
		if rec.Code != tt.code {
			t.Errorf("%v: status %d, want %d", tt.err, rec.Code, tt.code)
		}
		if tt.header != "" && rec.Header().Get(tt.header) == "" {
			t.Errorf("%v: no %s header", tt.err, tt.header)
		}
		if strings.Contains(rec.Body.String(), "leak") {
			t.Errorf("%v: response reveals the detail: %q", tt.err, rec.Body.String())
		}
	}
}

// TestAnswer checks the answer for each outcome, as code without an
// http.ResponseWriter writes it, and that WriteError writes the same.
func TestAnswer(t *testing.T) {
	for _, tt := range []struct {
		state  ClaimState
		err    error
		code   int
		header map[string]string
	}{
		{0, nil, 200, nil},
		{ClaimAcquired, nil, 200, nil},
		{ClaimCompleted, nil, 200, map[string]string{HeaderDuplicate: "completed"}},
		{ClaimInProgress, nil, 409, map[string]string{HeaderDuplicate: "in-progress", "Retry-After": "60"}},
		{ClaimAcquired, errors.New("handler failed"), 500, nil},
		{0, fmt.Errorf("%w: claim: down", ErrDedupeStore), 503, map[string]string{"Retry-After": "60"}},
		{0, ErrKeysUnavailable, 503, map[string]string{"Retry-After": "60"}},
		{0, ErrOverloaded, 503, map[string]string{"Retry-After": "60", "Connection": "close"}},
		{0, ErrMethodNotAllowed, 405, map[string]string{"Allow": "POST"}},
		{0, ErrBodyTooLarge, 413, map[string]string{"Connection": "close"}},
		{0, ErrReadBody, 400, map[string]string{"Connection": "close"}},
		{0, ErrSignatureMismatch, 401, nil},
		{0, ErrUnexpectedUser, 403, nil},
	} {
		code, h := Answer(tt.state, tt.err)
		if code != tt.code || len(h) != len(tt.header) {
			t.Errorf("Answer(%d, %v) = %d %v, want %d %v", tt.state, tt.err, code, h, tt.code, tt.header)
			continue
		}
		for k, v := range tt.header {
			if h.Get(k) != v {
				t.Errorf("Answer(%d, %v): %s %q, want %q", tt.state, tt.err, k, h.Get(k), v)
			}
		}
		if tt.state == 0 && tt.err != nil {
			w := httptest.NewRecorder()
			WriteError(w, tt.err)
			for k, v := range tt.header {
				if w.Header().Get(k) != v || w.Code != code {
					t.Errorf("WriteError(%v): %d %v, want what Answer gives", tt.err, w.Code, w.Header())
				}
			}
		}
	}
}

// TestVerifyLogsAndBoundsBody checks that Verify, like the middleware, logs
// a rejection and refuses a body over the limit.
func TestVerifyLogsAndBoundsBody(t *testing.T) {
	var logs bytes.Buffer
	v := newMWVerifier(WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))), WithMaxBodySize(64))
	r := mwGenuine(mwBody)
	body, _ := io.ReadAll(r.Body)
	if _, err := v.Verify(context.Background(), r.Header, body); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("Verify of a %d-byte body with a 64-byte limit: %v, want ErrBodyTooLarge", len(body), err)
	}
	if !strings.Contains(logs.String(), `"msg":"falwebhook: rejected delivery"`) || !strings.Contains(logs.String(), `"status":413`) {
		t.Errorf("Verify's rejection was not logged: %s", logs.String())
	}
}

// A forger's request id reaches the log bounded: a 1 MB id logs at most
// 128 bytes of it and its length.
func TestRejectionLogClipsRequestID(t *testing.T) {
	var logs strings.Builder
	v := NewVerifier(WithKeys(StaticKeys(make([]byte, 32))), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("handler called") }))
	id := "a" + strings.Repeat("é", 499_999) + "b" // 1 MB; byte 128 is inside a character
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
	r.Header.Set(HeaderRequestID, id)
	h.ServeHTTP(httptest.NewRecorder(), r)
	out := logs.String()
	if len(out) > 2048 || !strings.Contains(out, "a"+strings.Repeat("é", 63)+"…(1000000 bytes)") {
		t.Fatalf("log line of %d bytes, want the id clipped to 128 bytes with its length: %.300s", len(out), out)
	}
}
