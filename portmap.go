package quicpipe

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quicpipe/quicpipe/internal/addrscope"
	"github.com/quicpipe/quicpipe/internal/netns"
	"github.com/quicpipe/quicpipe/internal/portmap"
)

// PortMappingConfig configures port mapping: a peer with direct paths on
// asks its gateway (the home router) to forward its socket's UDP port, with
// PCP, NAT-PMP or UPnP-IGD, and offers the forwarded public address as one
// more direct-path candidate. Behind a NAT that maps endpoint-dependently
// (where punching alone fails), the other peer can then reach it directly.
// The mapping is renewed while the Dialer or Accepter lives and removed
// when it closes (docs/decisions/0026-port-mapping.md).
//
// The zero value turns port mapping on, for the default gateway, over
// IPv4, when the relay's address is global (or DirectAnyScope is set): a
// mapped public address is of no use within a private scope.
type PortMappingConfig struct {
	// Disable turns port mapping off: nothing is sent to the gateway.
	Disable bool
	// Gateway is the gateway to ask. If not valid, the default IPv4
	// gateway of the system's routing table (Linux only: elsewhere, port
	// mapping stays off unless Gateway is set).
	Gateway netip.Addr
	// DialContext, if not nil, opens the connections to the gateway (UDP
	// for PCP, NAT-PMP and UPnP discovery, TCP for UPnP's HTTP). Set it
	// when the peer's socket lives elsewhere than the calling thread (a
	// Config.Conn opened in another Linux network namespace), as
	// InterfaceAddrs. If nil, a net.Dialer is used. On Linux, port
	// mapping stays off for a socket of another network namespace unless
	// both DialContext and ListenPacket are set: its gateway is not the one
	// this process's routes name.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket, if not nil, opens the unconnected UDP socket of UPnP's
	// discovery; set it with DialContext. If nil, a net.ListenConfig is
	// used.
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)

	// protocols, if not empty, restricts the protocols tried; retry, if
	// not zero, replaces the wait before probing again (tests).
	protocols []portmap.Protocol
	retry     time.Duration
}

// PortMappingStats counts the port-mapping work of a Dialer or an Accepter
// (see PortMappingConfig).
type PortMappingStats struct {
	// Protocol is the protocol of the current mapping ("PCP", "NAT-PMP"
	// or "UPnP"), empty if there is none.
	Protocol string
	// External is the current mapping's public address.
	External netip.AddrPort
	// Probes counts probes of the gateway; Mapped, mappings obtained;
	// Renewed, renewals; Failures, requests that failed or were refused.
	Probes, Mapped, Renewed, Failures uint64
	// BadReplies counts malformed or mismatched answers from the gateway.
	BadReplies uint64
}

// portMapWait bounds how long the first candidates wait for the first
// probe of the gateway, from its start: the probe ends within 250 ms when
// no gateway answers, and a mapping obtained later wakes the connections
// to announce it.
const portMapWait = 300 * time.Millisecond

// portMapRemoveWait bounds how long closing a Dialer or Accepter waits for
// the gateway to confirm the removal of the mapping.
const portMapRemoveWait = 500 * time.Millisecond

// startPortMapping starts the port mapping of socket conn, whose relay is
// at relay; it returns nil if port mapping is off or cannot help. changed,
// if not nil, is called when the mapping appears, changes or disappears.
func startPortMapping(conn *net.UDPConn, relay netip.AddrPort, cfg *Config, log *slog.Logger, changed func()) *portmap.Client {
	pm := cfg.PortMapping
	if pm.Disable {
		return nil
	}
	ra := relay.Addr().Unmap()
	if !ra.Is4() || (!cfg.DirectAnyScope && addrscope.Of(ra) != addrscope.Public) {
		return nil
	}
	la, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok || la.Port == 0 {
		return nil
	}
	if (pm.DialContext == nil || pm.ListenPacket == nil) && inOtherNetns(conn) {
		// Its gateway is not the one this thread's routes name.
		log.Debug("port mapping off: the socket lives in another network namespace (see PortMappingConfig.DialContext)")
		return nil
	}
	c, err := portmap.Start(portmap.Config{
		InternalPort: uint16(la.Port),
		Gateway:      pm.Gateway,
		DialContext:  pm.DialContext,
		ListenPacket: pm.ListenPacket,
		Protocols:    pm.protocols,
		Retry:        pm.retry,
		Logger:       log.With("portmap", true),
		OnChange: func(portmap.Mapping, bool) {
			if changed != nil {
				changed()
			}
		},
	})
	if err != nil {
		log.Debug("port mapping off", "err", err)
		return nil
	}
	return c
}

// inOtherNetns reports whether socket conn lives in another Linux network
// namespace than the calling thread (false where it cannot tell).
func inOtherNetns(conn *net.UDPConn) bool {
	ns, err := netns.Of(conn)
	if err != nil {
		return false
	}
	defer ns.Close()
	cur, err := netns.IsCurrent(ns)
	return err == nil && !cur
}

// Candidate kinds of a mapped address, as announced (direct_probe.go).
const (
	candMappedPCP    = 4
	candMappedNATPMP = 5
	candMappedUPnP   = 6
)

// mappedKind returns the candidate kind of a mapping obtained with p.
func mappedKind(p portmap.Protocol) uint8 {
	switch p {
	case portmap.PCP:
		return candMappedPCP
	case portmap.NATPMP:
		return candMappedNATPMP
	}
	return candMappedUPnP
}

// candidateVia describes where a candidate of kind k came from, for
// PathInfo.Via: only port mappings are named.
func candidateVia(k uint8) string {
	switch k {
	case candMappedPCP:
		return fmt.Sprintf("port mapping (%v)", portmap.PCP)
	case candMappedNATPMP:
		return fmt.Sprintf("port mapping (%v)", portmap.NATPMP)
	case candMappedUPnP:
		return fmt.Sprintf("port mapping (%v)", portmap.UPnP)
	}
	return ""
}

// portMappingStats returns the counters of c (nil: zero).
func portMappingStats(c *portmap.Client) PortMappingStats {
	if c == nil {
		return PortMappingStats{}
	}
	s := c.Stats()
	out := PortMappingStats{Probes: s.Probes, Mapped: s.Mapped, Renewed: s.Renewed, Failures: s.Failures, BadReplies: s.BadReplies}
	if m, ok := c.Mapping(); ok {
		out.Protocol, out.External = m.Protocol.String(), m.External
	}
	return out
}
