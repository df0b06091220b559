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
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// Each benchmark is measured against a floor: the unavoidable work of a
// plain verifier built on the standard library, hashing the body with
// crypto/sha256 and checking one signature with crypto/ed25519.Verify, on
// the same machine. Keys are prepared once per key set (internal/edkey), so
// the library can beat its floor. Targets:
//
//	Verify, 1 KiB, 1 key, warm cache   at most 0.60 × its floor (the event parse included)
//	Middleware, 1 KiB                  at most 0.70 × the same floor
//	Verify, 3 keys, signed by the 3rd  at most 1.05 × the 1-key case
//	Verify, 1 MiB                      at most 1.05 × its floor (sha256-bound; the scan alone is Scan1MiB)
//	Middleware with in-memory dedupe   at most 1.05 × Middleware
//
// Built with -tags falwebhook_stdlib, Verify uses crypto/ed25519 and sits at
// about 1.0 × its floor.
//
// The BenchmarkRatio* benchmarks measure each target directly: every
// iteration runs the baseline and the measured operation back to back, in
// alternating order, and reports the ratio of their median times as a
// metric (x-floor, x-1key, x-nodedupe), and of their total times
// (x-floor-total, ...). Interleaving cancels the drift of a shared machine,
// which two separate benchmarks would each absorb differently; medians also
// cancel the iterations it interrupted. The plain benchmarks give the
// absolute ns/op and allocations:
//
//	go test -run '^$' -bench . -benchmem -count 6 .
//	go test -run '^$' -bench Ratio -count 6 -tags falwebhook_stdlib .

var benchTime = time.Unix(1_700_000_000, 0)

// benchBody returns a fal-shaped OK body of exactly n bytes (n >= 80), or
// an empty body for n == 0.
func benchBody(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	const head, tail = `{"error": null, "payload": {"pad": "`, `"}, "request_id": "bench-request", "status": "OK"}`
	return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
}

// newFloor returns the floor operation for a body of size bytes: hash it,
// build the message, verify one signature.
func newFloor(b *testing.B, size int) func() {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(size)
	hs := s.Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	sig, _ := hex.DecodeString(hs.Signature)
	pub := s.PublicKey()
	prefix := []byte(hs.RequestID + "\n" + hs.UserID + "\n" + hs.Timestamp + "\n")
	msg := make([]byte, 0, len(prefix)+64)
	return func() {
		sum := sha256.Sum256(body)
		msg = hex.AppendEncode(append(msg[:0], prefix...), sum[:])
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("floor: signature does not verify")
		}
	}
}

// newVerify returns Verify of a size-byte delivery against a warm JWKS cache
// holding nkeys keys, the delivery signed by the last one.
func newVerify(b *testing.B, size, nkeys int) func() {
	var signers []*faltest.Signer
	for i := 1; i <= nkeys; i++ {
		signers = append(signers, faltest.SignerFromName(fmt.Sprintf("bench-%d", i)))
	}
	ks := faltest.NewKeyServer(signers...)
	b.Cleanup(ks.Close)
	clock := func() time.Time { return benchTime }
	v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Client: ks.Client(), Clock: clock}), WithClock(clock))
	body := benchBody(size)
	h := http.Header{}
	signers[nkeys-1].Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body}).Set(h)
	ctx := context.Background()
	if _, err := v.Verify(ctx, h, body); err != nil { // warm the cache
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if f := ks.Fetches(); f != 1 {
			b.Errorf("warm cache fetched the JWKS %d times, want 1", f)
		}
	})
	return func() {
		if _, err := v.Verify(ctx, h, body); err != nil {
			b.Fatal(err)
		}
	}
}

// benchWriter is a ResponseWriter that keeps only the status.
type benchWriter struct {
	h    http.Header
	code int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }

// SetReadDeadline accepts the deadline, as a server's ResponseWriter does
// (through http.ResponseController).
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

// rewindBody is a request body that can be rewound without allocating.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

// newMiddleware returns one verified 1 KiB delivery through the middleware,
// in process, to a handler that reads the body and answers 204. With n > 0,
// the calls cycle through n distinct request ids signed beforehand, so that
// dedupe (with a store) claims and completes every time, and the baseline
// (without) verifies the very same signatures.
func newMiddleware(b *testing.B, dedupe bool, n int) func() {
	return newMiddlewareSize(b, 1<<10, dedupe, n)
}

// newMiddlewareSize is newMiddleware with a body of size bytes.
func newMiddlewareSize(b *testing.B, size int, dedupe bool, n int) func() {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(size)
	opts := []Option{WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime })}
	headers := []http.Header{{}}
	s.Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body}).Set(headers[0])
	if n > 0 {
		headers = make([]http.Header, n)
		for i := range headers {
			headers[i] = http.Header{}
			s.Sign(faltest.Delivery{RequestID: fmt.Sprintf("bench-%08d", i), Time: benchTime, Body: body}).Set(headers[i])
		}
	}
	v := NewVerifier(opts...)
	read := 0
	var next http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		read += int(n)
		w.WriteHeader(http.StatusNoContent)
	})
	if dedupe {
		next = (&Dedupe{}).Middleware(next)
	}
	h := v.Middleware(next)
	req := httptest.NewRequest(http.MethodPost, "/webhook", nil)
	rb := &rewindBody{}
	w := &benchWriter{h: http.Header{}}
	calls := 0
	b.Cleanup(func() {
		if read != calls*len(body) {
			b.Errorf("handler read %d bytes in %d calls, want %d", read, calls, calls*len(body))
		}
	})
	return func() {
		rb.Reset(body)
		req.Body = rb
		req.ContentLength = int64(len(body))
		req.Header = headers[calls%len(headers)]
		calls++
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.code)
		}
	}
}

// run runs op b.N times as the benchmark's body.
func run(b *testing.B, n int, op func()) {
	op() // warm up
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op()
	}
}

// ratio runs base and op b.N times each, interleaved, and reports the
// median time of op over the median time of base as the metric unit, and
// the ratio of their total times as unit+"-total". The medians shrug off
// the iterations a busy machine interrupted, which the totals absorb.
func ratio(b *testing.B, unit string, base, op func()) {
	base()
	op()
	tb := make([]time.Duration, 0, b.N)
	to := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			t0 := time.Now()
			base()
			t1 := time.Now()
			op()
			t2 := time.Now()
			tb, to = append(tb, t1.Sub(t0)), append(to, t2.Sub(t1))
		} else {
			t0 := time.Now()
			op()
			t1 := time.Now()
			base()
			t2 := time.Now()
			to, tb = append(to, t1.Sub(t0)), append(tb, t2.Sub(t1))
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(median(to))/float64(median(tb)), unit)
	b.ReportMetric(float64(sum(to))/float64(sum(tb)), unit+"-total")
}

// median returns the median of ds, reordering them.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func sum(ds []time.Duration) (s time.Duration) {
	for _, d := range ds {
		s += d
	}
	return s
}

func BenchmarkFloor1KiB(b *testing.B)       { run(b, 1<<10, newFloor(b, 1<<10)) }
func BenchmarkVerify1KiB(b *testing.B)      { run(b, 1<<10, newVerify(b, 1<<10, 1)) }
func BenchmarkVerify1KiB3Keys(b *testing.B) { run(b, 1<<10, newVerify(b, 1<<10, 3)) }
func BenchmarkFloor1MiB(b *testing.B)       { run(b, 1<<20, newFloor(b, 1<<20)) }
func BenchmarkVerify1MiB(b *testing.B)      { run(b, 1<<20, newVerify(b, 1<<20, 1)) }
func BenchmarkMiddleware(b *testing.B)      { run(b, 1<<10, newMiddleware(b, false, 0)) }
func BenchmarkMiddleware1MiB(b *testing.B)  { run(b, 1<<20, newMiddlewareSize(b, 1<<20, false, 0)) }
func BenchmarkMiddlewareDedupe(b *testing.B) {
	run(b, 1<<10, newMiddleware(b, true, b.N+1))
}

func BenchmarkRatioVerify1KiB(b *testing.B) {
	ratio(b, "x-floor", newFloor(b, 1<<10), newVerify(b, 1<<10, 1))
}

func BenchmarkRatioVerify1MiB(b *testing.B) {
	ratio(b, "x-floor", newFloor(b, 1<<20), newVerify(b, 1<<20, 1))
}

// BenchmarkRatioScan1MiB isolates the event scan of a 1 MiB body, syntax
// check included, against the floor: Verify also copies the payload, as it
// promises an event that does not share memory with the body.
func BenchmarkRatioScan1MiB(b *testing.B) {
	body := benchBody(1 << 20)
	ratio(b, "x-floor", newFloor(b, 1<<20), func() {
		if _, err := parseEvent(body, false, ""); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkRatioMiddleware1MiB(b *testing.B) {
	ratio(b, "x-floor", newFloor(b, 1<<20), newMiddlewareSize(b, 1<<20, false, 0))
}

func BenchmarkRatioVerify3Keys(b *testing.B) {
	ratio(b, "x-1key", newVerify(b, 1<<10, 1), newVerify(b, 1<<10, 3))
}

func BenchmarkRatioMiddleware(b *testing.B) {
	ratio(b, "x-floor", newFloor(b, 1<<10), newMiddleware(b, false, 0))
}

func BenchmarkRatioDedupe(b *testing.B) {
	ratio(b, "x-nodedupe", newMiddleware(b, false, b.N+2), newMiddleware(b, true, b.N+2))
}

// BenchmarkMiddlewareReject measures turning away junk: a request with a
// malformed signature is refused before the body is read or a key looked up.
func BenchmarkMiddlewareReject(b *testing.B) {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(1 << 10)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime }))
	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		b.Fatal("junk reached the handler")
	}))
	req := s.NewRequest("/webhook", faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body})
	req.Header.Set(HeaderSignature, "not-hex")
	rb := &rewindBody{}
	run(b, 0, func() {
		rb.Reset(body)
		req.Body = rb
		w := &benchWriter{h: http.Header{}}
		h.ServeHTTP(w, req)
		if w.code != http.StatusBadRequest {
			b.Fatalf("status %d, want 400", w.code)
		}
	})
}
