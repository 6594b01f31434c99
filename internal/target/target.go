// Package target provides the in-process servers that rotor's demo, tests
// and benchmarks point the proxy at. Each one reports or checks what the
// proxy must get right: which source address a connection came from, and
// that bytes arrive intact.
package target

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Server is a running target; Close stops it and waits for its handlers.
type Server struct {
	Addr string // host:port it listens on
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
	http *http.Server
	// Conns counts accepted connections (HTTP targets count upstream
	// connections the proxy opened).
	Conns atomic.Int64
}

// PeerIP returns the IP part of a RemoteAddr-style "ip:port".
func PeerIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// HTTP starts an HTTP/1.1 target on addr (e.g. "127.0.0.1:0"):
//
//	GET /ip        the peer IP, then "\n"
//	GET /bytes/N   N bytes of 'x'
//	ANY /echo      the request body, streamed back
//	other          the peer IP, then "\n"
func HTTP(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return ServeHTTP(ln), nil
}

// ServeHTTP is HTTP on a listener the caller opened (in another network
// namespace, say). Close closes ln.
func ServeHTTP(ln net.Listener) *Server {
	s := &Server{Addr: ln.Addr().String(), ln: ln}
	s.http = &http.Server{
		Handler:           http.HandlerFunc(serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.Conns.Add(1)
			}
		},
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.http.Serve(ln)
	}()
	return s
}

func serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case len(r.URL.Path) > len("/bytes/") && r.URL.Path[:len("/bytes/")] == "/bytes/":
		n, err := strconv.ParseInt(r.URL.Path[len("/bytes/"):], 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad length", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		writeFill(w, n)
	case r.URL.Path == "/echo":
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		_, _ = io.Copy(w, r.Body)
	default:
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, PeerIP(r.RemoteAddr)+"\n")
	}
}

func writeFill(w io.Writer, n int64) {
	var buf [32 << 10]byte
	for i := range buf {
		buf[i] = 'x'
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		n -= k
	}
}

// TCP starts a raw TCP target on addr whose connections are served by
// handle, which must return when the connection fails. The connection is
// closed after handle returns.
func TCP(addr string, handle func(*net.TCPConn)) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return Serve(ln, handle), nil
}

// Serve is TCP on a listener the caller opened (in another network
// namespace, say). Close closes ln.
func Serve(ln net.Listener, handle func(*net.TCPConn)) *Server {
	s := &Server{Addr: ln.Addr().String(), ln: ln, open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.Conns.Add(1)
			s.mu.Lock()
			s.open[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handle(c.(*net.TCPConn))
				c.Close()
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
			}()
		}
	}()
	return s
}

// WritePeer writes the peer IP and "\n", then closes: the simplest way to
// see through a tunnel which source address the proxy used.
func WritePeer(c *net.TCPConn) {
	_, _ = io.WriteString(c, PeerIP(c.RemoteAddr().String())+"\n")
}

// WritePeerAddr writes the peer's "ip:port", then closes: with the port,
// a test can match the connection to a SOCKS5 reply's bound address.
func WritePeerAddr(c *net.TCPConn) {
	_, _ = io.WriteString(c, c.RemoteAddr().String())
}

// Echo writes back everything it reads; at EOF it shuts its write half,
// so a client that half-closes gets every byte and then EOF.
func Echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	}
}

// CountThenReply reads until EOF and only then replies with the number of
// bytes it read, then "\n": proves that a client's half-close reached the
// target and that the reply still travels back.
func CountThenReply(c *net.TCPConn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	_, _ = io.WriteString(c, strconv.FormatInt(n, 10)+"\n")
}

// Close stops the target: no new connections, open ones closed, handlers
// waited for.
func (s *Server) Close() error {
	var err error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if e := s.http.Shutdown(ctx); e != nil && !errors.Is(e, context.DeadlineExceeded) {
			err = e
		}
		s.http.Close()
	} else {
		err = s.ln.Close()
		s.mu.Lock()
		for c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
	}
	s.wg.Wait()
	return err
}

// TCPPair returns the two ends of a loopback TCP connection, closed at the
// end of the test.
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// UDPServer answers each datagram with the sender's address (as
// WritePeer does for TCP) and counts what it received.
type UDPServer struct {
	Addr  netip.AddrPort
	Count atomic.Int64
	c     *net.UDPConn
	done  chan struct{}
}

// ServeUDPPeer serves c (opened by the caller, in whatever namespace)
// until Close.
func ServeUDPPeer(c *net.UDPConn) *UDPServer {
	s := &UDPServer{Addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), c: c, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 2048)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.Count.Add(1)
			_, _ = c.WriteToUDPAddrPort([]byte(from.Addr().String()), from)
		}
	}()
	return s
}

// UDPPeer serves ServeUDPPeer on 127.0.0.1, closed at the end of the test.
func UDPPeer(t testing.TB) *UDPServer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := ServeUDPPeer(c)
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and waits for it.
func (s *UDPServer) Close() { s.c.Close(); <-s.done }
