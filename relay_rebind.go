package quicpipe

import (
	"net"
	"time"
)

// refusedMoveLogEvery bounds how often one registration logs that its
// connection moved to an address the relay refuses to forward to.
const refusedMoveLogEvery = time.Minute

// followLocked moves a registration to the current address of the HTTP/3
// connection that made it, if that connection migrated. quic-go migrates a
// server connection only after validating the new path, so the new address
// is as trustworthy as the one observed at registration. r.regMu must be
// held.
func (r *Relay) followLocked(reg *regEntry) {
	qc := reg.conn
	if qc == nil || qc.Context().Err() != nil {
		return
	}
	ua, ok := qc.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return
	}
	ap := netAddrPort(ua.AddrPort())
	if ap == reg.dest.Load().ap {
		return
	}
	d, err := r.newDest(ap, reg.local)
	if err != nil {
		// The janitor comes back every few hundred milliseconds: one
		// warning per registration per refusedMoveLogEvery.
		if now := time.Now(); now.Sub(reg.refusedLogged) >= refusedMoveLogEvery {
			reg.refusedLogged = now
			r.log.Warn("registration's connection moved to a refused address", "addr", ap.String(), "err", err)
		}
		return
	}
	r.regs.move(reg, sourceOf(ap.Addr()), d)
	r.log.Info("registration followed its peer to a new address", "addr", ap.String())
}

// followWakeEvery bounds how often datagrams from an unknown source make the
// relay check whether one registration's HTTP/3 connection migrated.
const followWakeEvery = 50_000_000 // 50ms, in nanoseconds

// wakeFollow asks the janitor to check at once whether reg's HTTP/3
// connection moved: a datagram for reg's CIDs arrived from an address that no
// registration forwards to, most likely after the peer's NAT rebound. It
// never blocks and runs at most once per followWakeEvery per registration.
func (r *Relay) wakeFollow(reg *regEntry, now int64) {
	last := reg.wake.Load()
	if now-last < followWakeEvery || !reg.wake.CompareAndSwap(last, now) {
		return
	}
	select {
	case r.follow <- reg:
	default:
	}
}
