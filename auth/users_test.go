package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func bcryptLine(t testing.TB, name, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return name + ":" + strings.Replace(string(h), "$2a$", "$2y$", 1)
}

func testPool(t testing.TB) *pool.Pool {
	t.Helper()
	p, err := newPool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
		netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.5")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseUsersAndCheck(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret-b"))
	file := strings.Join([]string{
		"# team users",
		bcryptLine(t, "alice", "s3cret-a"),
		"bob:{SHA256}" + base64.StdEncoding.EncodeToString(sum[:]) + "  pool=team-a max-conns=3 rate=5/s burst=2",
		"",
		"carol:{SHA256}" + hex.EncodeToString(sum[:]) + " pool=127.0.0.5",
		"dave:{PLAIN}plain-d",
	}, "\n")
	specs, err := ParseUsers(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 4 || specs[1].Line != 3 || specs[1].MaxConns != 3 || specs[1].Rate != 5 || specs[1].Burst != 2 {
		t.Fatalf("specs %+v", specs)
	}
	p := testPool(t)
	tags := map[string][]netip.Prefix{"team-a": {netip.MustParsePrefix("127.0.0.3/32"), netip.MustParsePrefix("127.0.0.4/32")}}
	u, err := Build(specs, p, tags)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pass string
		ok         bool
	}{
		{"alice", "s3cret-a", true}, {"alice", "s3cret-a", true}, {"alice", "s3cret-b", false}, {"alice", "", false},
		{"bob", "s3cret-b", true}, {"bob", "s3cret-a", false},
		{"carol", "s3cret-b", true}, {"dave", "plain-d", true}, {"dave", "{PLAIN}plain-d", false},
		{"eve", "s3cret-a", false}, {"", "", false},
	} {
		usr, err := u.Check(nil, netip.Addr{}, []byte(tc.name), []byte(tc.pass))
		if (err == nil) != tc.ok || (tc.ok && usr.Name != tc.name) {
			t.Errorf("Check(%q, %q) = %v, %v; want ok %v", tc.name, tc.pass, usr, err, tc.ok)
		}
	}
	// The user's pool is exactly its entries, and rotates among them.
	bob, _ := u.Check(nil, netip.Addr{}, []byte("bob"), []byte("s3cret-b"))
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		s, _ := bob.Pool.Pick(pool.IPv4)
		seen[s.Label]++
	}
	if len(seen) != 2 || seen["127.0.0.3"] != 5 || seen["127.0.0.4"] != 5 {
		t.Errorf("bob's picks %v, want 127.0.0.3 and .4 alternately", seen)
	}
	alice, _ := u.Check(nil, netip.Addr{}, []byte("alice"), []byte("s3cret-a"))
	if alice.Pool != nil {
		t.Error("alice has no pool= and must use the whole pool")
	}
}

// A wrong password is never cached; a right one is, and a reload (a new
// Users) starts with an empty cache.
func TestBcryptCache(t *testing.T) {
	specs, err := ParseUsers(strings.NewReader(bcryptLine(t, "alice", "right")))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := Build(specs, nil, nil)
	for i := 0; i < 3; i++ {
		if _, err := u.Check(nil, netip.Addr{}, []byte("alice"), []byte("wrong")); err == nil {
			t.Fatal("wrong password accepted")
		}
	}
	if u.cache.n.Load() != 0 {
		t.Fatalf("%d entries cached after failures", u.cache.n.Load())
	}
	if _, err := u.Check(nil, netip.Addr{}, []byte("alice"), []byte("right")); err != nil {
		t.Fatal(err)
	}
	usr := u.byName["alice"]
	if !u.cache.has(credentialKey([]byte("alice"), []byte("right")), usr) {
		t.Fatal("a verified credential was not cached")
	}
	if u.cache.has(credentialKey([]byte("alice"), []byte("wrong")), usr) {
		t.Fatal("a wrong credential is in the cache")
	}
	// Bounded: past the cap the cache starts over.
	v := newVerified(3)
	for i := 0; i < 10; i++ {
		v.add(credentialKey([]byte{byte(i)}, nil), usr)
	}
	if v.n.Load() > 3 {
		t.Fatalf("cache holds %d entries, cap 3", v.n.Load())
	}
	u2, _ := Build(specs, nil, nil)
	if u2.cache.n.Load() != 0 {
		t.Fatal("a new Users shares the old cache")
	}
}

func TestParseUsersErrors(t *testing.T) {
	good := bcryptLine(t, "alice", "x")
	for file, want := range map[string]string{
		"alice":             "line 1: want name:secret",
		"# c\nalice:secret": "line 2: user \"alice\": unknown password format",
		good + "\n" + good:  "line 2: user \"alice\" already defined on line 1",
		"alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=": "SHA-1 and MD5",
		"alice:$apr1$abc$def":                     "SHA-1 and MD5",
		"alice:$2y$10$tooshort":                   "bad bcrypt hash",
		"alice:$2y$17$" + strings.Repeat("a", 53): "bcrypt cost 17: want at most 16",
		"alice:$2a$30$" + strings.Repeat("a", 53): "bcrypt cost 30: want at most 16",
		"alice:{SHA256}abc":                       "32-byte digest",
		"alice:{PLAIN}":                           "empty password",
		"alice:{PLAIN}x pool":                     "setting 1 after the password is not key=value",
		"alice:{PLAIN}my secret-part2":            "setting 1 after the password is not key=value",
		"alice:{PLAIN}x max-conns=1 colour=red":   "setting 2 after the password is unknown",
		"alice:{PLAIN}x max-conns=0":              "max-conns",
		"alice:{PLAIN}x rate=fast":                "rate: want requests per second",
		"alice:{PLAIN}x burst=3":                  "burst without rate",
		"a:b:{PLAIN}x":                            "unknown password format",
		"al-session-x:{PLAIN}x":                   "'-session-'",
		"":                                        "no users",
	} {
		_, err := ParseUsers(strings.NewReader(file))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", file, err, want)
		}
		for _, line := range strings.Split(file, "\n") {
			_, secret, _ := strings.Cut(strings.Fields(line + " x")[0], ":")
			if len(secret) >= 6 && err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%q: error shows the secret: %v", file, err)
			}
		}
	}
	// Part of a {PLAIN} password after white space must not be echoed.
	if _, err := ParseUsers(strings.NewReader("alice:{PLAIN}my secret-part2")); err == nil || strings.Contains(err.Error(), "secret-part2") {
		t.Errorf("password with a space: %v", err)
	}
	p := testPool(t)
	specs, _ := ParseUsers(strings.NewReader("alice:{PLAIN}x\nbob:{PLAIN}y pool=team-z"))
	if _, err := Build(specs, p, nil); err == nil || !strings.Contains(err.Error(), `line 2: user "bob": pool "team-z"`) {
		t.Errorf("unknown tag: %v", err)
	}
	specs, _ = ParseUsers(strings.NewReader("bob:{PLAIN}y pool=127.0.0.9"))
	if _, err := Build(specs, p, nil); err == nil || !strings.Contains(err.Error(), "127.0.0.9/32 is not an entry of the pool") {
		t.Errorf("address outside the pool: %v", err)
	}
}

func TestAdmit(t *testing.T) {
	specs, _ := ParseUsers(strings.NewReader("a:{PLAIN}x max-conns=2\nb:{PLAIN}x rate=1/s burst=3"))
	u, _ := Build(specs, nil, nil)
	a, b := u.byName["a"], u.byName["b"]
	d1, _, ok1 := a.Admit()
	d2, _, ok2 := a.Admit()
	_, why, ok3 := a.Admit()
	if !ok1 || !ok2 || ok3 || why != serve.UserMaxConns {
		t.Fatalf("max-conns 2: %v %v %v %q", ok1, ok2, ok3, why)
	}
	d1()
	if d, _, ok := a.Admit(); !ok {
		t.Fatal("a released slot was not given back")
	} else {
		d()
	}
	d2()
	n := 0
	for i := 0; i < 10; i++ {
		if _, why, ok := b.Admit(); ok {
			n++
		} else if why != serve.UserRate {
			t.Fatalf("why %q", why)
		}
	}
	if n != 3 {
		t.Fatalf("rate 1/s burst 3: %d of 10 at once admitted, want 3", n)
	}
	var none *User
	if _, _, ok := none.Admit(); !ok {
		t.Fatal("no user: no limits")
	}
}

// The users file shown in README parses, and its passwords are the ones
// it was made from (alice-password, bob-password, correct-horse).
func TestREADMEUsersFile(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "# name:secret [settings]\n")
	if !ok {
		t.Fatal("README has no users file example")
	}
	block, _, _ := strings.Cut(rest, "```")
	specs, err := ParseUsers(strings.NewReader(block))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(specs, nil, nil); err == nil || !strings.Contains(err.Error(), "pool") {
		t.Fatalf("want the pool= settings to need a pool: %v", err)
	}
	for i := range specs {
		specs[i].PoolRefs = nil
	}
	u, err := Build(specs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, pass := range map[string]string{"alice": "alice-password", "bob": "bob-password", "carol": "correct-horse"} {
		if _, err := u.Check(nil, netip.Addr{}, []byte(name), []byte(pass)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// With bcrypt users, an unknown name is checked against a bcrypt hash of
// the highest cost in use, so that it costs what a wrong password costs;
// without, no bcrypt work is done for it.
func TestUnknownNameCostsAWrongPassword(t *testing.T) {
	specs, err := ParseUsers(strings.NewReader(bcryptLine(t, "alice", "x") + "\n" +
		"bob:$2y$05$" + strings.Repeat("a", 53) + "\ncarol:{PLAIN}y"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := Build(specs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := bcrypt.Cost(u.dummy); err != nil || c != 5 {
		t.Fatalf("dummy hash cost %d, %v; want 5, the highest in the file", c, err)
	}
	// A mismatch (not a format error) means the whole key schedule ran.
	for _, c := range []int{bcrypt.MinCost, 5, 10, MaxBcryptCost} {
		d := dummyHash(c)
		if got, err := bcrypt.Cost(d); err != nil || got != c {
			t.Fatalf("dummyHash(%d): cost %d, %v", c, got, err)
		}
		if c <= 5 {
			if err := bcrypt.CompareHashAndPassword(d, []byte("rotor: no such user")); !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
				t.Fatalf("dummyHash(%d) compare: %v, want a mismatch", c, err)
			}
		}
	}
	if _, err := u.Check(nil, netip.Addr{}, []byte("mallory"), []byte("x")); err == nil {
		t.Fatal("unknown user accepted")
	}
	sha := singleUser("carol", "y")
	if sha.dummy != nil {
		t.Fatal("no bcrypt users, yet a dummy bcrypt hash")
	}
}

// newPool is a pool of single addresses.
func newPool(addrs []netip.Addr, s pool.Strategy) (*pool.Pool, error) {
	var entries []netip.Prefix
	for _, a := range addrs {
		entries = append(entries, pool.Single(a))
	}
	return pool.NewEntries(entries, nil, s)
}

// singleUser is a Users of one plain-password user with no limits.
func singleUser(name, pass string) *Users {
	u, _ := Build([]UserSpec{PlainUser(name, pass)}, nil, nil)
	return u
}
