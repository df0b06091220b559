package edkey

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"
)

// The benchmarks compare Verify with crypto/ed25519.Verify on a 1 KiB
// message. BenchmarkRatioVerify1KiB runs both back to back in every
// iteration, in alternating order, and reports Verify's total time over
// crypto/ed25519's as x-stdlib, so that the drift of a shared machine cancels:
//
//	go test -run '^$' -bench . -benchmem -count 6 ./internal/edkey
//	go test -run '^$' -bench . -benchmem -count 6 -tags falwebhook_stdlib ./internal/edkey

// benchOps returns Verify and crypto/ed25519.Verify of one genuine signature
// of a 1 KiB message.
func benchOps(b *testing.B) (edkey, stdlib func()) {
	pub, priv := seedKey(9)
	msg := bytes.Repeat([]byte("x"), 1<<10)
	sig := ed25519.Sign(priv, msg)
	k, err := New(pub)
	if err != nil {
		b.Fatal(err)
	}
	edkey = func() {
		if !k.Verify(msg, sig) {
			b.Fatal("edkey: signature does not verify")
		}
	}
	stdlib = func() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("crypto/ed25519: signature does not verify")
		}
	}
	return edkey, stdlib
}

// ratio runs base and op b.N times each, interleaved, and reports op's total
// time over base's as the metric unit.
func ratio(b *testing.B, unit string, base, op func()) {
	base()
	op()
	var tb, to time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			t0 := time.Now()
			base()
			t1 := time.Now()
			op()
			to += time.Since(t1)
			tb += t1.Sub(t0)
		} else {
			t0 := time.Now()
			op()
			t1 := time.Now()
			base()
			tb += time.Since(t1)
			to += t1.Sub(t0)
		}
	}
	b.ReportMetric(float64(to)/float64(tb), unit)
}

// run runs op b.N times as the benchmark's body.
func run(b *testing.B, op func()) {
	op()
	b.SetBytes(1 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op()
	}
}

func BenchmarkRatioVerify1KiB(b *testing.B) {
	edkey, stdlib := benchOps(b)
	ratio(b, "x-stdlib", stdlib, edkey)
}

func BenchmarkVerify1KiB(b *testing.B) {
	edkey, _ := benchOps(b)
	run(b, edkey)
}

func BenchmarkStdlibVerify1KiB(b *testing.B) {
	_, stdlib := benchOps(b)
	run(b, stdlib)
}

// BenchmarkNew measures checking and preparing one key.
func BenchmarkNew(b *testing.B) {
	pub, _ := seedKey(9)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := New(pub); err != nil {
			b.Fatal(err)
		}
	}
}
