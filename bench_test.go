package falwebhook

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// The benchmarks come in pairs: each Verify benchmark has a floor, the
// unavoidable work (sha256 of the body plus one ed25519.Verify), measured in
// the same file on the same machine. Ratios to the floor are the figures the
// README reports; compare them with
//
//	go test -run '^$' -bench . -benchmem -count 6 | tee bench.txt
//
// Targets: Verify within 5% of its floor at 1 KiB and 1 MiB with at most one
// allocation; three keys within 15% of one key; the middleware at most 1.25×
// Verify.

var benchTime = time.Unix(1_700_000_000, 0)

// benchBody returns a fal-shaped OK body of exactly n bytes (n >= 80),
// or an empty body for n == 0.
func benchBody(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	const head, tail = `{"error": null, "payload": {"pad": "`, `"}, "request_id": "bench-request", "status": "OK"}`
	return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
}

// benchFloor is the cost floor of verifying body: hash it, build the
// message, verify one signature.
func benchFloor(b *testing.B, size int) {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(size)
	hs := s.Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	sig, _ := hex.DecodeString(hs.Signature)
	pub := s.PublicKey()
	prefix := []byte(hs.RequestID + "\n" + hs.UserID + "\n" + hs.Timestamp + "\n")
	msg := make([]byte, 0, len(prefix)+64)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sum := sha256.Sum256(body)
		msg = hex.AppendEncode(append(msg[:0], prefix...), sum[:])
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("floor: signature does not verify")
		}
	}
}

// benchVerify measures Verify with a warm JWKS cache holding the keys of
// nkeys signers, deliveries signed by the last one.
func benchVerify(b *testing.B, size, nkeys int) {
	var signers []*faltest.Signer
	for i := 1; i <= nkeys; i++ {
		signers = append(signers, faltest.SignerFromName(fmt.Sprintf("bench-%d", i)))
	}
	ks := faltest.NewKeyServer(signers...)
	defer ks.Close()
	v := NewVerifier(WithJWKSURL(ks.URL), WithHTTPClient(ks.Client()), WithClock(func() time.Time { return benchTime }))
	body := benchBody(size)
	h := http.Header{}
	signers[nkeys-1].Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body}).Set(h)
	ctx := context.Background()
	if err := v.Verify(ctx, h, body); err != nil { // warm the cache
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.Verify(ctx, h, body); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if f := ks.Fetches(); f != 1 {
		b.Fatalf("warm cache fetched the JWKS %d times, want 1", f)
	}
}

func BenchmarkFloor1KiB(b *testing.B)        { benchFloor(b, 1<<10) }
func BenchmarkVerify1KiB(b *testing.B)       { benchVerify(b, 1<<10, 1) }
func BenchmarkVerify1KiB3Keys(b *testing.B)  { benchVerify(b, 1<<10, 3) }
func BenchmarkFloor1MiB(b *testing.B)        { benchFloor(b, 1<<20) }
func BenchmarkVerify1MiB(b *testing.B)       { benchVerify(b, 1<<20, 1) }
func BenchmarkFloorEmptyBody(b *testing.B)   { benchFloor(b, 0) }
func BenchmarkVerifyEmptyBody(b *testing.B)  { benchVerify(b, 0, 1) }
func BenchmarkMiddleware(b *testing.B)       { benchMiddleware(b, nil) }
func BenchmarkMiddlewareReject(b *testing.B) { benchMiddlewareReject(b) }

// benchWriter is a ResponseWriter that keeps only the status.
type benchWriter struct {
	h    http.Header
	code int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }

// rewindBody is a request body that can be rewound without allocating.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

// benchMiddleware measures one verified 1 KiB delivery through the
// middleware to a handler that reads the body, in process.
func benchMiddleware(b *testing.B, opts []Option) {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(1 << 10)
	opts = append([]Option{WithKeys(s.PublicKey()), WithClock(func() time.Time { return benchTime })}, opts...)
	v := NewVerifier(opts...)
	var seen int
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		seen += int(n)
		w.WriteHeader(http.StatusNoContent)
	}))
	req := s.NewRequest("/webhook", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	rb := &rewindBody{}
	w := &benchWriter{h: http.Header{}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rb.Reset(body)
		req.Body = rb
		req.ContentLength = int64(len(body))
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.code)
		}
	}
	b.StopTimer()
	if seen != b.N*len(body) {
		b.Fatalf("handler read %d bytes, want %d", seen, b.N*len(body))
	}
}

// benchMiddlewareReject measures the cost of turning away junk: a request
// with a malformed signature never reaches the key source or the body.
func benchMiddlewareReject(b *testing.B) {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(1 << 10)
	v := NewVerifier(WithKeys(s.PublicKey()), WithClock(func() time.Time { return benchTime }))
	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		b.Fatal("junk reached the handler")
	}))
	req := s.NewRequest("/webhook", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	req.Header.Set(HeaderSignature, "not-hex")
	rb := &rewindBody{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rb.Reset(body)
		req.Body = rb
		w := &benchWriter{h: http.Header{}}
		h.ServeHTTP(w, req)
		if w.code != http.StatusBadRequest {
			b.Fatalf("status %d, want 400", w.code)
		}
	}
}
