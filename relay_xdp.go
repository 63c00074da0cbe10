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
	// MapSize is the capacity of the program's CID map, of its set of
	// allowed sources, and the number of registrations it caps with a rate
	// bucket of their own (further ones are forwarded in userspace). If
	// zero, xdp.DefaultMapSize is used.
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
	// Rate buckets of the program, one per registration while there are
	// enough (bucket 0: none, only the total cap). Guarded by Relay.regMu.
	nextBucket, buckets uint32
	freeBuckets         []uint32
}

// xdpTakeBucket gives reg a rate bucket of the program, refilled, if one is
// free. r.regMu must be held.
func (r *Relay) xdpTakeBucket(reg *registration) {
	x := r.xdp
	if x == nil {
		return
	}
	var b uint32
	switch {
	case len(x.freeBuckets) > 0:
		b = x.freeBuckets[len(x.freeBuckets)-1]
		x.freeBuckets = x.freeBuckets[:len(x.freeBuckets)-1]
	case x.nextBucket < x.buckets:
		x.nextBucket++
		b = x.nextBucket
	default:
		return // the CIDs go to userspace (see xdpPut)
	}
	if err := x.prog.ResetBucket(b); err != nil {
		r.log.Debug("XDP bucket reset failed", "err", err)
		x.freeBuckets = append(x.freeBuckets, b)
		return
	}
	reg.xdpBucket = b
}

// xdpReleaseBucket returns reg's bucket. r.regMu must be held.
func (r *Relay) xdpReleaseBucket(reg *registration) {
	if r.xdp != nil && reg.xdpBucket != 0 {
		r.xdp.freeBuckets = append(r.xdp.freeBuckets, reg.xdpBucket)
	}
}

// attachXDP loads and attaches the program for the relay's port.
func (r *Relay) attachXDP() error {
	c := r.cfg.XDP
	rate := func(v int64) int64 { return min(max(v, 0), xdp.MaxRate) }
	buckets := c.MapSize
	if buckets == 0 {
		buckets = xdp.DefaultMapSize
	}
	prog, err := xdp.Attach(xdp.Config{
		Interface: c.Interface,
		Ports:     []uint16{uint16(r.Addr().Port)},
		Mode:      c.Mode,
		MapSize:   c.MapSize,
		// The program applies the relay's forwarding rule and rate caps
		// itself: what it passes up, userspace decides on.
		FilterSources:            true,
		Buckets:                  buckets,
		MaxPacketsPerSecond:      rate(r.cfg.MaxPacketsPerSecond),
		MaxBytesPerSecond:        rate(r.cfg.MaxBytesPerSecond),
		MaxTotalPacketsPerSecond: rate(r.cfg.MaxTotalPacketsPerSecond),
		MaxTotalBytesPerSecond:   rate(r.cfg.MaxTotalBytesPerSecond),
	})
	if err != nil {
		return fmt.Errorf("quicpipe: XDP on %s: %w", c.Interface, err)
	}
	r.xdp = &relayXDP{prog: prog, reput: make(map[CID]int64), buckets: uint32(buckets)}
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

// xdpPut caches cids of reg in the program's map. A registration without a
// rate bucket (all taken) is left to userspace, which caps it.
func (r *Relay) xdpPut(cids []CID, reg *registration) {
	if r.xdp == nil || reg.xdpBucket == 0 {
		return
	}
	d := reg.dest.Load()
	for _, c := range cids {
		if err := r.xdp.prog.PutBucket(c, d.ap, netip.AddrPort{}, reg.xdpBucket); err != nil {
			r.log.Debug("XDP map update failed", "err", err)
			return
		}
	}
}

// xdpSource adds ap to the program's set of sources it forwards from, or
// removes it. r.regMu must be held.
func (r *Relay) xdpSource(ap netip.AddrPort, allow bool) {
	if r.xdp == nil {
		return
	}
	var err error
	if allow {
		err = r.xdp.prog.AllowSource(ap)
	} else {
		err = r.xdp.prog.RemoveSource(ap)
	}
	if err != nil {
		r.log.Debug("XDP source update failed", "err", err)
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
func (r *Relay) xdpReput(cid []byte, reg *registration, d *dest, now int64) {
	if reg.xdpBucket == 0 {
		return
	}
	var c CID
	copy(c[:], cid)
	if last, ok := r.xdp.reput[c]; ok && now-last < 1e9 {
		return
	}
	if len(r.xdp.reput) >= 1<<16 {
		clear(r.xdp.reput)
	}
	r.xdp.reput[c] = now
	if r.xdp.prog.PutBucket(c, d.ap, netip.AddrPort{}, reg.xdpBucket) != nil {
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
