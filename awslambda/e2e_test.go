package awslambda_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/falwebhook/falwebhook/faltest"
)

// The Lambda Runtime Interface Emulator, built by the end-to-end test. Its
// repository publishes no tagged module version; this is the pseudo-version
// the Go module proxy serves.
const (
	rieModule  = "github.com/aws/aws-lambda-runtime-interface-emulator"
	rieVersion = "v0.0.0-20261030222936-bef5c4ba774d"
)

// TestRuntimeInterfaceEmulator runs internal/e2elambda, a Lambda function
// built on Handler and a falwebhook verifier, under AWS's Runtime Interface
// Emulator, and invokes it over HTTP as Lambda would.
//
// Building the emulator needs the Go module proxy (or a module cache that
// holds it). When the build fails the test is skipped, except under
// CI=true, where it fails.
func TestRuntimeInterfaceEmulator(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the Lambda Runtime Interface Emulator runs on Linux")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build with: %v", err)
	}

	// go install pkg@version builds against the emulator's own go.mod, so
	// none of its dependencies enter this module's go.mod or go.sum.
	install := exec.CommandContext(ctx, goCmd, "install", rieModule+"/cmd/aws-lambda-rie@"+rieVersion)
	install.Dir = dir
	install.Env = append(os.Environ(), "GOBIN="+dir, "GOWORK=off")
	if out, err := install.CombinedOutput(); err != nil {
		msg := fmt.Sprintf("cannot build the Lambda Runtime Interface Emulator (go install %s/cmd/aws-lambda-rie@%s needs the module proxy or a module cache holding it): %v\n%s",
			rieModule, rieVersion, err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bootstrap := filepath.Join(dir, "bootstrap")
	build := exec.CommandContext(ctx, goCmd, "build", "-o", bootstrap, "./internal/e2elambda")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the function: %v\n%s", err, out)
	}

	signer := faltest.SignerFromName("e2e")
	invokeURL := startEmulator(t, dir, filepath.Join(dir, "aws-lambda-rie"), bootstrap,
		"FALWEBHOOK_E2E_PUBLIC_KEY="+hex.EncodeToString(signer.PublicKey()))

	// The function reads the real clock: sign now.
	now := time.Now()
	body := deliveryBody("req-e2e")
	signed := func(s *faltest.Signer) map[string][]string { return signedHeaderAt(s, body, now) }
	repeated := signed(signer)
	repeated[faltest.HeaderSignature] = append(repeated[faltest.HeaderSignature], repeated[faltest.HeaderSignature][0])
	tests := []struct {
		name     string
		sh       shape
		req      clientRequest
		wantCode int
		wantBody string
	}{
		{"genuine, function URL", shapes[0], clientRequest{header: signed(signer), body: body}, http.StatusOK, "verified req-e2e"},
		{"genuine, REST API, base64", shapes[3], clientRequest{header: signed(signer), body: body, base64: true}, http.StatusOK, "verified req-e2e"},
		{"forged, function URL", shapes[0], clientRequest{header: signed(faltest.SignerFromName("forger")), body: body}, http.StatusUnauthorized, "Unauthorized\n"},
		{"signature twice, ALB multi-value", shapes[5], clientRequest{header: repeated, body: body}, http.StatusBadRequest, "Bad Request\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := postInvocation(t, invokeURL, tt.sh.event(t, tt.req))
			var res response
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("invocation result is not a response: %v\n%s", err, out)
			}
			if res.StatusCode != tt.wantCode || string(res.body(t)) != tt.wantBody {
				t.Fatalf("function answered %d %q, want %d %q\n%s", res.StatusCode, res.body(t), tt.wantCode, tt.wantBody, out)
			}
		})
	}
	t.Run("unsupported event", func(t *testing.T) {
		out := postInvocation(t, invokeURL, []byte(`{"Records":[]}`))
		if !bytes.Contains(out, []byte("awslambda: unsupported event")) {
			t.Fatalf("invocation result %s, want a function error naming the unsupported event", out)
		}
	})
}

// startEmulator starts the emulator at rie running bootstrap, with env added
// to its environment, on two free loopback ports, waits until it accepts
// connections, and returns its invocation URL. Test cleanup stops the
// function and the emulator.
func startEmulator(t *testing.T, dir, rie, bootstrap string, env ...string) string {
	t.Helper()
	apiAddr, runtimeAddr := freeAddr(t), freeAddr(t)
	pidFile := filepath.Join(dir, "function.pid")
	logPath := filepath.Join(dir, "rie.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rie,
		"--runtime-interface-emulator-address", apiAddr,
		"--runtime-api-address", runtimeAddr,
		bootstrap)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "FALWEBHOOK_E2E_PIDFILE="+pidFile, "AWS_LAMBDA_FUNCTION_TIMEOUT=30")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() {
		// The function is the emulator's child, in a process group of its
		// own: stop it by the id it wrote, give the emulator a moment to
		// reap it, then stop the emulator.
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				if p, err := os.FindProcess(pid); err == nil && p.Kill() == nil {
					for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && p.Signal(syscall.Signal(0)) == nil; {
						time.Sleep(10 * time.Millisecond)
					}
				}
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("emulator log:\n%s", b)
			}
		}
	})

	// The emulator prints nothing when it listens: poll, briefly.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", apiAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the emulator is not listening on %s after 30s: %v", apiAddr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "http://" + apiAddr + "/2015-03-31/functions/function/invocations"
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// postInvocation invokes the function with event through the emulator and
// returns the invocation result.
func postInvocation(t *testing.T, url string, event []byte) []byte {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Post(url, "application/json", bytes.NewReader(event))
	if err != nil {
		t.Fatalf("invoking through the emulator: %v", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("reading the invocation result: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("emulator answered HTTP %d: %s", resp.StatusCode, out)
	}
	return out
}
