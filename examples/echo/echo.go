// Package echo receives fal.ai webhooks with github.com/labstack/echo/v4.
//
// The Verifier's and Dedupe's net/http middleware go on the webhook's route
// through echo.WrapMiddleware, so the verification is the same as with
// net/http and the handler stays an echo handler. It receives the verified
// body again: c.Bind works there. Never bind in a handler that verifies
// afterwards (VerifyRequest): c.Bind reads the body, and the verifier then
// sees an empty one and answers 401.
package echo

import (
	"context"
	"net/http"

	"github.com/falwebhook/falwebhook"
	"github.com/labstack/echo/v4"
)

// New returns an echo server that answers fal's deliveries at POST
// /fal/webhook, calling handle once per request id with the verified event.
// When handle returns an error the answer is 500, so that fal retries and
// the retry runs handle again.
func New(v *falwebhook.Verifier, d *falwebhook.Dedupe, handle func(context.Context, *falwebhook.Event) error) *echo.Echo {
	e := echo.New()
	e.POST("/fal/webhook", func(c echo.Context) error {
		ev, _ := falwebhook.EventFromContext(c.Request().Context())
		if err := handle(c.Request().Context(), ev); err != nil {
			// Answer here: echo writes a returned error only after the
			// middleware is done, too late for Dedupe, which would take
			// the delivery as handled and answer fal's retry as a duplicate.
			return c.NoContent(http.StatusInternalServerError)
		}
		return c.NoContent(http.StatusOK)
	}, echo.WrapMiddleware(v.Middleware), echo.WrapMiddleware(d.Middleware))
	return e
}
