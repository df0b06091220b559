package redisdedupe_test

import (
	"log"
	"net/http"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/redisdedupe"
	"github.com/redis/go-redis/v9"
)

// Every replica of the service runs the same code against the same Redis;
// each delivery's handler runs once between them.
func Example() {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		DialTimeout:           time.Second, // a Redis outage becomes a 503 within about 3 s, and fal retries
		ReadTimeout:           time.Second, // WriteTimeout follows it
		PoolTimeout:           time.Second,
		MaxRetries:            2, // safe: the store's operations report what a lost first attempt did
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
	})
	v := falwebhook.NewVerifier()
	d := &falwebhook.Dedupe{
		Store: redisdedupe.New(rdb, redisdedupe.WithPrefix("imagesvc:fal:")),
		Lease: time.Minute,
	}
	mux := http.NewServeMux()
	mux.Handle("POST /fal/webhook", v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Runs once per delivery. Answer non-2xx to have fal retry.
		ev, _ := falwebhook.EventFromContext(r.Context())
		log.Printf("request %s finished: %s", ev.RequestID, ev.Status)
	}))))
	_ = http.ListenAndServe(":8080", mux)
}
