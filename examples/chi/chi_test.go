package chi_test

import (
	"net/http"
	"testing"

	recipe "github.com/falwebhook/falwebhook/examples/chi"
	"github.com/falwebhook/falwebhook/examples/internal/recipetest"
)

var serve = recipetest.HTTPServer(func(s recipetest.Setup) http.Handler {
	return recipe.New(s.Verifier, s.Dedupe, s.Handle)
})

func TestRecipe(t *testing.T) {
	recipetest.Run(t, serve)
}

// The webhook's middleware must not reach the router's other routes.
func TestOtherRoutes(t *testing.T) {
	f := recipetest.Start(t, serve)
	a := f.Do(http.MethodGet, "/healthz", recipetest.Delivery{})
	a.Want(t, http.StatusOK)
	if a.Body != "ok\n" {
		t.Errorf("GET /healthz answered %q, want the health route's \"ok\\n\"", a.Body)
	}
	f.Do(http.MethodGet, recipetest.Path, recipetest.Delivery{}).Want(t, http.StatusMethodNotAllowed)
}
