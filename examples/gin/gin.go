// Package gin receives fal.ai webhooks with github.com/gin-gonic/gin.
//
// The webhook's route is the Verifier's net/http middleware behind
// gin.WrapH, so the verification is the same as with net/http: the body read
// within the limit and under a read deadline, rejections logged and answered
// with the right status, and Dedupe seeing the handler's status.
// The handler receives the verified body again in r.Body: gin's binding
// (binding.JSON.Bind(r, &v)) works there. Never bind in a gin handler before
// verifying: ShouldBindJSON reads the body, and the verifier then sees an
// empty one and answers 401.
package gin

import (
	"context"
	"net/http"

	"github.com/falwebhook/falwebhook"
	"github.com/gin-gonic/gin"
)

// New returns a gin engine that answers fal's deliveries at POST
// /fal/webhook, calling handle once per request id with the verified event.
// When handle returns an error the answer is 500, so that fal retries and
// the retry runs handle again.
func New(v *falwebhook.Verifier, d *falwebhook.Dedupe, handle func(context.Context, *falwebhook.Event) error) *gin.Engine {
	r := gin.New()
	r.POST("/fal/webhook", gin.WrapH(v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		if err := handle(r.Context(), ev); err != nil {
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		}
	})))))
	return r
}
