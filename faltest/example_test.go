package faltest_test

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// Sign a delivery with a deterministic key and a fixed time, and print the
// headers fal would send with it.
func ExampleSigner_Sign() {
	signer := faltest.SignerFromName("example")
	body := faltest.OKBody("5057fca7-2eb3-468f-b95d-cefe92b0b9d4", map[string]any{"prompt": "dog", "seed": 42})

	h := signer.Sign(faltest.Delivery{
		UserID: "user-1234",
		Time:   time.Unix(1700000000, 0),
		Body:   body, // the request id is taken from the body
	})

	fmt.Printf("%s\n\n", body)
	fmt.Println(faltest.HeaderRequestID+":", h.RequestID)
	fmt.Println(faltest.HeaderUserID+":", h.UserID)
	fmt.Println(faltest.HeaderTimestamp+":", h.Timestamp)
	fmt.Println(faltest.HeaderSignature+":", h.Signature)
	// Output:
	// {"error": null, "gateway_request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "payload": {"prompt": "dog", "seed": 42}, "request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK"}
	//
	// X-Fal-Webhook-Request-Id: 5057fca7-2eb3-468f-b95d-cefe92b0b9d4
	// X-Fal-Webhook-User-Id: user-1234
	// X-Fal-Webhook-Timestamp: 1700000000
	// X-Fal-Webhook-Signature: 67c8592d45742f9785ea079e5eadf5bf34ecc82ba277b0c7c5e76284930f96e5ad3e9e682cf6543ab4aa68d9c805d8cea631b5f3430ad82e117bf1ebcfeed002
}

// Test a webhook handler with a signed request. Here the handler checks the
// signature with crypto/ed25519 directly; a real test would wrap it with
// falwebhook's middleware and falwebhook.WithKeys(signer.PublicKey()).
func ExampleSigner_NewRequest() {
	signer := faltest.SignerFromName("example")
	pub := signer.PublicKey()

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig, _ := hex.DecodeString(r.Header.Get(faltest.HeaderSignature))
		msg := faltest.Message(
			r.Header.Get(faltest.HeaderRequestID),
			r.Header.Get(faltest.HeaderUserID),
			r.Header.Get(faltest.HeaderTimestamp),
			body)
		if !ed25519.Verify(pub, msg, sig) {
			http.Error(w, "invalid webhook", http.StatusUnauthorized)
			return
		}
		fmt.Fprintln(w, "verified", r.Header.Get(faltest.HeaderRequestID))
	})

	req := signer.NewRequest("/fal/webhook", faltest.Delivery{Body: faltest.ValidationErrorBody("req-422")})
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	fmt.Print(rec.Code, " ", rec.Body)
	// Output: 200 verified req-422
}

// Publish keys on a loopback JWKS endpoint, rotate them, and count fetches.
func ExampleKeyServer() {
	oldKey, newKey := faltest.SignerFromName("old"), faltest.SignerFromName("new")
	ks := faltest.NewKeyServer(oldKey)
	defer ks.Close()

	kids := func() []string {
		resp, err := ks.Client().Get(ks.URL)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		var doc struct {
			Keys []struct {
				Kid string `json:"kid"`
			} `json:"keys"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
			panic(err)
		}
		var ids []string
		for _, k := range doc.Keys {
			ids = append(ids, k.Kid)
		}
		return ids
	}

	fmt.Println(kids(), oldKey.KeyID())
	ks.SetSigners(oldKey, newKey)
	fmt.Println(kids(), newKey.KeyID())
	fmt.Println("fetches:", ks.Fetches())
	// Output:
	// [828dbb0c20841fb2] 828dbb0c20841fb2
	// [828dbb0c20841fb2 4e53a8f0f6fbb6d5] 4e53a8f0f6fbb6d5
	// fetches: 2
}
