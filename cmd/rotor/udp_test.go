package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

// A real SOCKS5 UDP client, PySocks (Debian python3-socks), through
// rotor: each association (a new socksocket) leaves from the next pool
// address, and its datagram is answered.
func TestPySocksUDP(t *testing.T) {
	t.Parallel()
	py := ""
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import socks").Run() == nil {
			py = p
			break
		}
	}
	if py == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 with PySocks not installed; .ci/run must install python3-socks")
		}
		t.Skip("python3 with PySocks (python3-socks) not installed")
	}
	echo := target.UDPPeer(t).Addr
	r := startRotor(t)
	host, port, _ := net.SplitHostPort(r.sock)
	got := addresses(t, py, "../../testdata/clients/udp.py", host, port, testUser, testPass,
		echo.Addr().String(), strconv.Itoa(int(echo.Port())), "8")
	seen := map[string]int{}
	for _, a := range got {
		seen[a]++
	}
	wantEach(t, seen, 2)
}

// udpAssoc is a test client's SOCKS5 UDP association.
type udpAssoc struct {
	ctl   net.Conn
	relay netip.AddrPort
	udp   *net.UDPConn
}

// socksUDPAssociate opens a UDP association with the test credentials,
// the client's UDP socket on 127.0.0.1.
func socksUDPAssociate(t *testing.T, sock string) *udpAssoc {
	t.Helper()
	ctl, err := net.Dial("tcp", sock)
	if err != nil {
		t.Fatal(err)
	}
	_ = ctl.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := ctl.Write(append(socksHello(), 5, 3, 0, 1, 0, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4+10)
	if _, err := io.ReadFull(ctl, reply); err != nil || reply[3] != 0 || reply[5] != 0 {
		t.Fatalf("UDP ASSOCIATE: % x, %v", reply, err)
	}
	_ = ctl.SetDeadline(time.Time{})
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := &udpAssoc{ctl: ctl, relay: netip.AddrPortFrom(netip.AddrFrom4([4]byte(reply[8:12])), binary.BigEndian.Uint16(reply[12:14])), udp: u}
	t.Cleanup(a.close)
	return a
}

func (a *udpAssoc) close() { a.ctl.Close(); a.udp.Close() }

// roundTrip sends a datagram to dst and returns the reply's payload.
func (a *udpAssoc) roundTrip(t *testing.T, dst netip.AddrPort) string {
	t.Helper()
	var hdr []byte
	if dst.Addr().Is4() {
		ip := dst.Addr().As4()
		hdr = append([]byte{0, 0, 0, 1}, ip[:]...)
	} else {
		ip := dst.Addr().As16()
		hdr = append([]byte{0, 0, 0, 4}, ip[:]...)
	}
	hdr = binary.BigEndian.AppendUint16(hdr, dst.Port())
	if _, err := a.udp.WriteToUDPAddrPort(append(hdr, "ping"...), a.relay); err != nil {
		t.Fatal(err)
	}
	_ = a.udp.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := a.udp.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no reply through the association: %v", err)
	}
	if n < len(hdr) || buf[3] != hdr[3] {
		t.Fatalf("reply % x", buf[:n])
	}
	return string(buf[len(hdr):n])
}

// UDP ASSOCIATE through SOCKS5 upstream entries: an association that
// picks a rotor exit relays through the exit's own association (the echo
// sees the exit's address); microsocks answers "command not supported"
// the first time it is tried, and its turns pass to the next entry from
// then on. So associations alternate between the local address and the
// exit.
func TestUDPThroughUpstreams(t *testing.T) {
	t.Parallel()
	echo := target.UDPPeer(t).Addr
	exit := exitRotor(t, "127.0.0.3")
	ms, _ := startMicrosocks(t, "127.0.0.5", "u", "p-udp")
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr("127.0.0.2"))}
		c.Upstreams = []*pool.Upstream{
			mustUpstream(t, "socks5://"+testUser+":"+testPass+"@"+exit.sock),
			mustUpstream(t, "socks5://u:p-udp@"+ms),
		}
	})
	var got []string
	for range 10 {
		a := socksUDPAssociate(t, r.sock)
		got = append(got, strings.TrimSpace(a.roundTrip(t, echo)))
		a.close()
	}
	want := strings.Repeat("127.0.0.2 127.0.0.3 ", 5)
	if strings.Join(got, " ")+" " != want {
		t.Errorf("sources in order %v, want 127.0.0.2 and 127.0.0.3 in turn", got)
	}
	logs := r.waitLog(`"src":"socks5://***@` + exit.sock + `"`)
	if !strings.Contains(logs, `"proto":"socks5-udp"`) || strings.Contains(logs, "p-udp") {
		t.Errorf("log lines:\n%s", logs)
	}
}
