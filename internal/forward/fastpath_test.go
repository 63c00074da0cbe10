package forward

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// mapFastPath is a fast path's map of CIDs to destinations, without the
// program.
type mapFastPath struct {
	mu sync.Mutex
	m  map[[CIDLen]byte]netip.AddrPort
}

func (f *mapFastPath) PutBucket(cid [CIDLen]byte, dst, _ netip.AddrPort, _ uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[cid] = dst
	return nil
}

func (f *mapFastPath) Delete(cid [CIDLen]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, cid)
	return nil
}

func (f *mapFastPath) lookup(_ *testing.T, cid [CIDLen]byte) (netip.AddrPort, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ap, ok := f.m[cid]
	return ap, ok
}

// testFastPath is a fast path under test: its map, and where it sends a
// datagram for a CID.
type testFastPath interface {
	FastPath
	// lookup returns where the fast path sends a datagram for cid, or
	// false if it passes it to the stack.
	lookup(t *testing.T, cid [CIDLen]byte) (netip.AddrPort, bool)
}

// TestReputRace replays, step by step, the forwarding path putting a missed
// CID back into the fast path's map while the registration changes under
// it: the forwarding goroutine has looked the CID up and loaded its
// destination when the registration is removed, or moves to a new address,
// and only then puts the CID back. The map must not keep an entry that
// userspace no longer holds: a CID whose registration is gone must miss, and
// a moved one must not forward to the old address. It runs against a plain
// map here, and against the XDP program on Linux (TestReputRaceXDP).
func TestReputRace(t *testing.T) {
	testReputRace(t, &mapFastPath{m: make(map[[CIDLen]byte]netip.AddrPort)})
}

func testReputRace(t *testing.T, fp testFastPath) {
	c := newTestConn(t, testConfig())
	c.SetFastPath(fp)
	oldAddr := netip.MustParseAddrPort("127.0.0.2:5555")
	newAddr := netip.MustParseAddrPort("127.0.0.3:6666")
	// register registers one CID forwarding to to, as the relay does with a
	// fast path: a rate bucket, then the CID into the map.
	register := func(to netip.AddrPort) ([CIDLen]byte, *Entry, *Dest) {
		t.Helper()
		e, cids := register(t, c, to, 1)
		e.FastBucket = 1
		if err := fp.PutBucket(cids[0], to, netip.AddrPort{}, e.FastBucket); err != nil {
			t.Fatal(err)
		}
		if got, ok := fp.lookup(t, cids[0]); !ok || got != to {
			t.Fatalf("after registering: program sends to %v (%v), want %v", got, ok, to)
		}
		return cids[0], e, e.Dest()
	}

	t.Run("unregistered", func(t *testing.T) {
		cid, e, d := register(oldAddr)
		c.table.Remove(cid, e) // the relay unregisters: table, then map
		fp.Delete(cid)
		if got, ok := fp.lookup(t, cid); ok {
			t.Fatalf("after unregistering: program sends to %v", got)
		}
		c.reput(cid[:], e, d, time.Now().UnixNano()) // the late put
		if got, ok := fp.lookup(t, cid); ok {
			t.Errorf("a CID whose registration is gone stays in the map, forwarding to %v", got)
		}
	})
	t.Run("moved", func(t *testing.T) {
		cid, e, d := register(oldAddr)
		nd, _ := c.NewDest(newAddr) // the relay moves it: destination, then map
		e.SetDest(nd)
		if err := fp.PutBucket(cid, newAddr, netip.AddrPort{}, e.FastBucket); err != nil {
			t.Fatal(err)
		}
		if got, ok := fp.lookup(t, cid); !ok || got != newAddr {
			t.Fatalf("after moving: program sends to %v (%v), want %v", got, ok, newAddr)
		}
		c.reput(cid[:], e, d, time.Now().UnixNano()) // the late put
		if got, ok := fp.lookup(t, cid); ok && got != newAddr {
			t.Errorf("a moved registration's CID forwards to %v, want %v or a miss", got, newAddr)
		}
	})
}
