package quicpipe

import (
	"net"
	"time"

	"github.com/quicpipe/quicpipe/internal/forward"
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
	if ap == reg.Dest().AP {
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
	r.replicatePut(reg)
	r.log.Info("registration followed its peer to a new address", "addr", ap.String())
}

// wakeFollow asks the janitor to check at once whether the HTTP/3
// connection of e's registration moved: the forwarding path calls it
// (forward.Config.Follow) when a datagram for e's CIDs arrived from an
// address that no registration forwards to, most likely after the peer's
// NAT rebound, at most once per 50ms per registration. It never blocks.
func (r *Relay) wakeFollow(e *forward.Entry) {
	reg, ok := e.Owner.(*regEntry)
	if !ok {
		return
	}
	select {
	case r.follow <- reg:
	default:
	}
}
