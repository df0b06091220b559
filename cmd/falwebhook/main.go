// Command falwebhook checks, sends and receives fal.ai webhook deliveries.
//
// Usage:
//
//	falwebhook <command> [flags] [args]
//
// The commands are:
//
//	demo     run a receiver on 127.0.0.1 and show what it accepts and rejects
//	verify   diagnose a captured delivery offline, check by check
//	listen   run a verifying receiver, optionally forwarding to your app
//	send     sign a delivery with a dev key and POST it to a URL
//	keygen   write a dev signing key and its JWKS document
//
// Start with
//
//	go run ./cmd/falwebhook demo
//
// A local loop with a dev key, no fal account needed:
//
//	falwebhook keygen --out-key dev.key.pem --out-jwks dev.jwks.json
//	falwebhook listen --jwks dev.jwks.json --user-id faltest-user --forward http://127.0.0.1:3000/webhook
//	falwebhook send --key dev.key.pem http://127.0.0.1:8787/fal/webhook
//
// Dev key files (keygen --out-key, send --key) are PEM-encoded PKCS #8
// Ed25519 private keys, as "openssl genpkey -algorithm ed25519" writes them;
// JWKS files (keygen --out-jwks, verify and listen --jwks) are
// {"keys":[{"kty":"OKP","crv":"Ed25519","x":...}]} documents like fal's.
//
// Exit status: 0 on success; 1 when a delivery fails verification (or send
// gets a non-2xx answer); 2 on a usage or I/O error. Run
// "falwebhook <command> -h" for a command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Exit codes.
const (
	exitOK      = 0 // success
	exitInvalid = 1 // a delivery failed verification, or send got a non-2xx
	exitUsage   = 2 // bad usage or an I/O error
)

func main() {
	redis.SetLogger(redisLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what a command may touch besides its arguments.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// errorf prints a "falwebhook <cmd>: " prefixed error to stderr and returns
// code.
func (e *env) errorf(code int, cmd, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "falwebhook %s: %s\n", cmd, fmt.Sprintf(format, args...))
	return code
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

func commands() []command {
	return []command{
		{"demo", "run a receiver on 127.0.0.1 and show what it accepts and rejects", runDemo},
		{"verify", "diagnose a captured delivery offline, check by check", runVerify},
		{"listen", "run a verifying receiver, optionally forwarding to your app", runListen},
		{"send", "sign a delivery with a dev key and POST it to a URL", runSend},
		{"keygen", "write a dev signing key and its JWKS document", runKeygen},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `falwebhook checks, sends and receives fal.ai webhook deliveries.

Usage:
  falwebhook <command> [flags] [args]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help     show this help, or a command's: falwebhook help <command>

Start with "falwebhook demo". Run "falwebhook <command> -h" for a command's flags.
Exit status: 0 success; 1 a delivery failed verification (send: a non-2xx
answer); 2 a usage or I/O error.
`)
}

// run is main without the process: it parses args (without the program
// name), runs the command and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			usage(stdout)
			return exitOK
		}
		for _, c := range commands() {
			if c.name == rest[0] {
				e.stderr = stdout // help that was asked for goes to stdout
				return c.run(ctx, e, []string{"-h"})
			}
		}
		fmt.Fprintf(stderr, "falwebhook help: unknown command %q\n", rest[0])
		return exitUsage
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, e, rest)
		}
	}
	fmt.Fprintf(stderr, "falwebhook: unknown command %q\n\n", name)
	usage(stderr)
	return exitUsage
}

// cmdFlags is a command's flag set and its help text.
type cmdFlags struct {
	*flag.FlagSet
	help func() // prints the usage line, the description and the flags
}

// newFlagSet returns the flag set of command name. -h prints the full help
// to e.stderr; a bad flag prints the error and a pointer to -h.
func newFlagSet(e *env, name, synopsis, description string) *cmdFlags {
	fs := flag.NewFlagSet("falwebhook "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {} // parseArgs decides what to print
	help := func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: falwebhook %s %s\n\n%s\n", name, synopsis, strings.TrimSpace(description))
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return &cmdFlags{FlagSet: fs, help: help}
}

// parseArgs parses flags and positional arguments in any order (flags may
// follow positional arguments; everything after "--" is positional). It
// returns the positional arguments, or the exit code to return: exitOK for
// -h, exitUsage for a bad flag.
func parseArgs(fs *cmdFlags, args []string) (pos []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.help()
				return nil, exitOK, false
			}
			// The flag package has printed the error.
			fmt.Fprintf(fs.Output(), "Run '%s -h' for usage.\n", fs.Name())
			return nil, exitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, 0, true
		}
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ", ") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// durationFlag is a duration flag whose error says what is wanted: the
// flag package's own says only "parse error" for "--tolerance 10".
type durationFlag struct{ d time.Duration }

// durationVar defines a duration flag with default def.
func durationVar(fs *cmdFlags, name string, def time.Duration, usage string) *time.Duration {
	f := &durationFlag{def}
	fs.Var(f, name, usage)
	return &f.d
}

func (f *durationFlag) String() string {
	if f == nil {
		return ""
	}
	return f.d.String()
}

func (f *durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	switch {
	case err == nil:
		f.d = d
		return nil
	case s != "" && strings.Trim(s, "0123456789.") == "":
		return fmt.Errorf("a duration needs a unit, such as %ss or 5m", s)
	}
	return errors.New("want a duration such as 30s, 5m or 1h30m")
}

// timeFlag is a flag holding an instant given as RFC 3339 or Unix seconds.
type timeFlag struct{ t time.Time }

func (f *timeFlag) String() string {
	if f == nil || f.t.IsZero() {
		return ""
	}
	return f.t.Format(time.RFC3339)
}

func (f *timeFlag) Set(s string) error {
	t, err := parseTime(s)
	if err != nil {
		return err
	}
	f.t = t
	return nil
}

// parseTime parses RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds
// (1767366245).
func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s != "" && strings.Trim(s, "0123456789") == "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("unix seconds %q out of range", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds, got %q", s)
	}
	return t, nil
}

// isURL reports whether s looks like an http(s) URL rather than a file path.
func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// readInput reads the file at path, or stdin when path is "-".
func readInput(e *env, path string) ([]byte, error) {
	if path == "-" {
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return nil, fmt.Errorf("reading stdin: %w", err)
		}
		return b, nil
	}
	return os.ReadFile(path)
}
