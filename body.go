package falwebhook

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// ErrOverloaded is returned by VerifyRequest and the middleware when
// reading the body would take the Verifier over its budget of body bytes
// not yet verified (WithBodyBudget). The delivery may be genuine: the
// answer is 503 with Retry-After, so fal retries it, and the connection is
// closed without reading further.
var ErrOverloaded = errors.New("falwebhook: overloaded")

const (
	defaultBodyBudget  = 64 << 20
	defaultReadTimeout = 30 * time.Second

	// smallBody is how much of each body counts as small: the budget keeps
	// a quarter of itself for the first smallBody bytes of every request,
	// so small deliveries keep working while large forged ones use up the
	// rest.
	smallBody = 64 << 10
)

// WithBodyBudget bounds the memory that unauthenticated requests can pin:
// at most n bytes of body, across all the requests the Verifier is reading
// at once, held before their signature is checked (default 64 MiB, or
// twice the body size limit when that is larger). Bytes are charged as
// they arrive, not as Content-Length claims, and released as soon as the
// signature is checked: the first 512 bytes of a body cost no buffer and
// no budget, so a request that sends headers and no body, or trickles a
// few bytes, holds none of it, and after that a body's buffers are never
// more than 16 times its bytes. A quarter of the budget is kept for the first
// 64 KiB of each body, so a flood of large forged bodies cannot crowd out
// small genuine deliveries. A request that would exceed the budget is
// answered 503 with Retry-After (fal retries) and its connection closed.
// The budget is raised, if need be, so that one body of the largest size
// accepted fits.
func WithBodyBudget(n int64) Option {
	return func(v *Verifier) { v.budget.max = max(n, 0) }
}

// WithReadTimeout bounds how long the body of one delivery may take to
// arrive, from the moment the middleware starts reading it (default 30
// seconds), so that a client trickling bytes cannot hold a buffer forever
// even when the http.Server has no ReadTimeout. It is set with
// http.ResponseController on the connection; it applies to Middleware and
// Handler, which hold the ResponseWriter, not to VerifyRequest. It never
// lengthens the http.Server's ReadTimeout: when that is no longer than d,
// the server's deadline, counted from when it began reading the request,
// is left to end the read. A request refused before its body is read is
// answered with Connection: close and its read ended at once, so that the
// server does not wait for the body. Set the server's ReadHeaderTimeout,
// ReadTimeout and IdleTimeout too.
func WithReadTimeout(d time.Duration) Option {
	return func(v *Verifier) { v.readTimeout = max(d, 0) }
}

// bodyBudget counts the body bytes held before verification.
type bodyBudget struct {
	max  int64        // bytes; set once by NewVerifier
	used atomic.Int64 // bytes charged now
}

// take charges n bytes, reporting whether they fit. Bytes beyond the first
// smallBody of a body (large) may not use the last quarter of the budget.
func (b *bodyBudget) take(n int64, large bool) bool {
	limit := b.max
	if large {
		limit -= b.max / 4
	}
	if b.used.Add(n) > limit {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *bodyBudget) give(n int64) { b.used.Add(-n) }

// headSize is how many bytes of a body are read into the request's own
// state before any buffer is taken: a connection that sends headers and no
// body, or trickles a few bytes, holds no buffer and no part of the budget.
const headSize = 512

// chunkSizes are the capacities of the buffers a body is read into, one
// after the other; the last repeats. Growing by whole new chunks never
// copies what was read, and each chunk is allocated only when the one
// before is full, so memory follows the bytes that actually arrived: the
// first chunk comes after headSize bytes, and each is at most as large as
// all the bytes read before it, plus the first chunk's size.
var chunkSizes = [...]int{2 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20}

// wholeFactor bounds how far ahead of the bytes read a body whose
// Content-Length is known is given one buffer of its whole size: once the
// bytes read are at least 1/wholeFactor of it, so that the body ends up in
// one piece, read in place, and the event can share it without another
// copy.
const wholeFactor = 16

// chunkPools recycle chunks of each size in chunkSizes, each held by a
// pointer that goes back and forth with it, so that recycling allocates
// nothing.
var chunkPools [len(chunkSizes)]sync.Pool

// body is a request body read into chunks.
type body struct {
	chunks  []chunk
	inline  [2]chunk // chunks' first backing array: most bodies fit one or two
	n       int64    // bytes read
	charged int64    // bytes charged to the budget
	sum     [sha256.Size]byte
	head    [headSize]byte // the first bytes, before any chunk
}

// chunk is one buffer of a body.
type chunk struct {
	buf   []byte
	class int     // index in chunkSizes, or -1 for a buffer not pooled
	box   *[]byte // the pool's holder of buf, if it came from a pool
}

// readBody reads r's body into b, at most limit bytes, hashing it on the
// way and charging the budget as its buffers grow. The first headSize bytes
// go into b.head, which costs neither a buffer nor the budget; after that,
// buffers are taken only as the bytes arrive (see chunkSizes and
// wholeFactor). The caller must call b.free (or b.bytes) afterwards,
// whatever the error.
func (v *Verifier) readBody(r *http.Request, b *body) error {
	limit := v.maxBody
	if r.ContentLength > limit {
		return fmt.Errorf("%w: Content-Length %d exceeds %d bytes", ErrBodyTooLarge, r.ContentLength, limit)
	}
	if r.Body == nil || r.Body == http.NoBody {
		b.sum = sha256.Sum256(nil)
		return nil
	}
	if b.chunks == nil {
		b.chunks = b.inline[:0]
	}
	h := sha256.New()
	// The head: each Read returns what has arrived, so a slow sender
	// fills it a byte at a time, holding nothing more.
	filled, err := fill(r.Body, b.head[:min(int64(headSize), limit+1)])
	h.Write(b.head[:filled])
	b.n = int64(filled)
	var capacity int64 // of all chunks
	for err == nil && b.n <= limit {
		// A new chunk: the next size class; Content-Length's size (+1 to
		// see EOF without another chunk) when that is smaller, or when the
		// bytes read are already a fair share of it; never past limit+1
		// bytes in all. The first chunk starts with the head's bytes.
		class := min(len(b.chunks), len(chunkSizes)-1)
		size := int64(chunkSizes[class])
		whole := false
		if r.ContentLength >= 0 {
			// It is only a claim, so it sizes a buffer only as far as the
			// bytes read bear it out.
			switch rest := r.ContentLength + 1 - capacity; {
			case rest > 0 && len(b.chunks) > 0 && r.ContentLength+1 <= wholeFactor*b.n:
				size, class, whole = r.ContentLength+1, -1, true
			case rest > 0 && rest < size:
				size, class = rest, -1
			}
		}
		if rest := limit + 1 - capacity; !whole && rest < size {
			size, class = rest, -1
		}
		if size <= b.n-capacity { // cannot happen: b.n > limit stopped the loop first
			return fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, limit)
		}
		// Bytes past the first smallBody of a body are large.
		large := capacity >= smallBody || (whole && size > smallBody)
		if !v.budget.take(size, large) {
			return fmt.Errorf("%w: the budget of %d body bytes not yet verified is used up", ErrOverloaded, v.budget.max)
		}
		c := getChunk(class, size)
		var at int // where the new bytes go in c
		switch {
		case whole:
			// The body so far moves into c, and its chunks are freed.
			at = b.copyTo(c.buf)
			b.free(v)
			capacity = 0
		case len(b.chunks) == 0:
			at = copy(c.buf, b.head[:b.n])
		}
		b.charged += size
		capacity += size
		var m int
		m, err = fill(r.Body, c.buf[at:])
		h.Write(c.buf[at : at+m])
		c.buf = c.buf[:at+m]
		b.chunks = append(b.chunks, c)
		b.n += int64(m)
	}
	if b.n > limit {
		return fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, limit)
	}
	if err == io.EOF {
		h.Sum(b.sum[:0])
		return nil
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("%w: %w", ErrBodyTooLarge, err)
	}
	return fmt.Errorf("%w: %w", ErrReadBody, err)
}

// fill reads from r until buf is full or r fails; io.EOF marks the body's
// end, and any other error a failed read.
func fill(r io.Reader, buf []byte) (n int, err error) {
	for n < len(buf) && err == nil {
		var m int
		m, err = r.Read(buf[n:])
		n += m
	}
	return n, err
}

// getChunk returns a chunk of size bytes, from the pool of class when it
// is one of chunkSizes.
func getChunk(class int, size int64) chunk {
	if class >= 0 {
		if box, ok := chunkPools[class].Get().(*[]byte); ok {
			return chunk{buf: (*box)[:size], class: class, box: box}
		}
	}
	return chunk{buf: make([]byte, size), class: class}
}

// bytes returns the body in one slice, frees the chunks and releases the
// charge. A body that fit one chunk not from a pool (sized by
// Content-Length) is returned without a copy: that chunk is never reused.
func (b *body) bytes(v *Verifier) []byte {
	var out []byte
	switch {
	case len(b.chunks) == 0:
		out = make([]byte, b.n)
		b.copyTo(out)
	case len(b.chunks) == 1 && b.chunks[0].class < 0:
		out = b.chunks[0].buf
		b.chunks[0] = chunk{}
	default:
		out = make([]byte, 0, b.n)
		for _, c := range b.chunks {
			out = append(out, c.buf...)
		}
	}
	b.free(v)
	return out
}

// copyTo copies the bytes read so far into dst, returning how many.
func (b *body) copyTo(dst []byte) int {
	if len(b.chunks) == 0 {
		return copy(dst, b.head[:b.n])
	}
	n := 0
	for _, c := range b.chunks {
		n += copy(dst[n:], c.buf)
	}
	return n
}

// free returns the chunks to their pools and releases the charge.
func (b *body) free(v *Verifier) {
	for i, c := range b.chunks {
		if c.class >= 0 && c.buf != nil {
			box := c.box
			if box == nil {
				box = new([]byte)
			}
			*box = c.buf[:cap(c.buf)]
			chunkPools[c.class].Put(box)
		}
		b.chunks[i] = chunk{}
	}
	b.chunks = b.chunks[:0]
	v.budget.give(b.charged)
	b.charged = 0
}
