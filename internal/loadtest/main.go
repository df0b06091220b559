// Command loadtest measures falwebhook end to end, over loopback HTTP,
// against servers running in child processes of its own.
//
// Usage:
//
//	go run ./internal/loadtest e2e [flags]
//	go run ./internal/loadtest flood [flags]
//
// e2e compares the throughput and latency of two servers answering signed
// 1 KiB deliveries (-body): the middleware (a Verifier with static keys
// around a handler answering 204) and the floor, a plain handler that reads
// the body, hashes it with crypto/sha256, builds the signed message and
// checks the signature with crypto/ed25519.Verify. Each runs in its own
// child process; a keep-alive load generator (an http.Transport per server
// keeping as many idle connections as there are clients) drives it at each
// concurrency (-c, default 1,8,64): first a warm-up (-warmup, default 1s,
// or -warmup-requests, default 50000), then -duration (default 10s) or
// -requests requests (default 200000), whichever ends first, split into
// -rounds turns (default 2) that alternate between the two servers so that
// the drift of a shared machine hits both alike. It prints requests per
// second, the median and 99th percentile latency of each server at each
// concurrency, and the ratio of the middleware's requests per second over
// the floor's.
//
// flood measures a server's memory under a flood of forged large bodies.
// The server runs the middleware with default options (static keys and a
// fixed clock only: a 25 MiB body limit and a 64 MiB budget of body bytes
// not yet verified; -max-body and -budget change them) in a child process,
// so that its peak resident set size (VmHWM in /proc/<pid>/status) is its
// own. -clients clients (default 64) each send forged deliveries with
// well-formed headers, a current timestamp and a random signature, and a
// -forged-size body (default 25 MiB) generated as it is sent, half with a
// Content-Length and half chunked. Meanwhile -genuine genuine 1 KiB
// deliveries (default 2000) are sent -genuine-concurrency at a time
// (default 4), each with fal's 15 s timeout. Each client stops after
// -forged-per-client deliveries (default 1000) or, once it sent one, when
// the genuine deliveries are done; the whole flood stops after -duration
// (default 3m) in any case. It prints the server's peak RSS, the share of
// genuine deliveries answered 200 and the answers to the forged ones: 503
// (the budget is used up), 401 (read whole, signature checked) or the
// connection closed under the client. -server-cpuprofile writes the
// server's CPU profile.
//
// Deliveries are signed with faltest.SignerFromName("loadtest") at a fixed
// time, given to the servers (WithClock), so that timestamps never expire.
// When taskset is on PATH and the machine has two CPUs or more, the servers
// run on CPU 0 and the load generator on CPU 1 (with GOMAXPROCS 1); the
// output says whether they were pinned (-pin=false turns pinning off), and
// the machine's load average, since other processes share those CPUs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serveCommand is the hidden command a child process runs to serve.
const serveCommand = "serve"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: loadtest e2e|flood [flags]")

// run runs the command named by args[0].
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "e2e":
		cfg, err := parseE2E(args[1:], stderr)
		if err != nil {
			return err
		}
		_, err = runE2E(ctx, cfg, stdout)
		return err
	case "flood":
		cfg, err := parseFlood(args[1:], stderr)
		if err != nil {
			return err
		}
		_, err = runFlood(ctx, cfg, stdout)
		return err
	case serveCommand:
		return serve(ctx, args[1:], stdout)
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

// intList is a flag of comma-separated positive integers.
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, n := range *l {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	*l = out
	return nil
}

// sizeFlag is a flag of a byte count, such as 1024, 64KiB or 25MiB.
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(v string) error {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a byte count", v)
	}
	*s = sizeFlag(n * mult)
	return nil
}

// mib formats n bytes in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// durationMS formats d in milliseconds with three significant decimals.
func durationMS(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}
