package quicpipe

import (
	"net/netip"
	"sync/atomic"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// setTargetLocked makes d the address whose datagrams reg vouches for,
// keeping the relay's target set (and the XDP program's copy of it) in step.
// A nil d withdraws reg's target. r.regMu must be held.
func (r *Relay) setTargetLocked(reg *regEntry, d *forward.Dest) {
	var k forward.AddrKey
	if d != nil {
		k = forward.KeyOf(d.AP)
		if reg.hasTarget && reg.target == k {
			return
		}
	}
	if reg.hasTarget {
		if r.targets.Remove(reg.target) {
			r.xdpSource(reg.targetAP, false)
		}
		reg.hasTarget = false
	}
	if d == nil {
		return
	}
	reg.target, reg.targetAP, reg.hasTarget = k, d.AP, true
	if r.targets.Add(k) {
		r.xdpSource(d.AP, true)
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
