//go:build !amd64 || purego || falwebhook_stdlib

package edkey

// wantFast is whether this build must take the expanded-key path.
const wantFast = false
