package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// floodConfig configures the flood command.
type floodConfig struct {
	clients            int
	forgedPerClient    int
	forgedSize         sizeFlag
	genuine            int
	genuineConcurrency int
	duration           time.Duration
	budget             sizeFlag // 0: the Verifier's default
	maxBody            sizeFlag // 0: the Verifier's default
	pin                bool
	profile            string // the server's CPU profile
}

func parseFlood(args []string, stderr io.Writer) (floodConfig, error) {
	cfg := floodConfig{forgedSize: 25 << 20}
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.clients, "clients", 64, "concurrent clients sending forged bodies")
	fs.IntVar(&cfg.forgedPerClient, "forged-per-client", 1000, "forged deliveries per client, at most")
	fs.Var(&cfg.forgedSize, "forged-size", "size of each forged body (such as 25MiB)")
	fs.IntVar(&cfg.genuine, "genuine", 2000, "genuine 1 KiB deliveries")
	fs.IntVar(&cfg.genuineConcurrency, "genuine-concurrency", 4, "genuine deliveries in flight at once")
	fs.DurationVar(&cfg.duration, "duration", 3*time.Minute, "time limit of the whole flood")
	fs.Var(&cfg.budget, "budget", "the server's WithBodyBudget (such as 2MiB); 0: the default")
	fs.Var(&cfg.maxBody, "max-body", "the server's WithMaxBodySize (such as 1MiB); 0: the default")
	fs.BoolVar(&cfg.pin, "pin", true, "pin the server to CPU 0 and the load generator to CPU 1 with taskset")
	fs.StringVar(&cfg.profile, "server-cpuprofile", "", "write the server's CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("%w: %w", errUsage, err)
	}
	if cfg.clients < 0 || cfg.forgedPerClient < 0 || cfg.genuine < 0 || cfg.genuineConcurrency < 1 {
		return cfg, fmt.Errorf("%w: counts must not be negative, -genuine-concurrency at least 1", errUsage)
	}
	return cfg, nil
}

// floodReport is what runFlood measured.
type floodReport struct {
	pinning      pinning
	peakRSS      int64 // the server's VmHWM, bytes; 0 when unknown
	rssErr       error
	genuine      outcomes
	genuineP50   time.Duration
	genuineP99   time.Duration
	forged       outcomes
	elapsed      time.Duration
	timedOut     bool
	serverCPU    time.Duration // user and system
	generatorCPU time.Duration // user and system, of this process
}

// outcomes counts answers by status ("200", "503", ...) or by error
// ("connection closed", "timeout", "error").
type outcomes struct {
	mu     sync.Mutex
	counts map[string]int
	total  int
	sample map[string]string // one error text per kind
}

func (o *outcomes) add(kind, detail string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.counts == nil {
		o.counts, o.sample = map[string]int{}, map[string]string{}
	}
	o.counts[kind]++
	o.total++
	if _, ok := o.sample[kind]; !ok && detail != "" {
		o.sample[kind] = detail
	}
}

func (o *outcomes) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	keys := make([]string, 0, len(o.counts))
	for k := range o.counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s := ""
	for _, k := range keys {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s %d (%.1f%%)", k, o.counts[k], 100*float64(o.counts[k])/float64(max(o.total, 1)))
	}
	return s
}

// runFlood runs the flood command and prints its findings to out.
func runFlood(ctx context.Context, cfg floodConfig, out io.Writer) (*floodReport, error) {
	at := time.Now().Truncate(time.Second)
	rep := &floodReport{pinning: pin(cfg.pin)}
	srv, err := startChild(ctx, serverOptions{kind: kindFlood, at: at.Unix(), budget: int64(cfg.budget), maxBody: int64(cfg.maxBody), profile: cfg.profile}, rep.pinning)
	if err != nil {
		return rep, err
	}
	defer srv.stop()
	url := srv.url()
	fmt.Fprintf(out, "flood: %d clients × up to %d forged %s bodies (half with Content-Length, half chunked), %d genuine 1 KiB deliveries %d at a time\n",
		cfg.clients, cfg.forgedPerClient, mib(int64(cfg.forgedSize)), cfg.genuine, cfg.genuineConcurrency)
	fmt.Fprintf(out, "server: default options (static keys, fixed clock)%s; %s; server GOMAXPROCS %d\n",
		overrides(cfg), rep.pinning, srv.gomaxprocs)

	ctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	genDone := make(chan struct{}) // closed when the genuine stream is done
	start, cpu0 := time.Now(), selfCPUTime()

	// Each client sends forged deliveries until the genuine stream is
	// done (at least one each), its quota is sent, or time is up.
	var wg sync.WaitGroup
	forgedClient := &http.Client{Transport: &http.Transport{MaxIdleConns: cfg.clients, MaxIdleConnsPerHost: max(cfg.clients, 1), DisableCompression: true}}
	for c := range cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < cfg.forgedPerClient && ctx.Err() == nil; i++ {
				if i > 0 && isClosed(genDone) {
					return
				}
				chunked := (c+i)%2 == 1
				kind, detail := sendForged(ctx, forgedClient, url, at, int64(cfg.forgedSize), chunked)
				if ctx.Err() != nil && kind != "200" && kind != "401" && kind != "503" {
					return // cut by -duration: not counted
				}
				rep.forged.add(kind, detail)
			}
		}()
	}

	// The genuine stream, with its own connections.
	genuineClient := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.genuineConcurrency, DisableCompression: true},
		Timeout:   15 * time.Second, // fal's timeout for a delivery
	}
	deliveries := signDeliveries(cfg.genuine, 1<<10, at)
	var (
		next  atomic.Int64
		latMu sync.Mutex
		lat   []time.Duration
		genWG sync.WaitGroup
	)
	for range cfg.genuineConcurrency {
		genWG.Add(1)
		go func() {
			defer genWG.Done()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(deliveries)) {
					return
				}
				t0 := time.Now()
				kind, detail := classify(postStatus(ctx, genuineClient, url, deliveries[i]))
				d := time.Since(t0)
				if ctx.Err() != nil && kind == "timeout" {
					return // cut by -duration: not counted
				}
				rep.genuine.add(kind, detail)
				latMu.Lock()
				lat = append(lat, d)
				latMu.Unlock()
			}
		}()
	}
	go func() {
		genWG.Wait()
		close(genDone)
	}()
	<-genDone
	wg.Wait()
	rep.timedOut = ctx.Err() != nil
	rep.elapsed = time.Since(start)
	rep.peakRSS, rep.rssErr = srv.peakRSS()
	srv.stop()
	rep.serverCPU, rep.generatorCPU = srv.cpuTime(), selfCPUTime()-cpu0

	slices.Sort(lat)
	if len(lat) > 0 {
		rep.genuineP50, rep.genuineP99 = lat[len(lat)*50/100], lat[min(len(lat)*99/100, len(lat)-1)]
	}
	ok := rep.genuine.counts["200"]
	fmt.Fprintf(out, "\nran %s%s; CPU time: server %s, load generator %s; load average %s\n", rep.elapsed.Round(time.Millisecond),
		map[bool]string{true: " (stopped by -duration before every genuine delivery was sent)"}[rep.timedOut],
		rep.serverCPU.Round(time.Millisecond), rep.generatorCPU.Round(time.Millisecond), loadAverage())
	if rep.rssErr != nil {
		fmt.Fprintf(out, "server peak RSS: unknown (%v)\n", rep.rssErr)
	} else {
		fmt.Fprintf(out, "server peak RSS (VmHWM): %s\n", mib(rep.peakRSS))
	}
	fmt.Fprintf(out, "genuine: %d of %d sent; %d answered 200 (%.2f%%); p50 %s, p99 %s; all answers: %s\n",
		rep.genuine.total, cfg.genuine, ok, 100*float64(ok)/float64(max(rep.genuine.total, 1)),
		durationMS(rep.genuineP50), durationMS(rep.genuineP99), &rep.genuine)
	fmt.Fprintf(out, "forged: %d sent: %s\n", rep.forged.total, &rep.forged)
	for _, o := range []*outcomes{&rep.genuine, &rep.forged} {
		for k, v := range o.sample {
			fmt.Fprintf(out, "  e.g. %s: %s\n", k, v)
		}
	}
	return rep, nil
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// overrides describes the flags that change the server's defaults.
func overrides(cfg floodConfig) string {
	s := ""
	if cfg.budget > 0 {
		s += ", WithBodyBudget(" + mib(int64(cfg.budget)) + ")"
	}
	if cfg.maxBody > 0 {
		s += ", WithMaxBodySize(" + mib(int64(cfg.maxBody)) + ")"
	}
	return s
}

// sendForged sends one forged delivery with a size-byte body generated as
// it goes, and classifies the outcome.
func sendForged(ctx context.Context, client *http.Client, url string, at time.Time, size int64, chunked bool) (kind, detail string) {
	var sig [64]byte
	_, _ = rand.Read(sig[:])
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &patternReader{left: size})
	if err != nil {
		return "error", err.Error()
	}
	req.ContentLength = size
	if chunked {
		req.ContentLength = 0 // with a Body: unknown, sent chunked
	}
	h := faltest.Headers{
		RequestID: "forged-" + hex.EncodeToString(sig[:8]),
		UserID:    faltest.DefaultUserID,
		Timestamp: strconv.FormatInt(at.Unix(), 10),
		Signature: hex.EncodeToString(sig[:]),
	}
	req.Header = http.Header{"Content-Type": {"application/json"}}
	h.Set(req.Header)
	resp, err := client.Do(req)
	if err != nil {
		return classify(0, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return classify(resp.StatusCode, nil)
}

// postStatus sends one delivery and returns the answer's status.
func postStatus(ctx context.Context, client *http.Client, url string, dv delivery) (int, error) {
	err := post(ctx, client, url, dv, http.StatusOK)
	var se *statusError
	if errors.As(err, &se) {
		return se.got, nil
	}
	if err != nil {
		return 0, err
	}
	return http.StatusOK, nil
}

// classify names an outcome: the status, or the kind of error.
func classify(status int, err error) (kind, detail string) {
	switch {
	case err == nil:
		return strconv.Itoa(status), ""
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return "timeout", err.Error()
	}
	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		return "timeout", err.Error()
	}
	return "connection closed", err.Error()
}

// patternReader generates a body of left bytes without holding it.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(int64(len(b)), p.left)], pattern)
	p.left -= int64(n)
	return n, nil
}

// pattern is what forged bodies are made of.
var pattern = bytes.Repeat([]byte("x"), 32<<10)
