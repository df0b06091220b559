package falotel_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falotel"
	"github.com/falwebhook/falwebhook/faltest"
)

func Example() {
	reader := sdkmetric.NewManualReader() // in production: a Prometheus or OTLP exporter
	obs, err := falotel.New(falotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		panic(err)
	}
	fal := faltest.SignerFromName("example")
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())),
		falwebhook.WithObserver(obs))
	h := v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {})

	h.ServeHTTP(httptest.NewRecorder(), fal.NewRequest("/fal/webhook", faltest.Delivery{Body: faltest.OKBody("req-1", nil)}))
	forged := faltest.SignerFromName("forger").NewRequest("/fal/webhook", faltest.Delivery{Body: faltest.OKBody("req-2", nil)})
	h.ServeHTTP(httptest.NewRecorder(), forged)

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "falwebhook.deliveries" {
			continue
		}
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			outcome, _ := p.Attributes.Value("falwebhook.outcome")
			fmt.Println(outcome.AsString(), p.Value)
		}
	}
	// Unordered output:
	// accepted 1
	// signature_mismatch 1
}
