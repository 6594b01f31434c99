package auth

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var errLine = regexp.MustCompile(`^line (\d+): `)

// A users file is operator input, re-read on every SIGHUP: whatever it
// holds, parsing must not panic, and an error must never repeat the
// secret of the line it names (errors go to the log).
func FuzzParseUsers(f *testing.F) {
	for _, seed := range []string{
		"alice:$2y$04$8Kv/tUyNAjXMmKj5qcnO7etQ1lVcPKH3PLTx7K2M4FVVv9geO2O2.",
		"bob:{SHA256}" + strings.Repeat("A", 43) + "= pool=team-a,127.0.0.2 max-conns=3 rate=5/s burst=2",
		"carol:{PLAIN}pw\n# comment\n\ndave:{PLAIN}x rate=0.5",
		"eve:{SHA}abc\nx", "a:b:c d=e", "\x00:\xff{PLAIN}", "frank:not-a-hash-0123456789",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, err := ParseUsers(bytes.NewReader(data))
		if err != nil {
			m := errLine.FindStringSubmatch(err.Error())
			if m == nil {
				return
			}
			n, _ := strconv.Atoi(m[1])
			lines := strings.Split(string(data), "\n")
			if n < 1 || n > len(lines) {
				t.Fatalf("error names line %d of %d: %v", n, len(lines), err)
			}
			fields := strings.Fields(lines[n-1])
			if len(fields) == 0 {
				return
			}
			name, secret, _ := strings.Cut(fields[0], ":")
			if i := strings.Index(secret, "}"); i >= 0 {
				secret = secret[i+1:]
			}
			// Long enough, and with a digit, not to be a word of a message
			// by chance. The name may legitimately be shown, quoted: take it
			// out first, since its escaped form (\x10...) can spell the
			// secret without the secret being shown.
			msg := strings.ReplaceAll(err.Error(), strconv.Quote(name), `""`)
			if len(secret) >= 12 && strings.ContainsAny(secret, "0123456789") && strings.Contains(msg, secret) {
				t.Fatalf("error repeats a secret: %v", err)
			}
			return
		}
		if _, err := Build(specs, nil, nil); err != nil && !strings.Contains(err.Error(), "pool") {
			t.Fatalf("parsed specs do not build: %v", err)
		}
	})
}
