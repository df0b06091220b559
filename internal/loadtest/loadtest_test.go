package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as the child process: the commands
// re-execute their own executable with the serve command.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == serveCommand {
		if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			os.Stderr.WriteString("loadtest serve: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestE2E runs the e2e command's code path with tiny counts: both servers
// answer every genuine delivery 204 at each concurrency. It measures
// nothing.
func TestE2E(t *testing.T) {
	cfg, err := parseE2E([]string{"-c", "1,2", "-warmup", "10s", "-warmup-requests", "5", "-duration", "1m", "-requests", "50", "-rounds", "2"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := runE2E(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.cells) != 4 {
		t.Fatalf("%d cells, want 4 (2 servers × 2 concurrencies)", len(rep.cells))
	}
	for _, c := range rep.cells {
		if c.ok != 50 || c.failed != 0 {
			t.Errorf("%s at concurrency %d: %d answered 204, %d failed; want 50 and 0", c.server, c.concurrency, c.ok, c.failed)
		}
	}
	for _, want := range []string{"middleware/floor req/s", "pinned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestFlood runs the flood command's code path with tiny counts: 4 forged
// 1 MiB bodies against a 2 MiB budget, and 20 genuine deliveries, all of
// which must be answered 200 (the budget keeps a quarter for small
// bodies). It measures nothing.
func TestFlood(t *testing.T) {
	cfg, err := parseFlood([]string{"-clients", "4", "-forged-per-client", "1", "-forged-size", "1MiB",
		"-genuine", "20", "-genuine-concurrency", "2", "-budget", "2MiB", "-max-body", "1MiB", "-duration", "2m"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := runFlood(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if ok := rep.genuine.counts["200"]; ok != 20 || rep.genuine.total != 20 {
		t.Errorf("genuine: %d of %d answered 200, want 20 of 20", ok, rep.genuine.total)
	}
	if rep.forged.total != 4 || rep.forged.counts["200"] != 0 {
		t.Errorf("forged: %d sent, %d answered 200; want 4 sent, none accepted", rep.forged.total, rep.forged.counts["200"])
	}
	if rep.rssErr == nil && rep.peakRSS <= 0 {
		t.Errorf("peak RSS %d", rep.peakRSS)
	}
	if !strings.Contains(out.String(), "server peak RSS") {
		t.Error("output lacks the peak RSS")
	}
}

func TestSizeFlag(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "64KiB": 64 << 10, "25MiB": 25 << 20, "1GiB": 1 << 30} {
		var s sizeFlag
		if err := s.Set(in); err != nil || int64(s) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, s, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1MB", "x"} {
		var s sizeFlag
		if err := s.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
}
