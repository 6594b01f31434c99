package serve

import (
	"encoding/json"
	"testing"
)

func TestHits(t *testing.T) {
	var h Hits
	for _, x := range []Hit{HeaderTimeout, HeaderTimeout, MaxConns, None} {
		h.Add(x)
	}
	var nilHits *Hits
	nilHits.Add(MaxConns) // counts nothing, does not panic
	b, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int64
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["header-timeout"] != 2 || m["max-conns"] != 1 || m["idle-timeout"] != 0 || len(m) != int(numHits)-1 {
		t.Fatalf("got %v", m)
	}
	for x := None + 1; x < numHits; x++ {
		if x.String() == "" || (hitInfo[x].kind != "timeout" && hitInfo[x].kind != "limit") {
			t.Errorf("hit %d has no name or kind", x)
		}
	}
	if !IdleTimeout.IsTimeout() || AuthBackoff.IsTimeout() {
		t.Error("kinds")
	}
}
