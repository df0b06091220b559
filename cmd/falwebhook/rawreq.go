package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
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
// a request bin: request line, headers, blank line, body. Lines may end in
// CRLF or a bare LF. The body is delimited by Content-Length or chunked
// Transfer-Encoding (decoded); without either, everything after the blank
// line is the body.
func parseRawRequest(data []byte) (*capture, error) {
	// Tolerate blank lines before the request line, as RFC 9112 asks.
	data = bytes.TrimLeft(data, "\r\n")
	if len(data) == 0 {
		return nil, errors.New("empty input; want a raw HTTP request")
	}
	headEnd, bodyStart := headerEnd(data)
	if headEnd < 0 {
		return nil, errors.New("no blank line after the headers; want a raw HTTP request (request line, headers, blank line, body)")
	}
	head := data[:headEnd]
	rest := data[bodyStart:]

	// Browser tools show HTTP/2 and HTTP/3 requests as "POST /x HTTP/2",
	// which http.ReadRequest only accepts as "HTTP/2.0".
	var versionNote string
	line, more, found := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimRight(line, "\r")
	if bytes.HasSuffix(line, []byte(" HTTP/2")) || bytes.HasSuffix(line, []byte(" HTTP/3")) {
		fixed := make([]byte, 0, len(head)+4)
		fixed = append(append(fixed, line...), ".0"...)
		if found {
			fixed = append(append(fixed, "\r\n"...), more...)
		}
		head = fixed
		versionNote = fmt.Sprintf("request line says %s: read as HTTP/1.1 text", line[len(line)-6:])
	}

	// http.ReadRequest reads LF-only headers too; give it the head alone so
	// the body framing is ours to handle leniently.
	r, err := http.ReadRequest(bufio.NewReader(io.MultiReader(bytes.NewReader(head), strings.NewReader("\r\n\r\n"))))
	if err != nil {
		return nil, fmt.Errorf("not an HTTP request: %w", err)
	}
	c := &capture{
		requestLine: r.Method + " " + r.RequestURI + " " + r.Proto,
		header:      r.Header,
	}
	if versionNote != "" {
		c.notes = append(c.notes, versionNote)
	}
	if orig := data[:headEnd]; !bytes.Contains(orig, []byte("\r\n")) && bytes.Contains(orig, []byte("\n")) {
		c.notes = append(c.notes, "lines end in a bare LF, not CRLF (accepted)")
	}

	chunked := len(r.TransferEncoding) > 0 && r.TransferEncoding[len(r.TransferEncoding)-1] == "chunked"
	switch {
	case chunked:
		body, n, err := dechunk(rest)
		if err != nil {
			return nil, fmt.Errorf("chunked body: %w", err)
		}
		c.body = body
		c.notes = append(c.notes, fmt.Sprintf("chunked body decoded: %d bytes from %d on the wire", len(body), n))
		rest = rest[n:]
	case r.ContentLength > 0:
		n := r.ContentLength
		if int64(len(rest)) < n {
			why := "truncated capture?"
			if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
				why = "the sender waited for a 100 Continue that nc never sends"
			}
			c.notes = append(c.notes, fmt.Sprintf("body is shorter than Content-Length: %d of %d bytes (%s)", len(rest), n, why))
			n = int64(len(rest))
		}
		c.body = rest[:n]
		rest = rest[n:]
	case r.ContentLength == 0 && r.Header.Get("Content-Length") != "":
		c.body = []byte{}
	default:
		c.body = rest
		if len(rest) > 0 {
			c.notes = append(c.notes, fmt.Sprintf("no Content-Length: took the %d bytes after the headers as the body", len(rest)))
		}
		rest = nil
	}
	if extra := bytes.TrimRight(rest, "\r\n"); len(extra) > 0 {
		c.notes = append(c.notes, fmt.Sprintf("%d bytes after the body were ignored (check Content-Length if the body was edited)", len(extra)))
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		c.notes = append(c.notes, fmt.Sprintf("Content-Encoding %q: the signature covers the body bytes as sent, not decoded", ce))
	}
	return c, nil
}

// headerEnd returns the index where the header block ends (before its
// terminating blank line) and where the body starts, or -1, -1. Lines may
// end in CRLF or LF.
func headerEnd(data []byte) (headEnd, bodyStart int) {
	for i := 0; i < len(data); i++ {
		if data[i] != '\n' {
			continue
		}
		// data[i] ends a line; a blank line follows if the next line is
		// empty.
		j := i + 1
		if j < len(data) && data[j] == '\r' {
			j++
		}
		if j < len(data) && data[j] == '\n' {
			end := i
			if end > 0 && data[end-1] == '\r' {
				end--
			}
			return end, j + 1
		}
	}
	return -1, -1
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
