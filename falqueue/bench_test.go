package falqueue

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// The floor of each benchmark is a plain GET of the same loopback URL with
// the same http.Client and io.ReadAll of its body: what any client must do.
// Every iteration runs the floor and the measured call back to back, in
// alternating order, and reports the ratio of their median times (x-floor)
// and of their totals (x-floor-total), as the core's ratio benchmarks do:
//
//	go test -run '^$' -bench Ratio -count 6 ./falqueue

func benchServer(b *testing.B, body string, code int) (*httptest.Server, *Client, *Request) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}))
	b.Cleanup(srv.Close)
	c := &Client{Key: testKey, BaseURL: srv.URL, HTTPClient: srv.Client()}
	u := srv.URL + "/fal-ai/flux/requests/r"
	return srv, c, &Request{ID: "r", Endpoint: "fal-ai/flux/dev", StatusURL: u + "/status", ResponseURL: u, CancelURL: u + "/cancel"}
}

func floorGet(b *testing.B, hc *http.Client, url string) func() {
	return func() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Key "+testKey)
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

func BenchmarkRatioResult1MiB(b *testing.B) {
	body := `{"images": [{"url": "data:image/png;base64,` + strings.Repeat("A", 1<<20-64) + `"}], "seed": 17454220438242315174}`
	srv, c, req := benchServer(b, body, 200)
	ratio(b, "x-floor", floorGet(b, srv.Client(), req.ResponseURL), func() {
		if _, err := c.Result(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkRatioStatus(b *testing.B) {
	srv, c, req := benchServer(b, `{"status": "IN_QUEUE", "request_id": "r", "queue_position": 3}`, 202)
	ratio(b, "x-floor", floorGet(b, srv.Client(), req.StatusURL), func() {
		if _, err := c.Status(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	})
}

// ratio runs base and op alternately b.N times each and reports the ratio
// of op's median time to base's, and of their totals.
func ratio(b *testing.B, unit string, base, op func()) {
	base()
	op()
	tb := make([]time.Duration, 0, b.N)
	to := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		first, second, d1, d2 := base, op, &tb, &to
		if i%2 == 1 {
			first, second, d1, d2 = op, base, &to, &tb
		}
		t0 := time.Now()
		first()
		t1 := time.Now()
		second()
		t2 := time.Now()
		*d1, *d2 = append(*d1, t1.Sub(t0)), append(*d2, t2.Sub(t1))
	}
	b.StopTimer()
	med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	var sb, so time.Duration
	for i := range tb {
		sb, so = sb+tb[i], so+to[i]
	}
	b.ReportMetric(float64(med(to))/float64(med(tb)), unit)
	b.ReportMetric(float64(so)/float64(sb), unit+"-total")
}
