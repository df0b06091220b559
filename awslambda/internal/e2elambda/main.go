// Command e2elambda is the Lambda function that awslambda's end-to-end test
// runs under the Lambda Runtime Interface Emulator: awslambda.Handler around
// a falwebhook verifier that trusts exactly one static key.
//
// Environment:
//
//	FALWEBHOOK_E2E_PUBLIC_KEY  the Ed25519 public key to trust, 64 hex digits (required)
//	FALWEBHOOK_E2E_PIDFILE     if set, a file to write the process id to at start,
//	                           so that the test can stop the process
//
// A verified delivery is answered 200 with the text "verified <request id>".
package main

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/awslambda"
)

func main() {
	if f := os.Getenv("FALWEBHOOK_E2E_PIDFILE"); f != "" {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			log.Fatalf("e2elambda: %v", err)
		}
	}
	pub, err := hex.DecodeString(os.Getenv("FALWEBHOOK_E2E_PUBLIC_KEY"))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		log.Fatalf("e2elambda: FALWEBHOOK_E2E_PUBLIC_KEY must be %d hex digits", 2*ed25519.PublicKeySize)
	}
	lambda.Start(awslambda.Handler(receiver(pub)))
}

// receiver returns the webhook receiver. It is this command's only use of
// the falwebhook API.
func receiver(pub ed25519.PublicKey) http.Handler {
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(pub)))
	return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		fmt.Fprintf(w, "verified %s", ev.RequestID)
	}))
}
