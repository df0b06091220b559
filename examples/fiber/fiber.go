// Package fiber receives fal.ai webhooks with github.com/gofiber/fiber/v2.
//
// fiber runs on fasthttp, not net/http, so the handler calls Verify itself
// with what fasthttp read:
//
//   - the headers with every value, http.Header(c.GetReqHeaders()), so that a
//     repeated fal header is seen and refused (c.Get returns the first value
//     only);
//   - the body as sent, c.Request().Body(): c.Body() undoes a
//     Content-Encoding, decompressing unverified bytes and hashing other
//     bytes than the signed ones.
//
// The middleware/adaptor route, adaptor.HTTPHandler(v.Handler(...)), is
// shorter but hides repeated headers: fasthttpadaptor (v1.51.0) copies them
// with Header.Set, keeping the last value only, which is then verified.
//
// fasthttp reads the whole body before the handler runs, so fiber's
// BodyLimit, not the Verifier's WithMaxBodySize, bounds it (fiber answers
// 413), and the Verifier's read deadline and body budget do not apply: set
// fiber's ReadTimeout and Concurrency.
package fiber

import (
	"context"
	"net/http"

	"github.com/falwebhook/falwebhook"
	"github.com/gofiber/fiber/v2"
)

// New returns a fiber app configured by cfg that answers fal's deliveries at
// POST /fal/webhook, calling handle once per request id with the verified
// event. When handle returns an error the answer is 500, so that fal retries
// and the retry runs handle again.
//
// Set cfg.BodyLimit to the limit you give WithMaxBodySize (25 MiB by
// default): fiber's default, 4 MiB, refuses larger genuine deliveries.
func New(v *falwebhook.Verifier, d *falwebhook.Dedupe, handle func(context.Context, *falwebhook.Event) error, cfg fiber.Config) *fiber.App {
	app := fiber.New(cfg)
	app.Post("/fal/webhook", func(c *fiber.Ctx) error {
		ev, err := v.Verify(c.UserContext(), http.Header(c.GetReqHeaders()), c.Request().Body())
		if err != nil {
			return answer(c, 0, err)
		}
		// The store failing gives state 0 and a 503; handle failing, a 500.
		state, err := d.Do(c.UserContext(), ev, func(ctx context.Context) error { return handle(ctx, ev) })
		return answer(c, state, err)
	})
	return app
}

// answer sends what falwebhook.Answer gives: the status, with Retry-After
// and Falwebhook-Duplicate where they belong.
func answer(c *fiber.Ctx, state falwebhook.ClaimState, err error) error {
	code, header := falwebhook.Answer(state, err)
	for k := range header {
		c.Set(k, header.Get(k))
	}
	return c.SendStatus(code)
}
