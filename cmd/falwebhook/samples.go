package main

import (
	"encoding/json"
	"fmt"

	"github.com/falwebhook/falwebhook/faltest"
)

// sampleImagePayload is the payload of a real fal delivery seen in public
// code (FLUX text-to-image). Its seed is above int64's maximum.
const sampleImagePayload = `{"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}`

// sampleRequestID is the request id of that delivery.
const sampleRequestID = "5057fca7-2eb3-468f-b95d-cefe92b0b9d4"

// sampleBody returns the body of a sample delivery: "ok" is fal's real
// image delivery, byte for byte when requestID is sampleRequestID; "error"
// is fal's documented 422 validation error.
func sampleBody(kind, requestID string) ([]byte, error) {
	switch kind {
	case "ok":
		return faltest.OKBody(requestID, json.RawMessage(sampleImagePayload)), nil
	case "error":
		return faltest.ValidationErrorBody(requestID), nil
	}
	return nil, fmt.Errorf("unknown sample %q; want ok or error", kind)
}
