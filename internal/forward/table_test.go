package forward

import (
	"net/netip"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	tb := NewTable()
	a, b := new(Entry), new(Entry)
	c := [CIDLen]byte{1, 2, 3}
	tb.Insert(c, a)
	tb.Insert(c, b) // c belongs to a: unchanged
	if got := tb.Lookup(c[:]); got != a || tb.Len() != 1 {
		t.Fatalf("after two inserts: entry %p, len %d; want %p and 1", got, tb.Len(), a)
	}
	tb.Remove(c, b) // not b's: unchanged
	if tb.Lookup(c[:]) != a {
		t.Fatal("removing another entry's CID took it away")
	}
	n := 0
	tb.Range(func(k [CIDLen]byte, e *Entry) bool {
		n++
		if k != c || e != a {
			t.Errorf("Range gave %x -> %p, want %x -> %p", k, e, c, a)
		}
		return true
	})
	if n != 1 {
		t.Fatalf("Range visited %d CIDs, want 1", n)
	}
	tb.Remove(c, a)
	if tb.Lookup(c[:]) != nil || tb.Len() != 0 {
		t.Fatalf("after removing: entry %p, len %d; want none", tb.Lookup(c[:]), tb.Len())
	}
}

func TestTargets(t *testing.T) {
	var s Targets
	k := KeyOf(netip.MustParseAddrPort("192.0.2.1:443"))
	if mapped := KeyOf(netip.MustParseAddrPort("[::ffff:192.0.2.1]:443")); mapped != k {
		t.Fatal("an IPv4-mapped address has another key than its IPv4 address")
	}
	if !s.Add(k) || s.Add(k) || !s.Has(&k) || s.Len() != 1 {
		t.Fatal("adding one address twice: want new, then counted, in the set once")
	}
	if s.Remove(k) || !s.Has(&k) {
		t.Fatal("the first of two removals took the address out")
	}
	if !s.Remove(k) || s.Has(&k) || s.Len() != 0 {
		t.Fatal("the second removal left the address in the set")
	}
	if s.Remove(k) {
		t.Fatal("removing an absent address reported it leaving")
	}
}

func TestTokenBucket(t *testing.T) {
	var b TokenBucket
	now := time.Now().UnixNano()
	for i := range 3 {
		if !b.Allow(1, now, 10, 3) {
			t.Fatalf("token %d of a new bucket refused", i)
		}
	}
	if b.Allow(1, now, 10, 3) || b.Tokens() != 0 {
		t.Fatalf("an empty bucket gave a token (tokens %d)", b.Tokens())
	}
	now += int64(100 * time.Millisecond) // one token at 10 per second
	if !b.Allow(1, now, 10, 3) || b.Allow(1, now, 10, 3) {
		t.Fatal("after 100ms at 10/s: want exactly one token")
	}
	if b.Full(now, 10, 3) || !b.Full(now+int64(time.Second), 10, 3) {
		t.Fatal("Full: want false when empty, true a second later")
	}
	if !b.Allow(1<<40, now, 0, 0) {
		t.Fatal("rate 0 refused: want unlimited")
	}
	if got := earned(int64(time.Hour)*1000, 1<<40, 1<<50); got != 1<<50 {
		t.Fatalf("earned over a long time = %d, want the burst", got)
	}
}
