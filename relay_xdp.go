package quicpipe

import (
	"log/slog"
	"net/netip"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// FastPath is the relay's view of a kernel fast path: a program that forwards
// registered peers' packets before they reach the relay's socket. Package
// xdp's Program implements it on Linux; package relayxdp attaches one for a
// relay (see RelayConfig.FastPath).
//
// The relay stays the authority: the program's map is a cache of its
// registrations, filled when a peer registers and again whenever the
// userspace path forwards a packet the program missed (after an eviction),
// emptied when a registration goes away. The program forwards only from
// the sources the relay allows, and applies the relay's rate caps to what it
// forwards. Its methods must be safe for concurrent use.
type FastPath interface {
	// PutBucket maps cid to dst: the program sends packets for cid to dst
	// (from src; the zero netip.AddrPort answers from the address each
	// packet was sent to), counted against rate bucket bucket (1 to
	// Buckets; 0 for none).
	PutBucket(cid [CIDLen]byte, dst, src netip.AddrPort, bucket uint32) error
	// Delete removes cid; deleting a CID that is not there is not an error.
	Delete(cid [CIDLen]byte) error
	// Buckets returns the number of rate buckets, numbered from 1.
	Buckets() int
	// ResetBucket refills rate bucket bucket, for a registration that
	// takes it over from another.
	ResetBucket(bucket uint32) error
	// AllowSource lets the program forward datagrams from src;
	// RemoveSource undoes it.
	AllowSource(src netip.AddrPort) error
	RemoveSource(src netip.AddrPort) error
	// EachCounter calls fn with the name of each of the program's outcomes
	// ("forwarded_ipv4", "forwarded_ipv6", the reasons it passed or dropped
	// frames) and the frames and bytes counted for it.
	EachCounter(fn func(outcome string, packets, bytes uint64)) error
	// Close detaches the program and frees it.
	Close() error
}

// The forwarding engine puts the CIDs the fast path missed back itself.
var _ forward.FastPath = FastPath(nil)

// FastPathConfig is what the relay tells RelayConfig.FastPath when it starts
// its fast path.
type FastPathConfig struct {
	// Port is the relay's UDP port.
	Port uint16
	// MaxPacketsPerSecond, MaxBytesPerSecond, MaxTotalPacketsPerSecond
	// and MaxTotalBytesPerSecond are the relay's rate caps (see
	// RelayConfig), defaults applied: zero or negative means none.
	MaxPacketsPerSecond, MaxBytesPerSecond           int64
	MaxTotalPacketsPerSecond, MaxTotalBytesPerSecond int64
	// Logger is the relay's logger, never nil.
	Logger *slog.Logger
}

// FastPathStat counts what a fast path did with frames of one outcome (see
// RelayStats.XDP).
type FastPathStat struct {
	// Packets counts frames; Bytes counts their bytes, Ethernet and IP
	// headers included.
	Packets, Bytes uint64
}

// relayXDP is the relay's handle on its fast path. The relay uses it with
// r.regMu held; the forwarding engine puts missed CIDs back on its own
// (forward.Conn.SetFastPath).
type relayXDP struct {
	prog FastPath
	// Rate buckets of the program, one per registration while there are
	// enough (bucket 0: none, only the total cap). Guarded by Relay.regMu.
	nextBucket, buckets uint32
	freeBuckets         []uint32
}

// xdpTakeBucket gives reg a rate bucket of the program, refilled, if one is
// free. r.regMu must be held.
func (r *Relay) xdpTakeBucket(reg *regEntry) {
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
	reg.FastBucket = b
}

// xdpReleaseBucket returns reg's bucket. r.regMu must be held.
func (r *Relay) xdpReleaseBucket(reg *regEntry) {
	if r.xdp != nil && reg.FastBucket != 0 {
		r.xdp.freeBuckets = append(r.xdp.freeBuckets, reg.FastBucket)
	}
}

// attachXDP starts the fast path for the relay's port.
func (r *Relay) attachXDP() error {
	c := r.cfg
	prog, err := c.FastPath(FastPathConfig{
		Port:                     uint16(r.udpAddr().Port),
		MaxPacketsPerSecond:      c.MaxPacketsPerSecond,
		MaxBytesPerSecond:        c.MaxBytesPerSecond,
		MaxTotalPacketsPerSecond: c.MaxTotalPacketsPerSecond,
		MaxTotalBytesPerSecond:   c.MaxTotalBytesPerSecond,
		Logger:                   r.log,
	})
	if err != nil {
		return err
	}
	r.xdp = &relayXDP{prog: prog, buckets: uint32(prog.Buckets())}
	r.rconn.SetFastPath(prog)
	return nil
}

// FastPath returns the relay's fast path (see RelayConfig.FastPath), or nil.
func (r *Relay) FastPath() FastPath {
	if r.xdp == nil {
		return nil
	}
	return r.xdp.prog
}

// xdpPut caches cids of reg in the program's map. A registration without a
// rate bucket (all taken) is left to userspace, which caps it.
func (r *Relay) xdpPut(cids []CID, reg *regEntry) {
	if r.xdp == nil || reg.FastBucket == 0 {
		return
	}
	d := reg.Dest()
	if d.IsTunnel() { // the kernel cannot write into a tunnel
		r.xdpDelete(cids)
		return
	}
	for _, c := range cids {
		if err := r.xdp.prog.PutBucket(c, d.AP, netip.AddrPort{}, reg.FastBucket); err != nil {
			r.log.Debug("XDP map update failed", "err", err)
			return
		}
	}
}

// xdpSource adds ap to the program's set of sources it forwards from, or
// removes it. r.regMu must be held.
func (r *Relay) xdpSource(ap netip.AddrPort, allow bool) {
	if r.xdp == nil || forward.IsTunnelAddr(ap.Addr()) {
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

// xdpStats returns the program's counters, or nil.
func (r *Relay) xdpStats() map[string]FastPathStat {
	if r.xdp == nil {
		return nil
	}
	m := make(map[string]FastPathStat)
	err := r.xdp.prog.EachCounter(func(outcome string, packets, bytes uint64) {
		m[outcome] = FastPathStat{Packets: packets, Bytes: bytes}
	})
	if err != nil {
		return nil
	}
	return m
}
