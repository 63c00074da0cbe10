package quicpipe

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// FleetRecord is a registration as the members of a relay fleet share it:
// a peer's CID key, its window of CIDs, the address they forward to and the
// member that holds the peer's registration. A record says nothing of the
// registration's expiry: refreshes stay with the member that holds it, and a
// remote record lives until that member removes it or is found dead (see
// ApplyRemote).
type FleetRecord struct {
	// Key is the peer's CID key; the CIDs are derived from it.
	Key []byte
	// First and Num are the window: the CIDs of indexes First to
	// First+Num-1.
	First, Num uint32
	// Target is the address the CIDs forward to.
	Target netip.AddrPort
	// Member names the fleet member that holds the registration. The
	// Relay leaves it empty in the records it gives its Replicator.
	Member string
}

// Replicator shares a relay's own registrations with the other members of
// a relay fleet (RelayConfig.Replicator; package fleet has one on NATS).
// The Relay calls it with its registration table locked, so its methods
// must return at once: queue the change and write it elsewhere. Calls for
// one key come in the order of the changes.
type Replicator interface {
	// Put tells that the relay holds rec: created, moved to a new address,
	// its window slid, or taken over from another member. It is not
	// called for a refresh that changes nothing but the expiry.
	Put(rec FleetRecord)
	// Remove tells that the relay no longer holds a registration of key
	// (unregistered, expired).
	Remove(key []byte)
}

// Errors of ApplyRemote, besides ErrRelayClosing (the relay is closing or
// draining).
var (
	// ErrRemoteRecord is a FleetRecord that cannot be applied: a key,
	// window, target or member out of range.
	ErrRemoteRecord = errors.New("quicpipe: malformed fleet record")
	// ErrRemoteFull is a FleetRecord refused because the relay holds the
	// maximum of registrations or CIDs (RelayConfig.MaxRegistrations,
	// MaxCIDs).
	ErrRemoteFull = errors.New("quicpipe: relay table full")
)

// noExpiry is the expiry of a remote registration, in Unix nanoseconds: it
// lives until removed.
const noExpiry = math.MaxInt64

// ApplyRemote installs rec, a registration held by another member of a
// fleet, in the relay's table: the relay then forwards datagrams for its
// CIDs from any address that a live registration forwards to, to
// rec.Target, as it does for its own registrations (the XDP fast path
// included). A record for a key the relay holds replaces the relay's own
// registration (the peer registered elsewhere since: the last writer
// wins), without telling the Replicator.
//
// A remote registration counts toward MaxRegistrations and MaxCIDs, but
// under no source: per-source limits stay with the member that holds it. It
// does not expire: RemoveRemote or RemoveMember removes it. The target is
// checked as a peer's observed address is (RelayConfig.AllowPrivateTargets).
func (r *Relay) ApplyRemote(rec FleetRecord) error {
	if n := len(rec.Key); n < MinCIDKeyLen || n > r.cfg.MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, not %d to %d", ErrRemoteRecord, n, MinCIDKeyLen, r.cfg.MaxKeyLen)
	}
	if rec.Num < 1 || int64(rec.Num) > int64(r.cfg.MaxCIDsPerRegistration) || rec.First < 1 ||
		uint64(rec.First)+uint64(rec.Num)-1 > uint64(^uint32(0)) {
		return fmt.Errorf("%w: window first %d num %d", ErrRemoteRecord, rec.First, rec.Num)
	}
	if rec.Member == "" {
		return fmt.Errorf("%w: no member", ErrRemoteRecord)
	}
	local := netAddrPort(r.udpAddr().AddrPort())
	d, err := r.newDest(netAddrPort(rec.Target), local)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRemoteRecord, err)
	}
	key := string(rec.Key)
	for attempt := 0; attempt < 3; attempt++ {
		r.regMu.Lock()
		reg := r.regs.get(key)
		var gen uint64
		var oldFirst uint32
		var oldCIDs []CID
		if reg != nil {
			gen, oldFirst, oldCIDs = reg.gen, reg.first, reg.cids
		}
		r.regMu.Unlock()

		cids := slideWindow(rec.Key, oldFirst, oldCIDs, rec.First, rec.Num)

		r.regMu.Lock()
		if cur := r.regs.get(key); cur != reg || (reg != nil && reg.gen != gen) {
			r.regMu.Unlock()
			continue
		}
		if err := r.checkRemoteLocked(reg, rec.Num); err != nil {
			r.regMu.Unlock()
			return err
		}
		wasRemote := reg != nil && reg.member != ""
		reg = r.regs.put(key, reg, netip.Prefix{}, d, local, nil, rec.First, cids, time.Unix(0, noExpiry))
		reg.member = rec.Member
		if !wasRemote {
			r.remoteRegs++
		}
		r.regMu.Unlock()
		return nil
	}
	return fmt.Errorf("quicpipe: the registration of this key kept changing while applying a fleet record")
}

// checkRemoteLocked decides whether a remote registration of num CIDs may
// replace reg (nil for a new key). r.regMu must be held.
func (r *Relay) checkRemoteLocked(reg *regEntry, num uint32) error {
	if r.closing {
		return ErrRelayClosing
	}
	var held int
	if reg == nil {
		if r.regs.count() >= r.cfg.MaxRegistrations {
			return fmt.Errorf("%w: %d registrations", ErrRemoteFull, r.cfg.MaxRegistrations)
		}
	} else {
		held = int(reg.num)
	}
	if added := int64(num) - int64(held); added > 0 && int64(r.table.Len())+added > int64(r.cfg.MaxCIDs) {
		return fmt.Errorf("%w: %d CIDs", ErrRemoteFull, r.cfg.MaxCIDs)
	}
	return nil
}

// RemoveRemote removes the remote registration of key if member holds it,
// and reports whether it did. The relay's own registration of key, or one
// held by another member, stays.
func (r *Relay) RemoveRemote(key []byte, member string) bool {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	reg := r.regs.get(string(key))
	if reg == nil || member == "" || reg.member != member {
		return false
	}
	r.regs.remove(reg)
	r.remoteRegs--
	return true
}

// RemoveMember removes every remote registration that member holds (a
// member found dead), and returns how many it removed.
func (r *Relay) RemoveMember(member string) int {
	if member == "" {
		return 0
	}
	r.regMu.Lock()
	defer r.regMu.Unlock()
	n := 0
	r.regs.entries(func(reg *regEntry) bool {
		if reg.member == member {
			r.regs.remove(reg)
			n++
		}
		return true
	})
	r.remoteRegs -= n
	return n
}

// replicatePut tells the Replicator that the relay holds reg, if it has
// one. r.regMu must be held.
func (r *Relay) replicatePut(reg *regEntry) {
	if r.cfg.Replicator == nil {
		return
	}
	r.cfg.Replicator.Put(FleetRecord{
		Key:    []byte(reg.key),
		First:  reg.first,
		Num:    reg.num,
		Target: reg.Dest().AP,
	})
}

// removeLocked removes reg, the relay's own registration or a remote one,
// and tells the Replicator. r.regMu must be held.
func (r *Relay) removeLocked(reg *regEntry) {
	r.regs.remove(reg)
	if reg.member != "" {
		r.remoteRegs--
	}
	if r.cfg.Replicator != nil {
		r.cfg.Replicator.Remove([]byte(reg.key))
	}
}

// regShape is what a Replicator is told of a registration: a change of it
// is a write to replicate, a refresh is not.
type regShape struct {
	exists     bool
	remote     bool
	first, num uint32
	target     netip.AddrPort
}

// shapeOf returns reg's shape. r.regMu must be held.
func shapeOf(reg *regEntry) regShape {
	if reg == nil {
		return regShape{}
	}
	s := regShape{exists: true, remote: reg.member != "", first: reg.first, num: reg.num}
	if d := reg.Dest(); d != nil {
		s.target = d.AP
	}
	return s
}

// FleetRecord returns the relay's registration of key as a FleetRecord,
// and whether it holds one. Member is empty for the relay's own
// registration.
func (r *Relay) FleetRecord(key []byte) (FleetRecord, bool) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	reg := r.regs.get(string(key))
	if reg == nil {
		return FleetRecord{}, false
	}
	return FleetRecord{Key: []byte(reg.key), First: reg.first, Num: reg.num, Target: reg.Dest().AP, Member: reg.member}, true
}
