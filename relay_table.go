package quicpipe

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// registration is the relay's record of one peer key: the window of CIDs
// derived from it and the address they forward to.
type registration struct {
	key string // the CID key; identifies the registration

	// Read on the forwarding path without locks.
	dest    atomic.Pointer[dest]
	expires atomic.Int64 // unix nanoseconds

	// Forwarding rate caps, touched only on the forwarding path.
	packets, bytes rateLimiter
	// wake is when the forwarding path last asked the janitor to follow
	// this registration (unix nanoseconds); see Relay.wakeFollow.
	wake atomic.Int64

	// Guarded by Relay.regMu.
	first, num uint32
	cids       []CID          // the window's CIDs, cids[i] has index first+i; never modified, only replaced
	gen        uint64         // counts changes of the window, so that a request can tell it moved meanwhile
	src        netip.Prefix   // sourceOf(addr), for per-source accounting
	local      netip.AddrPort // where the registering connection reached the relay
	conn       *quic.Conn     // the HTTP/3 connection of the last registration
	// The address this registration vouches for in Relay.targets.
	target    addrKey
	targetAP  netip.AddrPort
	hasTarget bool
	// xdpBucket is the registration's rate bucket in the XDP program (0:
	// none). Set before its CIDs are published, never changed after.
	xdpBucket uint32
}

// sourceUsage is what the registrations of one source hold.
type sourceUsage struct {
	regs, cids int
}

// cidShards must be a power of two. Peer CIDs are BLAKE2b outputs, so any of
// their bytes spreads them evenly across shards.
const cidShards = 256

// cidTable maps CIDs to registrations. Lookups take only a shard's read lock:
// there is no lock shared by all packets.
type cidTable struct {
	shards [cidShards]cidShard
	size   atomic.Int64
}

type cidShard struct {
	mu sync.RWMutex
	m  map[CID]*registration
	_  [64 - 32]byte // keep shards on separate cache lines
}

func newCIDTable() *cidTable {
	t := new(cidTable)
	for i := range t.shards {
		t.shards[i].m = make(map[CID]*registration)
	}
	return t
}

func (t *cidTable) shard(c *CID) *cidShard { return &t.shards[c[CIDLen-1]&(cidShards-1)] }

// lookup returns the registration for the 12-byte cid, or nil.
func (t *cidTable) lookup(cid []byte) *registration {
	var c CID
	copy(c[:], cid)
	s := t.shard(&c)
	s.mu.RLock()
	r := s.m[c]
	s.mu.RUnlock()
	return r
}

// insert maps c to r unless c already belongs to a registration.
func (t *cidTable) insert(c CID, r *registration) {
	s := t.shard(&c)
	s.mu.Lock()
	if _, ok := s.m[c]; !ok {
		s.m[c] = r
		t.size.Add(1)
	}
	s.mu.Unlock()
}

// remove deletes c if it belongs to r.
func (t *cidTable) remove(c CID, r *registration) {
	s := t.shard(&c)
	s.mu.Lock()
	if s.m[c] == r {
		delete(s.m, c)
		t.size.Add(-1)
	}
	s.mu.Unlock()
}
