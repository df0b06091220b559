package faltest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// realPayload and realBody are the real delivery quoted in
// shared/FAL-WEBHOOKS.md §5 (keys sorted, Python separators).
const (
	realRequestID = "5057fca7-2eb3-468f-b95d-cefe92b0b9d4"
	realPayload   = `{"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}`
	realBody      = `{"error": null, "gateway_request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "payload": ` + realPayload + `, "request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK"}`
)

// The golden vector "ok_real_delivery" of testdata/golden/vectors.json,
// produced by Node's node:crypto (testdata/golden/sign.mjs): an
// implementation independent of this package.
const (
	goldenSeedHex   = "0101010101010101010101010101010101010101010101010101010101010101"
	goldenPublicHex = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
	goldenX         = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
	goldenUserID    = "user-1234"
	goldenTimestamp = "1700000000"
	goldenMessage   = realRequestID + "\n" + goldenUserID + "\n" + goldenTimestamp + "\ne73f0ca40e4b68c75eeb5d32d601691c3be2a32ee2da7efc07891152eeeff9cc"
	goldenSignature = "0ff8bba8d6c840dca10906523a41a61a318c79de8617a7ca7ba37626a0b56e5f61e117e6dc66e0ea8be9c6e71bf3d00b62b25024ebefa9195699a7dffc3b4105"
)

var lowerHex128 = regexp.MustCompile(`^[0-9a-f]{128}$`)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMessage(t *testing.T) {
	got := Message("req", "user", "1700000000", nil)
	want := "req\nuser\n1700000000\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	if string(got) != want {
		t.Errorf("Message of an empty body = %q, want %q", got, want)
	}
	if got := Message(realRequestID, goldenUserID, goldenTimestamp, []byte(realBody)); string(got) != goldenMessage {
		t.Errorf("Message of the real delivery = %q, want the golden %q", got, goldenMessage)
	}
}

func TestSignGolden(t *testing.T) {
	s := NewSignerFromSeed(mustHex(t, goldenSeedHex))
	if got := hex.EncodeToString(s.PublicKey()); got != goldenPublicHex {
		t.Fatalf("public key from the golden seed = %s, want %s", got, goldenPublicHex)
	}
	ts, err := time.Parse(time.RFC3339, "2023-11-14T22:13:20Z") // 1700000000
	if err != nil {
		t.Fatal(err)
	}
	h := s.Sign(Delivery{UserID: goldenUserID, Time: ts, Body: []byte(realBody)})
	want := Headers{RequestID: realRequestID, UserID: goldenUserID, Timestamp: goldenTimestamp, Signature: goldenSignature}
	if h != want {
		t.Errorf("Sign of the golden delivery =\n%+v\nwant (node:crypto)\n%+v", h, want)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	s := NewSigner()
	body := OKBody("req-1", map[string]any{"seed": uint64(17454220438242315174)})
	h := s.Sign(Delivery{UserID: "user-9", Body: body})
	if !lowerHex128.MatchString(h.Signature) {
		t.Fatalf("signature %q is not 128 lower-case hex digits", h.Signature)
	}
	sig := mustHex(t, h.Signature)
	pub := s.PublicKey()
	if !ed25519.Verify(pub, Message(h.RequestID, h.UserID, h.Timestamp, body), sig) {
		t.Fatal("genuine delivery does not verify")
	}
	if !bytes.Equal(sig, s.SignMessage(Message(h.RequestID, h.UserID, h.Timestamp, body))) {
		t.Error("Sign and SignMessage disagree")
	}

	tampered := bytes.Replace(body, []byte("req-1"), []byte("req-2"), 1)
	if ed25519.Verify(pub, Message(h.RequestID, h.UserID, h.Timestamp, tampered), sig) {
		t.Error("tampered body accepted")
	}
	if ed25519.Verify(pub, Message(h.RequestID, "user-8", h.Timestamp, body), sig) {
		t.Error("changed user id accepted")
	}
	if ed25519.Verify(NewSigner().PublicKey(), Message(h.RequestID, h.UserID, h.Timestamp, body), sig) {
		t.Error("signature verified under another key")
	}
}

func TestSignConcurrent(t *testing.T) {
	s := SignerFromName("concurrent")
	body := []byte(realBody)
	at := time.Unix(1700000000, 0)
	want := s.Sign(Delivery{Time: at, Body: body})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if got := s.Sign(Delivery{Time: at, Body: body}); got != want {
					t.Errorf("concurrent Sign = %+v, want %+v", got, want)
					return
				}
				_ = s.JWK()
			}
		})
	}
	wg.Wait()
}

func TestSignerFromName(t *testing.T) {
	a1, a2, b := SignerFromName("a"), SignerFromName("a"), SignerFromName("b")
	if !a1.PublicKey().Equal(a2.PublicKey()) || !a1.PrivateKey().Equal(a2.PrivateKey()) {
		t.Error("SignerFromName gave different keys for the same name")
	}
	if a1.PublicKey().Equal(b.PublicKey()) {
		t.Error("SignerFromName gave the same key for different names")
	}
	seed := sha256.Sum256([]byte("faltest:a"))
	if !a1.PublicKey().Equal(NewSignerFromSeed(seed[:]).PublicKey()) {
		t.Error(`SignerFromName("a") is not seeded with sha256("faltest:a")`)
	}
	if NewSigner().PublicKey().Equal(NewSigner().PublicKey()) {
		t.Error("two NewSigner calls gave the same key")
	}
}

func TestKeysAreCopies(t *testing.T) {
	s := SignerFromName("copies")
	want := s.PublicKey()
	s.PublicKey()[0] ^= 0xff
	s.PrivateKey()[40] ^= 0xff
	if !s.PublicKey().Equal(want) {
		t.Error("mutating PublicKey's result changed the Signer")
	}
	if !bytes.Equal(s.PrivateKey()[32:], want) {
		t.Error("mutating PrivateKey's result changed the Signer")
	}
}

func TestNewSignerFromSeedPanics(t *testing.T) {
	for _, n := range []int{0, 31, 33, 64} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewSignerFromSeed with a %d-byte seed did not panic", n)
				}
			}()
			NewSignerFromSeed(make([]byte, n))
		}()
	}
}

func TestJWK(t *testing.T) {
	s := NewSignerFromSeed(mustHex(t, goldenSeedHex))
	raw := s.JWK()
	wantRaw := `{"kty":"OKP","crv":"Ed25519","x":"` + goldenX + `","kid":"` + s.KeyID() + `","use":"sig","alg":"EdDSA"}`
	if string(raw) != wantRaw {
		t.Errorf("JWK =\n%s\nwant\n%s", raw, wantRaw)
	}
	var k map[string]any
	if err := json.Unmarshal(raw, &k); err != nil {
		t.Fatalf("JWK is not JSON: %v", err)
	}
	x, err := base64.RawURLEncoding.DecodeString(k["x"].(string))
	if err != nil {
		t.Fatalf("x is not unpadded base64url: %v", err)
	}
	if !s.PublicKey().Equal(ed25519.PublicKey(x)) {
		t.Error("x does not decode to the public key")
	}
	if _, ok := k["d"]; ok {
		t.Error("JWK leaks the private part d")
	}

	sum := sha256.Sum256(s.PublicKey())
	if want := hex.EncodeToString(sum[:8]); s.KeyID() != want {
		t.Errorf("KeyID = %q, want %q", s.KeyID(), want)
	}
	if SignerFromName("x").KeyID() == SignerFromName("y").KeyID() {
		t.Error("different keys share a KeyID")
	}
}

func TestJWKS(t *testing.T) {
	if got := string(JWKS()); got != `{"keys":[]}` {
		t.Errorf("JWKS() = %s, want an empty key list", got)
	}
	a, b := SignerFromName("a"), SignerFromName("b")
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(JWKS(a, b), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Keys) != 2 || !bytes.Equal(doc.Keys[0], a.JWK()) || !bytes.Equal(doc.Keys[1], b.JWK()) {
		t.Errorf("JWKS(a, b) keys = %s, want [a.JWK(), b.JWK()]", doc.Keys)
	}
}

func TestHeadersSet(t *testing.T) {
	for _, name := range []string{HeaderRequestID, HeaderUserID, HeaderTimestamp, HeaderSignature} {
		if c := http.CanonicalHeaderKey(name); c != name {
			t.Errorf("header constant %q is not canonical (%q)", name, c)
		}
	}
	hdr := http.Header{}
	hdr.Add(HeaderSignature, "old")
	hdr.Add(HeaderSignature, "older")
	Headers{RequestID: "r", UserID: "u", Timestamp: "1", Signature: "s"}.Set(hdr)
	want := map[string]string{
		"X-Fal-Webhook-Request-Id": "r",
		"X-Fal-Webhook-User-Id":    "u",
		"X-Fal-Webhook-Timestamp":  "1",
		"X-Fal-Webhook-Signature":  "s",
	}
	for k, v := range want {
		if got := hdr[k]; len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want exactly [%q]", k, got, v)
		}
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDeliveryDefaults(t *testing.T) {
	at := time.Unix(1700000000, 999999999)
	tests := []struct {
		name   string
		d      Delivery
		wantID string // "" means a random UUIDv4
		wantU  string
	}{
		{"id from body", Delivery{Body: []byte(realBody)}, realRequestID, DefaultUserID},
		{"explicit id wins", Delivery{RequestID: "mine", UserID: "u", Body: []byte(realBody)}, "mine", "u"},
		{"id is a number", Delivery{Body: []byte(`{"request_id": 42}`)}, "", DefaultUserID},
		{"id is null", Delivery{Body: []byte(`{"request_id": null}`)}, "", DefaultUserID},
		{"id is empty", Delivery{Body: []byte(`{"request_id": ""}`)}, "", DefaultUserID},
		{"id key differs in case", Delivery{Body: []byte(`{"Request_ID": "x"}`)}, "", DefaultUserID},
		{"nested id ignored", Delivery{Body: []byte(`{"payload": {"request_id": "x"}}`)}, "", DefaultUserID},
		{"not JSON", Delivery{Body: []byte("<html>")}, "", DefaultUserID},
		{"no body", Delivery{}, "", DefaultUserID},
		{"escaped id", Delivery{Body: []byte(`{"request_id": "a\u002db"}`)}, "a-b", DefaultUserID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.d.Time = at
			h := SignerFromName("defaults").Sign(tt.d)
			switch {
			case tt.wantID == "" && !uuidV4.MatchString(h.RequestID):
				t.Errorf("RequestID = %q, want a random UUIDv4", h.RequestID)
			case tt.wantID != "" && h.RequestID != tt.wantID:
				t.Errorf("RequestID = %q, want %q", h.RequestID, tt.wantID)
			}
			if h.UserID != tt.wantU {
				t.Errorf("UserID = %q, want %q", h.UserID, tt.wantU)
			}
			if h.Timestamp != "1700000000" {
				t.Errorf("Timestamp = %q, want whole Unix seconds 1700000000", h.Timestamp)
			}
		})
	}

	if a, b := (Delivery{}).withDefaults().RequestID, (Delivery{}).withDefaults().RequestID; a == b {
		t.Errorf("two random request ids are equal: %s", a)
	}

	before := time.Now().Unix()
	h := SignerFromName("defaults").Sign(Delivery{})
	after := time.Now().Unix()
	if ts, err := strconv.ParseInt(h.Timestamp, 10, 64); err != nil || ts < before || ts > after {
		t.Errorf("default Timestamp %q not in [%d, %d]", h.Timestamp, before, after)
	}
}

// checkPythonJSON checks that body is a JSON object with sorted top-level
// keys, written with ", " and ": " separators outside strings.
func checkPythonJSON(t *testing.T, body []byte) map[string]json.RawMessage {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil { // {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			t.Errorf("top-level keys not sorted: %q", keys)
			break
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, body); err != nil {
		t.Fatal(err)
	}
	if got := pythonSpacing(compact.Bytes()); !bytes.Equal(got, body) {
		t.Errorf("body is not spaced like Python's json.dumps:\n got %s\nwant %s", body, got)
	}
	return top
}

func TestOKBodyRealDelivery(t *testing.T) {
	got := OKBody(realRequestID, json.RawMessage(realPayload))
	if string(got) != realBody {
		t.Fatalf("OKBody of the real payload =\n%s\nwant the real delivery\n%s", got, realBody)
	}
	top := checkPythonJSON(t, got)
	if string(top["status"]) != `"OK"` || string(top["error"]) != "null" {
		t.Errorf("status, error = %s, %s; want \"OK\", null", top["status"], top["error"])
	}
}

func TestOKBodyGoValue(t *testing.T) {
	payload := map[string]any{
		"seed":   uint64(17454220438242315174),
		"text":   `a, b: "c" \ <&>`,
		"images": []map[string]any{{"url": "https://x/y?a=1&b=2", "width": 1024}},
		"empty":  map[string]any{},
		"list":   []int{1, 2, 3},
	}
	body := OKBody("id-1", payload)
	want := `{"error": null, "gateway_request_id": "id-1", "payload": {"empty": {}, "images": [{"url": "https://x/y?a=1&b=2", "width": 1024}], "list": [1, 2, 3], "seed": 17454220438242315174, "text": "a, b: \"c\" \\ <&>"}, "request_id": "id-1", "status": "OK"}`
	if string(body) != want {
		t.Errorf("OKBody =\n%s\nwant\n%s", body, want)
	}
	top := checkPythonJSON(t, body)
	dec := json.NewDecoder(bytes.NewReader(top["payload"]))
	dec.UseNumber()
	var p map[string]any
	if err := dec.Decode(&p); err != nil {
		t.Fatal(err)
	}
	if p["seed"].(json.Number) != "17454220438242315174" || p["text"] != payload["text"] {
		t.Errorf("payload did not round-trip: %v", p)
	}

	if got := string(OKBody("id", nil)); !strings.Contains(got, `"payload": null,`) {
		t.Errorf("OKBody with nil payload = %s, want payload null", got)
	}
	if got := string(OKBody("id", json.RawMessage(nil))); !strings.Contains(got, `"payload": null,`) {
		t.Errorf("OKBody with empty RawMessage = %s, want payload null", got)
	}
	if got := string(OKBody("id", json.RawMessage(`{"a":1}`))); !strings.Contains(got, `"payload": {"a":1},`) {
		t.Errorf("OKBody did not pass a RawMessage verbatim: %s", got)
	}
}

func TestOKBodyPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("OKBody with an unmarshallable payload did not panic")
		}
	}()
	OKBody("id", make(chan int))
}

func TestErrorBody(t *testing.T) {
	body := ErrorBody("id-2", 500, "boom")
	want := `{"error": "Invalid status code: 500", "gateway_request_id": "id-2", "payload": {"detail": "boom"}, "request_id": "id-2", "status": "ERROR"}`
	if string(body) != want {
		t.Errorf("ErrorBody =\n%s\nwant\n%s", body, want)
	}
	checkPythonJSON(t, body)

	body = ValidationErrorBody("id-3")
	top := checkPythonJSON(t, body)
	if string(top["error"]) != `"Invalid status code: 422"` || string(top["status"]) != `"ERROR"` {
		t.Errorf("ValidationErrorBody error, status = %s, %s", top["error"], top["status"])
	}
	var p struct {
		Detail []struct {
			Loc  []any  `json:"loc"`
			Msg  string `json:"msg"`
			Type string `json:"type"`
		} `json:"detail"`
	}
	if err := json.Unmarshal(top["payload"], &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Detail) != 1 || p.Detail[0].Msg != "field required" || p.Detail[0].Type != "value_error.missing" ||
		len(p.Detail[0].Loc) != 2 || p.Detail[0].Loc[0] != "body" || p.Detail[0].Loc[1] != "prompt" {
		t.Errorf("ValidationErrorBody payload = %s, want fal's 422 example", top["payload"])
	}
	if h := SignerFromName("e").Sign(Delivery{Body: body}); h.RequestID != "id-3" {
		t.Errorf("request id from ValidationErrorBody = %q, want id-3", h.RequestID)
	}
}

// verifyRequest checks r as a fal delivery with crypto/ed25519 alone.
func verifyRequest(t *testing.T, pub ed25519.PublicKey, r *http.Request) []byte {
	t.Helper()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := hex.DecodeString(r.Header.Get(HeaderSignature))
	if err != nil {
		t.Fatalf("signature header: %v", err)
	}
	msg := Message(r.Header.Get(HeaderRequestID), r.Header.Get(HeaderUserID), r.Header.Get(HeaderTimestamp), body)
	if !ed25519.Verify(pub, msg, sig) {
		t.Error("request does not verify")
	}
	return body
}

func TestNewRequest(t *testing.T) {
	s := SignerFromName("req")
	body := ValidationErrorBody("id-4")
	r := s.NewRequest("/fal/webhook?x=1", Delivery{Body: body})
	if r.Method != http.MethodPost || r.URL.Path != "/fal/webhook" || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("NewRequest = %s %s, Content-Type %q", r.Method, r.URL, r.Header.Get("Content-Type"))
	}
	if r.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength = %d, want %d", r.ContentLength, len(body))
	}
	if r.Header.Get(HeaderRequestID) != "id-4" {
		t.Errorf("request id header = %q, want id-4", r.Header.Get(HeaderRequestID))
	}
	if got := verifyRequest(t, s.PublicKey(), r); !bytes.Equal(got, body) {
		t.Error("request body differs from the delivery body")
	}
}

func TestNewClientRequest(t *testing.T) {
	s := SignerFromName("client")
	body := OKBody("id-5", map[string]int{"n": 1})
	var got []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			t.Errorf("method = %s, want POST", r.Method)
		}
		got = verifyRequest(t, s.PublicKey(), r)
	}))
	defer srv.Close()

	req, err := s.NewClientRequest(t.Context(), srv.URL+"/hook", Delivery{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !bytes.Equal(got, body) {
		t.Errorf("server received %q, want %q", got, body)
	}

	if _, err := s.NewClientRequest(t.Context(), "://bad", Delivery{}); err == nil {
		t.Error("NewClientRequest accepted an invalid URL")
	}
}

// get fetches url with c and returns the response with its body read.
func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestKeyServerServesAndRotates(t *testing.T) {
	a, b := SignerFromName("a"), SignerFromName("b")
	ks := NewKeyServer(a)
	defer ks.Close()
	if !strings.HasPrefix(ks.URL, "http://127.0.0.1:") || !strings.HasSuffix(ks.URL, JWKSPath) {
		t.Errorf("URL = %q, want http://127.0.0.1:<port>%s", ks.URL, JWKSPath)
	}
	c := ks.Client()

	resp, body := get(t, c, ks.URL)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("status %d, Content-Type %q; want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !bytes.Equal(body, JWKS(a)) {
		t.Errorf("served %s, want JWKS(a)", body)
	}

	ks.SetSigners(b)
	if _, body := get(t, c, ks.URL); !bytes.Equal(body, JWKS(b)) {
		t.Errorf("after rotation served %s, want only b", body)
	}
	ks.SetSigners()
	if _, body := get(t, c, ks.URL); string(body) != `{"keys":[]}` {
		t.Errorf("with no signers served %s", body)
	}

	ks.SetDocument([]byte("<html>502</html>"), "text/html")
	resp, body = get(t, c, ks.URL)
	if string(body) != "<html>502</html>" || resp.Header.Get("Content-Type") != "text/html" {
		t.Errorf("SetDocument served %q as %q", body, resp.Header.Get("Content-Type"))
	}
	ks.SetDocument([]byte("junk"), "")
	if resp, _ := get(t, c, ks.URL); resp.Header.Values("Content-Type") != nil {
		t.Errorf("empty content type sent Content-Type %q", resp.Header.Values("Content-Type"))
	}
	ks.SetDocument(nil, "application/json")
	if resp, body := get(t, c, ks.URL); resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Errorf("nil document: status %d, body %q", resp.StatusCode, body)
	}
	ks.SetSigners(a, b)
	if resp, body := get(t, c, ks.URL); !bytes.Equal(body, JWKS(a, b)) || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("SetSigners after SetDocument served %s", body)
	}

	if got := ks.Fetches(); got != 7 {
		t.Errorf("Fetches = %d, want 7", got)
	}
}

func TestKeyServerLargeDocument(t *testing.T) {
	ks := NewKeyServer()
	defer ks.Close()
	junk := bytes.Repeat([]byte("x"), 2<<20)
	ks.SetDocument(junk, "application/json")
	junk[0] = 'y' // SetDocument copied it
	resp, body := get(t, ks.Client(), ks.URL)
	if resp.ContentLength != 2<<20 || len(body) != 2<<20 || body[0] != 'x' {
		t.Errorf("2 MiB document: Content-Length %d, read %d bytes, first %q", resp.ContentLength, len(body), body[:1])
	}
}

func TestKeyServerFailNext(t *testing.T) {
	s := SignerFromName("a")
	ks := NewKeyServer(s)
	defer ks.Close()
	ks.SetCacheControl("max-age=60")
	c := ks.Client()

	ks.FailNext(2, http.StatusServiceUnavailable)
	for i := range 2 {
		resp, body := get(t, c, ks.URL)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("request %d: status %d, want 503", i, resp.StatusCode)
		}
		if len(body) > 100 || bytes.Contains(body, []byte("keys")) {
			t.Errorf("request %d: failure body %q, want a short text", i, body)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "" {
			t.Errorf("request %d: failure carries Cache-Control %q", i, cc)
		}
	}
	if resp, body := get(t, c, ks.URL); resp.StatusCode != http.StatusOK || !bytes.Equal(body, JWKS(s)) {
		t.Errorf("after the failures: status %d, body %s", resp.StatusCode, body)
	}

	ks.FailNext(5, http.StatusInternalServerError)
	ks.FailNext(0, http.StatusInternalServerError)
	if resp, _ := get(t, c, ks.URL); resp.StatusCode != http.StatusOK {
		t.Errorf("FailNext(0) did not cancel pending failures: status %d", resp.StatusCode)
	}
	if got := ks.Fetches(); got != 4 {
		t.Errorf("Fetches = %d, want 4 (failed requests count)", got)
	}

	defer func() {
		if recover() == nil {
			t.Error("FailNext with status 0 did not panic")
		}
	}()
	ks.FailNext(1, 0)
}

func TestKeyServerCacheControl(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	c := ks.Client()
	if resp, _ := get(t, c, ks.URL); resp.Header.Values("Cache-Control") != nil {
		t.Errorf("default Cache-Control = %q, want none", resp.Header.Values("Cache-Control"))
	}
	ks.SetCacheControl("public, max-age=3600")
	if resp, _ := get(t, c, ks.URL); resp.Header.Get("Cache-Control") != "public, max-age=3600" {
		t.Errorf("Cache-Control = %q, want public, max-age=3600", resp.Header.Get("Cache-Control"))
	}
	ks.SetCacheControl("")
	if resp, _ := get(t, c, ks.URL); resp.Header.Values("Cache-Control") != nil {
		t.Errorf("Cache-Control after reset = %q, want none", resp.Header.Values("Cache-Control"))
	}
}

func TestKeyServerOtherPathsAndMethods(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	c := ks.Client()
	base := strings.TrimSuffix(ks.URL, JWKSPath)
	for _, p := range []string{"/", "/jwks.json", JWKSPath + "/x", "/.well-known/openid-configuration"} {
		if resp, _ := get(t, c, base+p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", p, resp.StatusCode)
		}
	}
	if got := ks.Fetches(); got != 0 {
		t.Errorf("Fetches = %d after requests to other paths, want 0", got)
	}

	resp, err := c.Post(ks.URL, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
	resp, err = c.Head(ks.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(JWKS(SignerFromName("a")))) {
		t.Errorf("HEAD: status %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
	if got := ks.Fetches(); got != 2 {
		t.Errorf("Fetches = %d, want 2", got)
	}
}

type result struct {
	status int
	body   []byte
	err    error
}

// fetchAsync GETs url in a goroutine and delivers the outcome on the
// returned channel.
func fetchAsync(ctx context.Context, c *http.Client, url string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			ch <- result{err: err}
			return
		}
		resp, err := c.Do(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		ch <- result{resp.StatusCode, body, err}
	}()
	return ch
}

func TestKeyServerHold(t *testing.T) {
	s := SignerFromName("a")
	ks := NewKeyServer(s)
	defer ks.Close()
	c := ks.Client()

	release := ks.Hold()
	done := fetchAsync(t.Context(), c, ks.URL)
	if err := ks.WaitFetches(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	ks.SetSigners(s, SignerFromName("b")) // the document is read when answering
	select {
	case r := <-done:
		t.Fatalf("held request answered before release: %+v", r)
	default:
	}
	release()
	release() // idempotent
	r := <-done
	if r.err != nil || r.status != http.StatusOK || !bytes.Equal(r.body, JWKS(s, SignerFromName("b"))) {
		t.Errorf("released request: %d %s %v", r.status, r.body, r.err)
	}

	// Released holds no longer apply.
	if resp, _ := get(t, c, ks.URL); resp.StatusCode != http.StatusOK {
		t.Errorf("after release: status %d", resp.StatusCode)
	}
}

func TestKeyServerHoldNested(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	release1 := ks.Hold()
	release2 := ks.Hold()
	done := fetchAsync(t.Context(), ks.Client(), ks.URL)
	if err := ks.WaitFetches(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	release1()
	select {
	case r := <-done:
		t.Fatalf("request answered while a second hold is active: %+v", r)
	default:
	}
	release2()
	if r := <-done; r.err != nil || r.status != http.StatusOK {
		t.Errorf("after both releases: %d %v", r.status, r.err)
	}
}

func TestKeyServerHoldClientGivesUp(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	release := ks.Hold()
	defer release()
	ctx, cancel := context.WithCancel(t.Context())
	done := fetchAsync(ctx, ks.Client(), ks.URL)
	if err := ks.WaitFetches(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled fetch of a held server: err = %v, want context.Canceled", r.err)
	}
}

func TestKeyServerCloseReleases(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	release := ks.Hold()
	ks.SetDelay(time.Hour) // only for requests arriving after this
	held := fetchAsync(t.Context(), ks.Client(), ks.URL)
	if err := ks.WaitFetches(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	ks.Close() // must not wait an hour nor for release
	if r := <-held; r.err == nil {
		t.Errorf("held request got %d %q from a closed server, want a connection error", r.status, r.body)
	}
	release() // after Close: no effect, no panic
	ks.Close()
}

func TestKeyServerDelay(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	ks.SetDelay(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	done := fetchAsync(ctx, ks.Client(), ks.URL)
	if err := ks.WaitFetches(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("delayed request answered at once: %+v", r)
	default:
	}
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled fetch of a slow server: err = %v, want context.Canceled", r.err)
	}
	ks.SetDelay(0)
	if resp, _ := get(t, ks.Client(), ks.URL); resp.StatusCode != http.StatusOK {
		t.Errorf("after SetDelay(0): status %d", resp.StatusCode)
	}
	// The deferred Close returns although the first handler may still be
	// waiting out its hour: it stops when its client is gone.
}

func TestKeyServerWaitFetches(t *testing.T) {
	ks := NewKeyServer(SignerFromName("a"))
	defer ks.Close()
	if err := ks.WaitFetches(t.Context(), 0); err != nil {
		t.Errorf("WaitFetches(0) = %v, want nil at once", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ks.WaitFetches(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitFetches with a cancelled ctx = %v, want context.Canceled", err)
	}

	const n = 16
	waited := make(chan error, 1)
	go func() { waited <- ks.WaitFetches(t.Context(), n) }()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := ks.Client().Get(ks.URL)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	if err := <-waited; err != nil {
		t.Errorf("WaitFetches(%d) = %v", n, err)
	}
	wg.Wait()
	if got := ks.Fetches(); got != n {
		t.Errorf("Fetches = %d, want %d", got, n)
	}
}

// TestKeyServerConcurrent exercises every knob while clients fetch, for the
// race detector.
func TestKeyServerConcurrent(t *testing.T) {
	a, b := SignerFromName("a"), SignerFromName("b")
	ks := NewKeyServer(a)
	defer ks.Close()
	valid := map[string]bool{string(JWKS(a)): true, string(JWKS(b)): true, "junk": true}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				resp, err := ks.Client().Get(ks.URL)
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && !valid[string(body)] {
					t.Errorf("served a torn document %q", body)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			switch i % 5 {
			case 0:
				ks.SetSigners(b)
			case 1:
				ks.SetDocument([]byte("junk"), "text/plain")
			case 2:
				ks.FailNext(1, http.StatusBadGateway)
			case 3:
				ks.SetCacheControl("max-age=1")
			case 4:
				ks.Hold()()
				ks.SetSigners(a)
			}
			_ = ks.Fetches()
		}
	})
	wg.Wait()
	if got := ks.Fetches(); got != 160 {
		t.Errorf("Fetches = %d, want 160", got)
	}
}
