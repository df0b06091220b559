package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// e2eConfig configures the e2e command.
type e2eConfig struct {
	concurrency    intList
	warmup         time.Duration // per cell
	warmupRequests int           // per cell, at most
	duration       time.Duration // measured, per cell, at most
	requests       int           // measured, per cell, at most
	rounds         int           // turns each server takes per cell
	bodySize       int
	pin            bool
}

func parseE2E(args []string, stderr io.Writer) (e2eConfig, error) {
	cfg := e2eConfig{concurrency: intList{1, 8, 64}}
	fs := flag.NewFlagSet("e2e", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&cfg.concurrency, "c", "concurrencies, comma-separated")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "warm-up per server and concurrency")
	fs.IntVar(&cfg.warmupRequests, "warmup-requests", 50000, "warm-up requests per server and concurrency, at most")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured time per server and concurrency, at most")
	fs.IntVar(&cfg.requests, "requests", 200000, "measured requests per server and concurrency, at most")
	fs.IntVar(&cfg.rounds, "rounds", 2, "turns each server takes per concurrency, alternating; -duration and -requests are split among them (short turns measure warm-up more than steady state)")
	fs.IntVar(&cfg.bodySize, "body", 1<<10, "body size, bytes (at least 128)")
	fs.BoolVar(&cfg.pin, "pin", true, "pin the servers to CPU 0 and the load generator to CPU 1 with taskset")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("%w: %w", errUsage, err)
	}
	if cfg.rounds < 1 {
		return cfg, fmt.Errorf("%w: -rounds must be at least 1", errUsage)
	}
	if cfg.bodySize < 128 {
		return cfg, fmt.Errorf("%w: -body must be at least 128", errUsage)
	}
	return cfg, nil
}

// cell is the measurement of one server at one concurrency.
type cell struct {
	server      string
	concurrency int
	ok          int // answered 204
	failed      int // any other answer, or an error
	firstErr    string
	elapsed     time.Duration // measuring, summed over the rounds
	p50, p99    time.Duration
	lat         []time.Duration // until finish
}

func (c cell) rate() float64 { return float64(c.ok+c.failed) / c.elapsed.Seconds() }

// e2eReport is what runE2E measured.
type e2eReport struct {
	pinning pinning
	cells   []cell
}

// runE2E runs the e2e command and prints its table to out.
func runE2E(ctx context.Context, cfg e2eConfig, out io.Writer) (e2eReport, error) {
	at := time.Now().Truncate(time.Second)
	rep := e2eReport{pinning: pin(cfg.pin)}
	servers := []string{kindMiddleware, kindFloor}
	children := map[string]*child{}
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for _, kind := range servers {
		c, err := startChild(ctx, serverOptions{kind: kind, at: at.Unix()}, rep.pinning)
		if err != nil {
			return rep, err
		}
		children[kind] = c
	}
	deliveries := signDeliveries(256, cfg.bodySize, at)
	fmt.Fprintf(out, "e2e: %d-byte signed deliveries, POSTed over loopback HTTP/1.1 keep-alive connections\n", cfg.bodySize)
	fmt.Fprintf(out, "%s; server GOMAXPROCS %d; load average %s\n", rep.pinning, children[kindMiddleware].gomaxprocs, loadAverage())
	fmt.Fprintf(out, "each cell: warm-up %s or %d requests, then %s or %d requests, whichever ends first, in %d turns alternating with the other server\n\n",
		cfg.warmup, cfg.warmupRequests, cfg.duration, cfg.requests, cfg.rounds)

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "concurrency\tserver\trequests\treq/s\tp50\tp99\tfailed\t")
	for _, conc := range cfg.concurrency {
		clients := map[string]*http.Client{}
		cells := map[string]*cell{}
		for _, kind := range servers {
			clients[kind] = &http.Client{Transport: &http.Transport{
				MaxIdleConns: conc, MaxIdleConnsPerHost: conc, DisableCompression: true, IdleConnTimeout: time.Minute,
			}}
			cells[kind] = &cell{server: kind, concurrency: conc}
			_ = load(ctx, clients[kind], children[kind].url(), deliveries, conc, cfg.warmup, cfg.warmupRequests)
		}
		// The servers take turns, in alternating order, so that the
		// drift of a shared machine hits both alike.
		for r := range cfg.rounds {
			order := servers
			if r%2 == 1 {
				order = []string{servers[1], servers[0]}
			}
			for _, kind := range order {
				d := (cfg.duration + time.Duration(cfg.rounds) - 1) / time.Duration(cfg.rounds)
				n := (cfg.requests + cfg.rounds - 1) / cfg.rounds
				cells[kind].add(load(ctx, clients[kind], children[kind].url(), deliveries, conc, d, n))
			}
		}
		for _, kind := range servers {
			clients[kind].CloseIdleConnections()
			c := cells[kind]
			c.finish()
			rep.cells = append(rep.cells, *c)
			fmt.Fprintf(tw, "%d\t%s\t%d\t%.0f\t%s\t%s\t%d\t\n", conc, kind, c.ok+c.failed, c.rate(), durationMS(c.p50), durationMS(c.p99), c.failed)
		}
		if ctx.Err() != nil {
			_ = tw.Flush()
			return rep, ctx.Err()
		}
	}
	if err := tw.Flush(); err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "\nload average %s\n", loadAverage())
	for _, conc := range cfg.concurrency {
		var mw, floor cell
		for _, c := range rep.cells {
			if c.concurrency == conc {
				if c.server == kindMiddleware {
					mw = c
				} else {
					floor = c
				}
			}
		}
		fmt.Fprintf(out, "concurrency %d: middleware/floor req/s = %.2f×\n", conc, mw.rate()/floor.rate())
	}
	for _, c := range rep.cells {
		if c.failed > 0 {
			return rep, fmt.Errorf("%s at concurrency %d: %d of %d requests failed, the first: %s", c.server, c.concurrency, c.failed, c.ok+c.failed, c.firstErr)
		}
	}
	return rep, nil
}

// delivery is a signed request to send.
type delivery struct {
	header http.Header
	body   []byte
}

// signDeliveries returns n distinct deliveries of size-byte bodies signed
// at at.
func signDeliveries(n, size int, at time.Time) []delivery {
	s := signer()
	out := make([]delivery, n)
	for i := range out {
		id := fmt.Sprintf("loadtest-%08d", i)
		head := `{"error": null, "gateway_request_id": "` + id + `", "payload": {"pad": "`
		tail := `"}, "request_id": "` + id + `", "status": "OK"}`
		body := []byte(head + string(bytes.Repeat([]byte("x"), max(size-len(head)-len(tail), 0))) + tail)
		h := http.Header{"Content-Type": {"application/json"}}
		s.Sign(faltest.Delivery{RequestID: id, Time: at, Body: body}).Set(h)
		out[i] = delivery{header: h, body: body}
	}
	return out
}

// sample is what one run of load measured.
type sample struct {
	lat      []time.Duration // of every answered request
	failed   int             // requests not answered as expected, among lat
	firstErr string
	elapsed  time.Duration
}

// add adds s to c.
func (c *cell) add(s sample) {
	c.lat = append(c.lat, s.lat...)
	c.failed += s.failed
	c.elapsed += s.elapsed
	if c.firstErr == "" {
		c.firstErr = s.firstErr
	}
}

// finish computes c's counts and percentiles once every sample is in.
func (c *cell) finish() {
	c.ok = len(c.lat) - c.failed
	slices.Sort(c.lat)
	if len(c.lat) > 0 {
		c.p50, c.p99 = c.lat[len(c.lat)*50/100], c.lat[min(len(c.lat)*99/100, len(c.lat)-1)]
	}
	c.lat = nil
}

// load sends deliveries to url from conc goroutines until d has passed or
// n requests were sent, and measures them. Requests cut by the time limit
// are not counted.
func load(ctx context.Context, client *http.Client, url string, deliveries []delivery, conc int, d time.Duration, n int) sample {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		next atomic.Int64
		mu   sync.Mutex
		s    sample
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1024)
			myFailed, myErr := 0, ""
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					break
				}
				dv := deliveries[i%int64(len(deliveries))]
				t0 := time.Now()
				err := post(ctx, client, url, dv, http.StatusNoContent)
				if ctx.Err() != nil {
					break
				}
				mine = append(mine, time.Since(t0))
				if err != nil {
					if myFailed++; myErr == "" {
						myErr = err.Error()
					}
				}
			}
			mu.Lock()
			s.lat = append(s.lat, mine...)
			s.failed += myFailed
			if s.firstErr == "" {
				s.firstErr = myErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.elapsed = time.Since(start)
	return s
}

// post sends one delivery and reads the whole answer, failing unless its
// status is want.
func post(ctx context.Context, client *http.Client, url string, dv delivery, want int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(dv.body))
	if err != nil {
		return err
	}
	req.Header = dv.header
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != want {
		return &statusError{got: resp.StatusCode, want: want}
	}
	return nil
}

// statusError is an answer with another status than the one expected.
type statusError struct{ got, want int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d, want %d", e.got, e.want) }
