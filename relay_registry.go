package quicpipe

import (
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// regEntry is the relay's record of one peer key: the window of CIDs
// derived from it and the address they forward to.
type regEntry struct {
	// Entry is what the forwarding path reads, without locks: the
	// destination, the expiry, the rate buckets, the fast path's bucket
	// (FastBucket). Its Owner is the regEntry.
	forward.Entry

	key string // the CID key; identifies the registration

	// Guarded by Relay.regMu.
	first, num uint32
	cids       []CID          // the window's CIDs, cids[i] has index first+i; never modified, only replaced
	gen        uint64         // counts changes of the window, so that a request can tell it moved meanwhile
	src        netip.Prefix   // sourceOf(addr), for per-source accounting
	local      netip.AddrPort // where the registering connection reached the relay
	conn       *quic.Conn     // the HTTP/3 connection of the last registration
	// refusedLogged is when followLocked last logged that conn moved to a
	// refused address.
	refusedLogged time.Time
	// The address this registration vouches for in Relay.targets.
	target    forward.AddrKey
	targetAP  netip.AddrPort
	hasTarget bool
	// member is the fleet member that holds the registration ("" for the
	// relay's own: see ApplyRemote). A remote registration has no source
	// (src is the zero Prefix), no connection and no expiry.
	member string
}

// newRegEntry returns a new registration of key, its forwarding entry owned
// by it (see wakeFollow).
func newRegEntry(key string) *regEntry {
	e := &regEntry{key: key}
	e.Owner = e
	return e
}

// sourceUsage is what the registrations of one source hold.
type sourceUsage struct {
	regs, cids int
}

// registry is the relay's table of registrations: which peer key holds
// which window of CIDs, forwarding to which address, until when, and what the
// registrations of each source hold. The Relay calls it with Relay.regMu
// held, and checks its limits (checkLimitsLocked) before a write.
//
// Writes (put, move, remove) are the changes a replicated registry would
// share with other relays; reads (get, count, entries, usage) are local.
// Every implementation keeps the relay's forwarding state, its regIndex, in
// step with the registrations it holds, whoever changed them.
type registry interface {
	// get returns the registration of key, or nil.
	get(key string) *regEntry
	// count returns the number of registrations.
	count() int
	// entries calls fn for each registration until fn returns false; fn
	// may remove the registration it is given.
	entries(fn func(e *regEntry) bool)
	// ownEntries does the same for the registrations this relay holds
	// (those with a source), not for the remote ones of a fleet: they
	// never expire, and the janitor walks only these.
	ownEntries(fn func(e *regEntry) bool)
	// usage returns what the registrations of source src hold.
	usage(src netip.Prefix) sourceUsage
	// put creates the registration of key (e nil) or refreshes e: it
	// installs the window cids, starting at index first, forwarding to d,
	// for source src, until expires. local is where the registering
	// connection qc reached the relay. It returns the registration.
	put(key string, e *regEntry, src netip.Prefix, d *forward.Dest, local netip.AddrPort, qc *quic.Conn,
		first uint32, cids []CID, expires time.Time) *regEntry
	// move forwards e to d, a new address of its peer (from source src),
	// without changing its window.
	move(e *regEntry, src netip.Prefix, d *forward.Dest)
	// remove deletes e and its CIDs.
	remove(e *regEntry)
}

// regIndex is the forwarding state the relay derives from its
// registrations: the CID table, the set of targets and the fast path's
// copies of them. A registry calls it, with Relay.regMu held, on every
// change.
type regIndex interface {
	// created and removed bracket a registration's life.
	created(e *regEntry)
	removed(e *regEntry)
	// setTarget makes d the address e forwards to and vouches for (nil:
	// none).
	setTarget(e *regEntry, d *forward.Dest)
	// addCIDs and removeCIDs publish and withdraw CIDs of e.
	addCIDs(e *regEntry, cids []CID)
	removeCIDs(e *regEntry, cids []CID)
	// moved tells that cids of e, already published, now forward to e's
	// new destination.
	moved(e *regEntry, cids []CID)
}

// memRegistry is the registry of a single relay, in memory.
type memRegistry struct {
	ix        regIndex
	regs      map[string]*regEntry
	own       map[string]*regEntry // the registrations with a source
	perSource map[netip.Prefix]sourceUsage
}

func newMemRegistry(ix regIndex) *memRegistry {
	return &memRegistry{
		ix:        ix,
		regs:      make(map[string]*regEntry),
		own:       make(map[string]*regEntry),
		perSource: make(map[netip.Prefix]sourceUsage),
	}
}

func (m *memRegistry) get(key string) *regEntry           { return m.regs[key] }
func (m *memRegistry) count() int                         { return len(m.regs) }
func (m *memRegistry) usage(src netip.Prefix) sourceUsage { return m.perSource[src] }

func (m *memRegistry) entries(fn func(e *regEntry) bool) {
	for _, e := range m.regs {
		if !fn(e) {
			return
		}
	}
}

func (m *memRegistry) ownEntries(fn func(e *regEntry) bool) {
	for _, e := range m.own {
		if !fn(e) {
			return
		}
	}
}

func (m *memRegistry) put(key string, reg *regEntry, src netip.Prefix, d *forward.Dest, local netip.AddrPort, qc *quic.Conn,
	first uint32, cids []CID, expires time.Time) *regEntry {
	if reg == nil {
		reg = newRegEntry(key)
		m.ix.created(reg)
		m.regs[reg.key] = reg
	}
	m.moveSource(reg, src)
	reg.local, reg.conn = local, qc
	old := reg.SetDest(d)
	m.ix.setTarget(reg, d)
	reg.SetExpires(expires.UnixNano())
	oldFirst, oldCIDs := reg.first, reg.cids
	oldEnd, newEnd := uint64(oldFirst)+uint64(len(oldCIDs)), uint64(first)+uint64(len(cids))
	if old != nil && old.AP != d.AP {
		// The kept part of the window forwards to the new address too (a
		// peer that saw its NAT rebind refreshes at once).
		lo, hi := max(uint64(oldFirst), uint64(first)), min(oldEnd, newEnd)
		var kept []CID
		if lo < hi {
			kept = cids[lo-uint64(first) : hi-uint64(first)]
		}
		m.ix.moved(reg, kept)
	}
	// Move the window: remove what falls out, add what is new.
	var gone, added []CID
	for i, c := range oldCIDs {
		if j := uint64(oldFirst) + uint64(i); j < uint64(first) || j >= newEnd {
			gone = append(gone, c)
		}
	}
	for i, c := range cids {
		if j := uint64(first) + uint64(i); j < uint64(oldFirst) || j >= oldEnd {
			added = append(added, c)
		}
	}
	m.ix.removeCIDs(reg, gone)
	m.ix.addCIDs(reg, added)
	if src.IsValid() {
		u := m.perSource[src]
		u.cids += len(cids) - len(oldCIDs)
		m.perSource[src] = u
	}
	reg.first, reg.num, reg.cids = first, uint32(len(cids)), cids
	reg.gen++
	return reg
}

func (m *memRegistry) move(reg *regEntry, src netip.Prefix, d *forward.Dest) {
	m.moveSource(reg, src)
	reg.SetDest(d)
	m.ix.setTarget(reg, d)
	m.ix.moved(reg, reg.cids)
}

func (m *memRegistry) remove(reg *regEntry) {
	m.ix.removeCIDs(reg, reg.cids)
	m.ix.setTarget(reg, nil)
	m.ix.removed(reg)
	delete(m.regs, reg.key)
	delete(m.own, reg.key)
	m.releaseSource(reg)
	reg.gen++
}

// moveSource accounts reg, and the CIDs it holds, under source src. A
// remote registration (src the zero Prefix) counts under no source.
func (m *memRegistry) moveSource(reg *regEntry, src netip.Prefix) {
	if reg.src == src {
		return
	}
	if reg.src.IsValid() {
		m.releaseSource(reg)
	}
	reg.src = src
	if !src.IsValid() {
		delete(m.own, reg.key)
		return
	}
	m.own[reg.key] = reg
	u := m.perSource[src]
	u.regs++
	u.cids += len(reg.cids)
	m.perSource[src] = u
}

// releaseSource takes reg out of its source's usage.
func (m *memRegistry) releaseSource(reg *regEntry) {
	if !reg.src.IsValid() {
		return
	}
	u := m.perSource[reg.src]
	u.regs--
	u.cids -= len(reg.cids)
	if u.regs <= 0 {
		delete(m.perSource, reg.src)
	} else {
		m.perSource[reg.src] = u
	}
}

// relayIndex is the Relay as its registry's regIndex.
type relayIndex Relay

func (x *relayIndex) created(e *regEntry) { (*Relay)(x).xdpTakeBucket(e) }
func (x *relayIndex) removed(e *regEntry) { (*Relay)(x).xdpReleaseBucket(e) }

func (x *relayIndex) setTarget(e *regEntry, d *forward.Dest) { (*Relay)(x).setTargetLocked(e, d) }

func (x *relayIndex) addCIDs(e *regEntry, cids []CID) {
	for _, c := range cids {
		x.table.Insert(c, &e.Entry)
	}
	(*Relay)(x).xdpPut(cids, e)
}

func (x *relayIndex) removeCIDs(e *regEntry, cids []CID) {
	for _, c := range cids {
		x.table.Remove(c, &e.Entry)
	}
	(*Relay)(x).xdpDelete(cids)
}

func (x *relayIndex) moved(e *regEntry, cids []CID) {
	(*Relay)(x).xdpPut(cids, e)
	x.stats.rebinds.Add(1)
}
