package main

import (
	"crypto/rand"
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

// newRequestID returns a random version 4 UUID, the shape of fal's request
// ids.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand.Read crashes the program instead
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
