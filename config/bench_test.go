package config

import "testing"

// Per-request cost of the credential check (two SHA-256 digests and two
// constant-time compares): go test -run '^$' -bench . -benchmem ./config/
func BenchmarkCredentialsCheck(b *testing.B) {
	c := NewCredentials("scraper", "a-long-proxy-password")
	user, pass := []byte("scraper"), []byte("a-long-proxy-password")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !c.Check(user, pass) {
			b.Fatal("rejected")
		}
	}
}
