package tunnel

import (
	"encoding/json"
	"testing"
)

func TestHits(t *testing.T) {
	var h Hits
	for _, n := range []string{"header-timeout", "header-timeout", "max-conns", "no-such-limit", ""} {
		h.Add(n)
	}
	var nilHits *Hits
	nilHits.Add("max-conns") // counts nothing, does not panic
	b, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int64
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["header-timeout"] != 2 || m["max-conns"] != 1 || m["idle-timeout"] != 0 || len(m) != 13 {
		t.Fatalf("got %v", m)
	}
}
