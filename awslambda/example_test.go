package awslambda_test

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/falwebhook/falwebhook/awslambda"
)

// A function URL event, as Lambda passes it to the function, served by an
// http.Handler. In a Lambda function, pass the handler to lambda.Start
// instead of calling Invoke.
func ExampleHandler() {
	h := awslambda.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s from %s: %s", r.Method, r.URL.Path, r.RemoteAddr, body)
	}))

	event := `{
		"version": "2.0",
		"rawPath": "/fal/webhook",
		"headers": {"content-type": "application/json", "x-fal-webhook-request-id": "req-1"},
		"requestContext": {"http": {"method": "POST", "sourceIp": "203.0.113.7"}},
		"body": "eyJzdGF0dXMiOiAiT0sifQ==",
		"isBase64Encoded": true
	}`
	out, err := h.Invoke(context.Background(), []byte(event))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(out))
	// Output:
	// {"statusCode":200,"headers":{"Content-Type":"text/plain"},"body":"POST /fal/webhook from 203.0.113.7: {\"status\": \"OK\"}","isBase64Encoded":false,"cookies":null}
}
