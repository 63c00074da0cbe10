package forward

import (
	"net/netip"
	"sync"
	"time"
)

// reputLimit bounds the set of CIDs put back recently (fastPath.reput): when
// it is full, it starts again empty.
const reputLimit = 1 << 16

// reputEvery is how often, at most, the forwarding path puts one CID back
// into the fast path's map (nanoseconds).
const reputEvery = int64(time.Second)

// fastPath is the forwarding path's handle on a kernel fast path, shared by
// the engine's readers. It is used only when the fast path missed a packet.
type fastPath struct {
	fp FastPath
	// reput remembers when the forwarding path last put a CID back, so that
	// a burst of missed packets costs one map update per CID per second.
	// Readers share it under mu.
	mu    sync.Mutex
	reput map[[CIDLen]byte]int64
}

// reput puts a CID the fast path missed back into its map, at most once per
// CID per reputEvery.
func (c *Conn) reput(cid []byte, e *Entry, d *Dest, now int64) {
	if e.FastBucket == 0 {
		return
	}
	x := c.fast
	var k [CIDLen]byte
	copy(k[:], cid)
	x.mu.Lock()
	if last, ok := x.reput[k]; ok && now-last < reputEvery {
		x.mu.Unlock()
		return
	}
	if len(x.reput) >= reputLimit {
		clear(x.reput)
	}
	x.reput[k] = now
	x.mu.Unlock()
	if x.fp.PutBucket(k, d.AP, netip.AddrPort{}, e.FastBucket) != nil {
		return
	}
	// The registration may have changed since the caller looked the CID up
	// and loaded d: removed (its CIDs deleted from the map) or moved (its
	// CIDs put again with the new address). Then this put brought back an
	// entry that nothing would ever delete or correct. Those changes update
	// the table and the destination before the map, so a check after the
	// put sees them: take the entry out again, and let the next packet miss
	// and come here with the current destination.
	if e := c.table.Lookup(cid); e == nil || e.dest.Load().AP != d.AP {
		x.fp.Delete(k)
		x.mu.Lock()
		delete(x.reput, k)
		x.mu.Unlock()
	}
}
