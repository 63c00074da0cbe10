package quicpipe

import (
	"fmt"
	"net/netip"

	"github.com/quicpipe/quicpipe/xdp"
)

// XDPConfig turns on the relay's XDP fast path (Linux): an eBPF program on
// a network interface forwards registered peers' packets inside the kernel.
// The relay stays the authority: the program's map is a cache of its
// registrations, filled when a peer registers and again whenever the
// userspace path forwards a packet the program missed (after an eviction),
// emptied when a registration goes away.
type XDPConfig struct {
	// Interface is the network interface the peers' packets arrive on,
	// for example "eth0" (or "lo" to try it locally). Required.
	Interface string
	// Mode is how to attach; the zero value tries native mode, then generic.
	Mode xdp.Mode
	// MapSize is the capacity of the program's CID map. If zero,
	// xdp.DefaultMapSize is used.
	MapSize int
}

// relayXDP is the relay's handle on its XDP program. The relay uses it with
// r.regMu held (registration changes) or from the forwarding goroutine
// (re-puts).
type relayXDP struct {
	prog *xdp.Program
	// reput remembers when the forwarding path last put a CID back, so that
	// a burst of missed packets costs one map update per CID per second.
	// Only the forwarding goroutine uses it.
	reput map[CID]int64
}

// attachXDP loads and attaches the program for the relay's port.
func (r *Relay) attachXDP() error {
	c := r.cfg.XDP
	prog, err := xdp.Attach(xdp.Config{
		Interface: c.Interface,
		Ports:     []uint16{uint16(r.Addr().Port)},
		Mode:      c.Mode,
		MapSize:   c.MapSize,
	})
	if err != nil {
		return fmt.Errorf("quicpipe: XDP on %s: %w", c.Interface, err)
	}
	r.xdp = &relayXDP{prog: prog, reput: make(map[CID]int64)}
	r.log.Info("XDP fast path active", "interface", c.Interface, "mode", prog.Mode().String())
	return nil
}

// XDPMode reports the mode of the attached XDP program and whether one is
// attached.
func (r *Relay) XDPMode() (xdp.Mode, bool) {
	if r.xdp == nil {
		return 0, false
	}
	return r.xdp.prog.Mode(), true
}

// xdpPut caches cids, forwarding to d, in the program's map.
func (r *Relay) xdpPut(cids []CID, d *dest) {
	if r.xdp == nil {
		return
	}
	for _, c := range cids {
		if err := r.xdp.prog.Put(c, d.ap, netip.AddrPort{}); err != nil {
			r.log.Debug("XDP map update failed", "err", err)
			return
		}
	}
}

// xdpDelete removes cids from the program's map.
func (r *Relay) xdpDelete(cids []CID) {
	if r.xdp == nil {
		return
	}
	for _, c := range cids {
		r.xdp.prog.Delete(c)
	}
}

// xdpReput puts a CID the program missed back into its map. It runs on the
// forwarding goroutine, at most once per CID per second.
func (r *Relay) xdpReput(cid []byte, d *dest, now int64) {
	var c CID
	copy(c[:], cid)
	if last, ok := r.xdp.reput[c]; ok && now-last < 1e9 {
		return
	}
	if len(r.xdp.reput) >= 1<<16 {
		clear(r.xdp.reput)
	}
	r.xdp.reput[c] = now
	if r.xdp.prog.Put(c, d.ap, netip.AddrPort{}) != nil {
		return
	}
	// The registration may have changed since the caller looked the CID up
	// and loaded d: removed (its CIDs deleted from the map) or moved (its
	// CIDs put again with the new address). Then this put brought back an
	// entry that nothing would ever delete or correct. Those changes update
	// the table and the destination before the map, so a check after the
	// put sees them: take the entry out again, and let the next packet miss
	// and come here with the current destination.
	if reg := r.table.lookup(cid); reg == nil || reg.dest.Load().ap != d.ap {
		r.xdp.prog.Delete(c)
		delete(r.xdp.reput, c)
	}
}

// xdpStats returns the program's counters, or nil.
func (r *Relay) xdpStats() map[string]xdp.Stat {
	if r.xdp == nil {
		return nil
	}
	c, err := r.xdp.prog.Counters()
	if err != nil {
		return nil
	}
	return c.Map()
}
