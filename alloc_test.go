package falwebhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// TestMiddlewareAllocations pins the allocations of one verified 1 KiB
// delivery through the middleware: the request and context values net/http
// requires (Request.WithContext, context.WithValue), the delivery's state
// in one piece, the GetBody method value, the body bytes, and the signed
// message buffer.
func TestMiddlewareAllocations(t *testing.T) {
	s := faltest.SignerFromName("alloc")
	body := benchBody(1 << 10)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime }))
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	req := s.NewRequest("/webhook", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	header := req.Header
	rb := &rewindBody{}
	w := &benchWriter{h: http.Header{}}
	allocs := testing.AllocsPerRun(200, func() {
		rb.Reset(body)
		r := *req
		r.Header, r.Body, r.ContentLength = header, rb, int64(len(body))
		w.code = 0
		h.ServeHTTP(w, &r)
		if w.code != http.StatusNoContent {
			t.Fatalf("status %d, want 204", w.code)
		}
	})
	// The copy of req above is one more.
	const want = 6 + 1
	if allocs > want {
		t.Errorf("%.1f allocations per delivery, want at most %d", allocs, want)
	}
}

// TestParseEventKeysDoNotAllocate checks that members are matched without
// allocating: unknown members, even with keys close to the known ones, cost
// nothing, and known keys cost only their values.
func TestParseEventKeysDoNotAllocate(t *testing.T) {
	base := `"request_id":"r1","status":"OK","payload":{"k":[1,2,{"x":"y"}]}`
	var extra strings.Builder
	for _, k := range []string{"request_i", "request_idd", "Status", "payload_", "x", "gateway_request", "error_", "a\u00e9b"} {
		extra.WriteString(`"` + k + `":{"request_id":"r2","status":[null,true,1.5e3]},`)
	}
	allocs := func(body string) float64 {
		b := []byte(body)
		return testing.AllocsPerRun(100, func() {
			if _, err := ParseEvent(b); err != nil {
				t.Fatal(err)
			}
		})
	}
	plain, withExtra := allocs(`{`+base+`}`), allocs(`{`+extra.String()+base+`}`)
	if withExtra != plain {
		t.Errorf("%d unknown members took %.1f allocations more", 8, withExtra-plain)
	}
	// The event, the request id and the payload's copy; "OK" is a constant.
	if plain > 3 {
		t.Errorf("ParseEvent: %.1f allocations, want at most 3", plain)
	}
}

// TestVerifyRequestEventRequestID checks that the body's request_id must
// equal the signed header, compared as decoded JSON, and that the event's
// request id is then that value (the header's string is reused when spelled
// the same).
func TestVerifyRequestEventRequestID(t *testing.T) {
	s := faltest.SignerFromName("ids")
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime }))
	for _, tt := range []struct {
		header, bodyID string
		ok             bool
	}{
		{"r1", `"r1"`, true},
		{"r1", `"r\u0031"`, true},
		{"ré", `"ré"`, true},
		{"r1", `"r2"`, false},
		{`r\u0031`, `"r\u0031"`, false},
		{"r1", `"r1 "`, false},
		{"r1", `"R1"`, false},
	} {
		body := []byte(`{"request_id":` + tt.bodyID + `,"status":"OK"}`)
		for _, entry := range []string{"VerifyRequest", "Verify"} {
			r := s.NewRequest("/", faltest.Delivery{RequestID: tt.header, Time: benchTime, Body: body})
			var ev *Event
			var err error
			if entry == "Verify" {
				ev, err = v.Verify(context.Background(), r.Header, body)
			} else {
				ev, err = v.VerifyRequest(r)
			}
			if !tt.ok {
				if !errors.Is(err, ErrInvalidEvent) || StatusCode(err) != http.StatusBadRequest {
					t.Errorf("%s: header %q, body id %s: got %v, want ErrInvalidEvent (400): the body names another request than the signed header", entry, tt.header, tt.bodyID, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: header %q, body id %s: %v", entry, tt.header, tt.bodyID, err)
			}
			if ev.RequestID != tt.header {
				t.Errorf("%s: header %q, body id %s: event request id %q, want %q", entry, tt.header, tt.bodyID, ev.RequestID, tt.header)
			}
		}
	}
}

// TestVerifyRequestGetBodyIndependent checks that the readers GetBody hands
// out each read the whole body, whatever the others did.
func TestVerifyRequestGetBodyIndependent(t *testing.T) {
	s := faltest.SignerFromName("getbody")
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime }))
	body := benchBody(1 << 10)
	r := s.NewRequest("/", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	if _, err := v.VerifyRequest(r); err != nil {
		t.Fatal(err)
	}
	half := make([]byte, len(body)/2)
	if _, err := io.ReadFull(r.Body, half); err != nil {
		t.Fatal(err)
	}
	a, _ := r.GetBody()
	b, _ := r.GetBody()
	if _, err := io.ReadFull(a, half); err != nil {
		t.Fatal(err)
	}
	for name, rc := range map[string]io.ReadCloser{"r.Body": r.Body, "second GetBody": b, "first GetBody": a} {
		if err := rc.Close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
	}
	rest, _ := io.ReadAll(r.Body)
	whole, _ := io.ReadAll(b)
	restA, _ := io.ReadAll(a)
	if !bytes.Equal(rest, body[len(half):]) || !bytes.Equal(whole, body) || !bytes.Equal(restA, body[len(half):]) {
		t.Errorf("readers share state: r.Body rest %d bytes, second GetBody %d bytes, first GetBody rest %d bytes; want %d, %d, %d",
			len(rest), len(whole), len(restA), len(body)-len(half), len(body), len(body)-len(half))
	}
}

// TestReadBodyRecyclesChunks checks that reading bodies into pooled chunks
// allocates nothing once the pools are warm.
func TestReadBodyRecyclesChunks(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	v := NewVerifier()
	data := bytes.Repeat([]byte("x"), 100<<10) // 16 + 32 + 64 KiB chunks
	br := &rewindBody{}
	req := httptest.NewRequest(http.MethodPost, "/", nil)
	var b body
	allocs := testing.AllocsPerRun(50, func() {
		br.Reset(data)
		req.Body, req.ContentLength = br, -1
		if err := v.readBody(req, &b); err != nil {
			t.Fatal(err)
		}
		b.free(v)
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per pooled body read", allocs)
	}
}

// TestMiddlewarePayloadNotReused checks that the event and the fresh body
// the middleware hands on keep their bytes after later deliveries, of every
// shape (in the head, one buffer by Content-Length, pooled chunks without
// it): nothing they share is given back to a pool and written again.
func TestMiddlewarePayloadNotReused(t *testing.T) {
	s := faltest.SignerFromName("alias")
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime }))
	type kept struct {
		payload, body []byte
		ev            *Event
	}
	var got kept
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := EventFromContext(r.Context())
		b, _ := io.ReadAll(r.Body)
		got = kept{payload: ev.Payload, body: b, ev: ev}
	}))
	deliver := func(size int, fill byte, withLength bool) kept {
		body := bytes.Replace(benchBody(size), []byte("x"), []byte{fill}, -1)
		req := s.NewRequest("/", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = -1
		if withLength {
			req.ContentLength = int64(len(body))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Fatalf("%d bytes: status %d", size, w.Code)
		}
		return got
	}
	for _, size := range []int{200, 1500, 2 << 10, 16 << 10, 100 << 10, 1 << 20} {
		for _, withLength := range []bool{true, false} {
			first := deliver(size, 'a', withLength)
			want := append([]byte(nil), first.payload...)
			for range 4 {
				deliver(size, 'b', withLength)
				deliver(size, 'c', !withLength)
			}
			if !bytes.Equal(first.payload, want) || bytes.IndexByte(first.ev.Payload, 'b') >= 0 || bytes.IndexByte(first.ev.Payload, 'c') >= 0 {
				t.Errorf("%d bytes (Content-Length %v): the event's payload was overwritten by later deliveries", size, withLength)
			}
			if !bytes.Contains(first.ev.Payload, []byte("aaaa")) {
				t.Errorf("%d bytes (Content-Length %v): the payload is not the delivery's", size, withLength)
			}
		}
	}
}
