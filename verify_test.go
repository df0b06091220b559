package falwebhook

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/falwebhook/falwebhook/faltest"
)

// t0 is the fixed "now" of these tests.
var t0 = time.Unix(1_700_000_000, 0)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// countingSource is a KeySource that counts lookups: it verifies with src,
// or fails with err.
type countingSource struct {
	src   KeySource
	err   error
	calls atomic.Int64
}

func (c *countingSource) VerifySignature(ctx context.Context, msg, sig []byte) error {
	c.calls.Add(1)
	if c.err != nil {
		return c.err
	}
	return c.src.VerifySignature(ctx, msg, sig)
}

// delivery is one signed request for the table tests.
type delivery struct {
	h    http.Header
	body []byte
}

func signed(s *faltest.Signer, requestID, userID string, at time.Time, body []byte) delivery {
	h := http.Header{}
	s.Sign(faltest.Delivery{RequestID: requestID, UserID: userID, Time: at, Body: body}).Set(h)
	return delivery{h: h, body: body}
}

const testBody = `{"request_id": "req-1", "status": "OK", "payload": {"seed": 17454220438242315174}, "error": null}`

func TestVerifyRules(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	other := faltest.SignerFromName("verify-other")
	base := func() delivery { return signed(signer, "req-1", "user-1", t0, []byte(testBody)) }
	// sig re-signs d's message after its headers were changed, so that only
	// the rule under test can reject it.
	resign := func(d *delivery) {
		msg := faltest.Message(d.h.Get(HeaderRequestID), d.h.Get(HeaderUserID), d.h.Get(HeaderTimestamp), d.body)
		d.h.Set(HeaderSignature, hex.EncodeToString(signer.SignMessage(msg)))
	}
	at := func(sec int64) func(*delivery) {
		return func(d *delivery) { *d = signed(signer, "req-1", "user-1", time.Unix(sec, 0), d.body) }
	}

	tests := []struct {
		name    string
		mutate  func(*delivery)
		wantErr error // nil: accepted
	}{
		{"genuine", func(*delivery) {}, nil},
		{"lower-case header keys built by hand", func(d *delivery) {
			h := http.Header{}
			for k, v := range d.h {
				h[strings.ToLower(k)] = v
			}
			d.h = h
		}, nil},
		{"upper-case signature hex", func(d *delivery) { d.h.Set(HeaderSignature, strings.ToUpper(d.h.Get(HeaderSignature))) }, nil},
		{"signature with surrounding spaces", func(d *delivery) { d.h.Set(HeaderSignature, " "+d.h.Get(HeaderSignature)+"\t") }, nil},
		{"timestamp with leading zeros, signed so", func(d *delivery) { d.h.Set(HeaderTimestamp, "000"+d.h.Get(HeaderTimestamp)); resign(d) }, nil},
		{"empty body, genuinely signed", func(d *delivery) { *d = signed(signer, "req-1", "user-1", t0, []byte{}) }, ErrInvalidEvent},
		{"body not an event, genuinely signed", func(d *delivery) { *d = signed(signer, "req-1", "user-1", t0, []byte(`[1]`)) }, ErrInvalidEvent},
		{"unicode user id", func(d *delivery) { *d = signed(signer, "req-1", "üser-ß", t0, d.body) }, nil},

		{"request id absent", func(d *delivery) { d.h.Del(HeaderRequestID) }, ErrMissingHeader},
		{"user id absent", func(d *delivery) { d.h.Del(HeaderUserID) }, ErrMissingHeader},
		{"timestamp absent", func(d *delivery) { d.h.Del(HeaderTimestamp) }, ErrMissingHeader},
		{"signature absent", func(d *delivery) { d.h.Del(HeaderSignature) }, ErrMissingHeader},
		{"request id empty", func(d *delivery) { d.h.Set(HeaderRequestID, "") }, ErrMissingHeader},
		{"user id empty", func(d *delivery) { d.h.Set(HeaderUserID, "") }, ErrMissingHeader},
		{"timestamp empty", func(d *delivery) { d.h.Set(HeaderTimestamp, "") }, ErrMissingHeader},
		{"signature empty", func(d *delivery) { d.h.Set(HeaderSignature, "") }, ErrMissingHeader},
		{"no headers at all", func(d *delivery) { d.h = http.Header{} }, ErrMissingHeader},

		{"request id sent twice, equal values", func(d *delivery) { d.h.Add(HeaderRequestID, d.h.Get(HeaderRequestID)) }, ErrMalformedHeader},
		{"user id sent twice", func(d *delivery) { d.h.Add(HeaderUserID, "user-2") }, ErrMalformedHeader},
		{"timestamp sent twice", func(d *delivery) { d.h.Add(HeaderTimestamp, d.h.Get(HeaderTimestamp)) }, ErrMalformedHeader},
		{"signature sent twice", func(d *delivery) { d.h.Add(HeaderSignature, d.h.Get(HeaderSignature)) }, ErrMalformedHeader},
		{"signature twice under two spellings", func(d *delivery) {
			d.h["x-fal-webhook-signature"] = []string{d.h.Get(HeaderSignature)}
		}, ErrMalformedHeader},

		{"newline in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\n1"); resign(d) }, ErrMalformedHeader},
		{"carriage return in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\r1"); resign(d) }, ErrMalformedHeader},
		{"NUL in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\x001"); resign(d) }, ErrMalformedHeader},
		{"DEL in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\x7f"); resign(d) }, ErrMalformedHeader},
		{"C1 control NEL in request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req\u0085"); resign(d) }, ErrMalformedHeader},
		{"tab in user id", func(d *delivery) { d.h.Set(HeaderUserID, "user\t1"); resign(d) }, ErrMalformedHeader},
		{"newline in timestamp", func(d *delivery) { d.h.Set(HeaderTimestamp, d.h.Get(HeaderTimestamp)+"\n"); resign(d) }, ErrMalformedHeader},

		{"timestamp with plus sign", func(d *delivery) { d.h.Set(HeaderTimestamp, "+1700000000"); resign(d) }, ErrMalformedHeader},
		{"negative timestamp", func(d *delivery) { d.h.Set(HeaderTimestamp, "-1"); resign(d) }, ErrMalformedHeader},
		{"timestamp with leading space", func(d *delivery) { d.h.Set(HeaderTimestamp, " 1700000000"); resign(d) }, ErrMalformedHeader},
		{"timestamp in exponent form", func(d *delivery) { d.h.Set(HeaderTimestamp, "1.7e9"); resign(d) }, ErrMalformedHeader},
		{"timestamp in hex", func(d *delivery) { d.h.Set(HeaderTimestamp, "0x6553f100"); resign(d) }, ErrMalformedHeader},
		{"timestamp not a number", func(d *delivery) { d.h.Set(HeaderTimestamp, "abc"); resign(d) }, ErrMalformedHeader},
		{"timestamp NaN", func(d *delivery) { d.h.Set(HeaderTimestamp, "NaN"); resign(d) }, ErrMalformedHeader},
		{"timestamp with fraction", func(d *delivery) { d.h.Set(HeaderTimestamp, "1700000000.5"); resign(d) }, ErrMalformedHeader},
		{"timestamp overflowing int64", func(d *delivery) { d.h.Set(HeaderTimestamp, "9223372036854775808"); resign(d) }, ErrMalformedHeader},
		{"timestamp of int64 max", func(d *delivery) { d.h.Set(HeaderTimestamp, "9223372036854775807"); resign(d) }, ErrTimestampOutOfRange},
		{"timestamp in milliseconds", func(d *delivery) { d.h.Set(HeaderTimestamp, "1700000000000"); resign(d) }, ErrTimestampOutOfRange},
		{"timestamp zero", func(d *delivery) { d.h.Set(HeaderTimestamp, "0"); resign(d) }, ErrTimestampOutOfRange},

		{"exactly 300 s old", at(t0.Unix() - 300), nil},
		{"exactly 300 s ahead", at(t0.Unix() + 300), nil},
		{"301 s old", at(t0.Unix() - 301), ErrTimestampOutOfRange},
		{"301 s ahead", at(t0.Unix() + 301), ErrTimestampOutOfRange},

		{"signature with 0x prefix", func(d *delivery) { d.h.Set(HeaderSignature, "0x"+d.h.Get(HeaderSignature)[2:]) }, ErrMalformedHeader},
		{"signature of 127 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)[1:]) }, ErrMalformedHeader},
		{"signature of 129 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)+"0") }, ErrMalformedHeader},
		{"signature of 130 hex digits", func(d *delivery) { d.h.Set(HeaderSignature, d.h.Get(HeaderSignature)+"00") }, ErrMalformedHeader},
		{"signature with an inner space", func(d *delivery) {
			s := d.h.Get(HeaderSignature)
			d.h.Set(HeaderSignature, s[:64]+" "+s[65:])
		}, ErrMalformedHeader},
		{"signature with a non-hex digit", func(d *delivery) { d.h.Set(HeaderSignature, "g"+d.h.Get(HeaderSignature)[1:]) }, ErrMalformedHeader},
		{"signature in base64", func(d *delivery) {
			raw, _ := hex.DecodeString(d.h.Get(HeaderSignature))
			d.h.Set(HeaderSignature, base64.StdEncoding.EncodeToString(raw))
		}, ErrMalformedHeader},

		{"tampered body", func(d *delivery) { d.body = []byte(strings.Replace(string(d.body), "OK", "ER", 1)) }, ErrSignatureMismatch},
		{"body with a trailing newline", func(d *delivery) { d.body = append(d.body, '\n') }, ErrSignatureMismatch},
		{"body re-serialized", func(d *delivery) {
			var v any
			_ = json.Unmarshal(d.body, &v)
			d.body, _ = json.Marshal(v)
		}, ErrSignatureMismatch},
		{"changed request id", func(d *delivery) { d.h.Set(HeaderRequestID, "req-2") }, ErrSignatureMismatch},
		{"changed user id", func(d *delivery) { d.h.Set(HeaderUserID, "user-2") }, ErrSignatureMismatch},
		{"changed timestamp, same instant", func(d *delivery) { d.h.Set(HeaderTimestamp, "0"+d.h.Get(HeaderTimestamp)) }, ErrSignatureMismatch},
		{"changed timestamp within window", func(d *delivery) { d.h.Set(HeaderTimestamp, fmt.Sprint(t0.Unix()+1)) }, ErrSignatureMismatch},
		{"signed by an unknown key", func(d *delivery) { *d = signed(other, "req-1", "user-1", t0, d.body) }, ErrSignatureMismatch},
		{"signature bytes flipped", func(d *delivery) {
			raw, _ := hex.DecodeString(d.h.Get(HeaderSignature))
			raw[10] ^= 1
			d.h.Set(HeaderSignature, hex.EncodeToString(raw))
		}, ErrSignatureMismatch},
		{"fields shifted across the newline", func(d *delivery) {
			// "a\nb","c" and "a","b\nc" sign the same bytes: the control
			// character rule is what keeps this out.
			*d = signed(signer, "req", "1\nuser-1", t0, d.body)
			d.h.Set(HeaderRequestID, "req\n1")
			d.h.Set(HeaderUserID, "user-1")
		}, ErrMalformedHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &countingSource{src: StaticKeys(signer.PublicKey())}
			v := NewVerifier(WithKeys(src), WithClock(fixedClock(t0)))
			d := base()
			tt.mutate(&d)
			ev, err := v.Verify(context.Background(), d.h, d.body)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("genuine delivery rejected: %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatalf("delivery accepted, want %v", tt.wantErr)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if err == nil && (ev == nil || ev.RequestID != "req-1") {
				t.Fatalf("accepted delivery's event is %+v", ev)
			}
			cheap := errors.Is(err, ErrMissingHeader) || errors.Is(err, ErrMalformedHeader) || errors.Is(err, ErrTimestampOutOfRange)
			if n := src.calls.Load(); cheap && n != 0 {
				t.Errorf("junk caused %d key lookups, want 0", n)
			}
			if n := src.calls.Load(); !cheap && n != 1 {
				t.Errorf("%d key lookups, want 1", n)
			}
		})
	}
}

func TestVerifyErrorDetail(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)))
	d := signed(signer, "req-1", "user-1", t0.Add(-10*time.Minute), []byte(testBody))

	_, err := v.Verify(context.Background(), d.h, d.body)
	var te *TimestampError
	if !errors.As(err, &te) {
		t.Fatalf("stale delivery: got %v, want a *TimestampError", err)
	}
	if te.Skew != -600 || te.Tolerance != 5*time.Minute || te.Timestamp != t0.Unix()-600 {
		t.Errorf("got %+v, want skew -600, tolerance 5m, timestamp %d", te, t0.Unix()-600)
	}
	if !strings.Contains(err.Error(), "-600s") {
		t.Errorf("error %q does not say the skew", err)
	}

	d.h.Del(HeaderUserID)
	if _, err := v.Verify(context.Background(), d.h, d.body); !strings.Contains(fmt.Sprint(err), HeaderUserID) {
		t.Errorf("error %q does not name the missing header", err)
	}

	d = signed(faltest.SignerFromName("stranger"), "req-1", "user-1", t0, []byte(testBody))
	if _, err := v.Verify(context.Background(), d.h, d.body); !strings.Contains(fmt.Sprint(err), "the only key did not verify") {
		t.Errorf("error %q does not say how many keys were tried", err)
	}
	two := NewVerifier(WithKeys(StaticKeys(signer.PublicKey(), faltest.SignerFromName("b").PublicKey())), WithClock(fixedClock(t0)))
	if _, err := two.Verify(context.Background(), d.h, d.body); !strings.Contains(fmt.Sprint(err), "none of 2 keys verified") {
		t.Errorf("error %q does not say how many keys were tried", err)
	}
}

func TestTimestampErrorSkewSaturates(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	d := signed(signer, "req-1", "user-1", t0, []byte(testBody))
	d.h.Set(HeaderTimestamp, "9223372036854775807")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(time.Unix(-10, 0))))
	var te *TimestampError
	if _, err := v.Verify(context.Background(), d.h, d.body); !errors.As(err, &te) || te.Skew != 1<<63-1 {
		t.Errorf("skew overflowed: %v", err)
	}
}

func TestWithTolerance(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	d := signed(signer, "req-1", "user-1", t0.Add(-30*time.Second), []byte(testBody))
	for _, tt := range []struct {
		tol     time.Duration
		wantErr error
	}{
		{10 * time.Second, ErrTimestampOutOfRange},
		{29*time.Second + 999*time.Millisecond, ErrTimestampOutOfRange}, // rounded down
		{30 * time.Second, nil},
		{30*time.Second + 900*time.Millisecond, nil},
		{0, nil}, // default
		{-time.Second, nil},
		{time.Millisecond, ErrTimestampOutOfRange}, // at least one second
	} {
		v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)), WithTolerance(tt.tol))
		if _, err := v.Verify(context.Background(), d.h, d.body); !errors.Is(err, tt.wantErr) {
			t.Errorf("tolerance %s, skew 30s: got %v, want %v", tt.tol, err, tt.wantErr)
		}
	}
}

// TestWithUserIDs checks account pinning: another fal customer's genuine
// delivery is refused among the cheap checks, before any key lookup.
func TestWithUserIDs(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	mine := signed(signer, "req-1", "user-mine", t0, []byte(testBody))
	theirs := signed(signer, "req-1", "user-theirs", t0, []byte(testBody))
	for _, tt := range []struct {
		name       string
		ids        []string
		mine, them error
	}{
		{"pinned", []string{"user-mine"}, nil, ErrUnexpectedUser},
		{"pinned among several", []string{"user-old", "user-mine"}, nil, ErrUnexpectedUser},
		{"case matters", []string{"USER-MINE"}, ErrUnexpectedUser, ErrUnexpectedUser},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := &countingSource{src: StaticKeys(signer.PublicKey())}
			v := NewVerifier(WithKeys(src), WithClock(fixedClock(t0)), WithUserIDs(tt.ids...))
			if _, err := v.Verify(context.Background(), mine.h, mine.body); !errors.Is(err, tt.mine) || (tt.mine == nil) != (err == nil) {
				t.Errorf("my delivery: got %v, want %v", err, tt.mine)
			}
			before := src.calls.Load()
			_, err := v.Verify(context.Background(), theirs.h, theirs.body)
			if !errors.Is(err, tt.them) || (tt.them == nil) != (err == nil) {
				t.Errorf("another account's genuine delivery: got %v, want %v", err, tt.them)
			}
			if err != nil && src.calls.Load() != before {
				t.Error("a foreign user's delivery cost a key lookup")
			}
			if err != nil && StatusCode(err) != http.StatusForbidden {
				t.Errorf("status %d, want 403", StatusCode(err))
			}
		})
	}
}

// TestWithUserIDsEmpty checks that pinning given no account fails closed,
// as WithUserIDs(os.Getenv("FAL_USER_ID")) is with the variable unset:
// every delivery is refused with 503 and ErrNoUserIDs, logged once when the
// Verifier is made, never per delivery.
func TestWithUserIDsEmpty(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	genuine := signed(signer, "req-1", "user-mine", t0, []byte(testBody))
	for _, tt := range []struct {
		name string
		opts []Option
	}{
		{"an empty id", []Option{WithUserIDs("")}},
		{"no ids", []Option{WithUserIDs()}},
		{"only empty ids", []Option{WithUserIDs("", "")}},
		{"a later empty WithUserIDs replaces an earlier one", []Option{WithUserIDs("user-mine"), WithUserIDs("")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			src := &countingSource{src: StaticKeys(signer.PublicKey())}
			opts := append([]Option{WithKeys(src), WithClock(fixedClock(t0)), WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))}, tt.opts...)
			v := NewVerifier(opts...)
			for range 3 {
				_, err := v.Verify(context.Background(), genuine.h, genuine.body)
				if !errors.Is(err, ErrNoUserIDs) {
					t.Fatalf("pinning with no user id: got %v, want ErrNoUserIDs (a misconfiguration must fail closed)", err)
				}
				if code := StatusCode(err); code != http.StatusServiceUnavailable {
					t.Errorf("status %d, want 503 so that fal retries once the configuration is fixed", code)
				}
			}
			if err := v.Refresh(context.Background()); !errors.Is(err, ErrNoUserIDs) {
				t.Errorf("Refresh: got %v, want ErrNoUserIDs so that a startup check fails", err)
			}
			if src.calls.Load() != 0 {
				t.Error("a misconfigured Verifier looked up keys")
			}
			if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || strings.Count(logs.String(), "\n") > 1 {
				t.Errorf("logged %d Error lines, want exactly one, at construction:\n%s", n, logs.String())
			}
			if !strings.Contains(logs.String(), "WithUserIDs given no user id") {
				t.Errorf("the log does not say what is wrong:\n%s", logs.String())
			}
		})
	}
	t.Run("middleware", func(t *testing.T) {
		v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)), WithUserIDs(""), WithLogger(slog.New(slog.DiscardHandler)))
		req := signer.NewRequest("/", faltest.Delivery{RequestID: "req-1", UserID: "user-mine", Time: t0, Body: []byte(testBody)})
		rec := httptest.NewRecorder()
		v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			t.Error("a misconfigured Verifier let a delivery through")
		})).ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
			t.Errorf("answered %d, Retry-After %q; want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
		}
	})
	t.Run("without WithUserIDs any account is accepted", func(t *testing.T) {
		v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)))
		if _, err := v.Verify(context.Background(), genuine.h, genuine.body); err != nil {
			t.Errorf("unpinned Verifier refused a genuine delivery: %v", err)
		}
	})
}

func TestToleranceOfOneSecond(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)), WithTolerance(time.Millisecond))
	for skew, want := range map[time.Duration]error{0: nil, time.Second: nil, -time.Second: nil, 2 * time.Second: ErrTimestampOutOfRange} {
		d := signed(signer, "req-1", "user-1", t0.Add(skew), []byte(testBody))
		if _, err := v.Verify(context.Background(), d.h, d.body); !errors.Is(err, want) {
			t.Errorf("tolerance 1ms (so 1s), skew %s: got %v, want %v", skew, err, want)
		}
	}
}

func TestKeySources(t *testing.T) {
	a, b, c := faltest.SignerFromName("k-a"), faltest.SignerFromName("k-b"), faltest.SignerFromName("k-c")
	d := signed(c, "req-1", "user-1", t0, []byte(testBody))
	ctx := context.Background()

	tests := []struct {
		name    string
		src     KeySource
		wantErr error
	}{
		{"third of three keys", StaticKeys(a.PublicKey(), b.PublicKey(), c.PublicKey()), nil},
		{"short keys skipped", StaticKeys(ed25519.PublicKey{1, 2, 3}, c.PublicKey()), nil},
		{"the same key twice", StaticKeys(c.PublicKey(), c.PublicKey()), nil},
		{"no keys", StaticKeys(), ErrNoUsableKeys},
		{"only a short key", StaticKeys(ed25519.PublicKey{1, 2, 3}), ErrNoUsableKeys},
		{"only a 64-byte private key", StaticKeys(ed25519.PublicKey(c.PrivateKey())), ErrNoUsableKeys},
		{"wrong keys", StaticKeys(a.PublicKey(), b.PublicKey()), ErrSignatureMismatch},
		{"source fails its own way", &countingSource{err: errors.New("disk on fire")}, ErrKeysUnavailable},
		{"source reports a mismatch", &countingSource{err: fmt.Errorf("%w: mine", ErrSignatureMismatch)}, ErrSignatureMismatch},
		{"source reports no keys", &countingSource{err: fmt.Errorf("%w: mine", ErrNoUsableKeys)}, ErrNoUsableKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := NewVerifier(WithKeys(tt.src), WithClock(fixedClock(t0)))
			for i := 0; i < 3; i++ { // again, to exercise the last-key hint
				_, err := v.Verify(ctx, d.h, d.body)
				if (tt.wantErr == nil) != (err == nil) || !errors.Is(err, tt.wantErr) {
					t.Fatalf("try %d: got %v, want %v", i, err, tt.wantErr)
				}
			}
			if _, custom := tt.src.(*countingSource); !custom {
				if r := v.Refresh(ctx); errors.Is(tt.wantErr, ErrNoUsableKeys) != errors.Is(r, ErrNoUsableKeys) {
					t.Errorf("Refresh of static keys: %v", r)
				}
			}
		})
	}
}

// TestWeakKeysNeverVerify checks the forgery that weak keys allow: with
// the identity point as a key, R = base point and S = 1 verify any message
// under crypto/ed25519. Such keys are unusable, as static keys and from a
// JWKS alike.
func TestWeakKeysNeverVerify(t *testing.T) {
	identity := make(ed25519.PublicKey, 32)
	identity[0] = 1
	forgery, _ := hex.DecodeString("5866666666666666666666666666666666666666666666666666666666666666" +
		"0100000000000000000000000000000000000000000000000000000000000000")
	h := http.Header{}
	h.Set(HeaderRequestID, "req-1")
	h.Set(HeaderUserID, "user-1")
	h.Set(HeaderTimestamp, fmt.Sprint(t0.Unix()))
	h.Set(HeaderSignature, hex.EncodeToString(forgery))
	body := []byte(testBody)
	hs, _ := ParseHeaders(h)
	if !ed25519.Verify(identity, hs.AppendMessage(nil, body), forgery) {
		t.Fatal("crypto/ed25519 no longer accepts the identity-key forgery; the test needs a new example")
	}

	good := faltest.SignerFromName("verify-a")
	for _, tt := range []struct {
		name string
		keys []ed25519.PublicKey
		want error
	}{
		{"identity key alone", []ed25519.PublicKey{identity}, ErrNoUsableKeys},
		{"identity key beside a good one", []ed25519.PublicKey{identity, good.PublicKey()}, ErrSignatureMismatch},
	} {
		v := NewVerifier(WithKeys(StaticKeys(tt.keys...)), WithClock(fixedClock(t0)))
		if _, err := v.Verify(context.Background(), h, body); !errors.Is(err, tt.want) {
			t.Errorf("%s: forged delivery got %v, want %v", tt.name, err, tt.want)
		}
	}

	ks := faltest.NewKeyServer()
	defer ks.Close()
	ks.SetDocument([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"`+base64.RawURLEncoding.EncodeToString(identity)+`"}]}`), "application/json")
	v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Clock: fixedClock(t0)}), WithClock(fixedClock(t0)))
	if _, err := v.Verify(context.Background(), h, body); !errors.Is(err, ErrNoUsableKeys) || !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("a JWKS of the identity key: forged delivery got %v, want ErrKeysUnavailable wrapping ErrNoUsableKeys", err)
	}
}

// TestStaticKeysCopies checks that a caller changing its key afterwards
// changes nothing.
func TestStaticKeysCopies(t *testing.T) {
	s := faltest.SignerFromName("k-a")
	pub := append(ed25519.PublicKey(nil), s.PublicKey()...)
	v := NewVerifier(WithKeys(StaticKeys(pub)), WithClock(fixedClock(t0)))
	pub[0] ^= 1
	d := signed(s, "req-1", "user-1", t0, []byte(testBody))
	if _, err := v.Verify(context.Background(), d.h, d.body); err != nil {
		t.Fatalf("key changed under the Verifier: %v", err)
	}
}

// countingKey verifies what its flag says, counting calls.
type countingKey struct {
	ok    bool
	calls *int
}

func (k countingKey) Verify(msg, sig []byte) bool { *k.calls++; return k.ok }

// TestLastKeyHint checks that the key that verified last is tried first:
// with a thousand keys, the second signature by the last one costs one
// verification, not a thousand.
func TestLastKeyHint(t *testing.T) {
	calls := 0
	set := &keySet{}
	for i := range 1000 {
		set.keys = append(set.keys, countingKey{ok: i == 999, calls: &calls})
	}
	if !set.verify(nil, nil) || calls != 1000 {
		t.Fatalf("first verification: %d calls, want 1000 and success", calls)
	}
	calls = 0
	if !set.verify(nil, nil) || calls != 1 {
		t.Errorf("second verification by the same key: %d calls, want 1 (the hint)", calls)
	}
	set.keys[999] = countingKey{calls: &calls}
	set.keys[3] = countingKey{ok: true, calls: &calls}
	calls = 0
	if !set.verify(nil, nil) || calls != 5 {
		t.Errorf("after the hinted key stopped verifying: %d calls, want 5 (hint, then 0..3)", calls)
	}
	set.last.Store(5000) // any hint value is safe
	if !set.verify(nil, nil) {
		t.Error("out-of-range hint broke verification")
	}
	if set.last.Load() != 3 {
		t.Errorf("hint %d, want 3", set.last.Load())
	}
}

func TestParseHeaders(t *testing.T) {
	sig := strings.Repeat("ab", 64)
	h := http.Header{}
	h["x-fal-webhook-request-id"] = []string{"r"}
	h["X-FAL-WEBHOOK-USER-ID"] = []string{"u"}
	h.Set(HeaderTimestamp, "0001")
	h.Set(HeaderSignature, sig)
	h.Set("X-Fal-Webhook-Other", "ignored")
	h.Set("X-Fal-Webhook-", "ignored")
	got, err := ParseHeaders(h)
	if err != nil {
		t.Fatal(err)
	}
	if got.RequestID != "r" || got.UserID != "u" || got.Timestamp != "0001" || got.Signature != sig || got.unix != 1 || got.sig[0] != 0xab {
		t.Errorf("got %+v", got)
	}
	h[HeaderRequestID] = []string{} // present with no value
	delete(h, "x-fal-webhook-request-id")
	if _, err := ParseHeaders(h); !errors.Is(err, ErrMissingHeader) || !strings.Contains(err.Error(), HeaderRequestID) {
		t.Errorf("header with no values: got %v, want ErrMissingHeader naming it", err)
	}
}

// TestParseHeadersNamesTheHeader checks that each failure names the header
// at fault, so a diagnosis can point at it.
func TestParseHeadersNamesTheHeader(t *testing.T) {
	good := http.Header{}
	good.Set(HeaderRequestID, "r")
	good.Set(HeaderUserID, "u")
	good.Set(HeaderTimestamp, "1")
	good.Set(HeaderSignature, strings.Repeat("0", 128))
	for _, tt := range []struct {
		name, value string
		want        error
	}{
		{HeaderRequestID, "a\nb", ErrMalformedHeader},
		{HeaderUserID, "", ErrMissingHeader},
		{HeaderTimestamp, "1.5", ErrMalformedHeader},
		{HeaderSignature, "00", ErrMalformedHeader},
	} {
		h := good.Clone()
		h[tt.name] = []string{tt.value}
		_, err := ParseHeaders(h)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("%s %q: got %v, want %v naming the header", tt.name, tt.value, err, tt.want)
		}
	}
}

// goldenFile is testdata/golden/vectors.json, made by sign.mjs beside it
// with node:crypto.
type goldenFile struct {
	Keys []struct {
		Name      string `json:"name"`
		SeedHex   string `json:"seed_hex"`
		PublicHex string `json:"public_hex"`
		X         string `json:"x"` // base64url, unpadded
	} `json:"keys"`
	JWKS    json.RawMessage `json:"jwks"`
	Vectors []struct {
		Name      string `json:"name"`
		Key       string `json:"key"`
		RequestID string `json:"request_id"`
		UserID    string `json:"user_id"`
		Timestamp string `json:"timestamp"`
		BodyB64   string `json:"body_b64"`
		BodySHA   string `json:"body_sha256_hex"`
		Message   string `json:"message"`
		Signature string `json:"signature_hex"`
	} `json:"vectors"`
}

func loadGolden(tb testing.TB) goldenFile {
	tb.Helper()
	data, err := os.ReadFile("testdata/golden/vectors.json")
	if err != nil {
		tb.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(data, &g); err != nil {
		tb.Fatal(err)
	}
	if len(g.Vectors) < 10 {
		tb.Fatalf("only %d golden vectors", len(g.Vectors))
	}
	return g
}

// TestGolden checks deliveries signed by an independent implementation
// (node:crypto): the message is rebuilt byte for byte, and every signature by
// a key in the vectors' JWKS verifies.
func TestGolden(t *testing.T) {
	g := loadGolden(t)
	keys, err := ParseJWKS(g.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	src := StaticKeys(keys...)
	inJWKS := map[string]bool{}
	for _, k := range g.Keys {
		for _, pk := range keys {
			if hex.EncodeToString(pk) == k.PublicHex {
				inJWKS[k.Name] = true
			}
		}
	}
	for _, vec := range g.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			body, err := base64.StdEncoding.DecodeString(vec.BodyB64)
			if err != nil {
				t.Fatal(err)
			}
			hs := Headers{RequestID: vec.RequestID, UserID: vec.UserID, Timestamp: vec.Timestamp, Signature: vec.Signature}
			if msg := string(hs.AppendMessage(nil, body)); msg != vec.Message {
				t.Fatalf("message differs from node's:\n got %q\nwant %q", msg, vec.Message)
			}
			ts, _ := parseDigits(vec.Timestamp)
			v := NewVerifier(WithKeys(src), WithClock(fixedClock(time.Unix(ts, 0))))
			h := http.Header{}
			h.Set(HeaderRequestID, vec.RequestID)
			h.Set(HeaderUserID, vec.UserID)
			h.Set(HeaderTimestamp, vec.Timestamp)
			h.Set(HeaderSignature, vec.Signature)
			_, err = v.Verify(context.Background(), h, body)
			if errors.Is(err, ErrInvalidEvent) {
				err = nil // genuinely signed; not every vector's body is an event
			}
			if inJWKS[vec.Key] && err != nil {
				t.Fatalf("genuine golden delivery rejected: %v", err)
			}
			if !inJWKS[vec.Key] && !errors.Is(err, ErrSignatureMismatch) {
				t.Fatalf("delivery signed by a key outside the JWKS: got %v, want ErrSignatureMismatch", err)
			}
			if len(body) > 0 {
				body[len(body)/2] ^= 0x20
				if _, err := v.Verify(context.Background(), h, body); !errors.Is(err, ErrSignatureMismatch) {
					t.Fatalf("tampered body: got %v, want ErrSignatureMismatch", err)
				}
			}
		})
	}
}

// FuzzVerify checks that Verify never panics, accepts every genuine delivery
// with well-formed identifiers, and never accepts one whose body or headers
// were changed after signing. Its oracles are independent of the code under
// test: crypto/ed25519 over faltest's message, and unicode.IsControl.
func FuzzVerify(f *testing.F) {
	g := loadGolden(f)
	for _, vec := range g.Vectors {
		body, _ := base64.StdEncoding.DecodeString(vec.BodyB64)
		f.Add(vec.RequestID, vec.UserID, vec.Timestamp, vec.Signature, body, uint16(7))
	}
	f.Add("a\nb", "c", "1700000000", "", []byte("{}"), uint16(0))
	f.Add("", "", "+1", "0x00", []byte(nil), uint16(1))
	f.Add("r\u0085", "u", "1700000000", "", []byte(testBody), uint16(3))

	signer := faltest.SignerFromName("fuzz")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)))
	ctx := context.Background()
	verify := func(hs Headers, body []byte) error {
		h := http.Header{}
		h[HeaderRequestID] = []string{hs.RequestID}
		h[HeaderUserID] = []string{hs.UserID}
		h[HeaderTimestamp] = []string{hs.Timestamp}
		h[HeaderSignature] = []string{hs.Signature}
		_, err := v.Verify(ctx, h, body)
		if errors.Is(err, ErrInvalidEvent) {
			return nil // the signature passed; the body is just not an event
		}
		return err
	}
	hasControl := func(s string) bool { return strings.IndexFunc(s, unicode.IsControl) >= 0 }

	f.Fuzz(func(t *testing.T, requestID, userID, timestamp, signature string, body []byte, flip uint16) {
		// Arbitrary input: must not panic, and anything accepted must carry
		// a real signature over exactly these inputs.
		hs := Headers{RequestID: requestID, UserID: userID, Timestamp: timestamp, Signature: signature}
		if verify(hs, body) == nil {
			sig, _ := hex.DecodeString(strings.Trim(signature, " \t"))
			if len(sig) != ed25519.SignatureSize || !ed25519.Verify(signer.PublicKey(), faltest.Message(requestID, userID, timestamp, body), sig) {
				t.Fatalf("accepted a delivery without a valid signature: %+v", hs)
			}
		}

		// Genuine signature over the fuzzed identifiers and body.
		ts := strconv.FormatInt(t0.Unix(), 10)
		good := Headers{RequestID: requestID, UserID: userID, Timestamp: ts,
			Signature: hex.EncodeToString(signer.SignMessage(faltest.Message(requestID, userID, ts, body)))}
		err := verify(good, body)
		wellFormed := requestID != "" && userID != "" && !hasControl(requestID) && !hasControl(userID)
		if wellFormed && err != nil {
			t.Fatalf("genuine delivery rejected: %v", err)
		}
		if !wellFormed && err == nil {
			t.Fatalf("malformed identifiers accepted: %q %q", requestID, userID)
		}
		if err != nil {
			return
		}
		changed := append([]byte(nil), body...)
		if len(changed) > 0 {
			i := int(flip) % len(changed)
			changed[i] ^= byte(1 + flip%255)
		} else {
			changed = append(changed, byte(flip))
		}
		if verify(good, changed) == nil {
			t.Fatalf("changed body accepted")
		}
		for i, mutate := range []func(*Headers){
			func(h *Headers) { h.RequestID += "x" },
			func(h *Headers) { h.UserID = "x" + h.UserID },
			func(h *Headers) { h.Timestamp = "0" + h.Timestamp },
		} {
			h := good
			mutate(&h)
			if verify(h, body) == nil {
				t.Fatalf("changed header %d accepted: %+v", i, h)
			}
		}
	})
}

// TestErrorTextSaysThePrefixOnce checks that errors wrapping errors read
// as one sentence: "falwebhook: keys unavailable: no usable keys: ...", not
// "falwebhook: keys unavailable: falwebhook: no usable keys: ...".
func TestErrorTextSaysThePrefixOnce(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	ks := faltest.NewKeyServer()
	defer ks.Close()
	ks.SetDocument([]byte(`{"keys":[]}`), "application/json")
	d := signed(signer, "req-1", "user-1", t0, []byte(testBody))
	v := NewVerifier(WithKeys(&JWKS{URL: ks.URL, Clock: fixedClock(t0)}), WithClock(fixedClock(t0)))
	_, err := v.Verify(context.Background(), d.h, d.body)
	if !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, ErrNoUsableKeys) {
		t.Fatalf("got %v, want keys unavailable wrapping no usable keys", err)
	}
	if n := strings.Count(err.Error(), "falwebhook:"); n != 1 {
		t.Errorf("%q says the prefix %d times", err, n)
	}

	// A mismatch whose refetch failed.
	clk := newTestClock()
	ks.SetSigners(signer)
	j := &JWKS{URL: ks.URL, Clock: clk.Now}
	v = NewVerifier(WithKeys(j), WithClock(clk.Now))
	d = signed(signer, "req-1", "user-1", clk.Now(), []byte(testBody))
	if _, err := v.Verify(context.Background(), d.h, d.body); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	ks.FailNext(1, http.StatusInternalServerError)
	forged := signed(faltest.SignerFromName("forger"), "req-1", "user-1", clk.Now(), []byte(testBody))
	_, err = v.Verify(context.Background(), forged.h, forged.body)
	if !errors.Is(err, ErrSignatureMismatch) || !errors.Is(err, ErrKeysUnavailable) || StatusCode(err) != http.StatusServiceUnavailable {
		t.Fatalf("mismatch with a failed refetch: %v (status %d), want both sentinels and 503", err, StatusCode(err))
	}
	if n := strings.Count(err.Error(), "falwebhook:"); n != 1 {
		t.Errorf("%q says the prefix %d times", err, n)
	}
}

// TestEmptyBodyHint checks that a mismatch over an empty body names the
// likely cause: a router or middleware read the body before verification.
func TestEmptyBodyHint(t *testing.T) {
	signer := faltest.SignerFromName("verify-a")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(fixedClock(t0)))
	d := signed(signer, "req-1", "user-1", t0, []byte(testBody))
	const hint = "was it read before verification?"
	if _, err := v.Verify(context.Background(), d.h, nil); !errors.Is(err, ErrSignatureMismatch) || !strings.Contains(err.Error(), hint) {
		t.Errorf("Verify of an emptied body: %v, want a mismatch with the hint", err)
	}
	r := signer.NewRequest("/", faltest.Delivery{RequestID: "req-1", UserID: "user-1", Time: t0, Body: []byte(testBody)})
	_, _ = io.ReadAll(r.Body) // a router bound the body first
	if _, err := v.VerifyRequest(r); !errors.Is(err, ErrSignatureMismatch) || !strings.Contains(err.Error(), hint) {
		t.Errorf("VerifyRequest of a consumed body: %v, want a mismatch with the hint", err)
	}
	d.h.Set(HeaderSignature, strings.Repeat("0", 128))
	if _, err := v.Verify(context.Background(), d.h, d.body); strings.Contains(fmt.Sprint(err), hint) {
		t.Errorf("a mismatch over a non-empty body got the hint: %v", err)
	}
}
