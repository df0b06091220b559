package falqueue_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/falqueue"
	"github.com/falwebhook/falwebhook/faltest"
)

// Submit a request, poll it until it completes, and fetch its result: the
// same *falwebhook.Event a webhook would carry. Here against faltest's fake
// queue, offline, on a fake clock.
func ExampleClient() {
	ctx := context.Background()
	clock := faltest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	q := faltest.NewQueue(faltest.SignerFromName("example"), clock)
	defer q.Close()
	q.SetPlanner(func(faltest.QueueRequest) faltest.Plan {
		return faltest.Plan{InQueue: time.Second, InProgress: 3 * time.Second,
			Output: faltest.OKOutput(map[string]any{"images": []map[string]string{{"url": "https://v3.fal.media/files/dog.jpeg"}}, "seed": uint64(17454220438242315174)})}
	})

	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, Clock: clock}
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{"prompt": "a dog"}, "")
	if err != nil {
		panic(err)
	}
	for {
		st, err := qc.Status(ctx, req)
		if err != nil {
			panic(err)
		}
		fmt.Println(st.State, st.QueuePosition)
		if st.Completed() {
			break
		}
		clock.Advance(2 * time.Second) // a real poller would sleep
	}
	ev, err := qc.Result(ctx, req)
	if err != nil {
		panic(err)
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err != nil {
		panic(err)
	}
	fmt.Println(ev.RequestID, ev.Status, out.Images[0].URL, out.Seed)

	clock.Advance(time.Hour)
	_, err = qc.Result(ctx, req)
	fmt.Println(errors.Is(err, falqueue.ErrResultGone))
	// Output:
	// IN_QUEUE 0
	// IN_PROGRESS -1
	// COMPLETED -1
	// 00000000-0000-4000-8000-000000000001 OK https://v3.fal.media/files/dog.jpeg 17454220438242315174
	// true
}

// A failed request is an Event too: its Err reports fal's validation detail.
func ExampleClient_Result_failed() {
	ctx := context.Background()
	q := faltest.NewQueue(faltest.SignerFromName("example"), nil)
	defer q.Close()
	q.SetPlanner(func(faltest.QueueRequest) faltest.Plan { return faltest.Plan{Output: faltest.ValidationErrorOutput()} })

	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL}
	req, err := qc.Submit(ctx, "fal-ai/flux/dev", map[string]any{}, "")
	if err != nil {
		panic(err)
	}
	ev, err := qc.Result(ctx, req)
	if err != nil {
		panic(err)
	}
	fmt.Println(ev.Status, ev.Error)
	fmt.Println(ev.Err())
	// Output:
	// ERROR Invalid status code: 422
	// falwebhook: request 00000000-0000-4000-8000-000000000001 failed: Invalid status code: 422: body.prompt: field required (value_error.missing)
}
