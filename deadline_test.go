package falwebhook

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

func TestReadDeadline(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, tt := range []struct {
		ours, server time.Duration
		want         time.Time
		set          bool
	}{
		{30 * time.Second, 0, now.Add(30 * time.Second), true},
		{30 * time.Second, 2 * time.Second, time.Time{}, false},
		{30 * time.Second, 30 * time.Second, time.Time{}, false},
		{2 * time.Second, 30 * time.Second, now.Add(2 * time.Second), true},
	} {
		got, set := readDeadline(now, tt.ours, tt.server)
		if set != tt.set || !got.Equal(tt.want) {
			t.Errorf("ours %s, server's ReadTimeout %s: deadline %v (set %v), want %v (set %v)", tt.ours, tt.server, got, set, tt.want, tt.set)
		}
		if set && tt.server > 0 && got.After(now.Add(tt.server)) {
			t.Errorf("ours %s, server's ReadTimeout %s: deadline later than the server's", tt.ours, tt.server)
		}
	}
}

// sendHead opens a connection to srv and sends a POST's head with a
// Content-Length of 100000 and no body.
func sendHead(t *testing.T, srv *httptest.Server, method string, h http.Header) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var head strings.Builder
	fmt.Fprintf(&head, "%s / HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n", method, srv.Listener.Addr())
	_ = h.Write(&head)
	head.WriteString("\r\n")
	if _, err := io.WriteString(c, head.String()); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitClosed reads c's answer and reports within how long the server closed
// it, failing if it is still open after bound.
func waitClosed(t *testing.T, c net.Conn, bound time.Duration) (*http.Response, time.Duration) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(bound))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("no answer within %s", bound)
		}
		return nil, time.Since(start) // closed without an answer
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("answered %d but the connection was still open after %s", resp.StatusCode, bound)
	}
	return resp, time.Since(start)
}

// TestServerReadTimeoutNotExtended checks that behind the middleware a
// request whose body never comes is cut by the server's ReadTimeout when
// that is shorter than the middleware's.
func TestServerReadTimeoutNotExtended(t *testing.T) {
	s := faltest.SignerFromName("deadline")
	at := time.Unix(1_700_000_000, 0)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return at }))
	srv := httptest.NewUnstartedServer(v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()
	h := http.Header{}
	s.Sign(faltest.Delivery{RequestID: "slow", Time: at, Body: []byte("{}")}).Set(h)
	c := sendHead(t, srv, http.MethodPost, h)
	defer c.Close()
	_, took := waitClosed(t, c, 5*time.Second)
	t.Logf("closed after %s under a ReadTimeout of %s", took.Round(time.Millisecond), srv.Config.ReadTimeout)
}

// TestRefusedConnectionsClosed checks that a delivery refused by the cheap
// checks, before its body is read, is answered with Connection: close and
// its connection closed, with no server timeout to bound the drain.
func TestRefusedConnectionsClosed(t *testing.T) {
	s := faltest.SignerFromName("refused")
	at := time.Unix(1_700_000_000, 0)
	v := NewVerifier(WithKeys(StaticKeys(s.PublicKey())), WithClock(func() time.Time { return at }), WithUserIDs("ours"))
	srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("a refused delivery reached the handler")
	})))
	defer srv.Close()
	signed := func(d faltest.Delivery, mutate func(http.Header)) http.Header {
		h := http.Header{}
		if d.UserID == "" {
			d.UserID = "ours"
		}
		d.Body = []byte("{}")
		s.Sign(d).Set(h)
		if mutate != nil {
			mutate(h)
		}
		return h
	}
	for _, tt := range []struct {
		name   string
		method string
		h      http.Header
		want   int
	}{
		{"wrong method", http.MethodPut, signed(faltest.Delivery{Time: at}, nil), http.StatusMethodNotAllowed},
		{"missing signature", http.MethodPost, signed(faltest.Delivery{Time: at}, func(h http.Header) { h.Del(HeaderSignature) }), http.StatusBadRequest},
		{"old timestamp", http.MethodPost, signed(faltest.Delivery{Time: at.Add(-time.Hour)}, nil), http.StatusUnauthorized},
		{"another user", http.MethodPost, signed(faltest.Delivery{Time: at, UserID: "theirs"}, nil), http.StatusForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := sendHead(t, srv, tt.method, tt.h)
			defer c.Close()
			resp, _ := waitClosed(t, c, 5*time.Second)
			if resp == nil {
				t.Fatal("closed without an answer")
			}
			if resp.StatusCode != tt.want || !resp.Close {
				t.Errorf("status %d, Connection: close %v; want %d and close", resp.StatusCode, resp.Close, tt.want)
			}
		})
	}
}
