package forward

import (
	"sync"
	"sync/atomic"
)

// cidShards must be a power of two. Peer CIDs are BLAKE2b outputs, so any of
// their bytes spreads them evenly across shards.
const cidShards = 256

// Table maps CIDs to entries. Lookups take only a shard's read lock: there
// is no lock shared by all packets. Its methods are safe for concurrent use.
type Table struct {
	shards [cidShards]cidShard
	size   atomic.Int64
}

type cidShard struct {
	mu sync.RWMutex
	m  map[[CIDLen]byte]*Entry
	_  [64 - 32]byte // keep shards on separate cache lines
}

// NewTable returns an empty table.
func NewTable() *Table {
	t := new(Table)
	for i := range t.shards {
		t.shards[i].m = make(map[[CIDLen]byte]*Entry)
	}
	return t
}

func (t *Table) shard(c *[CIDLen]byte) *cidShard { return &t.shards[c[CIDLen-1]&(cidShards-1)] }

// Lookup returns the entry of the 12-byte cid, or nil.
func (t *Table) Lookup(cid []byte) *Entry {
	var c [CIDLen]byte
	copy(c[:], cid)
	s := t.shard(&c)
	s.mu.RLock()
	e := s.m[c]
	s.mu.RUnlock()
	return e
}

// Insert maps c to e unless c already belongs to an entry.
func (t *Table) Insert(c [CIDLen]byte, e *Entry) {
	s := t.shard(&c)
	s.mu.Lock()
	if _, ok := s.m[c]; !ok {
		s.m[c] = e
		t.size.Add(1)
	}
	s.mu.Unlock()
}

// Remove deletes c if it belongs to e.
func (t *Table) Remove(c [CIDLen]byte, e *Entry) {
	s := t.shard(&c)
	s.mu.Lock()
	if s.m[c] == e {
		delete(s.m, c)
		t.size.Add(-1)
	}
	s.mu.Unlock()
}

// Len returns the number of CIDs in the table.
func (t *Table) Len() int { return int(t.size.Load()) }

// Range calls fn for each CID and its entry, one shard at a time with that
// shard read-locked, until fn returns false. fn must not change the table.
func (t *Table) Range(fn func(c [CIDLen]byte, e *Entry) bool) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for c, e := range s.m {
			if !fn(c, e) {
				s.mu.RUnlock()
				return
			}
		}
		s.mu.RUnlock()
	}
}
