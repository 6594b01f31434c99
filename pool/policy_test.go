package pool

import (
	"errors"
	"net/netip"
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
	var nilPolicy *Policy
	if err := nilPolicy.Check(netip.MustParseAddrPort("127.0.0.1:80")); err != nil {
		t.Errorf("nil policy refused: %v", err)
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

// Odd spellings and names are checked as the address actually dialled.
func TestDialerEnforcesPolicy(t *testing.T) {
	res := offline // localhost from /etc/hosts
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Resolver: res, Policy: NewPolicy(nil, nil)})
	for _, target := range []string{"127.0.0.1:1", "127.1:1", "2130706433:1", "0x7f000001:1", "[::ffff:127.0.0.1]:1", "localhost:1", "169.254.169.254:80"} {
		_, _, err := d.Dial(t.Context(), target, Session{})
		if !errors.Is(err, ErrForbidden) || Classify(err) != ClassForbidden {
			t.Errorf("Dial(%s): %v, want ErrForbidden", target, err)
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
