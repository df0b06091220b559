package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/falwebhook/falwebhook"
	"github.com/falwebhook/falwebhook/faltest"
)

// signer signs every delivery; the servers derive its public key the same
// way.
func signer() *faltest.Signer { return faltest.SignerFromName("loadtest") }

// The kinds of server a child runs.
const (
	kindMiddleware = "middleware" // Verifier.Middleware around a 204 handler
	kindFloor      = "floor"      // sha256 + crypto/ed25519.Verify by hand, then 204
	kindFlood      = "flood"      // Verifier.Middleware with default limits around a 200 handler
)

// serverOptions is what a child server is started with.
type serverOptions struct {
	kind    string
	at      int64  // the fixed clock, Unix seconds
	budget  int64  // WithBodyBudget; 0: the default
	maxBody int64  // WithMaxBodySize; 0: the default
	profile string // a file for the server's CPU profile, if any
}

func (o serverOptions) args() []string {
	return []string{serveCommand, "-kind", o.kind, "-time", strconv.FormatInt(o.at, 10),
		"-budget", strconv.FormatInt(o.budget, 10), "-max-body", strconv.FormatInt(o.maxBody, 10),
		"-cpuprofile", o.profile}
}

// serve is the child: it listens on a loopback port, writes "listening
// <addr> <GOMAXPROCS>" to stdout, and serves until ctx ends or its stdin
// closes (the parent went away).
func serve(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(serveCommand, flag.ContinueOnError)
	var o serverOptions
	fs.StringVar(&o.kind, "kind", kindMiddleware, "middleware, floor or flood")
	fs.Int64Var(&o.at, "time", 0, "the servers' clock, Unix seconds")
	fs.Int64Var(&o.budget, "budget", 0, "WithBodyBudget, bytes; 0: default")
	fs.Int64Var(&o.maxBody, "max-body", 0, "WithMaxBodySize, bytes; 0: default")
	fs.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.profile != "" {
		f, err := os.Create(o.profile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	h, err := handler(o)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // returns when the parent closes it or exits
		cancel()
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Fprintf(stdout, "listening %s %d\n", ln.Addr(), runtime.GOMAXPROCS(0))
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// handler returns the server the options describe.
func handler(o serverOptions) (http.Handler, error) {
	pub := signer().PublicKey()
	at := time.Unix(o.at, 0)
	clock := falwebhook.WithClock(func() time.Time { return at })
	switch o.kind {
	case kindMiddleware:
		v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(pub)), clock)
		return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNoContent)
		})), nil
	case kindFlood:
		v := falwebhook.NewVerifier(falwebhook.WithKeys(falwebhook.StaticKeys(pub)), clock,
			falwebhook.WithBodyBudget(o.budget), falwebhook.WithMaxBodySize(o.maxBody))
		return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusOK)
		})), nil
	case kindFloor:
		return floorHandler(pub), nil
	}
	return nil, fmt.Errorf("unknown server kind %q", o.kind)
}

// floorHandler is the plain verifier a user could write with the standard
// library: read the body, hash it, build the message, check the signature.
func floorHandler(pub ed25519.PublicKey) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 25<<20))
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		msg := r.Header.Get(falwebhook.HeaderRequestID) + "\n" + r.Header.Get(falwebhook.HeaderUserID) + "\n" +
			r.Header.Get(falwebhook.HeaderTimestamp) + "\n" + hex.EncodeToString(sum[:])
		sig, err := hex.DecodeString(r.Header.Get(falwebhook.HeaderSignature))
		if err != nil || len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, []byte(msg), sig) {
			http.Error(w, "forged", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// child is a server running in a child process.
type child struct {
	cmd        *exec.Cmd
	stdin      io.Closer
	addr       string // host:port
	gomaxprocs int
	waitOnce   sync.Once
	waitErr    error
}

// pinning says how processes are placed on CPUs.
type pinning struct {
	on     bool
	reason string // why not, when off
}

func (p pinning) String() string {
	if p.on {
		return "pinned with taskset: servers on CPU 0, load generator on CPU 1"
	}
	return "not pinned (" + p.reason + ")"
}

// pin pins this process, the load generator, to CPU 1 when it can and
// want says so; servers started afterwards go to CPU 0.
func pin(want bool) pinning {
	switch {
	case !want:
		return pinning{reason: "-pin=false"}
	case runtime.NumCPU() < 2:
		return pinning{reason: "fewer than 2 CPUs"}
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return pinning{reason: "taskset not on PATH"}
	}
	out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return pinning{reason: fmt.Sprintf("taskset failed: %v: %s", err, strings.TrimSpace(string(out)))}
	}
	runtime.GOMAXPROCS(1)
	return pinning{on: true}
}

// startChild starts a server in a child process of this executable, on
// CPU 0 when p is on, and waits until it listens.
func startChild(ctx context.Context, o serverOptions, p pinning) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	name, args := exe, o.args()
	if p.on {
		name, args = "taskset", append([]string{"-c", "0", exe}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s server: %w", o.kind, err)
	}
	c := &child{cmd: cmd, stdin: stdin}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case line, ok := <-lines:
		f := strings.Fields(line)
		if !ok || len(f) != 3 || f[0] != "listening" {
			c.stop()
			return nil, fmt.Errorf("the %s server did not start (said %q)", o.kind, line)
		}
		c.addr = f[1]
		c.gomaxprocs, _ = strconv.Atoi(f[2])
		return c, nil
	case <-timeout.C:
	case <-ctx.Done():
	}
	c.stop()
	return nil, fmt.Errorf("the %s server did not start in time", o.kind)
}

// url returns the URL to POST deliveries to.
func (c *child) url() string { return "http://" + c.addr + "/webhook" }

// cpuTime returns the CPU time, user and system, the child used; it is
// known once the child was stopped.
func (c *child) cpuTime() time.Duration {
	if c.cmd.ProcessState == nil {
		return 0
	}
	return c.cmd.ProcessState.UserTime() + c.cmd.ProcessState.SystemTime()
}

// selfCPUTime returns the CPU time, user and system, this process used.
func selfCPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAverage returns the machine's load averages over 1, 5 and 15
// minutes, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// peakRSS returns the child's peak resident set size (VmHWM), in bytes.
func (c *child) peakRSS() (int64, error) {
	return procStatus(c.cmd.Process.Pid, "VmHWM")
}

// procStatus returns the field of /proc/<pid>/status given in kB, in
// bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %q: %w", field, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// stop ends the child: its stdin closes, then SIGTERM, then SIGKILL.
func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() {
		c.waitOnce.Do(func() { c.waitErr = c.cmd.Wait() })
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}
