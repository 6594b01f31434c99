package httpproxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/serve"
)

// After a few wrong passwords from one address, its requests get 429
// with Retry-After, unchecked, the right password included: not a 407,
// which a browser would answer with a new prompt. The refusal is logged
// and counted as auth-backoff, without the password.
func TestWrongPasswordsBackOff(t *testing.T) {
	logs := &logBuf{}
	var hits serve.Hits
	proxy, _ := testProxy(t, func(o *Options) { o.Log = zerolog.New(logs); o.Hits = &hits })
	rc := dialProxy(t, proxy)
	get := func(pw string) *http.Response {
		t.Helper()
		resp, body, err := rc.do("GET http://198.51.100.1/ HTTP/1.1\r\nHost: 198.51.100.1\r\n"+basic("alice", pw)+"\r\n", "GET")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(body, pw) {
			t.Errorf("error body repeats the password: %q", body)
		}
		return resp
	}
	for i := 0; ; i++ {
		resp := get("guess-" + strings.Repeat("x", i))
		if resp.StatusCode == http.StatusTooManyRequests {
			if i < 3 {
				t.Errorf("backed off after %d wrong passwords: a few mistakes must be allowed", i)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
			break
		}
		if resp.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("wrong password %d: %s", i, resp.Status)
		}
		if i > 20 {
			t.Fatal("no back-off after 20 wrong passwords")
		}
	}
	if resp := get(users["alice"]); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("right password during back-off: %s, want 429 (unchecked)", resp.Status)
	}
	// Counted as the log line is written, just after the answer.
	waitFor(t, func() bool { return hits.Load(serve.AuthBackoff) == 2 }, "auth-backoff counted twice")
	if l := logs.String(); !strings.Contains(l, `"limit":"auth-backoff"`) || strings.Contains(l, "guess-") || strings.Contains(l, users["alice"]) {
		t.Errorf("log lines:\n%s", l)
	}
}
