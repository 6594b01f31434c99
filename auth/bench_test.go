package auth

import (
	"net/netip"
	"strings"
	"testing"
)

// Per-request cost of checking credentials: a SHA-256 user (PROXY_USER,
// {SHA256}, {PLAIN}), a bcrypt user whose credentials are cached (every
// request after the first), and bcrypt uncached at htpasswd's default
// cost 10 (the first request of a credential, and every wrong password):
//
//	go test -run '^$' -bench Check -benchmem ./auth/
func BenchmarkCheck(b *testing.B) {
	sha, _ := Build([]UserSpec{PlainUser("scraper", "a-long-proxy-password")}, nil, nil)
	specs, err := ParseUsers(strings.NewReader(
		"scraper:$2y$10$FhmB6wMlMcdE7UEXjldB7eOais0RHb.C4PoeXDN/ScHrb.j.mx7Ai")) // bcrypt -C 10 of "a-long-proxy-password"
	if err != nil {
		b.Fatal(err)
	}
	bc, err := Build(specs, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	name, pass := []byte("scraper"), []byte("a-long-proxy-password")
	if _, err := bc.Check(nil, netip.Addr{}, name, pass); err != nil {
		b.Fatal("fixture hash does not match: ", err)
	}
	b.Run("sha256", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := sha.Check(nil, netip.Addr{}, name, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bcrypt-cached", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := bc.Check(nil, netip.Addr{}, name, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bcrypt-uncached", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			bc.cache = newVerified(verifiedMax)
			if _, err := bc.Check(nil, netip.Addr{}, name, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
}
