package forward

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
)

// AddrKey is an address and port as the forwarding path compares datagram
// sources: the 16 bytes of the IPv6 address (IPv4 addresses IPv4-mapped) and
// the port, big-endian. Zones are ignored.
type AddrKey [18]byte

// KeyOf returns the key of ap.
func KeyOf(ap netip.AddrPort) AddrKey {
	var k AddrKey
	a := ap.Addr().Unmap().As16()
	copy(k[:16], a[:])
	binary.BigEndian.PutUint16(k[16:], ap.Port())
	return k
}

// targetShards must be a power of two.
const targetShards = 64

// Targets is the set of addresses that some live registration forwards to,
// each with the number of registrations that do. The forwarding path
// forwards a datagram only if its source is in the set (see docs/RELAY.md,
// "Forwarding rule"): a registered peer sends from the address it registered
// from, and an address that never completed a registration, such as another
// relay's or a spoofed one, cannot make the relay send anything.
//
// The zero value is an empty set. Lookups on the forwarding path take only
// one shard's read lock and never allocate; its methods are safe for
// concurrent use.
type Targets struct {
	shards [targetShards]targetShard
	size   atomic.Int64
}

type targetShard struct {
	mu sync.RWMutex
	m  map[AddrKey]int32
	_  [64 - 32]byte // keep shards on separate cache lines
}

func (s *Targets) shard(k *AddrKey) *targetShard {
	return &s.shards[(k[15]^k[17]^k[16]>>3)&(targetShards-1)]
}

// Has reports whether k is the target of a live registration.
func (s *Targets) Has(k *AddrKey) bool {
	sh := s.shard(k)
	sh.mu.RLock()
	_, ok := sh.m[*k]
	sh.mu.RUnlock()
	return ok
}

// Add counts one more registration forwarding to k and reports whether k is
// new to the set.
func (s *Targets) Add(k AddrKey) bool {
	sh := s.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[AddrKey]int32)
	}
	sh.m[k]++
	if sh.m[k] == 1 {
		s.size.Add(1)
		return true
	}
	return false
}

// Remove counts one registration fewer forwarding to k and reports whether
// k left the set.
func (s *Targets) Remove(k AddrKey) bool {
	sh := s.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n, ok := sh.m[k]
	if !ok {
		return false
	}
	if n > 1 {
		sh.m[k] = n - 1
		return false
	}
	delete(sh.m, k)
	s.size.Add(-1)
	return true
}

// Len returns the number of addresses in the set.
func (s *Targets) Len() int { return int(s.size.Load()) }
