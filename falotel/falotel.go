// Package falotel reports what a falwebhook Verifier and its JWKS do as
// OpenTelemetry metrics and traces.
//
// An Observer implements falwebhook.Observer. Give it to a Verifier with
// falwebhook.WithObserver, which also hands it to the default JWKS, or set
// it as the Observer field of a JWKS of your own:
//
//	obs, err := falotel.New() // the global MeterProvider and TracerProvider
//	if err != nil {
//		return err
//	}
//	v := falwebhook.NewVerifier(falwebhook.WithObserver(obs))
//
// # Metrics
//
// The instrumentation scope is "github.com/falwebhook/falwebhook/falotel".
// Names follow the OpenTelemetry semantic conventions; a Prometheus
// exporter turns the dots into underscores and adds the unit and _total
// (falwebhook_deliveries_total, falwebhook_verification_duration_seconds).
//
//	name                              instrument                  unit        attributes
//	falwebhook.deliveries             counter (int64)             {delivery}  falwebhook.outcome, error.type
//	falwebhook.verification.duration  histogram (float64)         s           falwebhook.outcome, error.type
//	falwebhook.jwks.fetches           counter (int64)             {fetch}     falwebhook.outcome, error.type, url.full
//	falwebhook.jwks.keys              observable gauge (int64)    {key}       url.full
//	falwebhook.jwks.age               observable gauge (float64)  s           url.full
//
// falwebhook.deliveries counts the deliveries the Verifier handled, one per
// call of ObserveDelivery. falwebhook.outcome is DeliveryInfo.Outcome:
// "accepted", "duplicate", "in_progress", or the reason of a rejection
// ("signature_mismatch", "keys_unavailable", … as listed at
// falwebhook.DeliveryInfo). For a rejection error.type is set to the same
// word; accepted deliveries and duplicates have no error.type.
//
// falwebhook.verification.duration is DeliveryInfo.Duration: header checks,
// reading and hashing the body, the signature with any wait for keys, and
// with dedupe the claim; never the handler's own run. Its buckets span
// 10 µs to 10 s: 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
// 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10.
//
// falwebhook.jwks.fetches counts JWKS fetches, successful or not;
// falwebhook.outcome is "success" or "failure", and a failure has error.type
// "timeout" (the fetch timed out), "network" (no HTTP answer: connection
// refused, DNS, TLS, a refused redirect), "malformed_jwks" (the document is
// not a JWKS), "no_usable_keys" (it holds no usable Ed25519 key) or "_OTHER"
// (anything else, such as a non-200 status).
//
// falwebhook.jwks.keys is the number of usable keys the last successful
// fetch brought, and falwebhook.jwks.age the time since that fetch started,
// by the Observer's clock (see WithClock), in seconds. Neither reports a
// point for a JWKS that has never fetched successfully, nor for static
// keys, which are never fetched.
//
// url.full is the JWKS URL without its userinfo: one series per JWKS
// document, so one Observer may serve several. The request id and the user
// id of a delivery are never metric attributes: they are unbounded.
//
// # Traces
//
// Each delivery is one span named "falwebhook.delivery", of kind internal,
// a child of the span in the context the Verifier was given (the request's:
// an HTTP server span from otelhttp or a gateway). Its attributes are
//
//	falwebhook.outcome           as on the metrics
//	error.type                   for a rejection, the outcome
//	falwebhook.request_id        X-Fal-Webhook-Request-Id, when present and well-formed
//	falwebhook.user_id           X-Fal-Webhook-User-Id, when present and well-formed
//	http.response.status_code    DeliveryInfo.Status, when not 0
//
// and its status is Error, described by the outcome, for a rejection. The
// Verifier reports a delivery once its outcome is known, so the span is
// recorded after the fact: it starts DeliveryInfo.Duration before the
// report and ends at the report. The handler's run is not part of it; a
// span that should cover the handler, or be propagated to it, must be
// started before the Verifier's middleware.
package falotel

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/falwebhook/falwebhook"
)

// ScopeName is the instrumentation scope of the Observer's meter and
// tracer.
const ScopeName = "github.com/falwebhook/falwebhook/falotel"

// Attribute keys of the falwebhook namespace.
const (
	outcomeKey   = attribute.Key("falwebhook.outcome")
	requestIDKey = attribute.Key("falwebhook.request_id") // spans only
	userIDKey    = attribute.Key("falwebhook.user_id")    // spans only
)

// durationBuckets returns the bucket boundaries of
// falwebhook.verification.duration, in seconds: 10 µs to 10 s.
func durationBuckets() []float64 {
	return []float64{
		0.00001, 0.000025, 0.00005,
		0.0001, 0.00025, 0.0005,
		0.001, 0.0025, 0.005,
		0.01, 0.025, 0.05,
		0.1, 0.25, 0.5,
		1, 2.5, 5, 10,
	}
}

// An Option configures an Observer.
type Option func(*config)

type config struct {
	mp  metric.MeterProvider
	tp  trace.TracerProvider
	now func() time.Time
}

// WithMeterProvider makes the Observer record its metrics with mp (default
// the global provider, otel.GetMeterProvider, which forwards to the one
// otel.SetMeterProvider installs, also when that happens after New).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithTracerProvider makes the Observer record its spans with tp (default
// the global provider, otel.GetTracerProvider, which forwards to the one
// otel.SetTracerProvider installs, also when that happens after New).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithClock sets the function the Observer reads the current time from
// (default time.Now): the age of the keys is measured and delivery spans end
// by it. Give it the JWKS's Clock, since the age is measured from
// FetchInfo.Start.
func WithClock(now func() time.Time) Option {
	return func(c *config) { c.now = now }
}

// An Observer turns a Verifier's and a JWKS's reports into OpenTelemetry
// metrics and spans (see the package doc). Create one with New. It is safe
// for concurrent use by multiple goroutines.
type Observer struct {
	now        func() time.Time
	tracer     trace.Tracer
	deliveries metric.Int64Counter
	duration   metric.Float64Histogram
	fetches    metric.Int64Counter

	// outcomes holds the attribute sets of the documented outcomes, built
	// once; it is not written after New.
	outcomes map[string]outcomeAttrs

	mu   sync.Mutex           // guards jwks
	jwks map[string]jwksState // by url.full
}

// outcomeAttrs are the attributes of one delivery outcome.
type outcomeAttrs struct {
	rejected bool
	set      metric.MeasurementOption // falwebhook.outcome and error.type
	span     []attribute.KeyValue     // the same, for spans
}

// jwksState is what the gauges report for one JWKS.
type jwksState struct {
	keys    int64
	fetched time.Time // Start of the last successful fetch
}

// The outcomes DeliveryInfo documents; a rejection carries an error.
var (
	acceptedOutcomes = [...]string{"accepted", "duplicate", "in_progress"}
	rejectOutcomes   = [...]string{
		"method_not_allowed", "body_too_large", "missing_header", "malformed_header",
		"timestamp_out_of_range", "unexpected_user", "signature_mismatch",
		"key_not_fetched", "keys_unavailable", "invalid_event", "read_error", "overloaded",
		"store_error", "misconfigured", "internal",
	}
)

// New returns an Observer recording to the providers given by opts. It
// fails only when the meter refuses to create an instrument.
func New(opts ...Option) (*Observer, error) {
	c := config{}
	for _, opt := range opts {
		if opt != nil {
			opt(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.now == nil {
		c.now = time.Now
	}
	o := &Observer{
		now:      c.now,
		tracer:   c.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		outcomes: make(map[string]outcomeAttrs, len(acceptedOutcomes)+len(rejectOutcomes)),
		jwks:     make(map[string]jwksState),
	}
	for _, name := range acceptedOutcomes {
		o.outcomes[name] = newOutcomeAttrs(name, false)
	}
	for _, name := range rejectOutcomes {
		o.outcomes[name] = newOutcomeAttrs(name, true)
	}

	m := c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	var err, e error
	o.deliveries, e = m.Int64Counter("falwebhook.deliveries",
		metric.WithDescription("Webhook deliveries handled by the verifier, by outcome."),
		metric.WithUnit("{delivery}"))
	err = errors.Join(err, e)
	o.duration, e = m.Float64Histogram("falwebhook.verification.duration",
		metric.WithDescription("Time to verify a delivery: headers, body, signature (with any wait for keys) and dedupe claim."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(durationBuckets()...))
	err = errors.Join(err, e)
	o.fetches, e = m.Int64Counter("falwebhook.jwks.fetches",
		metric.WithDescription("JWKS document fetches, by outcome."),
		metric.WithUnit("{fetch}"))
	err = errors.Join(err, e)
	_, e = m.Int64ObservableGauge("falwebhook.jwks.keys",
		metric.WithDescription("Usable keys brought by the last successful JWKS fetch."),
		metric.WithUnit("{key}"),
		metric.WithInt64Callback(o.observeKeys))
	err = errors.Join(err, e)
	_, e = m.Float64ObservableGauge("falwebhook.jwks.age",
		metric.WithDescription("Time since the last successful JWKS fetch started."),
		metric.WithUnit("s"),
		metric.WithFloat64Callback(o.observeAge))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	return o, nil
}

func newOutcomeAttrs(name string, rejected bool) outcomeAttrs {
	kv := []attribute.KeyValue{outcomeKey.String(name)}
	if rejected {
		kv = append(kv, semconv.ErrorTypeKey.String(name))
	}
	return outcomeAttrs{
		rejected: rejected,
		set:      metric.WithAttributeSet(attribute.NewSet(kv...)),
		span:     kv,
	}
}

// ObserveDelivery counts the delivery, records its duration and records
// its span. It implements falwebhook.Observer.
func (o *Observer) ObserveDelivery(ctx context.Context, d falwebhook.DeliveryInfo) {
	oa, ok := o.outcomes[d.Outcome]
	if !ok || oa.rejected != (d.Err != nil) {
		// An outcome this package does not know: still one series per
		// word, and a rejection exactly when there is an error.
		oa = newOutcomeAttrs(d.Outcome, d.Err != nil)
	}
	o.deliveries.Add(ctx, 1, oa.set)
	o.duration.Record(ctx, d.Duration.Seconds(), oa.set)

	end := o.now()
	attrs := make([]attribute.KeyValue, 0, len(oa.span)+3)
	attrs = append(attrs, oa.span...)
	if d.RequestID != "" {
		attrs = append(attrs, requestIDKey.String(d.RequestID))
	}
	if d.UserID != "" {
		attrs = append(attrs, userIDKey.String(d.UserID))
	}
	if d.Status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(d.Status))
	}
	_, span := o.tracer.Start(ctx, "falwebhook.delivery",
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(end.Add(-d.Duration)),
		trace.WithAttributes(attrs...))
	if oa.rejected {
		span.SetStatus(codes.Error, d.Outcome)
	}
	span.End(trace.WithTimestamp(end))
}

// ObserveFetch counts the fetch and, when it succeeded, updates what the
// gauges report for its URL. It implements falwebhook.Observer.
func (o *Observer) ObserveFetch(ctx context.Context, f falwebhook.FetchInfo) {
	u := urlFull(f.URL)
	kv := []attribute.KeyValue{semconv.URLFull(u), outcomeKey.String("success")}
	if f.Err != nil {
		kv = []attribute.KeyValue{semconv.URLFull(u), outcomeKey.String("failure"), semconv.ErrorTypeKey.String(fetchErrorType(f.Err))}
	}
	o.fetches.Add(ctx, 1, metric.WithAttributes(kv...))
	if f.Err != nil {
		return
	}
	o.mu.Lock()
	// Fetches may report out of order; the newest start wins.
	if s, ok := o.jwks[u]; !ok || !f.Start.Before(s.fetched) {
		o.jwks[u] = jwksState{keys: int64(f.Keys), fetched: f.Start}
	}
	o.mu.Unlock()
}

// fetchErrorType names a fetch failure for error.type.
func fetchErrorType(err error) string {
	var ne net.Error
	var ue *url.Error
	switch {
	case errors.Is(err, falwebhook.ErrMalformedJWKS):
		return "malformed_jwks"
	case errors.Is(err, falwebhook.ErrNoUsableKeys):
		return "no_usable_keys"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &ue):
		return "network"
	}
	return semconv.ErrorTypeOther.Value.AsString()
}

// urlFull returns s without userinfo, for url.full.
func urlFull(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return u.String()
}

// snapshot returns the JWKS states in URL order.
func (o *Observer) snapshot() ([]string, []jwksState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	urls := make([]string, 0, len(o.jwks))
	for u := range o.jwks {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	states := make([]jwksState, len(urls))
	for i, u := range urls {
		states[i] = o.jwks[u]
	}
	return urls, states
}

func (o *Observer) observeKeys(_ context.Context, obs metric.Int64Observer) error {
	urls, states := o.snapshot()
	for i, s := range states {
		obs.Observe(s.keys, metric.WithAttributes(semconv.URLFull(urls[i])))
	}
	return nil
}

func (o *Observer) observeAge(_ context.Context, obs metric.Float64Observer) error {
	urls, states := o.snapshot()
	now := o.now()
	for i, s := range states {
		obs.Observe(max(now.Sub(s.fetched).Seconds(), 0), metric.WithAttributes(semconv.URLFull(urls[i])))
	}
	return nil
}
