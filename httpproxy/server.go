// Package httpproxy serves rotor's HTTP/1.1 proxy: CONNECT tunnels and
// absolute-form forwarding, both taking a fresh source address from the
// shared pool.
//
//	ServeHTTP ─▶ auth ─┬─ CONNECT ─▶ dial from pool ─▶ 200 ─▶ hijack ─▶ tunnel.Relay
//	                   └─ GET http://… ─▶ Pick ─▶ forward[src] (ReverseProxy + that source's Transport)
//
// Absolute-form requests go through one httputil.ReverseProxy and one
// http.Transport per source address: a Transport's idle pool is keyed by
// scheme and host, not by local address, so sharing one would let a
// reused upstream connection leave from the wrong address.
package httpproxy

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/tunnel"
)

// Options configure a Server. Dialer is required.
type Options struct {
	Dialer *pool.Dialer
	// Credentials, when set, make Basic proxy auth mandatory.
	Credentials *config.Credentials
	// HeaderTimeout bounds reading a request head; zero means
	// config.DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive client connection idle this long;
	// zero means two minutes.
	IdleTimeout time.Duration
	Log         zerolog.Logger
}

// Server is an HTTP proxy.
type Server struct {
	opts       Options
	srv        *http.Server
	forward    []*httputil.ReverseProxy // indexed by pool.Source.Index
	transports []*http.Transport
	tunnels    tunnel.Tracker
}

// maxHeaderBytes caps a request head, as Squid and g3proxy do.
const maxHeaderBytes = 64 << 10

// New returns a server; call Serve to start it.
func New(o Options) *Server {
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = config.DefaultHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	s := &Server{opts: o}
	for _, src := range o.Dialer.Pool().Sources() {
		t := newTransport(o.Dialer, src)
		s.transports = append(s.transports, t)
		s.forward = append(s.forward, &httputil.ReverseProxy{
			Rewrite:      rewrite,
			Transport:    t,
			ErrorHandler: s.forwardError,
			ErrorLog:     log.New(logAdapter{o.Log}, "", 0),
		})
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: o.HeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(logAdapter{o.Log}, "", 0),
	}
	return s
}

func newTransport(d *pool.Dialer, src *pool.Source) *http.Transport {
	return &http.Transport{
		Proxy: nil, // never chain to $HTTP_PROXY
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := d.DialFrom(ctx, src, addr)
			if err != nil {
				return nil, err // not a typed nil inside the interface
			}
			return c, nil
		},
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A proxy passes Accept-Encoding and the encoded body through; it
		// must not add gzip and decompress behind the client's back.
		DisableCompression: true,
	}
}

// Serve accepts connections on ln until Shutdown or Close; it returns nil
// after those.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting at once, lets in-flight requests and tunnels
// finish until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	tunnelsDone := make(chan error, 1)
	go func() { tunnelsDone <- s.tunnels.Drain(ctx) }()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	err = errors.Join(err, <-tunnelsDone)
	s.closeIdle()
	return err
}

// Close closes the listeners, every client connection and every tunnel now.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.tunnels.CloseAll()
	s.closeIdle()
	return err
}

func (s *Server) closeIdle() {
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
}

// ActiveTunnels returns the number of open CONNECT tunnels.
func (s *Server) ActiveTunnels() int { return s.tunnels.Len() }

// ServeHTTP authenticates r and dispatches it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	user, ok := s.authorize(r)
	if !ok {
		s.deny(w, r, start)
		return
	}
	if r.Method == http.MethodConnect {
		s.connect(w, r, user, start)
		return
	}
	s.forwardRequest(w, r, user, start)
}

// authorize checks Proxy-Authorization: Basic. It returns the user name.
func (s *Server) authorize(r *http.Request) (string, bool) {
	if s.opts.Credentials == nil {
		return "", true
	}
	user, pass, ok := parseBasic(r.Header.Get("Proxy-Authorization"))
	if !ok {
		return "", false
	}
	if !s.opts.Credentials.Check([]byte(user), []byte(pass)) {
		return "", false
	}
	return user, true
}

func (s *Server) deny(w http.ResponseWriter, r *http.Request, start time.Time) {
	h := w.Header()
	h.Set("Proxy-Authenticate", `Basic realm="rotor"`)
	if r.Method == http.MethodConnect {
		// Whatever the client pipelined behind a refused CONNECT is tunnel
		// payload, not a request: do not read it as one.
		h.Set("Connection", "close")
	}
	reply(w, http.StatusProxyAuthRequired, "proxy authentication required")
	s.logRequest(r, "", nil, http.StatusProxyAuthRequired, 0, 0, start, nil)
}

// reply writes a one-line plain-text body.
func reply(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte("rotor: " + msg + "\n"))
}

// statusFor maps a dial failure to the status a client sees.
func statusFor(cl pool.Class) int {
	switch cl {
	case pool.ClassTimeout:
		return http.StatusGatewayTimeout
	case pool.ClassBadTarget:
		return http.StatusBadRequest
	}
	return http.StatusBadGateway
}

// dialMessage is the one-line body for a failed dial: the class, never the
// raw error text, which may carry internal details.
func dialMessage(target string, cl pool.Class) string {
	var why string
	switch cl {
	case pool.ClassRefused:
		why = "connection refused"
	case pool.ClassNetUnreachable:
		why = "network unreachable"
	case pool.ClassHostUnreachable:
		why = "host unreachable"
	case pool.ClassDNS:
		why = "name does not resolve in the source address's family"
	case pool.ClassTimeout:
		why = "timed out"
	case pool.ClassBadTarget:
		why = "bad target, want host:port with port 1-65535"
	case pool.ClassNoSource:
		why = "no source address of the target's family"
	case pool.ClassCanceled:
		why = "request canceled"
	default:
		why = "upstream error"
	}
	return "cannot reach " + target + ": " + why
}

// logAdapter turns net/http's own log lines into warnings.
type logAdapter struct{ l zerolog.Logger }

func (a logAdapter) Write(p []byte) (int, error) {
	a.l.Warn().Str("from", "net/http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
