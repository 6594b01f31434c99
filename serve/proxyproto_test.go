package serve

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
)

func v2Header(cmd, fam byte, block []byte) []byte {
	b := append([]byte{}, proxyV2Sig...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(block)))
	return append(b, block...)
}

func v2TCP4(src netip.AddrPort) []byte {
	a := src.Addr().As4()
	block := append(append([]byte{}, a[:]...), 192, 0, 2, 1)
	block = binary.BigEndian.AppendUint16(block, src.Port())
	return binary.BigEndian.AppendUint16(block, 443)
}

// Headers as HAProxy writes them are read to their end and no further;
// malformed, truncated and missing ones are errors.
func TestReadProxyHeader(t *testing.T) {
	tcp6 := make([]byte, 36)
	copy(tcp6, netip.MustParseAddr("2001:db8::7").AsSlice())
	binary.BigEndian.PutUint16(tcp6[32:], 5555)
	for _, tc := range []struct {
		name, header string
		want         string // "" for none (LOCAL, UNKNOWN); "error" for an error
	}{
		{"v1 TCP4", "PROXY TCP4 203.0.113.9 192.0.2.1 40000 443\r\n", "203.0.113.9:40000"},
		{"v1 TCP6", "PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n", "[2001:db8::7]:5555"},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\n", ""},
		{"v1 family mismatch", "PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n", "error"},
		{"v1 port 65536", "PROXY TCP4 203.0.113.9 192.0.2.1 65536 443\r\n", "error"},
		{"v1 too long", "PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n", "error"},
		{"v1 no CRLF", "PROXY TCP4 203.0.113.9 192.0.2.1 1 2\n", "error"},
		{"v2 TCP4", string(v2Header(1, 0x11, v2TCP4(netip.MustParseAddrPort("198.51.100.4:1234")))), "198.51.100.4:1234"},
		{"v2 TCP6 with TLVs", string(v2Header(1, 0x21, append(tcp6, 0x04, 0, 1, 'x'))), "[2001:db8::7]:5555"},
		{"v2 LOCAL", string(v2Header(0, 0x00, nil)), ""},
		{"v2 short block", string(v2Header(1, 0x11, []byte{1, 2, 3})), "error"},
		{"v2 bad command", string(v2Header(7, 0x11, v2TCP4(netip.MustParseAddrPort("198.51.100.4:1")))), "error"},
		{"none", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := target.TCPPair(t)
			go func() { _, _ = a.Write([]byte(tc.header + "AFTER")) }()
			_ = b.SetDeadline(time.Now().Add(2 * time.Second))
			src, err := ReadProxyHeader(b)
			switch {
			case tc.want == "error":
				if err == nil || !errors.Is(err, ErrProxyHeader) {
					t.Fatalf("%v, %v; want an ErrProxyHeader", src, err)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.want == "" && src.IsValid(), tc.want != "" && src.String() != tc.want:
				t.Fatalf("source %v, want %q", src, tc.want)
			}
			rest := make([]byte, 5)
			if _, err := b.Read(rest); err != nil || string(rest) != "AFTER" {
				t.Fatalf("after the header: %q, %v", rest, err)
			}
		})
	}
}

func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.9 192.0.2.1 40000 443\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(v2Header(1, 0x11, v2TCP4(netip.MustParseAddrPort("198.51.100.4:1234"))))
	f.Add(v2Header(1, 0x21, make([]byte, 36)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var src netip.AddrPort
		var err error
		if len(b) >= 16 && string(b[:12]) == string(proxyV2Sig) {
			src, err = parseProxyV2(b[12], b[13], b[16:])
		} else {
			src, err = ParseProxyV1(b)
		}
		if err == nil && src.IsValid() && (src.Addr().Is4In6() || src.Addr().Zone() != "") {
			t.Fatalf("%q: client address %v", b, src)
		}
	})
}
