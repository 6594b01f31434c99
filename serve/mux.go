package serve

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Handler serves a connection whose first bytes the Mux has read already:
// it must read first before it reads c, and may keep first only until it
// returns.
type Handler func(c net.Conn, first []byte)

// Mux serves SOCKS5, HTTP and TLS on one listener, told apart by the
// client's first byte: 0x05 is a SOCKS5 greeting, 0x16 a TLS handshake
// record, a letter an HTTP method. The byte comes from the connection's
// first read, whose bytes are handed on (Handler), so telling costs no
// system call of its own. The chosen server tracks, limits and drains the
// connection from then on; the Mux only tracks it while it waits for the
// first bytes.
type Mux struct {
	Core
	// Timeout bounds the wait for the first bytes (--handshake-timeout).
	Timeout time.Duration
	Log     zerolog.Logger
	Hits    *Hits
	// SOCKS5 and HTTP serve their protocols; TLS, nil without a
	// certificate, serves HTTP inside TLS.
	SOCKS5, HTTP, TLS Handler
}

// firstReads pools the buffer of a connection's first read. It is as large
// as the HTTP server's read buffer, so a request head read here fits the
// buffer it is handed to.
var firstReads = sync.Pool{New: func() any { return new([4 << 10]byte) }}

// Serve accepts on ln until Shutdown. Call Init(nil, hits) first: the
// Mux counts no connection against the limit, the server it hands one to
// does.
func (m *Mux) Serve(ln net.Listener) error {
	return m.Core.Serve(ln, m.Log, m.serveConn)
}

// Shutdown stops accepting and closes connections still waiting for their
// first bytes; the servers handed the others drain them.
func (m *Mux) Shutdown(ctx context.Context) error { return m.Core.Shutdown(ctx, nil) }

func (m *Mux) serveConn(c net.Conn) {
	if err := m.Conns.Add(c); err != nil {
		c.Close()
		return
	}
	buf := firstReads.Get().(*[4 << 10]byte)
	defer firstReads.Put(buf)
	_ = c.SetReadDeadline(time.Now().Add(m.Timeout))
	n, err := c.Read(buf[:])
	m.Conns.Remove(c)
	if n == 0 {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			m.Hits.Add(HandshakeTimeout)
			HandshakeTimeout.Field(m.Log.Warn().Str("client", c.RemoteAddr().String())).Msg("mixed port: no byte received in time")
		}
		c.Close()
		return
	}
	first := buf[:n]
	var h Handler
	var why string
	switch b := first[0]; {
	case b == 0x05:
		h = m.SOCKS5
	case b == 0x16 && m.TLS != nil:
		h = m.TLS
	case b == 0x16:
		why = "TLS handshake on a mixed port without a certificate (set --tls-cert and --tls-key, or use an http:// proxy URL)"
	case b == 0x04:
		why = "SOCKS4 request: rotor speaks SOCKS5"
	case b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z':
		h = m.HTTP
	default:
		why = "first bytes are neither SOCKS5, TLS nor an HTTP method"
	}
	if h == nil {
		// What was seen, at most 16 bytes: never far enough into a
		// request to reach a credential.
		m.Log.Warn().Str("client", c.RemoteAddr().String()).Str("first_bytes", hex.EncodeToString(first[:min(n, 16)])).Msg("mixed port: " + why)
		c.Close()
		return
	}
	h(c, first)
}
