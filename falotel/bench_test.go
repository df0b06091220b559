package falotel_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falotel"
	"github.com/falwebhook/falwebhook/faltest"
)

// BenchmarkRatioObserver measures what falotel adds to a verified 1 KiB
// delivery through the middleware, with the OpenTelemetry SDK recording
// metrics and sampling every span into a batch processor: the median,
// over interleaved pairs, of the observed delivery's time over the bare
// one's (x-bare).
//
//	go test -run '^$' -bench . -benchmem -count 6 ./falotel
func BenchmarkRatioObserver(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() {
		_ = mp.Shutdown(b.Context())
		_ = tp.Shutdown(b.Context())
	})
	obs, err := falotel.New(falotel.WithMeterProvider(mp), falotel.WithTracerProvider(tp))
	if err != nil {
		b.Fatal(err)
	}
	base, op := delivery(b), delivery(b, falwebhook.WithObserver(obs))
	base()
	op()
	ratios := make([]float64, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range ratios {
		t0 := time.Now()
		if i%2 == 0 {
			base()
		} else {
			op()
		}
		t1 := time.Now()
		if i%2 == 0 {
			op()
		} else {
			base()
		}
		t2 := time.Now()
		tb, to := t1.Sub(t0), t2.Sub(t1)
		if i%2 == 1 {
			tb, to = to, tb
		}
		ratios[i] = float64(to) / float64(max(tb, 1))
	}
	b.StopTimer()
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "x-bare")
}

// delivery returns one verified 1 KiB delivery through the middleware.
func delivery(b *testing.B, opts ...falwebhook.Option) func() {
	fal := faltest.SignerFromName("bench")
	at := time.Unix(1_700_000_000, 0)
	body := faltest.OKBody("bench-request", map[string]string{"pad": string(make([]byte, 900))})
	opts = append(opts, falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())), falwebhook.WithClock(func() time.Time { return at }))
	h := falwebhook.NewVerifier(opts...).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	signed := fal.Sign(faltest.Delivery{Body: body, Time: at})
	return func() {
		req := httptest.NewRequest(http.MethodPost, "/fal/webhook", nil)
		signed.Set(req.Header)
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.Code)
		}
	}
}
