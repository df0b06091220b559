package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// capture is a delivery read from a raw HTTP request.
type capture struct {
	requestLine string // "POST /fal/webhook HTTP/1.1"; "" for --header/--body input
	header      http.Header
	body        []byte
	notes       []string // things about the capture worth knowing
}

// parseRawRequest parses a captured HTTP/1.x request, as saved by "nc -l" or
// a request bin, with http.ReadRequest. What that rejects but captures
// often contain is read leniently instead, with a note: a chunked body
// whose lines end in a bare LF (dechunk), a body without Content-Length or
// chunked framing (everything after the blank line), and a body shorter
// than its Content-Length (what there is).
func parseRawRequest(data []byte) (*capture, error) {
	// Tolerate blank lines before the request line, as RFC 9112 asks.
	data = bytes.TrimLeft(data, "\r\n")
	if len(data) == 0 {
		return nil, errors.New("empty input; want a raw HTTP request")
	}
	data, versionNote := fixVersion(data)
	src := bytes.NewReader(data)
	br := bufio.NewReader(src)
	r, err := http.ReadRequest(br)
	if err != nil {
		return nil, fmt.Errorf("not a raw HTTP request (request line, headers, blank line, body): %w", err)
	}
	// offset returns how much of data ReadRequest and the body have used.
	offset := func() int { return len(data) - br.Buffered() - src.Len() }
	head, raw := data[:offset()], data[offset():]
	c := &capture{
		requestLine: r.Method + " " + r.RequestURI + " " + r.Proto,
		header:      r.Header,
	}
	if versionNote != "" {
		c.notes = append(c.notes, versionNote)
	}
	if !bytes.Contains(head, []byte("\r\n")) {
		c.notes = append(c.notes, "lines end in a bare LF, not CRLF (accepted)")
	}

	body, err := io.ReadAll(r.Body)
	rest := data[offset():]
	chunked := len(r.TransferEncoding) > 0
	switch {
	case err == nil && chunked:
		c.body = body
		c.notes = append(c.notes, fmt.Sprintf("chunked body decoded: %d bytes from %d on the wire", len(body), len(raw)-len(rest)))
	case err == nil && r.ContentLength == 0 && r.Header.Get("Content-Length") == "":
		// No framing: a request has no body then, but a capture's body
		// is what follows the headers.
		c.body, rest = raw, nil
		if len(raw) > 0 {
			c.notes = append(c.notes, fmt.Sprintf("no Content-Length: took the %d bytes after the headers as the body", len(raw)))
		}
	case err == nil:
		c.body = body
	case chunked:
		// http.ReadRequest wants CRLF in chunked framing; editors and
		// some tools leave bare LFs.
		var n int
		if c.body, n, err = dechunk(raw); err != nil {
			return nil, fmt.Errorf("chunked body: %w", err)
		}
		rest = raw[n:]
		c.notes = append(c.notes, fmt.Sprintf("chunked body with bare-LF line ends decoded leniently: %d bytes from %d on the wire", len(c.body), n))
	case errors.Is(err, io.ErrUnexpectedEOF):
		why := "truncated capture?"
		if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
			why = "the sender waited for a 100 Continue that nc never sends"
		}
		c.body, rest = raw, nil
		c.notes = append(c.notes, fmt.Sprintf("body is shorter than Content-Length: %d of %d bytes (%s)", len(raw), r.ContentLength, why))
	default:
		return nil, fmt.Errorf("reading the body: %w", err)
	}
	if extra := bytes.TrimRight(rest, "\r\n"); len(extra) > 0 {
		c.notes = append(c.notes, fmt.Sprintf("%d bytes after the body were ignored (check Content-Length if the body was edited)", len(extra)))
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		c.notes = append(c.notes, fmt.Sprintf("Content-Encoding %q: the signature covers the body bytes as sent, not decoded", ce))
	}
	return c, nil
}

// fixVersion rewrites a request line ending in "HTTP/2" or "HTTP/3", as
// browser tools show such requests, to end in "HTTP/2.0", which
// http.ReadRequest accepts, and says so in a note.
func fixVersion(data []byte) ([]byte, string) {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	line = bytes.TrimRight(line, "\r")
	if !bytes.HasSuffix(line, []byte(" HTTP/2")) && !bytes.HasSuffix(line, []byte(" HTTP/3")) {
		return data, ""
	}
	fixed := slices.Concat(line[:len(line)-len("HTTP/2")], []byte("HTTP/2.0"), data[len(line):])
	return fixed, fmt.Sprintf("request line says %s: read as HTTP/1.1 text", line[len(line)-len("HTTP/2"):])
}

// dechunk decodes a chunked body, accepting CRLF or bare LF line ends and
// ignoring chunk extensions and trailers. It returns the body and the
// number of input bytes used.
func dechunk(data []byte) ([]byte, int, error) {
	var body []byte
	pos := 0
	line := func() (string, error) {
		i := bytes.IndexByte(data[pos:], '\n')
		if i < 0 {
			return "", errors.New("unexpected end of input in a chunk header (truncated capture?)")
		}
		s := string(bytes.TrimRight(data[pos:pos+i], "\r"))
		pos += i + 1
		return s, nil
	}
	for {
		l, err := line()
		if err != nil {
			return nil, 0, err
		}
		sizeText, _, _ := strings.Cut(l, ";")
		size, err := strconv.ParseUint(strings.TrimSpace(sizeText), 16, 31)
		if err != nil {
			return nil, 0, fmt.Errorf("bad chunk size %q", l)
		}
		if size == 0 {
			for { // trailers, up to a blank line or the end of input
				if pos >= len(data) {
					return body, pos, nil
				}
				t, err := line()
				if err != nil || t == "" {
					return body, pos, nil
				}
			}
		}
		if uint64(len(data)-pos) < size {
			return nil, 0, fmt.Errorf("chunk of %d bytes, only %d left (truncated capture?)", size, len(data)-pos)
		}
		body = append(body, data[pos:pos+int(size)]...)
		pos += int(size)
		switch {
		case bytes.HasPrefix(data[pos:], []byte("\r\n")):
			pos += 2
		case bytes.HasPrefix(data[pos:], []byte("\n")):
			pos++
		default:
			return nil, 0, errors.New("chunk data not followed by a line end")
		}
	}
}
