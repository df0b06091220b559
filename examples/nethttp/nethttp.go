// Package nethttp receives fal.ai webhooks with the standard library's
// ServeMux.
//
// The Verifier's middleware is plain net/http, so it goes straight on the
// route: it reads the body within the limit, verifies it, and hands on the
// event in the request context. The Dedupe middleware sits behind it, so
// that only verified request ids are claimed.
package nethttp

import (
	"context"
	"net/http"

	"github.com/falwebhook/falwebhook"
)

// New returns a ServeMux that answers fal's deliveries at POST /fal/webhook
// (other methods get 405) and calls handle once per request id with the
// verified event. When handle returns an error the answer is 500, so that
// fal retries and the retry runs handle again.
func New(v *falwebhook.Verifier, d *falwebhook.Dedupe, handle func(context.Context, *falwebhook.Event) error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /fal/webhook", v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		if err := handle(r.Context(), ev); err != nil {
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		}
	}))))
	return mux
}
