package awslambda_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
)

func TestResponseHeaders(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b, c")
		w.Header().Add("Set-Cookie", "one=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT")
		w.Header().Add("Set-Cookie", "two=2")
		w.Header().Set("Content-Type", "application/json")
		w.Header()["x-raw"] = []string{"lower"} // set without canonicalizing
		w.Header()["X-Empty"] = nil
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"ok":true}`)
	})
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			res := invoke(t, sh, h, sh.event(t, clientRequest{}))
			if res.StatusCode != http.StatusCreated || res.Body != `{"ok":true}` || res.IsBase64Encoded {
				t.Fatalf("status %d body %q base64 %v", res.StatusCode, res.Body, res.IsBase64Encoded)
			}
			cookies := []string{"one=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "two=2"}
			switch {
			case sh.v2:
				if got := res.Headers["X-Multi"]; got != "a, b, c" {
					t.Errorf("X-Multi = %q, want the values joined with \", \"", got)
				}
				if !slices.Equal(res.Cookies, cookies) {
					t.Errorf("cookies = %q, want %q", res.Cookies, cookies)
				}
				if _, ok := res.Headers["Set-Cookie"]; ok {
					t.Errorf("Set-Cookie in headers as well as in cookies")
				}
			case sh.multi:
				if got := res.MultiValueHeaders["X-Multi"]; !slices.Equal(got, []string{"a", "b, c"}) {
					t.Errorf("X-Multi = %q, want both values", got)
				}
				if got := res.MultiValueHeaders["Set-Cookie"]; !slices.Equal(got, cookies) {
					t.Errorf("Set-Cookie = %q, want %q", got, cookies)
				}
			default:
				if got := res.Headers["X-Multi"]; got != "a, b, c" {
					t.Errorf("X-Multi = %q, want the values joined with \", \"", got)
				}
			}
			if got := res.header("X-Raw"); !slices.Equal(got, []string{"lower"}) {
				t.Errorf("X-Raw = %q, want the handler's value under its canonical name", got)
			}
			if got := res.header("X-Empty"); got != nil {
				t.Errorf("X-Empty = %q, want a name without values left out", got)
			}
			if sh.alb && (res.StatusDescription == nil || *res.StatusDescription != "201 Created") {
				t.Errorf("statusDescription = %v, want \"201 Created\"", res.StatusDescription)
			}
		})
	}
}

func TestResponseStatusDescription(t *testing.T) {
	sh := shapes[4] // ALB
	for code, want := range map[int]string{200: "200 OK", 404: "404 Not Found", 503: "503 Service Unavailable", 599: "599 status code 599"} {
		res := invoke(t, sh, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }), sh.event(t, clientRequest{}))
		if res.StatusDescription == nil || *res.StatusDescription != want {
			t.Errorf("status %d: statusDescription %v, want %q", code, res.StatusDescription, want)
		}
	}
}

func TestResponseBinaryBody(t *testing.T) {
	body := []byte{0x89, 'P', 'N', 'G', 0xff, 0x00}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			res := invoke(t, sh, h, sh.event(t, clientRequest{}))
			if !res.IsBase64Encoded || !bytes.Equal(res.body(t), body) {
				t.Fatalf("binary body: isBase64Encoded %v, body %q; want base64 of %q", res.IsBase64Encoded, res.Body, body)
			}
		})
	}
}

// TestResponseWriterSemantics checks the behaviour net/http gives handlers.
func TestResponseWriterSemantics(t *testing.T) {
	sh := shapes[0]
	tests := []struct {
		name        string
		handler     http.HandlerFunc
		wantCode    int
		wantType    []string
		wantBody    string
		wantHeaders map[string][]string
	}{
		{
			name:     "nothing written",
			handler:  func(w http.ResponseWriter, r *http.Request) {},
			wantCode: http.StatusOK,
		},
		{
			name:     "write without WriteHeader sniffs the type",
			handler:  func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") },
			wantCode: http.StatusOK, wantType: []string{"text/plain; charset=utf-8"}, wantBody: "hello",
		},
		{
			name: "a nil Content-Type suppresses sniffing",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = nil
				io.WriteString(w, "hello")
			},
			wantCode: http.StatusOK, wantBody: "hello",
		},
		{
			name: "Content-Encoding suppresses sniffing",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Encoding", "gzip")
				io.WriteString(w, "hello")
			},
			wantCode: http.StatusOK, wantBody: "hello", wantHeaders: map[string][]string{"Content-Encoding": {"gzip"}},
		},
		{
			name: "headers after WriteHeader are ignored",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Before", "1")
				w.WriteHeader(http.StatusAccepted)
				w.Header().Set("X-After", "1")
				w.WriteHeader(http.StatusInternalServerError) // superfluous
			},
			wantCode: http.StatusAccepted, wantHeaders: map[string][]string{"X-Before": {"1"}, "X-After": nil},
		},
		{
			name: "headers after Write are ignored",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/csv")
				io.WriteString(w, "a,b")
				w.Header().Set("X-After", "1")
			},
			wantCode: http.StatusOK, wantType: []string{"text/csv"}, wantBody: "a,b", wantHeaders: map[string][]string{"X-After": nil},
		},
		{
			name: "1xx statuses are interim",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusEarlyHints)
				w.WriteHeader(http.StatusNoContent)
			},
			wantCode: http.StatusNoContent,
		},
		{
			name:     "invalid status becomes 500",
			handler:  func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(42) },
			wantCode: http.StatusInternalServerError,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := invoke(t, sh, tt.handler, sh.event(t, clientRequest{}))
			if res.StatusCode != tt.wantCode || res.Body != tt.wantBody {
				t.Errorf("status %d body %q, want %d %q", res.StatusCode, res.Body, tt.wantCode, tt.wantBody)
			}
			if got := res.header("Content-Type"); !slices.Equal(got, tt.wantType) {
				t.Errorf("Content-Type %q, want %q", got, tt.wantType)
			}
			for name, want := range tt.wantHeaders {
				if got := res.header(name); !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// TestResponseToBadBase64 checks the 400 written for an undecodable body
// in each shape's response format, status description included.
func TestResponseToBadBase64(t *testing.T) {
	sh := shapes[5] // ALB multi-value
	payload := bytes.Replace(sh.event(t, clientRequest{body: []byte("x")}), []byte(`"isBase64Encoded":false`), []byte(`"isBase64Encoded":true`), 1)
	res := invoke(t, sh, http.NotFoundHandler(), payload)
	if res.StatusCode != http.StatusBadRequest || *res.StatusDescription != "400 Bad Request" {
		t.Fatalf("status %d %q, want 400 Bad Request", res.StatusCode, *res.StatusDescription)
	}
	if got := fmt.Sprint(res.MultiValueHeaders["X-Content-Type-Options"]); got != "[nosniff]" {
		t.Errorf("X-Content-Type-Options = %s, want http.Error's [nosniff]", got)
	}
}
