package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// BenchmarkGateway measures, in one run, the deliveries per second of three
// servers, each in a child process: the library alone (a Verifier's
// Middleware around a handler answering 200), listen without --forward,
// and listen --forward in front of a trivial app (another child). listen
// runs with --no-dedupe, so that the same 256 signed deliveries can be sent
// again and again. Deliveries are sent 8 at a time over keep-alive
// connections; an op is one delivery to each server, and the servers take
// turns, in alternating order, so that the drift of a shared machine hits
// them alike. It reports each server's deliveries/s and listen's and
// listen --forward's as ratios to the library's, and how many connections
// the app accepted per forwarded delivery (near 0 when the proxy reuses
// its connections).
//
// When taskset is on PATH and there are two CPUs or more, the servers and
// the app run on CPU 0 and this process (with GOMAXPROCS 1) on CPU 1, for
// the rest of the run; so run it alone:
//
//	go test -run '^$' -bench Gateway -benchtime 20000x
func BenchmarkGateway(b *testing.B) {
	bn := benchServers(b)
	const conc = 8
	kinds := []string{"library", "listen", "forward"}
	elapsed := map[string]time.Duration{}
	connsBefore := bn.appConns(b)
	for round := range 2 {
		order := kinds
		if round == 1 {
			order = []string{kinds[2], kinds[1], kinds[0]}
		}
		n := b.N / 2
		if round == 1 {
			n = b.N - b.N/2
		}
		for _, kind := range order {
			d, err := bn.load(bn.urls[kind], conc, n)
			if err != nil {
				b.Fatalf("%s: %v", kind, err)
			}
			elapsed[kind] += d
		}
	}
	b.ReportMetric(float64(bn.appConns(b)-connsBefore)/float64(b.N), "app-conns/forward")
	rate := func(kind string) float64 { return float64(b.N) / elapsed[kind].Seconds() }
	b.ReportMetric(rate("library"), "library-deliveries/s")
	b.ReportMetric(rate("listen"), "listen-deliveries/s")
	b.ReportMetric(rate("forward"), "forward-deliveries/s")
	b.ReportMetric(rate("listen")/rate("library"), "listen/library")
	b.ReportMetric(rate("forward")/rate("library"), "forward/library")
}

// benchChildEnv names, in a child's environment, what the child serves:
// benchLibrary, benchApp or benchListen.
const benchChildEnv = "FALWEBHOOK_BENCH_CHILD"

const (
	benchLibrary = "library"
	benchApp     = "app"
	benchListen  = "listen"
)

// gatewayBench is BenchmarkGateway's servers, started once for every b.N
// and stopped when the tests end (stopBenchServers).
type gatewayBench struct {
	urls       map[string]string // by kind: library, listen, forward
	app        string            // the app's base URL
	deliveries []benchDelivery
	client     *http.Client
	children   []*exec.Cmd
	stdins     []io.WriteCloser // kept open: a child ends when its stdin closes
	pinned     string
}

type benchDelivery struct {
	header http.Header
	body   []byte
}

var (
	benchOnce sync.Once
	bench     *gatewayBench
	benchErr  error
)

func benchServers(b *testing.B) *gatewayBench {
	b.Helper()
	benchOnce.Do(func() { bench, benchErr = startBenchServers() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	b.Logf("%s", bench.pinned)
	return bench
}

// startBenchServers starts the library, the app, and listen twice, in
// child processes of this test binary.
func startBenchServers() (*gatewayBench, error) {
	bn := &gatewayBench{urls: map[string]string{}, pinned: "not pinned"}
	taskset := ""
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() >= 2 {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err == nil {
			runtime.GOMAXPROCS(1)
			taskset = "0"
			bn.pinned = "pinned with taskset: servers and app on CPU 0, load generator on CPU 1"
		} else {
			bn.pinned = "not pinned: taskset: " + strings.TrimSpace(string(out))
		}
	}
	dir, err := os.MkdirTemp("", "falwebhook-bench")
	if err != nil {
		return nil, err
	}
	signer := faltest.SignerFromName("gateway bench")
	jwks := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwks, faltest.JWKS(signer), 0o644); err != nil {
		return nil, err
	}
	start := func(kind string, args ...string) (string, error) {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		name := exe
		if taskset != "" {
			name, args = "taskset", append([]string{"-c", taskset, exe}, args...)
		}
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), benchChildEnv+"="+kind, "FALWEBHOOK_BENCH_JWKS="+jwks)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return "", err
		}
		stdin, err := cmd.StdinPipe() // closed when this process exits
		if err != nil {
			return "", err
		}
		bn.stdins = append(bn.stdins, stdin)
		if err := cmd.Start(); err != nil {
			return "", err
		}
		bn.children = append(bn.children, cmd)
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() {
			return "", fmt.Errorf("the %s child said nothing", kind)
		}
		first := sc.Text()
		go func() { _, _ = io.Copy(io.Discard, stdout) }() // listen's delivery lines
		u, ok := strings.CutPrefix(first, "listening on ")
		if !ok {
			return "", fmt.Errorf("the %s child said %q", kind, first)
		}
		return u, nil
	}
	fail := func(err error) (*gatewayBench, error) {
		stopBenchServers()
		return nil, err
	}
	bench = bn // for stopBenchServers
	lib, err := start(benchLibrary)
	if err != nil {
		return fail(err)
	}
	app, err := start(benchApp)
	if err != nil {
		return fail(err)
	}
	listenArgs := []string{"listen", "--addr", "127.0.0.1:0", "--admin-addr", "", "--jwks", jwks, "--user-id", faltest.DefaultUserID, "--no-dedupe"}
	plain, err := start(benchListen, listenArgs...)
	if err != nil {
		return fail(err)
	}
	fwd, err := start(benchListen, append(listenArgs, "--forward", app+"/hook")...)
	if err != nil {
		return fail(err)
	}
	bn.app = app
	bn.urls["library"], bn.urls["listen"], bn.urls["forward"] = lib+"/fal/webhook", plain+"/fal/webhook", fwd+"/fal/webhook"
	now := time.Now()
	for i := range 256 {
		id := fmt.Sprintf("bench-%08d", i)
		body := faltest.OKBody(id, []byte(`{"images": [{"url": "https://example.com/a.png"}], "seed": 42}`))
		h := http.Header{"Content-Type": {"application/json"}}
		signer.Sign(faltest.Delivery{RequestID: id, Time: now, Body: body}).Set(h)
		bn.deliveries = append(bn.deliveries, benchDelivery{h, body})
	}
	bn.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	return bn, nil
}

// stopBenchServers ends the children BenchmarkGateway started, if any.
func stopBenchServers() {
	if bench == nil {
		return
	}
	for _, in := range bench.stdins {
		_ = in.Close() // the children stop serving and exit
	}
	for _, c := range bench.children {
		t := time.AfterFunc(5*time.Second, func() { _ = c.Process.Kill() })
		_ = c.Wait()
		t.Stop()
	}
}

// load sends n deliveries to url, conc at a time, and returns how long
// they took.
func (bn *gatewayBench) load(url string, conc, n int) (time.Duration, error) {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				dv := bn.deliveries[i%int64(len(bn.deliveries))]
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(dv.body))
				req.Header = dv.header
				resp, err := bn.client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("answered %d, want 200", resp.StatusCode)
					}
				}
				if err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), first
}

// appConns counts the connections the app child accepted.
var appConns atomic.Int64

// appConns returns how many connections the app has accepted.
func (bn *gatewayBench) appConns(b *testing.B) int64 {
	b.Helper()
	resp, err := bn.client.Get(bn.app + "/conns")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n, err := strconv.ParseInt(string(body), 10, 64)
	if err != nil {
		b.Fatalf("the app's count of connections: %q", body)
	}
	return n
}

// serveBenchChild is a child process of BenchmarkGateway: it serves kind
// until its stdin closes.
func serveBenchChild(kind string, args []string) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // returns when the parent exits
		cancel()
	}()
	if kind == benchListen {
		if path := os.Getenv("FALWEBHOOK_BENCH_CPUPROFILE"); path != "" && slices.Contains(args, "--forward") {
			if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
		return run(ctx, args, strings.NewReader(""), os.Stdout, os.Stderr)
	}
	var h http.Handler
	switch kind {
	case benchLibrary:
		keys, err := loadJWKSFile(os.Getenv("FALWEBHOOK_BENCH_JWKS"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(keys...)), falwebhook.WithUserIDs(faltest.DefaultUserID))
		h = v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
		}))
	case benchApp:
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/conns" {
				fmt.Fprint(w, appConns.Load())
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusOK)
		})
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", benchChildEnv, kind)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				appConns.Add(1)
			}
		}}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Printf("listening on http://%s\n", ln.Addr())
	_ = srv.Serve(ln)
	return 0
}
