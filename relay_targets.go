package quicpipe

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
)

// addrKey is an address and port as the forwarding path compares datagram
// sources: the 16 bytes of the IPv6 address (IPv4 addresses IPv4-mapped) and
// the port, big-endian. Zones are ignored.
type addrKey [18]byte

func keyOf(ap netip.AddrPort) addrKey {
	var k addrKey
	a := ap.Addr().Unmap().As16()
	copy(k[:16], a[:])
	binary.BigEndian.PutUint16(k[16:], ap.Port())
	return k
}

// targetShards must be a power of two.
const targetShards = 64

// targetSet is the set of addresses that some live registration forwards to,
// each with the number of registrations that do. The relay forwards a
// datagram only if its source is in the set (see docs/RELAY.md, "Forwarding
// rule"): a registered peer sends from the address it registered from, and an
// address that never completed a registration, such as another relay's or a
// spoofed one, cannot make the relay send anything.
//
// Changes are made with Relay.regMu held; lookups on the forwarding path take
// only one shard's read lock and never allocate.
type targetSet struct {
	shards [targetShards]targetShard
	size   atomic.Int64
}

type targetShard struct {
	mu sync.RWMutex
	m  map[addrKey]int32
	_  [64 - 32]byte // keep shards on separate cache lines
}

func (s *targetSet) shard(k *addrKey) *targetShard {
	return &s.shards[(k[15]^k[17]^k[16]>>3)&(targetShards-1)]
}

// has reports whether k is the target of a live registration.
func (s *targetSet) has(k *addrKey) bool {
	sh := s.shard(k)
	sh.mu.RLock()
	_, ok := sh.m[*k]
	sh.mu.RUnlock()
	return ok
}

// add counts one more registration forwarding to k and reports whether k is
// new to the set.
func (s *targetSet) add(k addrKey) bool {
	sh := s.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[addrKey]int32)
	}
	sh.m[k]++
	if sh.m[k] == 1 {
		s.size.Add(1)
		return true
	}
	return false
}

// remove counts one registration fewer forwarding to k and reports whether
// k left the set.
func (s *targetSet) remove(k addrKey) bool {
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

// setTargetLocked makes d the address whose datagrams reg vouches for,
// keeping the relay's target set (and the XDP program's copy of it) in step.
// A nil d withdraws reg's target. r.regMu must be held.
func (r *Relay) setTargetLocked(reg *regEntry, d *dest) {
	var k addrKey
	if d != nil {
		k = keyOf(d.ap)
		if reg.hasTarget && reg.target == k {
			return
		}
	}
	if reg.hasTarget {
		if r.targets.remove(reg.target) {
			r.xdpSource(reg.targetAP, false)
		}
		reg.hasTarget = false
	}
	if d == nil {
		return
	}
	reg.target, reg.targetAP, reg.hasTarget = k, d.ap, true
	if r.targets.add(k) {
		r.xdpSource(d.ap, true)
	}
}

// localAddrs are the addresses of the relay's host. A target on the relay's
// port at one of them would be the relay itself, or another relay beside it.
type localAddrs struct {
	rd  *addrReader // nil if it could not be opened: only loopback counts
	set atomic.Pointer[map[netip.Addr]struct{}]
}

// refresh reads the host's interface addresses. It keeps the previous set if
// they cannot be read.
func (l *localAddrs) refresh() {
	if l.rd == nil {
		return
	}
	as, err := l.rd.read()
	if err != nil {
		return
	}
	m := make(map[netip.Addr]struct{}, len(as))
	for _, a := range as {
		m[a.Unmap().WithZone("")] = struct{}{}
	}
	l.set.Store(&m)
}

// has reports whether a is an address of the relay's host: one of its
// interface addresses, any loopback address, or an unspecified one.
func (l *localAddrs) has(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	if m := l.set.Load(); m != nil {
		_, ok := (*m)[a]
		return ok
	}
	return false
}
