package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The udp workloads: round trips of small datagrams to an echo through a
// SOCKS5 UDP association per client (udp-rtt), and a steady stream at a
// fixed rate through one association, counting what comes back
// (udp-stream).

// udpEcho answers every datagram with itself, on 127.0.0.1.
type udpEcho struct {
	c    *net.UDPConn
	done chan struct{}
}

func startUDPEcho() (*udpEcho, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(4 << 20)
	e := &udpEcho{c: c, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return e, nil
}

func (e *udpEcho) addr() netip.AddrPort { return e.c.LocalAddr().(*net.UDPAddr).AddrPort() }

func (e *udpEcho) Close() { e.c.Close(); <-e.done }

// udpClient sends datagrams to a target directly, or through a SOCKS5
// association whose control connection it holds.
type udpClient struct {
	ctl  *conn
	sock *net.UDPConn
	to   netip.AddrPort // the relay, or the target directly
	hdr  []byte         // the SOCKS5 UDP header for the target; nil directly
	rbuf []byte
	sbuf []byte
}

func newUDPClient(via proxySpec, target netip.AddrPort) (*udpClient, error) {
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = sock.SetReadBuffer(4 << 20)
	u := &udpClient{sock: sock, to: target, rbuf: make([]byte, 65536)}
	if via.SOCKS == "" {
		return u, nil
	}
	c, err := dial(via.SOCKS, dialTimeout)
	if err != nil {
		sock.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	relay, err := c.socksAssociate(via)
	if err != nil {
		c.Close()
		sock.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	ip := target.Addr().As4()
	u.ctl, u.to = c, relay
	u.hdr = binary.BigEndian.AppendUint16(append([]byte{0, 0, 0, 1}, ip[:]...), target.Port())
	return u, nil
}

func (u *udpClient) Close() {
	u.sock.Close()
	if u.ctl != nil {
		u.ctl.Close()
	}
}

// send sends payload to the target.
func (u *udpClient) send(payload []byte) error {
	b := append(append(u.sbuf[:0], u.hdr...), payload...)
	u.sbuf = b
	_, err := u.sock.WriteToUDPAddrPort(b, u.to)
	return err
}

// recv reads one datagram and returns its payload.
func (u *udpClient) recv() ([]byte, error) {
	n, _, err := u.sock.ReadFromUDPAddrPort(u.rbuf)
	if err != nil {
		return nil, err
	}
	if len(u.hdr) > 0 {
		if n < len(u.hdr) {
			return nil, errors.New("short UDP reply")
		}
		return u.rbuf[len(u.hdr):n], nil
	}
	return u.rbuf[:n], nil
}

// socksAssociate runs a SOCKS5 handshake for UDP ASSOCIATE and returns
// the relay address of the reply.
func (c *conn) socksAssociate(p proxySpec) (netip.AddrPort, error) {
	if err := c.socksAuth(p); err != nil {
		return netip.AddrPort{}, err
	}
	if _, err := c.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		return netip.AddrPort{}, err
	}
	var r [10]byte
	if _, err := io.ReadFull(c.br, r[:]); err != nil {
		return netip.AddrPort{}, err
	}
	if r[1] != 0 || r[3] != 1 {
		return netip.AddrPort{}, fmt.Errorf("UDP ASSOCIATE reply % x", r)
	}
	relay := netip.AddrPortFrom(netip.AddrFrom4([4]byte(r[4:8])), binary.BigEndian.Uint16(r[8:10]))
	if relay.Addr().IsUnspecified() {
		// Some servers name 0.0.0.0: the relay is on the address the
		// control connection reached.
		relay = netip.AddrPortFrom(netip.MustParseAddrPort(c.RemoteAddr().String()).Addr(), relay.Port())
	}
	return relay, nil
}

// runUDPRoundTrips: each worker holds one association (or a direct
// socket) and sends 64-byte datagrams one at a time, waiting for each
// echo.
func runUDPRoundTrips(o runOpts, target netip.AddrPort) result {
	payload := make([]byte, 64)
	return drive(o, "udp-rtt", func() (func(*recorder) ([]byte, error), func()) {
		var u *udpClient
		op := func(*recorder) ([]byte, error) {
			if u == nil {
				var err error
				if u, err = newUDPClient(o.Via, target); err != nil {
					return nil, err
				}
			}
			if err := u.send(payload); err != nil {
				return nil, err
			}
			_ = u.sock.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := u.recv(); err != nil {
				u.Close()
				u = nil
				return nil, err
			}
			return nil, nil
		}
		return op, func() {
			if u != nil {
				u.Close()
			}
		}
	})
}

// runUDPStream sends 1 KiB datagrams at rate bytes per second for d
// through one association (or directly) and counts the echoes: what a
// steady stream loses. Requests is the datagrams sent, Errors those whose
// echo did not come back.
func runUDPStream(o runOpts, target netip.AddrPort, rate int, d time.Duration) result {
	res := result{Workload: "udp-stream", Proxy: o.Name, CPU: -1}
	u, err := newUDPClient(o.Via, target)
	if err != nil {
		res.Errors, res.FirstErr = 1, err.Error()
		return res
	}
	defer u.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if _, err := u.recv(); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	var cpu0 time.Duration
	if o.PID > 0 {
		cpu0 = cpuTime(o.PID)
	}
	const size = 1024
	payload := make([]byte, size)
	every := time.Second / time.Duration(rate/size)
	start := time.Now()
	var sent int64
	for next := start; time.Since(start) < d; next = next.Add(every) {
		time.Sleep(time.Until(next))
		if err := u.send(payload); err == nil {
			sent++
		}
	}
	// Echoes still in flight get a second to arrive.
	_ = u.sock.SetReadDeadline(time.Now().Add(time.Second))
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Requests, res.Bytes = sent, received.Load()*size
	res.Errors = sent - received.Load()
	if res.Errors > 0 {
		res.FirstErr = fmt.Sprintf("%d of %d datagrams not echoed", res.Errors, sent)
	}
	if o.PID > 0 && sent > 0 {
		res.CPU = (cpuTime(o.PID) - cpu0) * 1000 / time.Duration(sent)
	}
	return res
}
