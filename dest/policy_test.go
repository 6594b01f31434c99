package dest

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestPolicyDefaults(t *testing.T) {
	p := NewPolicy(nil, []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:7777"), netip.MustParseAddrPort("[::1]:1080")})
	for _, tc := range []struct {
		dst     string
		allowed bool
	}{
		{"203.0.113.9:443", true},
		{"[2001:db8::1]:443", true},
		{"127.0.0.1:80", false},
		{"127.255.255.254:80", false},
		{"[::ffff:127.0.0.1]:80", false},
		{"0.0.0.0:80", false},
		{"[::]:80", false},
		{"[::1]:80", false},
		{"169.254.169.254:80", false},
		{"[::ffff:169.254.169.254]:80", false},
		{"10.1.2.3:80", false},
		{"172.16.0.1:80", false},
		{"172.31.255.255:80", false},
		{"172.32.0.1:80", true},
		{"192.168.1.1:80", false},
		{"100.64.0.1:80", false},
		{"224.0.0.1:80", false},
		{"255.255.255.255:80", false},
		{"[fe80::1]:80", false},
		{"[fd00::1]:80", false},
		{"[ff02::1]:80", false},
		{"198.51.100.7:7777", false}, // rotor listens on 0.0.0.0:7777
		{"198.51.100.7:7778", true},
		// IPv6 forms that carry an IPv4 address are checked as it too.
		{"[::127.0.0.1]:80", false},                 // IPv4-compatible
		{"[::8.8.8.8]:80", false},                   // IPv4-compatible, refused outright
		{"[::ffff:0:127.0.0.1]:80", false},          // IPv4-translated
		{"[::ffff:0:203.0.113.9]:80", true},         // IPv4-translated, public
		{"[64:ff9b::7f00:1]:80", false},             // NAT64 well-known prefix
		{"[64:ff9b::a9fe:a9fe]:80", false},          // NAT64 to the metadata service
		{"[64:ff9b::cb00:7109]:80", true},           // NAT64 to 203.0.113.9
		{"[64:ff9b:1:7f00:1::]:80", false},          // local-use NAT64 (refused outright)
		{"[2002:7f00:1::1]:80", false},              // 6to4 relay of 127.0.0.1
		{"[2002:a9fe:a9fe::1]:80", false},           // 6to4 relay of 169.254.169.254
		{"[2002:cb00:7109::1]:80", true},            // 6to4 of 203.0.113.9
		{"[2001:0:7f00:1::cb00:7109]:80", false},    // Teredo server 127.0.0.1
		{"[2001:0:cb00:7109::80ff:fffe]:80", false}, // Teredo client 127.0.0.1 (bits inverted)
		{"[2001:0:cb00:7109::34ff:8ef6]:80", true},  // Teredo client 203.0.113.9
		{"[2001:db8::7f00:1]:80", true},             // not a transition prefix
	} {
		err := p.Check(netip.MustParseAddrPort(tc.dst))
		if got := err == nil; got != tc.allowed {
			t.Errorf("Check(%s) = %v, want allowed=%v", tc.dst, err, tc.allowed)
		}
		if err != nil && !errors.Is(err, ErrForbidden) {
			t.Errorf("Check(%s): %v does not wrap ErrForbidden", tc.dst, err)
		}
	}
}

func TestPolicyAllowDest(t *testing.T) {
	p := NewPolicy([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:7777")})
	if err := p.Check(netip.MustParseAddrPort("127.0.0.1:80")); err != nil {
		t.Errorf("allowed range refused: %v", err)
	}
	if err := p.Check(netip.MustParseAddrPort("127.0.0.1:7777")); err == nil {
		t.Error("rotor's own listener allowed through --allow-dest: a proxy loop")
	}
	if err := p.Check(netip.MustParseAddrPort("10.0.0.1:80")); err == nil {
		t.Error("range outside --allow-dest allowed")
	}
	// The unspecified addresses reach the host itself: never dialled.
	open := NewPolicy([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, nil)
	for _, dst := range []string{"0.0.0.0:80", "[::]:80", "[::ffff:0.0.0.0]:80", "[64:ff9b::]:80"} {
		if err := open.Check(netip.MustParseAddrPort(dst)); !errors.Is(err, ErrForbidden) {
			t.Errorf("--allow-dest 0.0.0.0/0,::/0: Check(%s) = %v, want refused", dst, err)
		}
	}
	if err := open.Check(netip.MustParseAddrPort("10.0.0.1:80")); err != nil {
		t.Errorf("--allow-dest 0.0.0.0/0: %v", err)
	}
	// An embedded address is refused if either address is: opening the
	// IPv6 form does not open the IPv4 address it carries.
	nat := NewPolicy([]netip.Prefix{netip.MustParsePrefix("64:ff9b::/96")}, nil)
	if err := nat.Check(netip.MustParseAddrPort("[64:ff9b::7f00:1]:80")); !errors.Is(err, ErrForbidden) {
		t.Errorf("NAT64 form of loopback allowed by opening only 64:ff9b::/96: %v", err)
	}
	loop := NewPolicy([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, nil)
	if err := loop.Check(netip.MustParseAddrPort("[64:ff9b::7f00:1]:80")); err != nil {
		t.Errorf("NAT64 form of an opened range refused: %v", err)
	}
	var nilPolicy *Policy
	if err := nilPolicy.Check(netip.MustParseAddrPort("127.0.0.1:80")); err != nil {
		t.Errorf("nil policy refused: %v", err)
	}
}

// The host's own addresses are refused, on any port, until --allow-dest
// opens them, and the set follows SetHostAddrs.
func TestPolicyHostAddrs(t *testing.T) {
	p := NewPolicy([]netip.Prefix{netip.MustParsePrefix("198.51.100.8/32")}, nil)
	public := netip.MustParseAddrPort("198.51.100.7:5432")
	if err := p.Check(public); err != nil {
		t.Fatalf("before the host's addresses are known: %v", err)
	}
	p.SetHostAddrs([]netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8"), netip.MustParseAddr("2001:db8::7")})
	for _, dst := range []string{"198.51.100.7:5432", "198.51.100.7:1", "[::ffff:198.51.100.7]:9100", "[2001:db8::7]:22", "[64:ff9b::c633:6407]:80", "[2002:c633:6407::1]:80"} {
		err := p.Check(netip.MustParseAddrPort(dst))
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "address of this host") {
			t.Errorf("Check(%s) = %v, want refused as the host's own", dst, err)
		}
	}
	if err := p.Check(netip.MustParseAddrPort("198.51.100.8:80")); err != nil {
		t.Errorf("host address opened by --allow-dest refused: %v", err)
	}
	p.SetHostAddrs(nil)
	if err := p.Check(public); err != nil {
		t.Errorf("address removed from the host still refused: %v", err)
	}
	// The kernel's list includes loopback whatever else the host has.
	if err := p.LoadHostAddrs(); err != nil {
		t.Fatal(err)
	}
	if h := *p.host.Load(); len(h) == 0 {
		t.Error("LoadHostAddrs found no address")
	} else if _, ok := h[netip.MustParseAddr("127.0.0.1")]; !ok {
		t.Errorf("LoadHostAddrs missed 127.0.0.1: %v", h)
	}
}

// The spellings inet_aton accepts are the addresses they denote.
func TestParseHost(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":        "127.0.0.1",
		"127.1":            "127.0.0.1",
		"2130706433":       "127.0.0.1",
		"0x7f000001":       "127.0.0.1",
		"0X7F.1":           "127.0.0.1",
		"0177.0.0.1":       "127.0.0.1",
		"169.254.43518":    "169.254.169.254",
		"::ffff:127.0.0.1": "127.0.0.1",
		"[::1]":            "::1",
		"0":                "0.0.0.0",
	} {
		a, ok := ParseHost(in)
		if !ok || a.String() != want {
			t.Errorf("ParseHost(%q) = %v, %v; want %s", in, a, ok, want)
		}
	}
	for _, name := range []string{"example.com", "localhost", "1.2.3.4.5", "256.1.1.1", "127.0.0.", "0x", "08.1.1.1", "", "1e10"} {
		if a, ok := ParseHost(name); ok {
			t.Errorf("ParseHost(%q) = %v, want a name", name, a)
		}
	}
}

// FuzzParseHost: any input parses or not without panicking; what parses
// agrees with netip for plain dotted quads, and the policy refuses every
// spelling of loopback it accepts.
//
//	go test -run '^$' -fuzz FuzzParseHost -fuzztime 20s ./pool/
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "::ffff:127.0.0.1", "[::1]", "example.com", "1.2.3.4.5", "0x", ""} {
		f.Add(s)
	}
	p := NewPolicy(nil, nil)
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := ParseHost(s)
		if !ok {
			return
		}
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			t.Fatalf("ParseHost(%q) = %v: not a plain address", s, a)
		}
		if b, err := netip.ParseAddr(s); err == nil && b.Unmap().WithZone("") != a {
			t.Fatalf("ParseHost(%q) = %v, netip says %v", s, a, b)
		}
		if a.IsLoopback() && p.Check(netip.AddrPortFrom(a, 80)) == nil {
			t.Fatalf("policy allowed loopback spelled %q", s)
		}
	})
}
