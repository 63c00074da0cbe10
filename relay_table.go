package quicpipe

import (
	"sync"
	"sync/atomic"
)

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
	m  map[CID]*regEntry
	_  [64 - 32]byte // keep shards on separate cache lines
}

func newCIDTable() *cidTable {
	t := new(cidTable)
	for i := range t.shards {
		t.shards[i].m = make(map[CID]*regEntry)
	}
	return t
}

func (t *cidTable) shard(c *CID) *cidShard { return &t.shards[c[CIDLen-1]&(cidShards-1)] }

// lookup returns the registration for the 12-byte cid, or nil.
func (t *cidTable) lookup(cid []byte) *regEntry {
	var c CID
	copy(c[:], cid)
	s := t.shard(&c)
	s.mu.RLock()
	r := s.m[c]
	s.mu.RUnlock()
	return r
}

// insert maps c to r unless c already belongs to a registration.
func (t *cidTable) insert(c CID, r *regEntry) {
	s := t.shard(&c)
	s.mu.Lock()
	if _, ok := s.m[c]; !ok {
		s.m[c] = r
		t.size.Add(1)
	}
	s.mu.Unlock()
}

// remove deletes c if it belongs to r.
func (t *cidTable) remove(c CID, r *regEntry) {
	s := t.shard(&c)
	s.mu.Lock()
	if s.m[c] == r {
		delete(s.m, c)
		t.size.Add(-1)
	}
	s.mu.Unlock()
}
