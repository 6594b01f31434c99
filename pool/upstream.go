package pool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/sockread"
)

// UpstreamKind is the protocol rotor speaks to an upstream proxy entry.
type UpstreamKind uint8

const (
	SOCKS5Upstream UpstreamKind = iota + 1 // socks5://
	HTTPUpstream                           // http:// (CONNECT)
	HTTPSUpstream                          // https://: HTTP inside TLS to the upstream
)

// IsHTTP reports whether the upstream speaks HTTP (inside TLS or not):
// absolute-form requests go to it as they are.
func (k UpstreamKind) IsHTTP() bool { return k == HTTPUpstream || k == HTTPSUpstream }

// Upstream is a pool entry that is another proxy: connections chosen to
// leave through it are tunnelled by it (SOCKS5 CONNECT, or HTTP CONNECT),
// and the target sees the upstream's address. Its credentials are never
// part of its label, so never in a log line, metric or error.
type Upstream struct {
	Kind UpstreamKind
	Addr string // host:port of the upstream proxy
	User string // empty: no authentication
	Pass string
	// roots verify an https:// upstream's certificate (?ca=FILE); nil:
	// the system's. serverName is the name it must be valid for.
	roots      *x509.CertPool
	serverName string
	// Via is the local address connections to the upstream leave from
	// (?via=ADDR); invalid: the system's choice.
	Via netip.Addr
	// SessionPass appends the client's -session-KEY[-ttl-DUR] to User
	// (?session=pass), so that a session holds on the upstream's own
	// rotation too.
	SessionPass bool
	// Key is the entry as configured, credentials included: what a reload
	// matches an entry by. Never logged.
	Key string
	// Tags name the entry for users' pool= settings (from the pool file).
	// Read and written only while a pool is built, at start or reload.
	Tags []string
	// label is the entry without credentials.
	label string
	// fails counts upstream failures in a row (connect, handshake,
	// authentication), for passive health.
	fails atomic.Int32
	// noUDP is set once the upstream refused UDP ASSOCIATE: associations
	// pass over it from then on.
	noUDP atomic.Bool
}

// Errors of upstream entries. ErrUpstream wraps every failure of the
// upstream itself (it cannot be reached, speaks wrongly or refuses rotor's
// credentials), which counts toward taking the entry out of rotation; an
// upstream's refusal of the target does not.
var (
	ErrUpstream       = errors.New("upstream proxy failed")
	ErrUpstreamAuth   = fmt.Errorf("%w: it refused rotor's credentials for it", ErrUpstream)
	errUpstreamSyntax = errors.New("want socks5://, http:// or https://[user:pass@]host:port")
	// ErrUpstreamNoUDP is an upstream that does not take UDP ASSOCIATE
	// (an HTTP proxy, or a SOCKS5 server answering 0x07).
	ErrUpstreamNoUDP = errors.New("upstream proxy does not relay UDP")
)

// IsUpstreamEntry reports whether a pool entry names an upstream proxy
// rather than a local address or block.
func IsUpstreamEntry(s string) bool { return strings.Contains(s, "://") }

// ParseUpstream parses a pool entry naming an upstream proxy:
// socks5://[user:pass@]host:port or http://[user:pass@]host:port, with an
// optional ?session=pass. Errors never repeat the password.
func ParseUpstream(s string) (*Upstream, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url's errors quote the whole input, password included.
		return nil, fmt.Errorf("upstream entry %s: %w", redact(s), errUpstreamSyntax)
	}
	up := &Upstream{Key: s}
	switch u.Scheme {
	case "socks5", "socks5h":
		up.Kind = SOCKS5Upstream
	case "http":
		up.Kind = HTTPUpstream
	case "https":
		up.Kind = HTTPSUpstream
	default:
		return nil, fmt.Errorf("upstream entry %s: scheme %q: %w", redact(s), u.Scheme, errUpstreamSyntax)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return nil, fmt.Errorf("upstream entry %s: %w", redact(s), errUpstreamSyntax)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("upstream entry %s: port %q: %w", redact(s), port, errUpstreamSyntax)
	}
	up.Addr = net.JoinHostPort(host, port)
	if u.User != nil {
		up.User = u.User.Username()
		up.Pass, _ = u.User.Password()
		if up.Kind == SOCKS5Upstream && (len(up.User) > 255 || len(up.Pass) > 255 || up.User == "") {
			return nil, fmt.Errorf("upstream entry %s: SOCKS5 user name and password are 1-255 bytes", redact(s))
		}
	}
	for k, v := range u.Query() {
		switch {
		case k == "session" && len(v) == 1 && v[0] == "pass":
			up.SessionPass = true
		case k == "ca" && len(v) == 1:
			pem, err := os.ReadFile(v[0])
			if err != nil {
				return nil, fmt.Errorf("upstream entry %s: ca=%s: %w", redact(s), v[0], err)
			}
			up.roots = x509.NewCertPool()
			if !up.roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("upstream entry %s: ca=%s: no PEM certificate in it", redact(s), v[0])
			}
		case k == "via" && len(v) == 1:
			a, err := netip.ParseAddr(v[0])
			if err != nil || a.Zone() != "" || a.IsUnspecified() {
				return nil, fmt.Errorf("upstream entry %s: via=%q: want a local IP address", redact(s), v[0])
			}
			up.Via = a.Unmap()
		default:
			return nil, fmt.Errorf("upstream entry %s: unknown parameter %q (known: session=pass, via=ADDR, ca=FILE)", redact(s), k)
		}
	}
	if up.SessionPass && up.User == "" {
		return nil, fmt.Errorf("upstream entry %s: session=pass needs a user name to append the session to", redact(s))
	}
	scheme := map[UpstreamKind]string{SOCKS5Upstream: "socks5", HTTPUpstream: "http", HTTPSUpstream: "https"}[up.Kind]
	if up.Kind == HTTPSUpstream {
		up.serverName = host
	} else if up.roots != nil {
		return nil, fmt.Errorf("upstream entry %s: ca= is for https:// upstreams", redact(s))
	}
	up.label = scheme + "://" + up.Addr
	if up.User != "" {
		up.label = scheme + "://***@" + up.Addr
	}
	return up, nil
}

// redact is s with anything between "://" and "@" replaced, for an error
// about an entry that did not parse.
func redact(s string) string {
	i := strings.Index(s, "://")
	j := strings.LastIndex(s, "@")
	if i < 0 || j < i {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:i+3] + "***" + s[j:])
}

// Label is the entry without its credentials.
func (u *Upstream) Label() string { return u.label }

// upstreamHandshakeTimeout bounds the upstream's answer to one CONNECT
// (its dial to the target included) when the dialer has no timeout.
const upstreamHandshakeTimeout = 30 * time.Second

// viaUpstream opens a tunnel to host:port through e's upstream.
func (d *Dialer) viaUpstream(ctx context.Context, e Egress, host string, port uint16) (net.Conn, error) {
	return d.throughUpstream(ctx, e, host, port, true)
}

// OpenProxy connects to e's upstream, an HTTP proxy, for a request to
// host:port that rotor will send it in absolute form (with
// ProxyAuthorization), instead of through a CONNECT tunnel. The target
// is checked as for a tunnel; the upstream's failures count as for one.
func (d *Dialer) OpenProxy(ctx context.Context, e Egress, host string, port uint16) (net.Conn, error) {
	return d.throughUpstream(ctx, e, host, port, false)
}

// throughUpstream checks host:port, connects to e's upstream and, when
// tunnel is set, asks it for a tunnel to host:port. A literal address is
// checked against the destination policy first; a name is resolved by
// the upstream, whose own policy applies to what it resolves, except
// names that are this host by definition.
func (d *Dialer) throughUpstream(ctx context.Context, e Egress, host string, port uint16, tunnel bool) (net.Conn, error) {
	up := e.Src.Up
	if ip, ok := dest.ParseHost(host); ok {
		if err := d.policy.Check(netip.AddrPortFrom(ip, port)); err != nil {
			return nil, err
		}
		host = ip.Unmap().String()
	} else if err := d.CheckUpstreamName(host, port); err != nil {
		return nil, err
	}
	if d.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	var start time.Time
	if d.onDial != nil {
		start = time.Now()
	}
	var conn net.Conn
	c, err := d.upstreamConn(ctx, up)
	if err == nil {
		conn, err = upstreamSession(ctx, c, up, e.Session, host, port, tunnel)
		if err != nil {
			c.Close()
		}
	}
	if d.onDial != nil {
		d.onDial(e.Src, time.Since(start), err)
	}
	if tunnel || err != nil {
		// Without a tunnel, the upstream's answer to the request itself
		// says whether it took rotor's credentials (see NoteUpstream).
		d.NoteUpstream(e.Src, err)
	}
	if err != nil {
		return nil, fmt.Errorf("via %s: %w", up.label, err)
	}
	return conn, nil
}

// upstreamSession readies c, a connection to up: TLS for an https://
// upstream, then (tunnel) the handshake for a tunnel to host:port.
func upstreamSession(ctx context.Context, c *net.TCPConn, up *Upstream, sess Session, host string, port uint16, tunnel bool) (net.Conn, error) {
	if up.Kind != HTTPSUpstream {
		if !tunnel {
			return c, nil
		}
		return c, handshake(ctx, c, up, sess, host, port)
	}
	tc := tls.Client(c, &tls.Config{ServerName: up.serverName, RootCAs: up.roots, NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: TLS: %w", ErrUpstream, err)
	}
	if !tunnel {
		return tc, nil
	}
	return httpsConnect(ctx, tc, up.user(sess), up.Pass, host, port)
}

// httpsConnect sends CONNECT over an https:// upstream's TLS connection
// and reads the answer's head through a buffer; bytes read past it (a
// banner the target sent at once) are handed back first by the returned
// connection.
func httpsConnect(ctx context.Context, tc *tls.Conn, user, pass, host string, port uint16) (net.Conn, error) {
	br := bufio.NewReaderSize(tc, 4096)
	err := withDeadline(ctx, tc, func() error {
		if _, err := io.WriteString(tc, connectRequest(user, pass, host, port)); err != nil {
			return fmt.Errorf("%w: write: %w", ErrUpstream, err)
		}
		var head []byte
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return fmt.Errorf("%w: reading the answer to CONNECT: %w", ErrUpstream, err)
			}
			if head = append(head, line...); len(head) > maxUpstreamHead {
				return fmt.Errorf("%w: answer to CONNECT longer than %d bytes", ErrUpstream, maxUpstreamHead)
			}
			if string(line) == "\r\n" || string(line) == "\n" {
				return connectStatus(head)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		return &earlyConn{Conn: tc, pre: sockread.Prefixed{Bytes: append([]byte(nil), early...), Src: tc}}, nil
	}
	return tc, nil
}

// earlyConn is a connection whose first reads return bytes read from it
// already.
type earlyConn struct {
	net.Conn
	pre sockread.Prefixed
}

func (c *earlyConn) Read(p []byte) (int, error) { return c.pre.Read(p) }

// CloseWrite passes a half-close on, as the relay asks of a tunnel.
func (c *earlyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn is the connection under c (see TCPConnOf).
func (c *earlyConn) NetConn() net.Conn { return c.Conn }

// CheckUpstreamName reports whether a name may be sent to an upstream to
// resolve: any but names that are its host by definition (localhost),
// refused as 127.0.0.1 is, unless --allow-dest opens it (the upstream may
// be on this host).
func (d *Dialer) CheckUpstreamName(host string, port uint16) error {
	if h := strings.TrimSuffix(strings.ToLower(host), "."); h == "localhost" || strings.HasSuffix(h, ".localhost") {
		if err := d.policy.Check(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)); err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
	}
	return nil
}

// ProxyAuthorization is the Proxy-Authorization value of rotor's
// credentials for the upstream, with s's session appended to the user
// name under ?session=pass; "" without credentials.
func (u *Upstream) ProxyAuthorization(s Session) string {
	if u.User == "" {
		return ""
	}
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.user(s)+":"+u.Pass))
}

// user is the upstream user name for session s.
func (u *Upstream) user(s Session) string {
	user := u.User
	if u.SessionPass && s.Key != "" {
		user += "-session-" + s.Key
		if s.TTL > 0 {
			user += "-ttl-" + s.TTL.String()
		}
	}
	return user
}

// upstreamConn connects to the upstream proxy itself. The operator chose
// its address: the destination policy does not apply to it.
func (d *Dialer) upstreamConn(ctx context.Context, up *Upstream) (*net.TCPConn, error) {
	// No TCP keepalive probes (four setsockopt calls per connection; the
	// tunnel has rotor's idle timeout); TCP_NODELAY is Go's default. No
	// local address unless via= names one, and then bound without a port
	// (IP_BIND_ADDRESS_NO_PORT): a port taken at bind time cannot reuse
	// one in TIME_WAIT, and a busy gateway runs out of them.
	nd := net.Dialer{KeepAlive: -1}
	if up.Via.IsValid() {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(up.Via, 0))
		nd.Control = bindNoPort
	}
	c, err := nd.DialContext(ctx, "tcp", up.Addr)
	switch {
	case err == nil:
		return c.(*net.TCPConn), nil
	case errors.Is(err, context.Canceled):
		return nil, err // the client left: nobody's failure
	case errors.Is(err, context.DeadlineExceeded):
		// The upstream did not take a TCP connection within the dial
		// timeout: a host that is down or black-holed, which must leave
		// rotation. (A slow answer to CONNECT once connected does not
		// count: the upstream may be waiting on a slow target.)
		return nil, fmt.Errorf("%w: connect: %w", ErrUpstream, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		// No local port left: rotor's side, not the upstream's (and
		// IsLocal tries another entry).
		return nil, fmt.Errorf("connect to upstream %s: %w", up.label, err)
	}
	return nil, fmt.Errorf("%w: connect: %w", ErrUpstream, err)
}

// check reports whether the upstream proxy accepts a TCP connection now:
// what brings an entry that failed back when no health target is set.
func (u *Upstream) check() error {
	if u.Via.IsValid() {
		if err := checkBindable(u.Via); err != nil {
			return fmt.Errorf("upstream %s via=%s: %w", u.label, u.Via, err)
		}
	}
	c, err := net.DialTimeout("tcp", u.Addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("upstream %s: %w: %w", u.label, ErrUpstream, err)
	}
	return c.Close()
}

// NoteUpstream counts an upstream failure (ErrUpstream: a forwarded
// request's 407 too) toward taking the entry out of rotation
// (upstreamFall in a row), and resets the count on success. The health
// prober (upstreamFall 0) leaves that to the health checker.
func (d *Dialer) NoteUpstream(src *Source, err error) {
	switch {
	case d.upstreamFall == 0:
	case err == nil:
		src.Up.fails.Store(0)
	case errors.Is(err, ErrUpstream):
		if int(src.Up.fails.Add(1)) >= d.upstreamFall {
			d.MarkDown(src, err)
		}
	}
}

// handshake asks the upstream on c for a tunnel to host:port, within ctx,
// reading no byte past its answer: the connection is the tunnel after it.
func handshake(ctx context.Context, c *net.TCPConn, up *Upstream, sess Session, host string, port uint16) error {
	return withDeadline(ctx, c, func() error {
		if up.Kind == SOCKS5Upstream {
			return socksConnect(c, up.user(sess), up.Pass, host, port)
		}
		return httpConnect(c, up.user(sess), up.Pass, host, port)
	})
}

// withDeadline runs f, an exchange with an upstream on c, within ctx: c's
// deadline is ctx's (upstreamHandshakeTimeout when it has none), a
// cancelled ctx ends f at once, and an error once ctx has ended is ctx's
// (the client left, or the dial timeout passed while the upstream dialled
// the target: not the upstream's failure).
func withDeadline(ctx context.Context, c net.Conn, f func() error) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(upstreamHandshakeTimeout)
	}
	_ = c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := f()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// socksConnect runs a SOCKS5 CONNECT (RFC 1928, RFC 1929 when user is
// set) on c, one step at a time: servers such as microsocks read each
// message with one read and drop what was pipelined behind it. The
// replies are read to their exact lengths.
func socksConnect(c *net.TCPConn, user, pass, host string, port uint16) error {
	if err := socksAuth(c, user, pass); err != nil {
		return err
	}
	_, err := socksRequest(c, 1, host, port)
	return err
}

// socksAuth sends the greeting and, when user is set, the RFC 1929
// credentials.
func socksAuth(c *net.TCPConn, user, pass string) error {
	var r [2]byte
	greeting := []byte{5, 1, 0}
	if user != "" {
		greeting[2] = 2
	}
	if err := exchange(c, greeting, r[:], "SOCKS5 greeting"); err != nil {
		return err
	}
	switch {
	case r[0] != 5:
		return fmt.Errorf("%w: not a SOCKS5 server (version %d)", ErrUpstream, r[0])
	case r[1] == greeting[2]:
	case r[1] == 0xff:
		return fmt.Errorf("%w: no acceptable authentication method", ErrUpstreamAuth)
	default:
		return fmt.Errorf("%w: chose method %d", ErrUpstream, r[1])
	}
	if user != "" {
		auth := append(append(append([]byte{1, byte(len(user))}, user...), byte(len(pass))), pass...)
		if err := exchange(c, auth, r[:], "SOCKS5 auth"); err != nil {
			return err
		}
		if r[1] != 0 {
			return ErrUpstreamAuth
		}
	}
	return nil
}

// socksRequest sends a SOCKS5 request (cmd 1 CONNECT, 3 UDP ASSOCIATE)
// for host:port and returns the bound address of the reply (invalid when
// it is a name).
func socksRequest(c *net.TCPConn, cmd byte, host string, port uint16) (netip.AddrPort, error) {
	var r [262]byte
	req := []byte{5, cmd, 0}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		a := ip.As4()
		req = append(append(req, 1), a[:]...)
	} else if err == nil {
		a := ip.As16()
		req = append(append(req, 4), a[:]...)
	} else {
		if len(host) > 255 {
			return netip.AddrPort{}, fmt.Errorf("%w: name longer than 255 bytes", ErrBadTarget)
		}
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, port)
	if err := exchange(c, req, r[:5], "SOCKS5 reply"); err != nil {
		return netip.AddrPort{}, err
	}
	if r[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("%w: SOCKS5 reply version %d", ErrUpstream, r[0])
	}
	if r[1] != 0 {
		return netip.AddrPort{}, socksReplyError(r[1])
	}
	// The bound address: its length is in the reply.
	var rest int
	atyp, first := r[3], r[4]
	switch atyp {
	case 1:
		rest = 4 - 1 + 2
	case 4:
		rest = 16 - 1 + 2
	case 3:
		rest = int(first) + 2
	default:
		return netip.AddrPort{}, fmt.Errorf("%w: SOCKS5 reply address type %d", ErrUpstream, atyp)
	}
	if _, err := io.ReadFull(c, r[5:5+rest]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: SOCKS5 reply: %w", ErrUpstream, err)
	}
	bport := binary.BigEndian.Uint16(r[5+rest-2 : 5+rest])
	switch atyp {
	case 1:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(r[4:8])), bport), nil
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(r[4:20])).Unmap(), bport), nil
	}
	return netip.AddrPort{}, nil
}

// exchange writes msg and reads exactly len(reply) bytes of the answer.
func exchange(c *net.TCPConn, msg, reply []byte, what string) error {
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUpstream, what, err)
	}
	if _, err := io.ReadFull(c, reply); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUpstream, what, err)
	}
	return nil
}

// socksReplyError maps an upstream's SOCKS5 failure reply to the error
// classes rotor answers with; these are the target's fault, not the
// upstream's.
func socksReplyError(rep byte) error {
	switch rep {
	case 2:
		return fmt.Errorf("upstream: %w (SOCKS5 reply 2)", dest.ErrForbidden)
	case 3:
		return fmt.Errorf("upstream: %w", syscall.ENETUNREACH)
	case 4:
		return fmt.Errorf("upstream: %w", syscall.EHOSTUNREACH)
	case 5:
		return fmt.Errorf("upstream: %w", syscall.ECONNREFUSED)
	case 6:
		return fmt.Errorf("upstream: %w", syscall.ETIMEDOUT)
	case 7:
		return ErrUpstreamNoUDP
	}
	return fmt.Errorf("upstream: SOCKS5 reply %d", rep)
}

// maxUpstreamHead bounds an HTTP upstream's answer to CONNECT.
const maxUpstreamHead = 16 << 10

// httpConnect sends CONNECT host:port on c and reads the answer's head
// without reading past it (package sockread): bytes the target sends at
// once (a server banner) stay in the socket for the tunnel.
func httpConnect(c *net.TCPConn, user, pass, host string, port uint16) error {
	if _, err := io.WriteString(c, connectRequest(user, pass, host, port)); err != nil {
		return fmt.Errorf("%w: write: %w", ErrUpstream, err)
	}
	head, err := sockread.Through(c, "\r\n\r\n", maxUpstreamHead)
	if err != nil {
		return fmt.Errorf("%w: reading the answer to CONNECT: %w", ErrUpstream, err)
	}
	return connectStatus(head)
}

// connectRequest is a CONNECT head for host:port with Basic credentials
// (none when user is empty).
func connectRequest(user, pass, host string, port uint16) string {
	target := net.JoinHostPort(host, strconv.Itoa(int(port)))
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if user != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"
	}
	return req + "\r\n"
}

// connectStatus reads the status of an answer to CONNECT.
func connectStatus(head []byte) error {
	line, _, _ := bytes.Cut(head, []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return fmt.Errorf("%w: not an HTTP answer to CONNECT: %q", ErrUpstream, line[:min(len(line), 40)])
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return fmt.Errorf("%w: status line %q", ErrUpstream, line[:min(len(line), 40)])
	}
	switch {
	case code >= 200 && code < 300:
		return nil
	case code == 407:
		return ErrUpstreamAuth
	case code == 403:
		return fmt.Errorf("upstream: %w (403)", dest.ErrForbidden)
	case code == 504:
		return fmt.Errorf("upstream: %w (504)", syscall.ETIMEDOUT)
	case code == 502 || code == 503:
		return fmt.Errorf("upstream answered %d: %w", code, syscall.ECONNREFUSED)
	}
	return fmt.Errorf("upstream answered CONNECT with %d", code)
}
