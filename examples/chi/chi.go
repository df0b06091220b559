// Package chi receives fal.ai webhooks with github.com/go-chi/chi/v5.
//
// The Verifier's middleware fits chi's func(http.Handler) http.Handler, but
// mount it on the webhook's route with r.With, not on the whole router with
// r.Use: it answers every method but POST with 405, so under r.Use every
// other route (health checks, your API) would answer 405 too.
package chi

import (
	"context"
	"net/http"

	"github.com/falwebhook/falwebhook"
	"github.com/go-chi/chi/v5"
)

// New returns a chi router that answers fal's deliveries at POST
// /fal/webhook, calling handle once per request id with the verified event,
// next to an ordinary route, GET /healthz. When handle returns an error the
// answer is 500, so that fal retries and the retry runs handle again.
func New(v *falwebhook.Verifier, d *falwebhook.Dedupe, handle func(context.Context, *falwebhook.Event) error) http.Handler {
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	r.With(v.Middleware, d.Middleware).Post("/fal/webhook", func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		if err := handle(r.Context(), ev); err != nil {
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		}
	})
	return r
}
