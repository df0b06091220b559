package falwebhook

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// The Observer hook costs nothing when unset: a Verifier built with
// WithObserver(nil) runs the middleware within 2% of one built without the
// option (BenchmarkRatioObserverNil, x-noobserver near 1.00), and a no-op
// Observer shows what reporting itself costs (BenchmarkRatioObserverNoop).
// These ratios are medians of per-pair ratios (see medianRatio), which
// shrug off the bursts of a shared machine better than a ratio of totals:
//
//	go test -run '^$' -bench 'Observer' -benchmem -count 6 .

// nopObserver is an Observer that does nothing.
type nopObserver struct{}

func (nopObserver) ObserveDelivery(context.Context, DeliveryInfo) {}
func (nopObserver) ObserveFetch(context.Context, FetchInfo)       {}

// newObservedMiddleware returns one verified 1 KiB delivery through the
// middleware, as newMiddleware does, with extra options.
func newObservedMiddleware(b *testing.B, extra ...Option) func() {
	s := faltest.SignerFromName("bench-1")
	body := benchBody(1 << 10)
	opts := append([]Option{WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return benchTime })}, extra...)
	v := NewVerifier(opts...)
	hdr := http.Header{}
	s.Sign(faltest.Delivery{RequestID: "bench-request", Time: benchTime, Body: body}).Set(hdr)
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	req := httptest.NewRequest(http.MethodPost, "/webhook", nil)
	req.Header = hdr
	rb := &rewindBody{}
	w := &benchWriter{h: http.Header{}}
	return func() {
		rb.Reset(body)
		req.Body = rb
		req.ContentLength = int64(len(body))
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.code)
		}
	}
}

func BenchmarkMiddlewareObserverNil(b *testing.B) {
	run(b, 1<<10, newObservedMiddleware(b, WithObserver(nil)))
}

func BenchmarkMiddlewareObserverNoop(b *testing.B) {
	run(b, 1<<10, newObservedMiddleware(b, WithObserver(nopObserver{})))
}

// medianRatio runs base and op b.N times each, as back-to-back pairs in
// alternating order, and reports the median over the pairs of op's time
// over base's as the metric unit.
func medianRatio(b *testing.B, unit string, base, op func()) {
	base()
	op()
	ratios := make([]float64, b.N)
	b.ResetTimer()
	for i := range ratios {
		first, second := base, op
		if i%2 == 1 {
			first, second = op, base
		}
		t0 := time.Now()
		first()
		t1 := time.Now()
		second()
		t2 := time.Now()
		tb, to := t1.Sub(t0), t2.Sub(t1)
		if i%2 == 1 {
			tb, to = to, tb
		}
		ratios[i] = float64(to) / float64(max(tb, 1))
	}
	b.StopTimer()
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], unit)
}

func BenchmarkRatioObserverNil(b *testing.B) {
	medianRatio(b, "x-noobserver", newObservedMiddleware(b), newObservedMiddleware(b, WithObserver(nil)))
}

func BenchmarkRatioObserverNoop(b *testing.B) {
	medianRatio(b, "x-noobserver", newObservedMiddleware(b), newObservedMiddleware(b, WithObserver(nopObserver{})))
}
