package falwebhook_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// The examples sign deliveries with a faltest key standing in for fal's, and
// fix the verifier's clock so that their output never changes. Real code
// needs neither: NewVerifier() fetches fal's keys and reads time.Now.

// Verifying in a handler of your own with Verify, as with a router that
// hands out the raw body.
func Example() {
	fal := faltest.SignerFromName("example") // stands in for fal.ai
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())), // omit to use fal's published keys
		falwebhook.WithClock(func() time.Time { return now }),
	)

	webhook := func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		ev, err := v.Verify(r.Context(), r.Header, body)
		if err != nil {
			falwebhook.WriteError(w, err) // 400, 401 or 503, with Retry-After
			return
		}
		fmt.Println("verified", ev.RequestID, ev.Status)
	}

	// fal POSTs the result of request req-1, signed a few seconds ago.
	body := faltest.OKBody("req-1", map[string]any{"seed": 42})
	req := fal.NewRequest("/fal/webhook", faltest.Delivery{Time: now.Add(-3 * time.Second), Body: body})
	webhook(httptest.NewRecorder(), req)
	// Output: verified req-1 OK
}

func ExampleVerifier_Middleware() {
	fal := faltest.SignerFromName("example") // stands in for fal.ai
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())),
		falwebhook.WithClock(func() time.Time { return now }),
	)

	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		fmt.Println("handler got", ev.RequestID, ev.Status, string(ev.Payload))
	}))

	body := faltest.OKBody("req-1", map[string]any{"seed": 42})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, fal.NewRequest("/fal/webhook", faltest.Delivery{Time: now, Body: body}))
	fmt.Println("genuine:", rec.Code)

	// The same delivery signed by anyone else never reaches the handler.
	forger := faltest.SignerFromName("forger")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, forger.NewRequest("/fal/webhook", faltest.Delivery{Time: now, Body: body}))
	fmt.Println("forged:", rec.Code)
	// Output:
	// handler got req-1 OK {"seed": 42}
	// genuine: 200
	// forged: 401
}

func ExampleDecodePayload() {
	// A real delivery from a text-to-image model.
	body := []byte(`{"error": null, "gateway_request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "payload": {"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}, "request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK"}`)

	ev, err := falwebhook.ParseEvent(body) // in a handler: falwebhook.EventFromContext
	if err != nil {
		panic(err)
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err != nil {
		panic(err)
	}
	fmt.Println("seed:", out.Seed) // above int64's range, yet exact
	fmt.Println("image:", out.Images[0].URL, out.Images[0].Width, "x", out.Images[0].Height)
	// Output:
	// seed: 17454220438242315174
	// image: https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg 1024 x 1024
}

func ExampleEvent_Err() {
	body := []byte(`{"error": "Invalid status code: 422", "gateway_request_id": "req-1", "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}, "request_id": "req-1", "status": "ERROR"}`)

	ev, err := falwebhook.ParseEvent(body)
	if err != nil {
		panic(err)
	}
	if err := ev.Err(); err != nil {
		fmt.Println(err)

		var re *falwebhook.RequestError
		if errors.As(err, &re) && re.Detail != nil {
			fmt.Println("first problem:", re.Detail.Items[0].Msg)
		}
	}
	// Output:
	// falwebhook: request req-1 failed: Invalid status code: 422: body.prompt: field required (value_error.missing)
	// first problem: field required
}

// Telling verification failures apart, and answering each with the status
// that makes fal retry only when retrying can help.
func ExampleStatusCode() {
	fal := faltest.SignerFromName("example") // stands in for fal.ai
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	clock := falwebhook.WithClock(func() time.Time { return now })
	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())), clock)
	ctx := context.Background()

	body := faltest.OKBody("req-1", nil)
	signed := http.Header{}
	fal.Sign(faltest.Delivery{Time: now, Body: body}).Set(signed)
	stale := http.Header{}
	fal.Sign(faltest.Delivery{Time: now.Add(-10 * time.Minute), Body: body}).Set(stale)
	unsigned := signed.Clone()
	unsigned.Del(falwebhook.HeaderSignature)

	// fal's key server failing while no keys are cached.
	keys := faltest.NewKeyServer(fal)
	defer keys.Close()
	keys.FailNext(1, http.StatusInternalServerError)
	noKeys := falwebhook.NewVerifier(falwebhook.WithKeys(&falwebhook.JWKS{URL: keys.URL}), clock)

	report := func(what string, err error) {
		var reason string
		switch {
		case errors.Is(err, falwebhook.ErrKeysUnavailable):
			reason = "cannot verify now, fal will retry"
		case errors.Is(err, falwebhook.ErrSignatureMismatch):
			reason = "forged or altered"
		case errors.Is(err, falwebhook.ErrTimestampOutOfRange):
			var te *falwebhook.TimestampError
			errors.As(err, &te)
			reason = fmt.Sprintf("replayed or delayed (skew %ds)", te.Skew)
		case errors.Is(err, falwebhook.ErrMissingHeader):
			reason = "not a fal delivery"
		}
		fmt.Printf("%-17s %d %s\n", what+":", falwebhook.StatusCode(err), reason)
	}
	tampered := bytes.Replace(body, []byte(`"OK"`), []byte(`"ERROR"`), 1)
	verify := func(v *falwebhook.Verifier, h http.Header, body []byte) error {
		_, err := v.Verify(ctx, h, body)
		return err
	}
	report("tampered body", verify(v, signed, tampered))
	report("stale timestamp", verify(v, stale, body))
	report("missing header", verify(v, unsigned, body))
	report("keys unavailable", verify(noKeys, signed, body))
	// Output:
	// tampered body:    401 forged or altered
	// stale timestamp:  401 replayed or delayed (skew -600s)
	// missing header:   400 not a fal delivery
	// keys unavailable: 503 cannot verify now, fal will retry
}

// Running a handler once per delivery, turning fal's at-least-once
// delivery into exactly-once processing. Here in memory; use the Redis store
// (module github.com/falwebhook/falwebhook/redisdedupe) across replicas.
func ExampleDedupe_Middleware() {
	fal := faltest.SignerFromName("example") // stands in for fal.ai
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())),
		falwebhook.WithClock(func() time.Time { return now }),
	)
	d := &falwebhook.Dedupe{}
	h := v.Middleware(d.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, _ := falwebhook.EventFromContext(r.Context())
		fmt.Println("processing", ev.RequestID)
	})))

	body := faltest.OKBody("req-1", nil)
	for range 2 { // fal retries: the same request, freshly signed
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, fal.NewRequest("/fal/webhook", faltest.Delivery{Time: now, Body: body}))
		fmt.Printf("%d %s=%q\n", rec.Code, falwebhook.HeaderDuplicate, rec.Header().Get(falwebhook.HeaderDuplicate))
	}
	// Output:
	// processing req-1
	// 200 Falwebhook-Duplicate=""
	// 200 Falwebhook-Duplicate="completed"
}

// The function form of dedupe, for code that answers fal itself: a gin,
// echo or fiber handler, or AWS Lambda.
func ExampleDedupe_Do() {
	fal := faltest.SignerFromName("example") // stands in for fal.ai
	now := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	v := falwebhook.NewVerifier(
		falwebhook.WithKeys(falwebhook.StaticKeys(fal.PublicKey())),
		falwebhook.WithClock(func() time.Time { return now }),
	)
	d := &falwebhook.Dedupe{} // in memory
	process := func(ctx context.Context) error {
		fmt.Println("processing")
		return nil
	}
	body := faltest.OKBody("req-1", nil)
	for range 2 { // fal retries: the same request, freshly signed
		h := http.Header{}
		fal.Sign(faltest.Delivery{Time: now, Body: body}).Set(h)
		ev, err := v.Verify(context.Background(), h, body)
		if err != nil {
			fmt.Println("answer", falwebhook.StatusCode(err))
			continue
		}
		state, err := d.Do(context.Background(), ev, process)
		status, _ := falwebhook.Answer(state, err) // 409 in progress, 503 store down
		fmt.Println("answer", status, "ran:", state == falwebhook.ClaimAcquired)
	}
	// Output:
	// processing
	// answer 200 ran: true
	// answer 200 ran: false
}
