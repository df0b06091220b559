//go:build !unix

package falsqlite

import (
	"fmt"
	"os"
)

// errUnsupported is returned by lock where file locks are not available.
var errUnsupported = fmt.Errorf("falsqlite: file locks are not supported on this system: %w", os.ErrInvalid)

// lock fails: without a lock, Open could not tell a dead predecessor's
// running jobs from a live process's.
func lock(string) (func() error, error) { return nil, errUnsupported }
