//go:build !unix

package falsqlite

// lock fails: without a lock, Open could not tell a dead predecessor's
// running jobs from a live process's.
func lock(string) (func() error, error) { return nil, errUnsupported }
