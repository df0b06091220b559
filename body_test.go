package falwebhook

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// TestReadBodyExact checks that bodies of every size around the chunk
// boundaries and the limit are read whole and hashed right, with and
// without Content-Length, in small reads, and that the buffers never
// exceed limit+1 bytes in all.
func TestReadBodyExact(t *testing.T) {
	const limit = 300 << 10
	v := NewVerifier(WithMaxBodySize(limit))
	sizes := []int{0, 1, headSize - 1, headSize, headSize + 1, 1023, 2<<10 + 1, 3000, 16<<10 - 1, 16 << 10, 16<<10 + 1, 48 << 10, 112<<10 + 5, 240 << 10, limit - 1, limit}
	for _, n := range sizes {
		for _, withLength := range []bool{true, false} {
			for _, slow := range []bool{false, true} {
				t.Run(fmt.Sprintf("%d bytes/length %v/slow %v", n, withLength, slow), func(t *testing.T) {
					data := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
					var r io.Reader = bytes.NewReader(data)
					if slow {
						r = iotest.HalfReader(r)
					}
					req := httptest.NewRequest(http.MethodPost, "/", r)
					req.ContentLength = -1
					if withLength {
						req.ContentLength = int64(n)
					}
					var b body
					if err := v.readBody(req, &b); err != nil {
						t.Fatal(err)
					}
					if b.charged > limit+1 {
						t.Errorf("buffers of %d bytes for a limit of %d", b.charged, limit)
					}
					switch {
					case n < headSize && (b.charged != 0 || len(b.chunks) != 0):
						t.Errorf("a %d-byte body took %d bytes of buffer in %d chunks, want none", n, b.charged, len(b.chunks))
					case n >= headSize && withLength && (b.charged != int64(n)+1 || len(b.chunks) != 1):
						t.Errorf("a %d-byte body with Content-Length took %d bytes of buffer in %d chunks, want %d in one", n, b.charged, len(b.chunks), n+1)
					case b.charged > 4*max(b.n, headSize)+1:
						t.Errorf("a %d-byte body took %d bytes of buffer, more than 4 times its bytes", n, b.charged)
					}
					if b.sum != sha256.Sum256(data) {
						t.Error("wrong sha256")
					}
					if got := b.bytes(v); !bytes.Equal(got, data) {
						t.Errorf("read %d bytes, not the %d sent", len(got), n)
					}
					if u := v.budget.used.Load(); u != 0 {
						t.Errorf("%d bytes still charged after the body was taken", u)
					}
				})
			}
		}
	}
	for _, withLength := range []bool{true, false} {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(make([]byte, limit+1)))
		if !withLength {
			req.ContentLength = -1
		}
		var b body
		err := v.readBody(req, &b)
		if !errors.Is(err, ErrBodyTooLarge) || b.charged > limit+1 {
			t.Errorf("limit+1 bytes (length %v): %v, %d bytes of buffer", withLength, err, b.charged)
		}
		b.free(v)
	}
}

// heldBody sends n bytes, then blocks until released, telling sent when it
// blocks.
type heldBody struct {
	r       io.Reader
	sent    chan struct{}
	release chan struct{}
}

func newHeldBody(n int, release chan struct{}) *heldBody {
	return &heldBody{r: bytes.NewReader(make([]byte, n)), sent: make(chan struct{}), release: release}
}

func (h *heldBody) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if err == io.EOF {
		close(h.sent)
		<-h.release
		return 0, errors.New("client gave up")
	}
	return n, nil
}

// TestBodyBudget holds large forged bodies mid-read until the budget is
// used up: the next large one is refused with ErrOverloaded, small genuine
// deliveries still pass, and everything is released afterwards.
func TestBodyBudget(t *testing.T) {
	signer := faltest.SignerFromName("budget")
	at := time.Unix(1_700_000_000, 0)
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(func() time.Time { return at }),
		WithMaxBodySize(256<<10), WithBodyBudget(1<<20))
	if v.budget.max != 1<<20 {
		t.Fatalf("budget %d, want 1 MiB", v.budget.max)
	}
	forged := func(body io.Reader) *http.Request {
		r := signer.NewRequest("/", faltest.Delivery{Time: at, Body: []byte("{}")})
		r.Header.Set(HeaderSignature, strings.Repeat("0", 128))
		r.Body = io.NopCloser(body)
		r.ContentLength = -1
		return r
	}
	release := make(chan struct{})
	errs := make(chan error, 4)
	// Each held body is 200 KiB read into 2+4+...+64+128 KiB of buffers:
	// 126 KiB small, 128 KiB large. Three fit under the large share (768
	// KiB); the fourth's large buffer does not.
	for i := range 4 {
		h := newHeldBody(200<<10, release)
		go func() {
			_, err := v.VerifyRequest(forged(h))
			errs <- err
		}()
		if i < 3 {
			<-h.sent
			continue
		}
		select {
		case err := <-errs:
			if !errors.Is(err, ErrOverloaded) || StatusCode(err) != http.StatusServiceUnavailable {
				t.Fatalf("fourth large body: %v, want ErrOverloaded (503)", err)
			}
		case <-h.sent:
			t.Fatal("the fourth large body was read although the budget is used up")
		}
	}
	if u := v.budget.used.Load(); u != 3*254<<10 {
		t.Errorf("%d bytes charged for three held bodies, want %d", u, 3*254<<10)
	}

	// A small genuine delivery still gets through.
	w := httptest.NewRecorder()
	v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).ServeHTTP(w,
		signer.NewRequest("/", faltest.Delivery{Time: at, Body: faltest.OKBody("req-1", nil)}))
	if w.Code != http.StatusOK {
		t.Fatalf("small genuine delivery during the flood: %d, want 200", w.Code)
	}

	// The overloaded answer closes the connection.
	w = httptest.NewRecorder()
	v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).ServeHTTP(w, forged(bytes.NewReader(make([]byte, 200<<10))))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Connection") != "close" || w.Header().Get("Retry-After") == "" {
		t.Errorf("overloaded: status %d, headers %v; want 503 with Connection: close and Retry-After", w.Code, w.Header())
	}

	close(release)
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrReadBody) {
			t.Errorf("held body: %v, want ErrReadBody", err)
		}
	}
	if u := v.budget.used.Load(); u != 0 {
		t.Errorf("%d bytes still charged after every request ended", u)
	}
}

func TestBodyBudgetBounds(t *testing.T) {
	for _, tt := range []struct {
		opts []Option
		want int64
	}{
		{nil, 64 << 20},
		{[]Option{WithBodyBudget(0)}, 64 << 20},
		{[]Option{WithBodyBudget(-5)}, 64 << 20},
		{[]Option{WithMaxBodySize(1 << 20), WithBodyBudget(8 << 20)}, 8 << 20},
		{[]Option{WithMaxBodySize(100 << 20)}, 200 << 20},                            // twice the limit
		{[]Option{WithMaxBodySize(30 << 20), WithBodyBudget(1)}, (30<<20+1)*4/3 + 1}, // one largest body fits
	} {
		if got := NewVerifier(tt.opts...).budget.max; got != tt.want {
			t.Errorf("budget %d, want %d", got, tt.want)
		}
	}
}

// deadlineWriter records the read deadlines set through
// http.ResponseController.
type deadlineWriter struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (w *deadlineWriter) SetReadDeadline(t time.Time) error {
	w.deadlines = append(w.deadlines, t)
	return nil
}

func TestReadTimeoutSet(t *testing.T) {
	signer := faltest.SignerFromName("deadline")
	at := time.Unix(1_700_000_000, 0)
	for _, tt := range []struct {
		opt  Option
		want time.Duration
	}{{nil, 30 * time.Second}, {WithReadTimeout(5 * time.Second), 5 * time.Second}, {WithReadTimeout(-1), 30 * time.Second}} {
		v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithClock(func() time.Time { return at }), tt.opt)
		w := &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
		before := time.Now()
		v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).ServeHTTP(w,
			signer.NewRequest("/", faltest.Delivery{Time: at, Body: faltest.OKBody("req-1", nil)}))
		if len(w.deadlines) != 2 {
			t.Fatalf("deadlines set: %v, want one for the body and its reset", w.deadlines)
		}
		if d := w.deadlines[0].Sub(before); d < tt.want || d > tt.want+time.Minute {
			t.Errorf("read deadline %s after the start, want %s", d, tt.want)
		}
		if !w.deadlines[1].IsZero() {
			t.Errorf("deadline not reset after the body: %v", w.deadlines[1])
		}
	}
}

// TestReadTimeoutCutsTrickle sends a delivery whose body stops short over a
// real connection to a server with no timeouts of its own: the
// middleware's read deadline ends it. The wait is bounded by the 100 ms
// deadline.
func TestReadTimeoutCutsTrickle(t *testing.T) {
	signer := faltest.SignerFromName("deadline")
	v := NewVerifier(WithKeys(StaticKeys(signer.PublicKey())), WithReadTimeout(100*time.Millisecond))
	ran := false
	srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true })))
	defer srv.Close()

	body := faltest.OKBody("req-1", nil)
	req := signer.NewRequest("/", faltest.Delivery{Body: body})
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n", len(body))
	for k, vs := range req.Header {
		fmt.Fprintf(conn, "%s: %s\r\n", k, vs[0])
	}
	fmt.Fprintf(conn, "\r\n%s", body[:len(body)/2]) // and nothing more
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || ran {
		t.Errorf("stalled body: status %d, handler ran %v; want 400 and not run", resp.StatusCode, ran)
	}
}
