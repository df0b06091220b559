package nethttp_test

import (
	"net/http"
	"testing"

	"github.com/falwebhook/falwebhook/examples/internal/recipetest"
	"github.com/falwebhook/falwebhook/examples/nethttp"
)

func TestRecipe(t *testing.T) {
	recipetest.Run(t, recipetest.HTTPServer(func(s recipetest.Setup) http.Handler {
		return nethttp.New(s.Verifier, s.Dedupe, s.Handle)
	}))
}
