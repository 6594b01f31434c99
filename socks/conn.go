package socks

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/things-go/go-socks5/statute"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/internal/sockread"
	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/tunnel"
)

// Reply codes not named by statute.
const (
	repGeneralFailure = statute.RepServerFailure // 0x01
	noReply           = 0xff                     // connection closed without a reply
)

// readers pools handshake buffers: an idle tunnel should not have left
// garbage behind for the next GC.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 512) }}

// session is what one connection's log line reports.
type session struct {
	user   string           // the name sent; verified only when usr is set
	usr    *auth.User       // nil when no credentials were needed
	done   func()           // releases the user's max-conns slot
	sticky pool.Session     // from the user name's session parameters, with the pool to use
	limit  serve.Hit        // the limit that refused the connection, if one did
	dst    statute.AddrSpec // formatted only when logged
	hasDst bool
	src    *pool.Source
	reply  byte
	udp    bool // a UDP ASSOCIATE
	// pre holds the bytes read before the handshake (the mixed port's
	// first read), then the connection; emptied when the handshake ends.
	pre   sockread.Prefixed
	stats tunnel.Stats
	err   error
}

func (s *Server) serveConn(c net.Conn) { s.Handle(c, nil) }

// Handle serves a SOCKS5 connection accepted elsewhere (the mixed port,
// serve.Mux), whose first bytes were read into first.
func (s *Server) Handle(c net.Conn, first []byte) {
	if err := s.Conns.Add(c); err != nil {
		// SOCKS5 has no way to say "busy" before the greeting.
		c.Close()
		return
	}
	start := time.Now()
	ss := &session{reply: noReply, pre: sockread.Prefixed{Bytes: first, Src: c}}
	req, early, err := s.handshake(c, ss)
	if err != nil {
		ss.err = err
		s.end(c, nil, ss, start)
		return
	}
	if req.Command == statute.CommandAssociate {
		ss.udp = true
		s.associate(c, ss, req, start)
		return
	}
	target, err := s.connect(c, ss, req)
	if err != nil {
		ss.err = err
		s.end(c, nil, ss, start)
		return
	}
	// The tunnel runs on goroutines of its own; this worker goes back to
	// accepting.
	m := s.opts.Metrics.Source(ss.src)
	m.TunnelOpened()
	t := tunnel.Start(c, target, early, tunnel.Options{Idle: s.opts.IdleTimeout, Go: s.Acc.Go, Parker: &s.Parker,
		Count: m.TunnelCount()},
		func(st tunnel.Stats, err error) {
			m.TunnelClosed()
			ss.stats, ss.err = st, err
			s.end(c, target, ss, start)
		})
	s.Conns.SetCloser(c, t.Close)
}

// end closes a connection (and its target) and logs it. The connection
// leaves the tracker last: once Active reports it gone (and once a drain
// returns), its slots are back, its counters added and its line logged.
func (s *Server) end(c net.Conn, target net.Conn, ss *session, start time.Time) {
	if target != nil {
		target.Close()
	}
	c.Close()
	if ss.done != nil {
		ss.done()
	}
	s.opts.Hits.Add(timeoutHit(ss))
	s.opts.Hits.Add(ss.limit)
	if !ss.udp || ss.reply != statute.RepSuccess {
		// An association that was set up logs its own line (udp.go).
		s.logSession(c, ss, time.Since(start))
	}
	s.Conns.Remove(c)
}

// timeoutHit is the timeout that ended a session, if one did.
func timeoutHit(ss *session) serve.Hit {
	switch {
	case ss.err == nil:
		return serve.None
	case errors.Is(ss.err, tunnel.ErrIdle):
		return serve.IdleTimeout
	case errors.Is(ss.err, errUDPIdle):
		return serve.UDPIdleTimeout
	case ss.reply == noReply && errors.Is(ss.err, os.ErrDeadlineExceeded):
		return serve.HandshakeTimeout
	}
	return pool.TimeoutHit(ss.err)
}

// handshake runs greeting, auth and request, within the handshake
// deadline, which it clears on success. It returns the request and any
// bytes the client sent behind it early.
func (s *Server) handshake(c net.Conn, ss *session) (statute.Request, []byte, error) {
	var req statute.Request
	if err := c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout)); err != nil {
		return req, nil, err
	}
	// 512 bytes hold any greeting and request; RFC 1929 auth (up to 513)
	// is read through it in two fills.
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	if len(ss.pre.Bytes) > 0 {
		br.Reset(&ss.pre)
	}
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	if err := s.negotiate(c, br, ss); err != nil {
		return req, nil, err
	}
	req, err := s.request(c, br, ss)
	if err != nil {
		return req, nil, err
	}
	// The handshake is over; the dial has its own timeout, and a slow dial
	// must not make the reply write miss the handshake deadline.
	if err := c.SetDeadline(time.Time{}); err != nil {
		return req, nil, err
	}
	// Bytes the client pipelined behind its request (optimistic data) sit
	// in br; copied out so the buffer can go, they reach the target first.
	var early []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		early = append([]byte(nil), b...)
	}
	// A first read larger than br may hold more optimistic data.
	early = append(early, ss.pre.Bytes...)
	ss.pre = sockread.Prefixed{}
	return req, early, nil
}

// negotiate reads the greeting, chooses the method, authenticates, and
// applies the user's limits, which may refuse the request to come.
func (s *Server) negotiate(c net.Conn, br *bufio.Reader, ss *session) error {
	mr, err := statute.ParseMethodRequest(br)
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if mr.Ver != statute.VersionSocks5 {
		return fmt.Errorf("greeting: SOCKS version %d, want 5", mr.Ver)
	}
	var st *auth.State
	if s.opts.Access != nil {
		st = s.opts.Access.Load()
	}
	trusted := s.trusted(c)
	method := s.chooseMethod(mr.Methods, st, trusted)
	if _, err := c.Write([]byte{statute.VersionSocks5, method}); err != nil {
		return fmt.Errorf("greeting reply: %w", err)
	}
	if method == statute.MethodNoAcceptable {
		if st != nil {
			s.opts.Listener.AuthFailed() // no credentials offered
		}
		return fmt.Errorf("greeting: %w among %v", errNoMethod, mr.Methods)
	}
	if method == statute.MethodUserPassAuth {
		if err := s.authenticate(c, br, ss, st, trusted); err != nil {
			return err
		}
	}
	ss.sticky.Pool = st.PoolFor(ss.usr)
	done, why, admitted := ss.usr.Admit()
	if !admitted {
		ss.limit = why
		// The request must be read before a reply can be sent.
		if _, err := statute.ParseRequest(br); err != nil {
			return fmt.Errorf("request: %w", err)
		}
		return s.fail(c, ss, repGeneralFailure, fmt.Errorf("user %q is over its %s limit", ss.user, why))
	}
	ss.done = done
	return nil
}

// request reads the request; only CONNECT is served.
func (s *Server) request(c net.Conn, br *bufio.Reader, ss *session) (statute.Request, error) {
	req, err := statute.ParseRequest(br)
	if err != nil {
		if errors.Is(err, statute.ErrUnrecognizedAddrType) {
			return req, s.fail(c, ss, statute.RepAddrTypeNotSupported, fmt.Errorf("request: %w", err))
		}
		return req, fmt.Errorf("request: %w", err)
	}
	ss.dst, ss.hasDst = req.DstAddr, true
	if req.Command != statute.CommandConnect && req.Command != statute.CommandAssociate {
		// BIND is not offered.
		return req, s.fail(c, ss, statute.RepCommandNotSupported, fmt.Errorf("request: command %d not supported", req.Command))
	}
	return req, nil
}

// connect dials the request's target from the pool and sends the reply.
func (s *Server) connect(c net.Conn, ss *session, req statute.Request) (net.Conn, error) {
	var target net.Conn
	var src *pool.Source
	var err error
	if req.DstAddr.AddrType == statute.ATYPDomain {
		// DialName refuses an empty name as a bad target (0x01) and sends
		// no DNS query for it.
		target, src, err = s.opts.Dialer.DialName(s.Ctx, req.DstAddr.FQDN, uint16(req.DstAddr.Port), ss.sticky)
	} else {
		ip, _ := netip.AddrFromSlice(req.DstAddr.IP)
		target, src, err = s.opts.Dialer.DialAddr(s.Ctx, netip.AddrPortFrom(ip, uint16(req.DstAddr.Port)), ss.sticky)
	}
	ss.src = src
	s.opts.Metrics.Source(src).Request(metrics.SOCKS5, err)
	if err != nil {
		cl := pool.Classify(err)
		if cl == pool.ClassRateLimited {
			ss.limit = serve.PerIPRate
		}
		return nil, s.fail(c, ss, replyFor(cl), err)
	}
	if err := writeReply(c, statute.RepSuccess, target.LocalAddr()); err != nil {
		target.Close()
		return nil, fmt.Errorf("success reply: %w", err)
	}
	ss.reply = statute.RepSuccess
	return target, nil
}

// chooseMethod applies RFC 1928 method selection. With credentials
// configured only username/password is acceptable, except for a client
// from an --allow-clients network offering no-auth; without, no-auth is
// preferred and a client that offers only username/password is let in
// with any.
func (s *Server) chooseMethod(offered []byte, st *auth.State, trusted bool) byte {
	hasNoAuth := bytes.IndexByte(offered, statute.MethodNoAuth) >= 0
	hasUserPass := bytes.IndexByte(offered, statute.MethodUserPassAuth) >= 0
	needAuth := st != nil && (st.Users != nil || s.opts.Access.HasAllowlist())
	switch {
	case needAuth && trusted && hasNoAuth:
		return statute.MethodNoAuth
	case needAuth && hasUserPass:
		return statute.MethodUserPassAuth
	case needAuth:
		return statute.MethodNoAcceptable
	case hasNoAuth:
		return statute.MethodNoAuth
	case hasUserPass:
		return statute.MethodUserPassAuth
	}
	return statute.MethodNoAcceptable
}

// trusted reports whether c comes from an --allow-clients network.
func (s *Server) trusted(c net.Conn) bool {
	if s.opts.Access == nil {
		return false
	}
	return s.opts.Access.Trusted(clientAddr(c))
}

// clientAddr is c's remote address, invalid if it has none (a pipe).
func clientAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr()
	}
	return netip.Addr{}
}

var (
	errAuthFailed = errors.New("authentication failed")
	errNoMethod   = errors.New("no acceptable auth method")
)

func (s *Server) authenticate(c net.Conn, br *bufio.Reader, ss *session, st *auth.State, trusted bool) error {
	up, err := statute.ParseUserPassRequest(br)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	user, sticky, perr := auth.SplitSession(string(up.User))
	ss.user, ss.sticky = user, sticky
	ok := perr == nil
	var cerr error
	if ok && st != nil && st.Users != nil {
		ss.usr, cerr = s.opts.Access.Check(st, clientAddr(c), []byte(user), up.Pass)
		ok = cerr == nil
	} else if ok && st != nil && !trusted {
		// An allowlist and no users: only its clients get in, whatever
		// they send.
		ok = false
	}
	clear(up.Pass)
	status := statute.AuthSuccess
	if !ok {
		status = statute.AuthFailure
		if !errors.Is(cerr, auth.ErrBackoff) { // counted as a limit hit instead
			s.opts.Listener.AuthFailed()
		}
	}
	if _, err := c.Write([]byte{statute.UserPassAuthVersion, status}); err != nil {
		return fmt.Errorf("auth reply: %w", err)
	}
	switch {
	case perr != nil:
		return fmt.Errorf("%w: %w", errAuthFailed, perr)
	case errors.Is(cerr, auth.ErrBackoff):
		// RFC 1929 has one failure status: the log tells them apart.
		ss.limit = serve.AuthBackoff
		return fmt.Errorf("%w: %w", errAuthFailed, cerr)
	case !ok:
		return errAuthFailed
	}
	return nil
}

// fail sends a failure reply and returns cause.
func (s *Server) fail(c net.Conn, ss *session, rep byte, cause error) error {
	ss.reply = rep
	if err := writeReply(c, rep, nil); err != nil {
		return errors.Join(cause, fmt.Errorf("failure reply: %w", err))
	}
	return cause
}

// writeReply sends a reply; for success, bound is the outbound socket's
// real local address (the pool address and the port the kernel chose).
func writeReply(c net.Conn, rep byte, bound net.Addr) error {
	r := statute.Reply{Version: statute.VersionSocks5, Response: rep,
		BndAddr: statute.AddrSpec{AddrType: statute.ATYPIPv4, IP: net.IPv4zero}}
	var ip net.IP
	var port int
	switch a := bound.(type) {
	case *net.TCPAddr:
		ip, port = a.IP, a.Port
	case *net.UDPAddr: // the relay socket of a UDP ASSOCIATE
		ip, port = a.IP, a.Port
	}
	if ip != nil {
		r.BndAddr.IP, r.BndAddr.Port = ip, port
		if ip.To4() == nil {
			r.BndAddr.AddrType = statute.ATYPIPv6
		} else {
			r.BndAddr.IP = ip.To4()
		}
	}
	_, err := c.Write(r.Bytes())
	return err
}

// replyFor maps a dial failure to its RFC 1928 reply code.
func replyFor(cl pool.Class) byte {
	switch cl {
	case pool.ClassRefused:
		return statute.RepConnectionRefused // 0x05
	case pool.ClassNetUnreachable:
		return statute.RepNetworkUnreachable // 0x03
	case pool.ClassHostUnreachable, pool.ClassDNS, pool.ClassNoSuchHost, pool.ClassTimeout, pool.ClassNoSource:
		return statute.RepHostUnreachable // 0x04
	case pool.ClassForbidden:
		return statute.RepRuleFailure // 0x02, not allowed by ruleset
	}
	return repGeneralFailure
}

// userField adds the session's name to a log line: as "user" only once
// checked against the configured users; any other (no users configured,
// or a failed login) as "unverified_user".
func (ss *session) userField(e *zerolog.Event) *zerolog.Event {
	switch {
	case ss.usr != nil:
		return e.Str("user", ss.user)
	case ss.user != "":
		return e.Str("unverified_user", ss.user)
	}
	return e
}

func (s *Server) logSession(c net.Conn, ss *session, d time.Duration) {
	lvl := zerolog.InfoLevel
	if ss.err != nil && ss.reply != statute.RepSuccess {
		lvl = zerolog.WarnLevel
	}
	e := s.opts.Log.WithLevel(lvl)
	if !e.Enabled() {
		return
	}
	e = e.Str("proto", "socks5").Str("client", c.RemoteAddr().String())
	e = ss.userField(e)
	if ss.hasDst {
		e = e.Str("target", ss.dst.String())
	}
	switch {
	case ss.src != nil && ss.src.Up != nil:
		e = e.Str("src", ss.src.Label) // an upstream entry, without its credentials
	case ss.src != nil:
		e = e.Stringer("src", ss.src.Addr)
	}
	if ss.reply != noReply {
		e = e.Uint8("reply", ss.reply)
	}
	e = e.Int64("up", ss.stats.Up).Int64("down", ss.stats.Down).Dur("dur_ms", d)
	e = ss.limit.Field(timeoutHit(ss).Field(e))
	if ss.err != nil && !isQuietClose(ss.err) {
		e = e.Err(ss.err)
		if ss.reply == noReply {
			// The handshake did not finish; say why in one word too.
			e = e.Str("reason", handshakeReason(ss.err))
		}
	}
	e.Msg("socks5")
}

func handshakeReason(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "handshake-timeout"
	case errors.Is(err, errAuthFailed):
		return "auth-failed"
	case errors.Is(err, errNoMethod):
		return "no-acceptable-method"
	}
	return "bad-handshake"
}

// isQuietClose is a tunnel that ended because a peer reset or closed: an
// ordinary end, not worth an error field.
func isQuietClose(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
