package redisdedupe_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
	"github.com/falwebhook/falwebhook/redisdedupe"
)

// The Redis cost of a delivery is one round trip to claim it (EVALSHA)
// and one to complete it (EVALSHA), against the Redis at
// FALWEBHOOK_REDIS_ADDR:
//
//	go test -run '^$' -bench . -benchmem -count 6

// BenchmarkStoreClaim measures one claim of a new request id: one round
// trip.
func BenchmarkStoreClaim(b *testing.B) {
	c := connect(b)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(b, c)))
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		state, _, err := s.Claim(ctx, fmt.Sprint(i), time.Minute)
		if err != nil || state != falwebhook.ClaimAcquired {
			b.Fatalf("Claim = %v, %v", state, err)
		}
	}
}

// BenchmarkStoreClaimComplete measures the store's work for one delivery
// processed successfully: claim and complete, two round trips.
func BenchmarkStoreClaimComplete(b *testing.B) {
	c := connect(b)
	s := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(b, c)))
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprint(i)
		state, token, err := s.Claim(ctx, id, time.Minute)
		if err != nil || state != falwebhook.ClaimAcquired {
			b.Fatalf("Claim = %v, %v", state, err)
		}
		if err := s.Complete(ctx, id, token, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// benchMiddleware measures one verified 1 KiB delivery with a new request
// id through the middleware, with Redis dedupe when redisDedupe is set.
func benchMiddleware(b *testing.B, redisDedupe bool) {
	s := faltest.SignerFromName("bench-1")
	at := time.Unix(1_700_000_000, 0)
	const head, tail = `{"error": null, "payload": {"pad": "`, `"}, "request_id": "bench-request", "status": "OK"}`
	body := []byte(head + strings.Repeat("x", 1<<10-len(head)-len(tail)) + tail)
	opts := []falwebhook.Option{falwebhook.WithKeys(falwebhook.StaticKeys(s.PublicKey())), falwebhook.WithClock(func() time.Time { return at })}
	var next http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	})
	if redisDedupe {
		c := connect(b)
		store := redisdedupe.New(c, redisdedupe.WithPrefix(testPrefix(b, c)))
		next = (&falwebhook.Dedupe{Store: store, TTL: time.Minute}).Middleware(next)
	}
	h := falwebhook.NewVerifier(opts...).Middleware(next)
	headers := make([]http.Header, b.N)
	for i := range headers {
		headers[i] = http.Header{}
		s.Sign(faltest.Delivery{RequestID: fmt.Sprintf("bench-%08d", i), Time: at, Body: body}).Set(headers[i])
	}
	req := httptest.NewRequest(http.MethodPost, "/webhook", nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		req.Header = headers[i]
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.Code)
		}
	}
}

// BenchmarkMiddlewareNoDedupe is the baseline of BenchmarkMiddlewareRedis.
func BenchmarkMiddlewareNoDedupe(b *testing.B) { benchMiddleware(b, false) }

// BenchmarkMiddlewareRedis adds Redis dedupe to BenchmarkMiddlewareNoDedupe.
func BenchmarkMiddlewareRedis(b *testing.B) { benchMiddleware(b, true) }
