package httpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rotor-proxy/rotor/internal/sockread"
	"github.com/rotor-proxy/rotor/serve"
)

// handshake runs the TLS handshake of cc's connection (whose first bytes
// the mixed port may have read: first) within the handshake timeout. On failure it answers what
// can be answered, logs one line and counts it.
func (s *Server) handshake(cc *clientConn, first []byte) (*tls.Conn, bool) {
	c := cc.c
	var conn net.Conn = c
	if len(first) > 0 {
		// A copy: the handshake need not read all of first, and the
		// tls.Conn outlives HandleTLS when it goes on to a tunnel.
		conn = &readConn{Conn: c, pre: sockread.Prefixed{Bytes: append([]byte(nil), first...), Src: c}}
	}
	tc := tls.Server(conn, s.opts.TLS)
	_ = c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	ctx, cancel := context.WithTimeout(s.Ctx, s.opts.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		_ = c.SetDeadline(time.Time{})
		cc.cert = serve.PeerName(tc.ConnectionState())
		return tc, true
	}
	s.opts.Listener.TLSHandshakeFailed()
	e := s.opts.Log.Warn().Str("proto", "https").Str("client", c.RemoteAddr().String())
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &rh) && rh.Conn != nil && looksLikeHTTP(rh.RecordHeader):
		// What net/http's TLS server does: tell a person, in plain
		// text, which URL to use. The five bytes seen are the start of
		// a method and a target, never a credential.
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(c, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+
			"rotor: plain HTTP sent to an HTTPS proxy port: use an https:// proxy URL\n")
		e.Str("first_bytes", strconv.Quote(string(rh.RecordHeader[:]))).Msg("plain HTTP on a TLS listener")
		return nil, false
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		s.opts.Hits.Add(serve.HandshakeTimeout)
		e = serve.HandshakeTimeout.Field(e)
	}
	e.Err(err).Msg("TLS handshake failed")
	return nil, false
}

// looksLikeHTTP reports whether what was read as a TLS record header is
// printable text, as the start of an HTTP request is ("CONNE", "GET h");
// a TLS record starts with a content type byte (0x14-0x18) instead.
func looksLikeHTTP(h [5]byte) bool {
	for _, b := range h {
		if b < 0x20 || b > 0x7e {
			return false
		}
	}
	return true
}

// readConn is a connection whose reads return the bytes the mixed port
// read first, then the connection's.
type readConn struct {
	net.Conn
	pre sockread.Prefixed
}

func (c *readConn) Read(p []byte) (int, error) { return c.pre.Read(p) }
