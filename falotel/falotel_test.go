package falotel_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falotel"
	"github.com/falwebhook/falwebhook/faltest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable clock shared by the Verifier, the JWKS and the
// Observer.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is an Observer recording into an in-memory reader and span
// recorder.
type harness struct {
	obs    *falotel.Observer
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	clock  *clock
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder(), clock: &clock{t: t0}}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = h.tp.Shutdown(context.Background())
	})
	obs, err := falotel.New(falotel.WithMeterProvider(mp), falotel.WithTracerProvider(h.tp), falotel.WithClock(h.clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	h.obs = obs
	return h
}

// series is one metric's data points: the value of each attribute set,
// keyed by the set's encoding ("error.type=x,falwebhook.outcome=x"). For a
// histogram the value is the count.
type series map[string]float64

// collect reads every metric of the falotel scope.
func (h *harness) collect(t *testing.T) map[string]series {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]series{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != falotel.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, falotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			s := series{}
			add := func(set attribute.Set, v float64) {
				k := set.Encoded(attribute.DefaultEncoder())
				if _, dup := s[k]; dup {
					t.Errorf("%s: two points for {%s}", m.Name, k)
				}
				s[k] = v
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
					t.Errorf("%s is not a cumulative counter", m.Name)
				}
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Count))
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, p.Value)
				}
			default:
				t.Errorf("%s: unexpected data %T", m.Name, m.Data)
			}
			out[m.Name+" ["+m.Unit+"]"] = s
		}
	}
	return out
}

// accepted and rejected give the attribute encoding of a delivery outcome.
func accepted(outcome string) string { return "falwebhook.outcome=" + outcome }
func rejected(outcome string) string {
	return "error.type=" + outcome + ",falwebhook.outcome=" + outcome
}

func wantSeries(t *testing.T, got map[string]series, name string, want series) {
	t.Helper()
	if !maps.Equal(got[name], want) {
		t.Errorf("%s:\n got %s\nwant %s", name, seriesText(got[name]), seriesText(want))
	}
}

func seriesText(s series) string {
	var lines []string
	for k, v := range s {
		lines = append(lines, fmt.Sprintf("{%s} %g", k, v))
	}
	slices.Sort(lines)
	return "[" + strings.Join(lines, "; ") + "]"
}

// TestScriptedMix drives real Verifiers with a mix of deliveries and
// checks every metric and span exactly.
func TestScriptedMix(t *testing.T) {
	h := newHarness(t)
	fal := faltest.SignerFromName("falotel test: fal")
	forger := faltest.SignerFromName("falotel test: forger")

	release := make(chan struct{})
	running := make(chan struct{})
	handled := map[string]int{}
	var mu sync.Mutex // guards handled
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		mu.Lock()
		handled[ev.RequestID]++
		mu.Unlock()
		if ev.RequestID == "slow" {
			close(running)
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	})
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())),
		falwebhook.WithClock(h.clock.Now),
		falwebhook.WithUserIDs("me"),
		falwebhook.WithObserver(h.obs))
	mw := v.Middleware((&falwebhook.Dedupe{Clock: h.clock.Now}).Middleware(app))

	// Keys from a key server whose first fetch fails.
	ks := faltest.NewKeyServer(fal)
	t.Cleanup(ks.Close)
	ks.FailNext(1, http.StatusInternalServerError)
	jwks := &falwebhook.JWKS{URL: ks.URL, Client: ks.Client(), Clock: h.clock.Now, Observer: h.obs}
	vj := falwebhook.NewVerifier(falwebhook.WithKeys(jwks), falwebhook.WithClock(h.clock.Now),
		falwebhook.WithUserIDs("me"), falwebhook.WithObserver(h.obs))
	mwj := vj.Middleware(app)

	// Every delivery runs under a parent span, as under an HTTP server
	// span.
	parentCtx, parent := h.tp.Tracer("test").Start(context.Background(), "parent")

	type step struct {
		name   string
		via    http.Handler
		req    func() *http.Request
		status int
	}
	deliver := func(s *faltest.Signer, id, user string, at time.Time) *http.Request {
		body := faltest.OKBody(id, json.RawMessage(`{"seed": 1}`))
		return s.NewRequest("/fal/webhook", faltest.Delivery{Body: body, UserID: user, Time: at})
	}
	genuine := func(id string) func() *http.Request {
		return func() *http.Request { return deliver(fal, id, "me", h.clock.Now()) }
	}
	steps := []step{
		{"genuine", mw, genuine("r-1"), 204},
		{"duplicate", mw, genuine("r-1"), 200},
		{"another genuine", mw, genuine("r-2"), 204},
		{"tampered", mw, func() *http.Request {
			r := deliver(fal, "r-3", "me", h.clock.Now())
			r.Body = io.NopCloser(strings.NewReader(strings.Replace(string(faltest.OKBody("r-3", json.RawMessage(`{"seed": 1}`))), "1}", "2}", 1)))
			return r
		}, 401},
		{"forged", mw, func() *http.Request { return deliver(forger, "r-4", "me", h.clock.Now()) }, 401},
		{"stale", mw, func() *http.Request { return deliver(fal, "r-5", "me", h.clock.Now().Add(-10*time.Minute)) }, 401},
		{"missing header", mw, func() *http.Request {
			r := deliver(fal, "r-6", "me", h.clock.Now())
			r.Header.Del(falwebhook.HeaderSignature)
			return r
		}, 400},
		{"foreign user", mw, func() *http.Request { return deliver(fal, "r-7", "someone-else", h.clock.Now()) }, 403},
		{"GET", mw, func() *http.Request { return httptest.NewRequest(http.MethodGet, "/fal/webhook", nil) }, 405},
		{"keys unavailable", mwj, genuine("k-1"), 503},
	}
	for _, s := range steps {
		rec := httptest.NewRecorder()
		s.via.ServeHTTP(rec, s.req().WithContext(parentCtx))
		if rec.Code != s.status {
			t.Fatalf("%s: answered %d, want %d", s.name, rec.Code, s.status)
		}
	}

	// A delivery in progress, and its repeat meanwhile.
	done := make(chan int)
	go func() {
		rec := httptest.NewRecorder()
		mw.ServeHTTP(rec, genuine("slow")().WithContext(parentCtx))
		done <- rec.Code
	}()
	<-running
	rec := httptest.NewRecorder()
	mw.ServeHTTP(rec, genuine("slow")().WithContext(parentCtx))
	if rec.Code != http.StatusConflict {
		t.Fatalf("repeat of a delivery in progress answered %d, want 409", rec.Code)
	}
	close(release)
	if code := <-done; code != 204 {
		t.Fatalf("slow delivery answered %d, want 204", code)
	}

	// After the cooldown the keys are fetched, and the next delivery is
	// accepted.
	h.clock.Add(2 * time.Minute)
	fetchedAt := h.clock.Now()
	rec = httptest.NewRecorder()
	mwj.ServeHTTP(rec, genuine("k-2")().WithContext(parentCtx))
	if rec.Code != 204 {
		t.Fatalf("delivery after the keys came back answered %d, want 204", rec.Code)
	}
	h.clock.Add(90 * time.Second)
	parent.End()

	if want := map[string]int{"r-1": 1, "r-2": 1, "slow": 1, "k-2": 1}; !maps.Equal(handled, want) {
		t.Errorf("handler runs %v, want %v", handled, want)
	}

	got := h.collect(t)
	deliveries := series{
		accepted("accepted"):               4,
		accepted("duplicate"):              1,
		accepted("in_progress"):            1,
		rejected("signature_mismatch"):     2,
		rejected("timestamp_out_of_range"): 1,
		rejected("missing_header"):         1,
		rejected("unexpected_user"):        1,
		rejected("method_not_allowed"):     1,
		rejected("keys_unavailable"):       1,
	}
	wantSeries(t, got, "falwebhook.deliveries [{delivery}]", deliveries)
	wantSeries(t, got, "falwebhook.verification.duration [s]", deliveries)
	wantSeries(t, got, "falwebhook.jwks.fetches [{fetch}]", series{
		"error.type=_OTHER,falwebhook.outcome=failure,url.full=" + ks.URL: 1,
		"falwebhook.outcome=success,url.full=" + ks.URL:                   1,
	})
	wantSeries(t, got, "falwebhook.jwks.keys [{key}]", series{"url.full=" + ks.URL: 1})
	wantSeries(t, got, "falwebhook.jwks.age [s]", series{"url.full=" + ks.URL: 90})
	if len(got) != 5 {
		t.Errorf("got %d metrics, want 5: %v", len(got), slices.Collect(maps.Keys(got)))
	}
	if n := ks.Fetches(); n != 2 {
		t.Errorf("key server saw %d fetches, want 2", n)
	}

	// The spans: one per delivery, children of the parent.
	type spanWant struct {
		outcome, requestID, userID string
		status                     int
	}
	wantSpans := []spanWant{
		{"accepted", "r-1", "me", 0},
		{"duplicate", "r-1", "me", 200},
		{"accepted", "r-2", "me", 0},
		{"signature_mismatch", "r-3", "me", 401},
		{"signature_mismatch", "r-4", "me", 401},
		{"timestamp_out_of_range", "r-5", "me", 401},
		{"missing_header", "", "", 400},
		{"unexpected_user", "r-7", "someone-else", 403},
		{"method_not_allowed", "", "", 405},
		{"keys_unavailable", "k-1", "me", 503},
		{"accepted", "slow", "me", 0},
		{"in_progress", "slow", "me", 409},
		{"accepted", "k-2", "me", 0},
	}
	var spans []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() != "parent" {
			spans = append(spans, s)
		}
	}
	if len(spans) != len(wantSpans) {
		t.Fatalf("recorded %d delivery spans, want %d", len(spans), len(wantSpans))
	}
	for i, s := range spans {
		w := wantSpans[i]
		want := map[attribute.Key]attribute.Value{"falwebhook.outcome": attribute.StringValue(w.outcome)}
		isReject := w.status >= 400 && w.outcome != "in_progress"
		if isReject {
			want["error.type"] = attribute.StringValue(w.outcome)
		}
		if w.requestID != "" {
			want["falwebhook.request_id"] = attribute.StringValue(w.requestID)
			want["falwebhook.user_id"] = attribute.StringValue(w.userID)
		}
		if w.status != 0 {
			want["http.response.status_code"] = attribute.IntValue(w.status)
		}
		gotAttrs := map[attribute.Key]attribute.Value{}
		for _, kv := range s.Attributes() {
			gotAttrs[kv.Key] = kv.Value
		}
		if !maps.Equal(gotAttrs, want) {
			t.Errorf("span %d (%s %s): attributes\n got %v\nwant %v", i, w.outcome, w.requestID, gotAttrs, want)
		}
		if s.Name() != "falwebhook.delivery" || s.SpanKind() != trace.SpanKindInternal {
			t.Errorf("span %d is %q of kind %v, want falwebhook.delivery, internal", i, s.Name(), s.SpanKind())
		}
		wantStatus := sdktrace.Status{Code: codes.Unset}
		if isReject {
			wantStatus = sdktrace.Status{Code: codes.Error, Description: w.outcome}
		}
		if s.Status() != wantStatus {
			t.Errorf("span %d (%s): status %+v, want %+v", i, w.outcome, s.Status(), wantStatus)
		}
		if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("span %d (%s) is not a child of the request's span", i, w.outcome)
		}
		if s.EndTime().Before(t0) || s.StartTime().After(s.EndTime()) {
			t.Errorf("span %d: from %v to %v, want to end by the injected clock, after its start", i, s.StartTime(), s.EndTime())
		}
		if s.InstrumentationScope().Name != falotel.ScopeName {
			t.Errorf("span %d: scope %q", i, s.InstrumentationScope().Name)
		}
	}
	last := spans[len(spans)-1]
	if !last.EndTime().Equal(fetchedAt) {
		t.Errorf("last span ended at %v, want the injected clock's %v", last.EndTime(), fetchedAt)
	}
}

// TestFetchErrorTypes fails real fetches in each way error.type names.
func TestFetchErrorTypes(t *testing.T) {
	fal := faltest.SignerFromName("falotel test: fal")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, ks *faltest.KeyServer) (url string)
		want  string
	}{
		{"status 500", func(t *testing.T, ks *faltest.KeyServer) string { ks.FailNext(1, 500); return ks.URL }, "_OTHER"},
		{"not a JWKS", func(t *testing.T, ks *faltest.KeyServer) string {
			ks.SetDocument([]byte("<html>"), "text/html")
			return ks.URL
		}, "malformed_jwks"},
		{"no usable key", func(t *testing.T, ks *faltest.KeyServer) string {
			ks.SetDocument([]byte(`{"keys":[]}`), "application/json")
			return ks.URL
		}, "no_usable_keys"},
		{"server gone", func(t *testing.T, ks *faltest.KeyServer) string { ks.Close(); return ks.URL }, "network"},
		{"hanging server", func(t *testing.T, ks *faltest.KeyServer) string { t.Cleanup(ks.Hold()); return ks.URL }, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ks := faltest.NewKeyServer(fal)
			t.Cleanup(ks.Close)
			u := tc.setup(t, ks)
			jwks := &falwebhook.JWKS{URL: u, Observer: h.obs, FetchTimeout: 100 * time.Millisecond}
			if err := jwks.Refresh(context.Background()); err == nil {
				t.Fatal("fetch succeeded")
			}
			got := h.collect(t)
			wantSeries(t, got, "falwebhook.jwks.fetches [{fetch}]", series{
				"error.type=" + tc.want + ",falwebhook.outcome=failure,url.full=" + u: 1,
			})
			// No successful fetch: no gauge points.
			if len(got["falwebhook.jwks.keys [{key}]"]) != 0 || len(got["falwebhook.jwks.age [s]"]) != 0 {
				t.Errorf("gauges report keys that were never fetched: %v %v", got["falwebhook.jwks.keys [{key}]"], got["falwebhook.jwks.age [s]"])
			}
		})
	}
}

// TestGauges reports fetches directly: one series per URL, userinfo
// dropped, the newest fetch wins even when reported late, and a failure
// leaves the last good keys in place.
func TestGauges(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	a, b := "https://keys.example/jwks.json", "https://user:secret@other.example/jwks.json"
	h.obs.ObserveFetch(ctx, falwebhook.FetchInfo{URL: a, Start: t0, Keys: 2, Expiry: t0.Add(time.Hour)})
	h.obs.ObserveFetch(ctx, falwebhook.FetchInfo{URL: b, Start: t0.Add(-time.Minute), Keys: 3, Expiry: t0.Add(time.Hour)})
	h.obs.ObserveFetch(ctx, falwebhook.FetchInfo{URL: a, Start: t0.Add(-time.Minute), Keys: 5, Expiry: t0.Add(time.Hour)}) // older, reported late
	h.obs.ObserveFetch(ctx, falwebhook.FetchInfo{URL: a, Start: t0.Add(time.Second), Err: fmt.Errorf("fetching JWKS: status 503, want 200")})
	h.clock.Add(10 * time.Second)

	got := h.collect(t)
	const bURL = "https://other.example/jwks.json"
	wantSeries(t, got, "falwebhook.jwks.keys [{key}]", series{"url.full=" + a: 2, "url.full=" + bURL: 3})
	wantSeries(t, got, "falwebhook.jwks.age [s]", series{"url.full=" + a: 10, "url.full=" + bURL: 70})
	wantSeries(t, got, "falwebhook.jwks.fetches [{fetch}]", series{
		"falwebhook.outcome=success,url.full=" + a:                   2,
		"falwebhook.outcome=success,url.full=" + bURL:                1,
		"error.type=_OTHER,falwebhook.outcome=failure,url.full=" + a: 1,
	})
}

// TestDefaults: with no options the Observer records to the global
// providers, which are no-ops until set; it must not fail or panic.
func TestDefaults(t *testing.T) {
	obs, err := falotel.New()
	if err != nil {
		t.Fatal(err)
	}
	fal := faltest.SignerFromName("falotel test: fal")
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())), falwebhook.WithObserver(obs))
	rec := httptest.NewRecorder()
	v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {}).ServeHTTP(rec,
		fal.NewRequest("/", faltest.Delivery{Body: faltest.OKBody("d-1", nil)}))
	if rec.Code != http.StatusOK {
		t.Fatalf("answered %d", rec.Code)
	}
	obs.ObserveFetch(context.Background(), falwebhook.FetchInfo{URL: "https://keys.example/jwks.json", Keys: 1})
}

// TestUnknownOutcome: an outcome this package does not list still
// counts, as a rejection exactly when it carries an error.
func TestUnknownOutcome(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.obs.ObserveDelivery(ctx, falwebhook.DeliveryInfo{Outcome: "future_reason", Err: falwebhook.ErrSignatureMismatch, Status: 401})
	h.obs.ObserveDelivery(ctx, falwebhook.DeliveryInfo{Outcome: "future_success"})
	h.obs.ObserveDelivery(ctx, falwebhook.DeliveryInfo{Outcome: "accepted", Err: falwebhook.ErrSignatureMismatch})
	wantSeries(t, h.collect(t), "falwebhook.deliveries [{delivery}]", series{
		rejected("future_reason"):  1,
		accepted("future_success"): 1,
		rejected("accepted"):       1,
	})
}
