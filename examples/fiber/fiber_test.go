package fiber_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	recipe "github.com/falwebhook/falwebhook/examples/fiber"
	"github.com/falwebhook/falwebhook/examples/internal/recipetest"
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

var config = fiber.Config{BodyLimit: recipetest.MaxBodySize, DisableStartupMessage: true}

func TestRecipe(t *testing.T) {
	recipetest.Run(t, serve(func(s recipetest.Setup) *fiber.App {
		return recipe.New(s.Verifier, s.Dedupe, s.Handle, config)
	}))
}

// serve runs the app newApp builds on a loopback listener until the test
// ends.
func serve(newApp func(recipetest.Setup) *fiber.App) recipetest.Serve {
	return func(t *testing.T, s recipetest.Setup) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		app := newApp(s)
		done := make(chan error, 1)
		go func() { done <- app.Listener(ln) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := app.ShutdownWithContext(ctx); err != nil {
				t.Errorf("shutting fiber down: %v", err)
			}
			if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("fiber's listener: %v", err)
			}
		})
		return "http://" + ln.Addr().String()
	}
}

// The adaptor passes a repeated header on as its last value alone, so the
// middleware cannot refuse it; this is why the recipe calls Verify itself.
func TestAdaptorKeepsLastHeaderValue(t *testing.T) {
	f := recipetest.Start(t, serve(func(s recipetest.Setup) *fiber.App {
		app := fiber.New(config)
		app.Post("/adapted", adaptor.HTTPHandler(s.Verifier.Handler(func(http.ResponseWriter, *http.Request, *falwebhook.Event) {})))
		return app
	}))
	d := f.Signed("req-twice", recipetest.Body("req-twice"))
	d.Header[falwebhook.HeaderSignature] = []string{strings.Repeat("0", 128), d.Header.Get(falwebhook.HeaderSignature)}
	a := f.Do(http.MethodPost, "/adapted", d)
	if a.Status != http.StatusOK {
		t.Fatalf("through the adaptor a repeated signature header got %d, want 200 (only its last value verified): if the adaptor now keeps every value, reconsider it", a.Status)
	}
}
