package falqueue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func secs(s ...float64) []time.Duration {
	d := make([]time.Duration, len(s))
	for i, v := range s {
		d[i] = time.Duration(v * float64(time.Second))
	}
	return d
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// failThen answers code for the first n calls, then ok.
func failThen(n, code int, header http.Header, ok func(w http.ResponseWriter, r *http.Request)) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, r *http.Request, i int) {
		if i < n {
			for k, v := range header {
				w.Header()[k] = v
			}
			writeJSON(w, code, `{"detail": "try again"}`)
			return
		}
		ok(w, r)
	}
}

func completed(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"status":"COMPLETED"}`) }

func TestStatusRetriesAsFalDoes(t *testing.T) {
	for _, code := range []int{429, 500, 502, 503, 504} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			s := newServer(t, failThen(5, code, nil, completed))
			c, clk := s.client(0.5)
			st, err := c.Status(context.Background(), s.request("r"))
			if err != nil {
				t.Fatalf("after 5 failures and a success: %v", err)
			}
			if !st.Completed() || s.Calls() != 6 {
				t.Errorf("status %+v after %d calls, want COMPLETED after 6", st, s.Calls())
			}
			if got, want := clk.Sleeps(), secs(1, 2, 4, 8, 16); !equalDurations(got, want) {
				t.Errorf("waits %v, want %v", got, want)
			}
		})
	}
	for _, code := range []int{400, 404, 409, 422, 501, 505} {
		t.Run(strconv.Itoa(code)+" not retried", func(t *testing.T) {
			s := newServer(t, failThen(5, code, nil, completed))
			c, _ := s.client(0.5)
			if _, err := c.Status(context.Background(), s.request("r")); err == nil {
				t.Fatal("no error")
			}
			if s.Calls() != 1 {
				t.Errorf("%d calls, want 1", s.Calls())
			}
		})
	}
}

func TestRateLimitRetriedWhateverItsErrorType(t *testing.T) {
	s := newServer(t, failThen(1, 429, http.Header{"X-Fal-Error-Type": {"rate_limited"}}, completed))
	c, _ := s.client(0.5)
	if _, err := c.Status(context.Background(), s.request("r")); err != nil || s.Calls() != 2 {
		t.Errorf("429 with an error type: %v after %d calls, want success after 2", err, s.Calls())
	}
}

func TestRetriesEnd(t *testing.T) {
	s := newServer(t, failThen(100, 503, nil, completed))
	c, clk := s.client(0.5)
	_, err := c.Status(context.Background(), s.request("r"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || ae.Attempts != 6 || !errors.Is(err, ErrServerError) {
		t.Fatalf("error = %v, want a 503 *APIError after 6 attempts", err)
	}
	if s.Calls() != 6 || len(clk.Sleeps()) != 5 {
		t.Errorf("%d calls and %d waits, want 6 and 5", s.Calls(), len(clk.Sleeps()))
	}
}

func TestJitter(t *testing.T) {
	for _, tt := range []struct {
		r    float64
		want []time.Duration
	}{
		{0, secs(0.75, 1.5, 3, 6, 12)},
		{0.999999, nil}, // just under +25%
	} {
		s := newServer(t, failThen(5, 503, nil, completed))
		c, clk := s.client(tt.r)
		if _, err := c.Status(context.Background(), s.request("r")); err != nil {
			t.Fatal(err)
		}
		got := clk.Sleeps()
		if tt.want != nil && !equalDurations(got, tt.want) {
			t.Errorf("jitter %v: waits %v, want %v", tt.r, got, tt.want)
		}
		for i, d := range got {
			base := time.Second << i
			if d < base*3/4 || d >= base*5/4 {
				t.Errorf("jitter %v: wait %d is %v, outside ±25%% of %v", tt.r, i, d, base)
			}
		}
	}
	// The real jitter stays within its bounds.
	p := policyFor(OpStatus)
	c := &Client{}
	for i := 0; i < 1000; i++ {
		if d := p.delay(2, c.random()); d < 3*time.Second || d > 5*time.Second {
			t.Fatalf("jittered wait %v outside [3s, 5s]", d)
		}
	}
}

func TestDelayCapped(t *testing.T) {
	p := policyFor(OpStatus)
	for n, want := range map[int]time.Duration{0: time.Second, 4: 16 * time.Second, 5: 30 * time.Second, 62: 30 * time.Second, 200: 30 * time.Second} {
		if got := p.delay(n, 0.5); got != want {
			t.Errorf("delay(%d) = %v, want %v", n, got, want)
		}
	}
	if got := p.delay(5, 0.9999); got != 30*time.Second {
		t.Errorf("delay(5) with +25%% jitter = %v, want the 30 s cap", got)
	}
	if got := policyFor(OpSubmit).delay(10, 0.5); got != time.Minute {
		t.Errorf("submit delay(10) = %v, want the 60 s cap", got)
	}
}

func TestSubmitRetries(t *testing.T) {
	ok := func(s **server) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, submitAnswerFor((*s).URL, "r")) }
	}
	for _, code := range []int{429, 502, 503, 504} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			var s *server
			s = newServer(t, failThen(3, code, nil, ok(&s)))
			c, clk := s.client(0.5)
			if _, err := c.Submit(context.Background(), "fal-ai/flux", nil, ""); err != nil {
				t.Fatalf("after 3 failures and a success: %v", err)
			}
			if got, want := clk.Sleeps(), secs(1, 2, 4); s.Calls() != 4 || !equalDurations(got, want) {
				t.Errorf("%d calls, waits %v; want 4 calls, waits %v", s.Calls(), got, want)
			}
			for i := 0; i < 4; i++ {
				if _, body := s.call(i); string(body) != "{}" {
					t.Errorf("attempt %d sent body %q", i, body)
				}
			}
		})
	}
	t.Run("gives up after 3 retries", func(t *testing.T) {
		var s *server
		s = newServer(t, failThen(100, 503, nil, ok(&s)))
		c, _ := s.client(0.5)
		if _, err := c.Submit(context.Background(), "fal-ai/flux", nil, ""); !errors.Is(err, ErrServerError) || s.Calls() != 4 {
			t.Errorf("error %v after %d calls, want ErrServerError after 4", err, s.Calls())
		}
	})
	t.Run("500 not retried: a second submit could be billed twice", func(t *testing.T) {
		var s *server
		s = newServer(t, failThen(1, 500, nil, ok(&s)))
		c, _ := s.client(0.5)
		if _, err := c.Submit(context.Background(), "fal-ai/flux", nil, ""); !errors.Is(err, ErrServerError) || s.Calls() != 1 {
			t.Errorf("error %v after %d calls, want ErrServerError after 1", err, s.Calls())
		}
	})
	t.Run("error type marks the answer final", func(t *testing.T) {
		var s *server
		s = newServer(t, failThen(1, 503, http.Header{"X-Fal-Error-Type": {"runner_scheduling_failure"}}, ok(&s)))
		c, _ := s.client(0.5)
		_, err := c.Submit(context.Background(), "fal-ai/flux", nil, "")
		var ae *APIError
		if !errors.As(err, &ae) || ae.ErrorType != "runner_scheduling_failure" || s.Calls() != 1 {
			t.Errorf("error %v after %d calls, want an *APIError with the error type after 1", err, s.Calls())
		}
	})
}

func TestRetryAfter(t *testing.T) {
	// The server's clock is an hour ahead of the client's (testClock reads
	// 12:00): a Retry-After date counts from the answer's Date.
	date := time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		header     http.Header
		op         Op
		wantSleeps []time.Duration // nil: no retry
		wantRA     time.Duration   // when not retried
	}{
		{name: "seconds above the backoff", header: http.Header{"Retry-After": {"7"}}, op: OpStatus, wantSleeps: secs(7)},
		{name: "seconds below the backoff", header: http.Header{"Retry-After": {"0"}}, op: OpStatus, wantSleeps: secs(1)},
		{name: "date, against the answer's Date", header: http.Header{"Retry-After": {date.Add(12 * time.Second).Format(http.TimeFormat)}, "Date": {date.Format(http.TimeFormat)}}, op: OpResult, wantSleeps: secs(12)},
		{name: "date in the past", header: http.Header{"Retry-After": {date.Add(-time.Hour).Format(http.TimeFormat)}, "Date": {date.Format(http.TimeFormat)}}, op: OpStatus, wantSleeps: secs(1)},
		{name: "at the cap", header: http.Header{"Retry-After": {"30"}}, op: OpStatus, wantSleeps: secs(30)},
		{name: "malformed is ignored", header: http.Header{"Retry-After": {"soon"}}, op: OpStatus, wantSleeps: secs(1)},
		{name: "negative is ignored", header: http.Header{"Retry-After": {"-5"}}, op: OpStatus, wantSleeps: secs(1)},
		{name: "over the cap ends the retries", header: http.Header{"Retry-After": {"31"}}, op: OpStatus, wantRA: 31 * time.Second},
		{name: "huge", header: http.Header{"Retry-After": {"99999999999999999999999"}}, op: OpResult, wantRA: 1<<63 - 1},
		{name: "submit's cap is 60 s", header: http.Header{"Retry-After": {"60"}}, op: OpSubmit, wantSleeps: secs(60)},
		{name: "submit over its cap", header: http.Header{"Retry-After": {"61"}}, op: OpSubmit, wantRA: 61 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s *server
			s = newServer(t, failThen(1, 429, tt.header, func(w http.ResponseWriter, r *http.Request) {
				if tt.op == OpSubmit {
					writeJSON(w, 200, submitAnswerFor(s.URL, "r"))
					return
				}
				writeJSON(w, 200, `{"status":"COMPLETED"}`)
			}))
			c, clk := s.client(0.5)
			var err error
			switch tt.op {
			case OpSubmit:
				_, err = c.Submit(context.Background(), "fal-ai/flux", nil, "")
			case OpStatus:
				_, err = c.Status(context.Background(), s.request("r"))
			case OpResult:
				_, err = c.Result(context.Background(), s.request("r"))
			}
			if tt.wantSleeps != nil {
				if err != nil {
					t.Fatal(err)
				}
				if got := clk.Sleeps(); !equalDurations(got, tt.wantSleeps) {
					t.Errorf("waits %v, want %v", got, tt.wantSleeps)
				}
				return
			}
			var ae *APIError
			if !errors.As(err, &ae) || !errors.Is(err, ErrRateLimited) || ae.RetryAfter != tt.wantRA {
				t.Fatalf("error %v, want ErrRateLimited with RetryAfter %v", err, tt.wantRA)
			}
			if s.Calls() != 1 || len(clk.Sleeps()) != 0 {
				t.Errorf("%d calls, %d waits; want 1 and none", s.Calls(), len(clk.Sleeps()))
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"  ", 0, false},
		{"0", 0, true},
		{" 120 ", 2 * time.Minute, true},
		{"007", 7 * time.Second, true},
		{"9223372036", 9223372036 * time.Second, true},
		{"9223372037", 1<<63 - 1, true},
		{"1.5", 0, false},
		{"+5", 0, false},
		{"-5", 0, false},
		{"5s", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second, true},
		{now.Add(90 * time.Second).Format(time.ANSIC), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"Sun, 99 Foo 2026", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.v, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.v, got, ok, tt.want, tt.ok)
		}
	}
}

// hangUp returns a handler that closes the connection without answering.
func hangUp(w http.ResponseWriter, r *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestNetworkErrorsRetriedForIdempotentCalls(t *testing.T) {
	for _, op := range []Op{OpStatus, OpResult, OpCancel} {
		t.Run(string(op), func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
				if n < 2 {
					hangUp(w, r)
					return
				}
				writeJSON(w, 200, `{"status":"COMPLETED"}`)
			})
			c, clk := s.client(0.5)
			var err error
			switch op {
			case OpStatus:
				_, err = c.Status(context.Background(), s.request("r"))
			case OpResult:
				_, err = c.Result(context.Background(), s.request("r"))
			case OpCancel:
				err = c.Cancel(context.Background(), s.request("r"))
			}
			if err != nil {
				t.Fatalf("after two dropped connections: %v", err)
			}
			if s.Calls() != 3 || len(clk.Sleeps()) != 2 {
				t.Errorf("%d calls, %d waits; want 3 and 2", s.Calls(), len(clk.Sleeps()))
			}
		})
	}
}

func TestSubmitNotRetriedOnceSent(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			hangUp(w, r) // the request arrived: it may have been enqueued
			return
		}
		writeJSON(w, 200, submitAnswerFor(s.URL, "r"))
	})
	c, clk := s.client(0.5)
	_, err := c.Submit(context.Background(), "fal-ai/flux", nil, "")
	if err == nil {
		t.Fatal("a submit whose connection dropped after sending succeeded")
	}
	if s.Calls() != 1 || len(clk.Sleeps()) != 0 {
		t.Errorf("%d calls, %d waits; want 1 and none: a submit that reached fal is never resent", s.Calls(), len(clk.Sleeps()))
	}
}

func TestSubmitRetriedWhenNeverConnected(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: every dial is refused
	clk := newTestClock()
	c := &Client{Key: testKey, BaseURL: "http://" + addr, Clock: clk, jitter: func() float64 { return 0.5 }}
	_, err = c.Submit(context.Background(), "fal-ai/flux", nil, "")
	if err == nil {
		t.Fatal("submit to a closed port succeeded")
	}
	if got, want := clk.Sleeps(), secs(1, 2, 4); !equalDurations(got, want) {
		t.Errorf("waits %v, want %v: a refused connection sent nothing and is retried", got, want)
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Errorf("error %v does not unwrap to the *net.OpError", err)
	}
}

func TestNotSent(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, true},
		{&net.OpError{Op: "proxyconnect", Err: errors.New("refused")}, true},
		{&net.DNSError{Err: "no such host", Name: "queue.fal.run"}, true},
		{&net.OpError{Op: "read", Err: errors.New("reset")}, false},
		{&net.OpError{Op: "write", Err: errors.New("broken pipe")}, false},
		{errors.New("EOF"), false},
	}
	for _, tt := range tests {
		if got := notSent(fmt.Errorf("wrapped: %w", tt.err)); got != tt.want {
			t.Errorf("notSent(%v) = %v, want %v", tt.err, got, tt.want)
		}
		if got := policyFor(OpSubmit).retriesError(&netError{tt.err}); got != tt.want {
			t.Errorf("submit retries %v = %v, want %v", tt.err, got, tt.want)
		}
		if !policyFor(OpStatus).retriesError(&netError{tt.err}) {
			t.Errorf("status does not retry %v", tt.err)
		}
	}
	if policyFor(OpStatus).retriesError(fmt.Errorf("%w", ErrResponseTooLarge)) {
		t.Error("a too large answer is retried")
	}
}

func TestBadCertificateNotRetried(t *testing.T) {
	s := newTLSServer(t)
	clk := newTestClock()
	c := &Client{Key: testKey, BaseURL: s.URL, Clock: clk} // the default client does not trust the test certificate
	_, err := c.Status(context.Background(), &Request{ID: "r", StatusURL: s.URL + "/a/b/requests/r/status"})
	if err == nil {
		t.Fatal("an untrusted certificate was accepted")
	}
	if n := len(clk.Sleeps()); n != 0 {
		t.Errorf("a certificate error was retried %d times", n)
	}
}

func TestContextEndsTheWait(t *testing.T) {
	s := newServer(t, failThen(100, 503, nil, completed))
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{Key: testKey, BaseURL: s.URL, Clock: cancelOnSleep{cancel}}
	_, err := c.Status(ctx, s.request("r"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Errorf("error %v does not carry the last answer", err)
	}
	if s.Calls() != 1 {
		t.Errorf("%d calls after the context ended, want 1", s.Calls())
	}
}

// cancelOnSleep cancels its context when asked to wait, and waits for it.
type cancelOnSleep struct{ cancel context.CancelFunc }

func (c cancelOnSleep) Now() time.Time { return time.Now() }
func (c cancelOnSleep) Sleep(ctx context.Context, d time.Duration) error {
	c.cancel()
	<-ctx.Done()
	return ctx.Err()
}

func TestRealSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (&Client{}).sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("sleep with a cancelled context = %v", err)
	}
	if err := (&Client{}).sleep(context.Background(), 0); err != nil {
		t.Errorf("sleep(0) = %v", err)
	}
}

func TestCancelledContextNotRetried(t *testing.T) {
	s := newServer(t, failThen(100, 503, nil, completed))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	clk := &countingClock{}
	c := &Client{Key: testKey, BaseURL: s.URL, Clock: clk}
	if _, err := c.Status(ctx, s.request("r")); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if clk.n.Load() != 0 {
		t.Errorf("a cancelled call waited to retry %d times", clk.n.Load())
	}
}

// countingClock counts Sleeps and ignores the context, as a careless Clock
// might: the client must not rely on its Clock to stop a cancelled call.
type countingClock struct{ n atomic.Int32 }

func (c *countingClock) Now() time.Time { return time.Now() }
func (c *countingClock) Sleep(context.Context, time.Duration) error {
	c.n.Add(1)
	return nil
}

func TestConcurrentUse(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		switch {
		case r.Method == http.MethodPost:
			writeJSON(w, 200, submitAnswerFor(s.URL, "r"+strconv.Itoa(n)))
		case n%3 == 0:
			writeJSON(w, 503, ``)
		default:
			writeJSON(w, 200, `{"status":"COMPLETED"}`)
		}
	})
	c, _ := s.client(0.5)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := c.Submit(context.Background(), "fal-ai/flux", map[string]int{"i": i}, "")
			if err != nil {
				errs <- err
				return
			}
			if _, err := c.Status(context.Background(), req); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
