//go:build race

package falwebhook

// raceEnabled reports whether the race detector is on.
const raceEnabled = true
