package quicpipe

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/quicpipe/quicpipe/internal/batch"
	"golang.org/x/net/ipv4"
)

// peerConn is a peer's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO. It adds three things beside the plain socket:
//
//   - hold-back (dialer): long-header packets to the relay whose destination
//     CID is the original destination CID of a pending peer dial are never
//     sent; they are captured as the first flight the application delivers
//     out of band. A later long-header packet of the dial (its source CID,
//     another destination CID) shows that it heard from the accepter
//     (peer_holdback.go).
//   - injection (accepter): datagrams of a first flight are handed to quic-go
//     as if they had arrived from the relay (peer_inject.go).
//   - direct paths (both, unless Config.DisableDirect): quic-go always sees
//     the relay as the remote address of every peer connection. On the way
//     out, a connection whose manager moved it onto a direct path has its
//     datagrams sent to the other peer's address instead; on the way in,
//     every QUIC datagram gets the relay's address as its source, and path
//     control datagrams (probes, candidates) are taken out of the batch for
//     the direct-path manager (direct_route.go). See
//     docs/decisions/0010-direct-path.md.
//
// The *net.UDPConn is held in a batch.Socket, not embedded: quic-go must see
// only the methods declared here and the Socket's pass-throughs.
type peerConn struct {
	batch.Socket
	pc    *ipv4.PacketConn
	relay netip.AddrPort

	holdBack     // peer_holdback.go
	injector     // peer_inject.go
	directRoutes // direct_route.go
	relayPath    // peer_tunnel.go

	// sleepIn, if set (an Accepter whose relay offers sleep), takes the
	// sleep datagrams from the relay out of each batch (peer_sleep.go).
	// It must not block or keep b.
	sleepIn atomic.Pointer[func(b []byte)]
}

// newPeerConn wraps c. If direct is true, direct paths are on: control
// datagrams are taken out for the direct manager and QUIC datagrams get the
// relay's address as their source.
func newPeerConn(c *net.UDPConn, relay netip.AddrPort, direct bool) *peerConn {
	pc := &peerConn{
		Socket:   batch.NewSocket(c),
		pc:       ipv4.NewPacketConn(c),
		relay:    netAddrPort(relay),
		holdBack: holdBack{holds: make(map[string]*capture)},
	}
	pc.relayNet = net.UDPAddrFromAddrPort(pc.relay)
	if direct {
		pc.relayUDP = net.UDPAddrFromAddrPort(relay)
		pc.ctrl = make(chan ctrlPacket, ctrlQueueLen)
	}
	return pc
}

// WriteMsgUDP is how quic-go sends. Held-back packets are captured instead;
// datagrams of a connection on a direct path go to the other peer.
func (c *peerConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if c.holding.Load() != 0 && len(b) > 0 && b[0]&0x80 != 0 && addr != nil &&
		netAddrPort(addr.AddrPort()) == c.relay {
		return c.writeHolding(b, oob, addr)
	}
	return c.writeUnheld(b, oob, addr)
}

// writeUnheld sends datagrams that are not held back.
func (c *peerConn) writeUnheld(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if m := c.routes.Load(); m != nil {
		if r := (*m)[addr]; r != nil {
			return c.writeRoute(r, b, oob, addr)
		}
	}
	return c.writeRelay(b, oob, addr)
}

// writeRelay sends to addr as given, and datagrams to the relay into its
// tunnel while one is up (peer_tunnel.go). WriteMsgUDPAddrPort does not
// allocate a sockaddr per send as WriteMsgUDP does.
func (c *peerConn) writeRelay(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	ap := netAddrPort(addr.AddrPort())
	if (c.tun.Load() != nil || c.undecided.Load() || c.pinned.Load()) && ap == c.relay && !c.relayWrite(b, oob) {
		return len(b), len(oob), nil
	}
	return c.UDPConn().WriteMsgUDPAddrPort(b, oob, ap)
}

// ReadBatch is how quic-go reads: injected datagrams first, then the socket.
func (c *peerConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		if n := c.takeInjected(ms); n > 0 {
			return n, nil
		}
		n, err := c.pc.ReadBatch(ms, flags)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			c.injMu.Lock()
			if c.woken && !c.userDeadline {
				c.woken = false
				c.UDPConn().SetReadDeadline(time.Time{})
				c.injMu.Unlock()
				continue
			}
			c.injMu.Unlock()
		}
		if err == nil && n > 0 && (c.undecided.Load() || c.probeAt.Load() != 0) && c.relayFromUDP(ms[:n]) {
			c.heardRelayUDP()
		}
		if err == nil && n > 0 && c.ctrl != nil {
			if n = c.sortBatch(ms[:n]); n == 0 {
				continue // only control datagrams
			}
		} else if err == nil && n > 0 && c.sleepIn.Load() != nil {
			if n = c.takeSleep(ms[:n]); n == 0 {
				continue // only sleep datagrams
			}
		}
		return n, err
	}
}

func (c *peerConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.UDPConn().SetWriteDeadline(t)
}

func (c *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("quicpipe: not a UDP address")
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

// isSleep reports whether the datagram in m is a sleep datagram.
func isSleep(m *ipv4.Message) bool { return m.N > 0 && m.Buffers[0][0] == sleepMarker }

// handSleep gives the sleep datagram in m to the sleeping listener, if it
// came from the relay; anything else is dropped.
func (c *peerConn) handSleep(m *ipv4.Message) {
	f := c.sleepIn.Load()
	ua, ok := m.Addr.(*net.UDPAddr)
	if f == nil || !ok || netAddrPort(ua.AddrPort()) != c.relay {
		return
	}
	(*f)(m.Buffers[0][:m.N])
}

// takeSleep takes the sleep datagrams out of a batch (direct paths off:
// sortBatch does it otherwise) and returns how many datagrams remain, in
// the lowest slots, in order.
func (c *peerConn) takeSleep(ms []ipv4.Message) int {
	k := 0
	for i := range ms {
		if isSleep(&ms[i]) {
			c.handSleep(&ms[i])
			continue
		}
		batch.Move(ms, k, i)
		k++
	}
	return k
}
