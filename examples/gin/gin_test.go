package gin_test

import (
	"net/http"
	"os"
	"testing"

	"github.com/falwebhook/falwebhook"
	recipe "github.com/falwebhook/falwebhook/examples/gin"
	"github.com/falwebhook/falwebhook/examples/internal/recipetest"
	"github.com/gin-gonic/gin"
	"github.com/gin-gonic/gin/binding"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

func TestRecipe(t *testing.T) {
	recipetest.Run(t, recipetest.HTTPServer(func(s recipetest.Setup) http.Handler {
		return recipe.New(s.Verifier, s.Dedupe, s.Handle)
	}))
}

// delivery is the part of a delivery's body the routes below bind.
type delivery struct {
	RequestID string `json:"request_id"`
	Payload   struct {
		Seed uint64 `json:"seed"`
	} `json:"payload"`
}

// After verification the handler reads the body again with gin's binding;
// binding before verifying leaves the verifier an empty body.
func TestBinding(t *testing.T) {
	bound := make(chan delivery, 1)
	f := recipetest.Start(t, recipetest.HTTPServer(func(s recipetest.Setup) http.Handler {
		r := recipe.New(s.Verifier, s.Dedupe, s.Handle)
		r.POST("/after", gin.WrapH(s.Verifier.Handler(func(w http.ResponseWriter, r *http.Request, _ *falwebhook.Event) {
			var b delivery
			if err := binding.JSON.Bind(r, &b); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			bound <- b
		})))
		r.POST("/before", func(c *gin.Context) {
			var early delivery
			_ = c.ShouldBindJSON(&early)
			if _, err := s.Verifier.VerifyRequest(c.Request); err != nil {
				falwebhook.WriteError(c.Writer, err)
			}
		})
		return r
	}))

	// First, on a cold cache: the keys are fetched for this delivery, so
	// they settle its mismatch as a 401. Once they are cached, a mismatch
	// signed after they were fetched is a 503 until the refetch cooldown
	// ends, as a key added since may have signed it (JWKS.Cooldown).
	f.Do(http.MethodPost, "/before", f.Signed("req-early", recipetest.Body("req-early"))).Want(t, http.StatusUnauthorized)
	f.Do(http.MethodPost, "/after", f.Signed("req-bind", recipetest.Body("req-bind"))).Want(t, http.StatusOK)
	if b := <-bound; b.RequestID != "req-bind" || b.Payload.Seed != recipetest.Seed {
		t.Errorf("bound request %q seed %d after verification, want req-bind %d", b.RequestID, b.Payload.Seed, recipetest.Seed)
	}
}
