package quicpipe

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/quicpipe/quicpipe/internal/addrscope"
	"github.com/quicpipe/quicpipe/internal/forward"
	"github.com/quicpipe/quicpipe/internal/portmap"
)

// candidateCache gathers a peer's own candidates: the addresses of its
// socket on each interface, the public address the relay observed and the
// one its gateway forwards (port mapping). It lists interfaces at most
// every ttl.
type candidateCache struct {
	conn  *net.UDPConn
	relay netip.AddrPort
	obs   func() netip.AddrPort
	ttl   time.Duration
	// anyScope turns off the scope rule (Config.DirectAnyScope).
	anyScope bool
	// addrs lists the interface addresses (Config.InterfaceAddrs); nil:
	// net.InterfaceAddrs.
	addrs func() ([]netip.Addr, error)
	// pm holds the port mapping (nil: none), started at pmStart.
	pm      *portmap.Client
	pmStart time.Time

	mu     sync.Mutex
	at     time.Time
	cands  []candidate
	mapped candidate // the port mapping in cands (zero: none)
}

const candidateRefresh = 5 * time.Second

// get returns the current candidates; the slice is never modified after
// it is returned.
func (c *candidateCache) get(now time.Time) []candidate {
	obs := c.obs()
	mapped := c.mapping()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cands != nil && now.Sub(c.at) < c.ttl && mapped == c.mapped &&
		(!obs.IsValid() || slices.Contains(c.cands, candidate{candObserved, netAddrPort(obs)})) {
		return c.cands
	}
	c.at = now
	c.mapped = mapped
	if mapped.addr.IsValid() {
		c.cands = gatherCandidates(c.conn, c.relay, obs, c.anyScope, c.addrs, mapped)
	} else {
		c.cands = gatherCandidates(c.conn, c.relay, obs, c.anyScope, c.addrs)
	}
	return c.cands
}

// mapping returns the candidate of the current port mapping (zero if
// none). Until the first probe of the gateway has ended, it waits for it,
// for at most portMapWait after the port mapping started.
func (c *candidateCache) mapping() candidate {
	if c.pm == nil {
		return candidate{}
	}
	select {
	case <-c.pm.Ready():
	default:
		t := time.NewTimer(time.Until(c.pmStart.Add(portMapWait)))
		select {
		case <-c.pm.Ready():
		case <-t.C:
		}
		t.Stop()
	}
	m, ok := c.pm.Mapping()
	if !ok {
		return candidate{}
	}
	return candidate{mappedKind(m.Protocol), netAddrPort(m.External)}
}

// gatherCandidates lists the candidates of socket conn, of the relay's
// address family only: the relay's family is the one the socket was opened
// for, and quic-go's control messages (ECN) are built for it. Unless
// anyScope, only addresses within the relay's scope are listed (inScope).
// addrs lists the interface addresses (see interfaceAddrs). mapped lists
// the port mappings' candidates, offered after the observed address.
func gatherCandidates(conn *net.UDPConn, relay, observed netip.AddrPort, anyScope bool, addrs func() ([]netip.Addr, error), mapped ...candidate) []candidate {
	v4 := relay.Addr().Unmap().Is4()
	out := []candidate{}
	add := func(kind uint8, ap netip.AddrPort) {
		ap = netAddrPort(ap)
		a := ap.Addr()
		if a.Is4() != v4 || ap.Port() == 0 || !usableCandidate(a) || len(out) >= maxCandidates ||
			(!anyScope && !inScope(relay.Addr(), a)) {
			return
		}
		for _, c := range out {
			if c.addr == ap {
				return
			}
		}
		out = append(out, candidate{kind, ap})
	}
	if observed.IsValid() {
		add(candObserved, observed)
	}
	for _, m := range mapped {
		add(m.kind, m.addr)
	}
	la, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return out
	}
	lap := netAddrPort(la.AddrPort())
	if !lap.Addr().IsUnspecified() {
		add(candLocal, lap)
		return out
	}
	for _, a := range interfaceAddrs(addrs) {
		if !a.IsLoopback() {
			add(candLocal, netip.AddrPortFrom(a, lap.Port()))
		}
	}
	return out
}

// usableCandidate reports whether a can be a direct-path address: a
// unicast address wider than one link.
func usableCandidate(a netip.Addr) bool {
	sc := addrscope.Of(a)
	// A relay that reached the peer through a tunnel observed a virtual
	// address (decision 0025): no datagram can reach it.
	return sc != addrscope.Invalid && sc != addrscope.LinkLocal && !forward.IsTunnelAddr(a)
}

// interfaceAddrs returns the addresses list gives (Config.InterfaceAddrs),
// or if list is nil those of net.InterfaceAddrs; nil if listing fails.
func interfaceAddrs(list func() ([]netip.Addr, error)) []netip.Addr {
	if list != nil {
		addrs, err := list()
		if err != nil {
			return nil
		}
		out := make([]netip.Addr, 0, len(addrs))
		for _, a := range addrs {
			out = append(out, a.Unmap())
		}
		return out
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// inScope reports whether a direct path may use address a when the relay
// is at relay (docs/NAT.md, "Candidate scope"): the peers reached the relay
// within its scope, so they look for each other within it too. A loopback
// relay allows only loopback addresses; any other relay allows addresses
// of its scope or narrower, but never loopback (the other peer's loopback
// address is this host's own).
func inScope(relay, a netip.Addr) bool {
	rs, as := addrscope.Of(relay), addrscope.Of(a)
	if rs == addrscope.Loopback || as == addrscope.Loopback {
		return rs == as
	}
	return as <= rs
}
