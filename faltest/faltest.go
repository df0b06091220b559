// Package faltest signs fal.ai webhook deliveries for tests, the way
// net/http/httptest fakes HTTP: a Signer holds an Ed25519 key and signs
// deliveries exactly as fal does, a KeyServer publishes Signers' public
// keys as a JWKS document on a loopback address, and a Queue is a fake fal
// queue (submit, status, result, cancel, signed webhooks on fal's retry
// schedule, and faults) running on a fake Clock.
//
// The signed message is four lines joined by "\n", with no trailing newline:
//
//	<request id>
//	<user id>
//	<timestamp, Unix seconds in decimal>
//	<lower-case hex of sha256(raw body)>
//
// and the X-Fal-Webhook-Signature header carries the Ed25519 signature as 128
// lower-case hex digits. faltest is an independent implementation of that
// scheme using only the standard library; it does not import falwebhook.
//
// A handler test:
//
//	signer := faltest.SignerFromName("test")
//	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())))
//	body := faltest.OKBody("5057fca7-2eb3-468f-b95d-cefe92b0b9d4", map[string]any{"seed": 42})
//	req := signer.NewRequest("/fal/webhook", faltest.Delivery{Body: body})
//	rec := httptest.NewRecorder()
//	v.Middleware(handler).ServeHTTP(rec, req)
//
// and against a published key set:
//
//	ks := faltest.NewKeyServer(signer)
//	defer ks.Close()
//	v := falwebhook.NewVerifier(falwebhook.WithKeys(&falwebhook.JWKS{URL: ks.URL, Client: ks.Client()}))
//
// and the whole round trip, submit to processed, offline:
//
//	clock := faltest.NewClock(time.Time{})
//	q := faltest.NewQueue(signer, clock)
//	defer q.Close()
//	v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(signer.PublicKey())), falwebhook.WithClock(clock.Now))
//	qc := &falqueue.Client{Key: q.Key(), BaseURL: q.URL, Clock: clock}
//	req, err := qc.Submit(ctx, "fal-ai/flux/dev", input, receiver.URL+"/fal/webhook")
//	err = q.Advance(ctx, time.Minute) // delivers the webhook, retrying as fal does
package faltest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"
)

// The four headers fal.ai sends with every webhook delivery, in canonical
// form. They have the same values as falwebhook's Header* constants.
const (
	HeaderRequestID = "X-Fal-Webhook-Request-Id"
	HeaderUserID    = "X-Fal-Webhook-User-Id"
	HeaderTimestamp = "X-Fal-Webhook-Timestamp"
	HeaderSignature = "X-Fal-Webhook-Signature"
)

// DefaultUserID is the user id of a Delivery that does not set one.
const DefaultUserID = "faltest-user"

// A Signer signs webhook deliveries with one Ed25519 key, as fal does. It is
// immutable and safe for concurrent use by multiple goroutines.
type Signer struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	kid  string
}

// NewSigner returns a Signer with a fresh random key from crypto/rand.
func NewSigner() *Signer {
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed) // never fails: crypto/rand.Read crashes the program instead
	return NewSignerFromSeed(seed)
}

// NewSignerFromSeed returns a Signer whose key is derived from seed as by
// ed25519.NewKeyFromSeed. It panics if len(seed) is not ed25519.SeedSize
// (32).
func NewSignerFromSeed(seed []byte) *Signer {
	if len(seed) != ed25519.SeedSize {
		panic(fmt.Sprintf("faltest: seed is %d bytes, want %d", len(seed), ed25519.SeedSize))
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	return &Signer{priv: priv, pub: pub, kid: hex.EncodeToString(sum[:8])}
}

// SignerFromName returns a Signer whose key is derived deterministically from
// name: the seed is sha256("faltest:" + name). The same name always gives the
// same key, which makes tests and examples reproducible. Such keys are public
// knowledge and MUST NOT be trusted outside tests.
func SignerFromName(name string) *Signer {
	seed := sha256.Sum256([]byte("faltest:" + name))
	return NewSignerFromSeed(seed[:])
}

// PublicKey returns a copy of the Signer's public key, 32 bytes, for
// verifiers built with static keys.
func (s *Signer) PublicKey() ed25519.PublicKey {
	return bytes.Clone(s.pub)
}

// PrivateKey returns a copy of the Signer's private key, 64 bytes.
func (s *Signer) PrivateKey() ed25519.PrivateKey {
	return bytes.Clone(s.priv)
}

// KeyID returns a stable identifier of the Signer's public key: the first 16
// hex digits of sha256(public key). It is the "kid" of JWK.
func (s *Signer) KeyID() string {
	return s.kid
}

// jwk is one JSON Web Key; the field order is the order of the output.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

func (s *Signer) jwk() jwk {
	return jwk{
		Kty: "OKP",
		Crv: "Ed25519",
		X:   base64.RawURLEncoding.EncodeToString(s.pub),
		Kid: s.kid,
		Use: "sig",
		Alg: "EdDSA",
	}
}

// JWK returns the Signer's public key as one JSON Web Key object (RFC 8037):
//
//	{"kty":"OKP","crv":"Ed25519","x":"<unpadded base64url>","kid":"<KeyID>","use":"sig","alg":"EdDSA"}
func (s *Signer) JWK() []byte {
	return mustMarshal(s.jwk())
}

// JWKS returns a JWKS document, {"keys":[...]}, holding the public keys of
// signers in order. With no signers the key list is empty.
func JWKS(signers ...*Signer) []byte {
	keys := make([]jwk, len(signers))
	for i, s := range signers {
		keys[i] = s.jwk()
	}
	return mustMarshal(struct {
		Keys []jwk `json:"keys"`
	}{keys})
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("faltest: " + err.Error()) // unreachable: only fixed string fields
	}
	return b
}

// Headers holds the four X-Fal-Webhook-* header values of a signed delivery.
// Set writes them into an http.Header, as fal sends them.
type Headers struct {
	RequestID string // X-Fal-Webhook-Request-Id
	UserID    string // X-Fal-Webhook-User-Id
	Timestamp string // X-Fal-Webhook-Timestamp, Unix seconds as decimal digits
	Signature string // X-Fal-Webhook-Signature, 128 lower-case hex digits
}

// Set writes the four headers into hdr under their canonical names,
// replacing any earlier values.
func (h Headers) Set(hdr http.Header) {
	hdr[HeaderRequestID] = []string{h.RequestID}
	hdr[HeaderUserID] = []string{h.UserID}
	hdr[HeaderTimestamp] = []string{h.Timestamp}
	hdr[HeaderSignature] = []string{h.Signature}
}

// A Delivery describes one webhook delivery to sign. The zero value of each
// field selects a default.
type Delivery struct {
	// RequestID defaults to the body's top-level "request_id" when that is a
	// non-empty JSON string, and otherwise to a random UUID (version 4).
	RequestID string

	// UserID defaults to DefaultUserID.
	UserID string

	// Time is the signing time; the timestamp header is Time.Unix() in
	// decimal. It defaults to time.Now().
	Time time.Time

	// Body is the raw body, signed and sent as is.
	Body []byte
}

// withDefaults returns d with its zero fields filled in.
func (d Delivery) withDefaults() Delivery {
	if d.RequestID == "" {
		if id, ok := bodyRequestID(d.Body); ok {
			d.RequestID = id
		} else {
			d.RequestID = newUUID()
		}
	}
	if d.UserID == "" {
		d.UserID = DefaultUserID
	}
	if d.Time.IsZero() {
		d.Time = time.Now()
	}
	return d
}

// bodyRequestID returns the top-level "request_id" of body (matched exactly,
// not case-insensitively) if body is a JSON object and that member is a
// non-empty string.
func bodyRequestID(body []byte) (string, bool) {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return "", false
	}
	raw := top["request_id"]
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var id string
	if json.Unmarshal(raw, &id) != nil || id == "" {
		return "", false
	}
	return id, true
}

// newUUID returns a random version 4 UUID in its lower-case text form.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Message returns the bytes fal signs for a delivery: requestID, userID and
// timestamp exactly as given, then the lower-case hex of sha256(body),
// joined by "\n" with no trailing newline.
func Message(requestID, userID, timestamp string, body []byte) []byte {
	sum := sha256.Sum256(body)
	msg := make([]byte, 0, len(requestID)+len(userID)+len(timestamp)+3+2*sha256.Size)
	msg = append(msg, requestID...)
	msg = append(msg, '\n')
	msg = append(msg, userID...)
	msg = append(msg, '\n')
	msg = append(msg, timestamp...)
	msg = append(msg, '\n')
	return hex.AppendEncode(msg, sum[:])
}

// SignMessage returns the raw 64-byte Ed25519 signature of msg, for tests
// that build their own message or headers (see Message).
func (s *Signer) SignMessage(msg []byte) []byte {
	return ed25519.Sign(s.priv, msg)
}

// Sign signs d, after filling in its defaults (see Delivery), and returns
// the headers to send with d.Body.
func (s *Signer) Sign(d Delivery) Headers {
	d = d.withDefaults()
	ts := strconv.FormatInt(d.Time.Unix(), 10)
	sig := s.SignMessage(Message(d.RequestID, d.UserID, ts, d.Body))
	return Headers{
		RequestID: d.RequestID,
		UserID:    d.UserID,
		Timestamp: ts,
		Signature: hex.EncodeToString(sig),
	}
}

// NewRequest returns a signed incoming server request for d, suitable for
// passing to an http.Handler in tests: method POST, target as for
// httptest.NewRequest, Content-Type application/json, the four signed
// headers, and d.Body as the body. Like httptest.NewRequest it panics on an
// invalid target.
func (s *Signer) NewRequest(target string, d Delivery) *http.Request {
	h := s.Sign(d)
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(d.Body))
	r.Header.Set("Content-Type", "application/json")
	h.Set(r.Header)
	return r
}

// NewClientRequest returns a signed outgoing request that POSTs d to url with
// an http.Client, carrying Content-Type application/json and the four signed
// headers. It fails only when http.NewRequestWithContext does, for example
// on an invalid url.
func (s *Signer) NewClientRequest(ctx context.Context, url string, d Delivery) (*http.Request, error) {
	h := s.Sign(d)
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(d.Body))
	if err != nil {
		return nil, fmt.Errorf("faltest: %w", err)
	}
	r.Header.Set("Content-Type", "application/json")
	h.Set(r.Header)
	return r, nil
}

// OKBody returns the body of a successful delivery, shaped like fal's: the
// top-level keys sorted and Python's json.dumps separators (", " and ": "):
//
//	{"error": null, "gateway_request_id": "<requestID>", "payload": <payload>, "request_id": "<requestID>", "status": "OK"}
//
// payload is marshalled with encoding/json, without HTML escaping, and then
// spaced with the same separators, as fal's Python would send it; a
// json.RawMessage is used verbatim and not validated (nil or empty is null),
// which reproduces a captured body byte for byte. OKBody panics if payload
// cannot be marshalled.
func OKBody(requestID string, payload any) []byte {
	return deliveryBody(requestID, "", marshalPayload(payload), "")
}

// ErrorBody returns the body of a failed delivery, shaped like OKBody:
//
//	{"error": "Invalid status code: <statusCode>", "gateway_request_id": "<requestID>", "payload": {"detail": <detail>}, "request_id": "<requestID>", "status": "ERROR"}
//
// detail is marshalled like OKBody's payload; fal sends either a string or a
// list of validation errors. ErrorBody panics if detail cannot be
// marshalled.
func ErrorBody(requestID string, statusCode int, detail any) []byte {
	payload := []byte(`{"detail": `)
	payload = append(payload, marshalPayload(detail)...)
	payload = append(payload, '}')
	return deliveryBody(requestID, "Invalid status code: "+strconv.Itoa(statusCode), payload, "")
}

// validationDetail is the detail of fal's documented 422 example.
const validationDetail = `[{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]`

// ValidationErrorBody returns the body of fal's documented 422 example, a
// request missing its prompt:
//
//	{"error": "Invalid status code: 422", ..., "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}, ..., "status": "ERROR"}
func ValidationErrorBody(requestID string) []byte {
	return ErrorBody(requestID, http.StatusUnprocessableEntity, json.RawMessage(validationDetail))
}

// deliveryBody assembles a body from its parts; errMsg "" means status OK
// with a null error, and payloadError "" means no payload_error member.
func deliveryBody(requestID, errMsg string, payload []byte, payloadError string) []byte {
	id := marshalCompact(requestID)
	b := make([]byte, 0, 128+2*len(id)+len(errMsg)+len(payload))
	b = append(b, `{"error": `...)
	status := `"OK"`
	if errMsg == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, marshalCompact(errMsg)...)
		status = `"ERROR"`
	}
	b = append(b, `, "gateway_request_id": `...)
	b = append(b, id...)
	b = append(b, `, "payload": `...)
	b = append(b, payload...)
	if payloadError != "" {
		b = append(b, `, "payload_error": `...)
		b = append(b, marshalCompact(payloadError)...)
	}
	b = append(b, `, "request_id": `...)
	b = append(b, id...)
	b = append(b, `, "status": `...)
	b = append(b, status...)
	return append(b, '}')
}

// marshalPayload encodes v for a body: a json.RawMessage verbatim, anything
// else as compact JSON without HTML escaping, respaced by pythonSpacing.
func marshalPayload(v any) []byte {
	if raw, ok := v.(json.RawMessage); ok {
		if len(raw) == 0 {
			return []byte("null")
		}
		return raw
	}
	return pythonSpacing(marshalCompact(v))
}

// marshalCompact is json.Marshal without HTML escaping. It panics if v
// cannot be marshalled.
func marshalCompact(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Errorf("faltest: marshalling body: %w", err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// pythonSpacing returns compact JSON js with a space after every ',' and ':'
// outside strings, as Python's json.dumps writes it.
func pythonSpacing(js []byte) []byte {
	out := make([]byte, 0, len(js)+len(js)/8)
	inString, escaped := false, false
	for _, c := range js {
		out = append(out, c)
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return out
}
