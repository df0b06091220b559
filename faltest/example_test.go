package faltest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falqueue"
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

// Test a webhook handler end to end: sign a delivery with your own key and
// send it through falwebhook's middleware, which trusts that key.
func ExampleSigner_NewRequest() {
	signer := faltest.SignerFromName("example")
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())))

	handler := v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {
		fmt.Fprintln(w, "handled", ev.RequestID, ev.Status, ev.Err())
	})

	req := signer.NewRequest("/fal/webhook", faltest.Delivery{Body: faltest.ValidationErrorBody("req-422")})
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	fmt.Print(rec.Code, " ", rec.Body)

	forged := faltest.SignerFromName("someone else").NewRequest("/fal/webhook", faltest.Delivery{Body: faltest.OKBody("req-1", nil)})
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, forged)
	fmt.Print(rec.Code, " ", rec.Body)
	// Output:
	// 200 handled req-422 ERROR falwebhook: request req-422 failed: Invalid status code: 422: body.prompt: field required (value_error.missing)
	// 401 Unauthorized
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

// Test the whole round trip offline: submit to a fake fal queue, receive
// its signed webhook through falwebhook's verifier, and recover a request
// whose webhook was lost by polling the queue, before fal forgets it.
func ExampleQueue() {
	ctx := context.Background()
	signer := faltest.SignerFromName("example")
	clock := faltest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	q := faltest.NewQueue(signer, clock)
	defer q.Close()
	q.SetPlanner(func(r faltest.QueueRequest) faltest.Plan {
		p := faltest.Plan{InProgress: 5 * time.Second} // the output is the input, echoed
		p.Webhook.Drop = strings.Contains(string(r.Input), "lost")
		return p
	})

	// The receiver: falwebhook's verifier on the queue's clock, and a
	// receiver that is down for the first 30 seconds.
	processed := map[string]string{}
	down := true
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())), falwebhook.WithClock(clock.Now))
	handler := v.Handler(func(w http.ResponseWriter, r *http.Request, ev *falwebhook.Event) {
		processed[ev.RequestID] = "webhook " + string(ev.Payload)
	})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		handler.ServeHTTP(w, r)
	}))
	defer receiver.Close()

	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, Clock: clock}
	var reqs []*falqueue.Request
	for _, prompt := range []string{"a dog", "a lost cat"} {
		req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]string{"prompt": prompt}, receiver.URL+"/fal/webhook")
		if err != nil {
			panic(err)
		}
		reqs = append(reqs, req)
	}

	_ = q.Advance(ctx, 30*time.Second) // fal's attempts at 5 s and 20 s fail: the receiver is down
	down = false
	_ = q.Advance(ctx, 2*time.Minute) // fal's retry at 50 s gets through

	for _, req := range reqs { // a backstop polls what no webhook brought
		if _, ok := processed[req.ID]; ok {
			continue
		}
		if st, err := qc.Status(ctx, req); err != nil || !st.Completed() {
			panic(fmt.Sprint(st, err))
		}
		ev, err := qc.Result(ctx, req)
		if err != nil {
			panic(err)
		}
		processed[ev.RequestID] = "polled " + string(ev.Payload)
	}

	for _, req := range reqs {
		info, _ := q.Request(req.ID)
		fmt.Printf("%s: %s; webhook %s after %d attempts; %d status calls, %d results fetched\n",
			req.ID, processed[req.ID], info.Webhook, len(info.Attempts), info.StatusCalls, info.ResultsServed)
	}
	// Output:
	// 00000000-0000-4000-8000-000000000001: webhook {"prompt":"a dog"}; webhook delivered after 3 attempts; 0 status calls, 0 results fetched
	// 00000000-0000-4000-8000-000000000002: polled {"prompt":"a lost cat"}; webhook dropped after 0 attempts; 1 status calls, 1 results fetched
}
