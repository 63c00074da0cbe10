//go:build linux

package quicpipe

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// The IPv6 lab: peers with global addresses (of the documentation prefix
// 2001:db8::/32, public to the scope rules of decision 0019) behind
// stateful firewalls, no NAT:
//
//	peerA 2001:db8:a::2 ─lan0─ fwA ─wan0 2001:db8:1::2─┐
//	                                                    wan ── 2001:db8:ff::2 relay
//	peerB 2001:db8:b::2 ─lan0─ fwB ─wan0 2001:db8:2::2─┘
//
// Each firewall forwards what its LAN sends and, from the WAN side, only
// packets of flows the LAN opened (nftables: ct state
// established,related accept, then drop), as home routers do for IPv6.
type v6Lab struct {
	lab          *netlab.Lab
	wan, relayNS *netlab.NS
	fwA, fwB     *netlab.NS
	peerA, peerB *netlab.NS
	relay        *Relay
	relayAddr    string
	addrA, addrB netip.Addr
	ids          *natLab // identities only
}

// v6Firewall is the forward chain of a firewall router.
const v6Firewall = `table ip6 fw {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" counter drop
	}
}
`

// noDAD turns off duplicate address detection in ns, for the interfaces
// created after: link-local addresses (which neighbour discovery uses) are
// usable at once instead of a second or two later.
func noDAD(ns *netlab.NS) *netlab.NS {
	ns.Sysctl("net.ipv6.conf.all.accept_dad", "0")
	ns.Sysctl("net.ipv6.conf.default.accept_dad", "0")
	return ns
}

// addr6 adds an IPv6 address without duplicate address detection (the
// address is usable at once).
func addr6(ns *netlab.NS, ifc, cidr string) {
	ns.Run("ip", "-6", "addr", "add", cidr, "dev", ifc, "nodad")
}

func newV6Lab(t *testing.T) *v6Lab {
	l := &v6Lab{lab: netlab.New(t), ids: &natLab{relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()},
		addrA: netip.MustParseAddr("2001:db8:a::2"), addrB: netip.MustParseAddr("2001:db8:b::2")}
	lab := l.lab
	l.wan, l.relayNS = noDAD(lab.NS("wan")), noDAD(lab.NS("relay"))
	l.wan.Sysctl("net.ipv6.conf.all.forwarding", "1")
	lab.Link(l.relayNS, "eth0", "", l.wan, "relay0", "")
	addr6(l.relayNS, "eth0", "2001:db8:ff::2/64")
	addr6(l.wan, "relay0", "2001:db8:ff::1/64")
	l.relayNS.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:ff::1")
	for _, s := range []struct {
		fw, peer     **netlab.NS
		name, n, lan string
	}{{&l.fwA, &l.peerA, "A", "1", "a"}, {&l.fwB, &l.peerB, "B", "2", "b"}} {
		fw, peer := noDAD(lab.NS("fw"+s.name)), noDAD(lab.NS("peer"+s.name))
		*s.fw, *s.peer = fw, peer
		fw.Sysctl("net.ipv6.conf.all.forwarding", "1")
		lab.Link(fw, "wan0", "", l.wan, "fw"+s.name+"0", "")
		addr6(fw, "wan0", "2001:db8:"+s.n+"::2/64")
		addr6(l.wan, "fw"+s.name+"0", "2001:db8:"+s.n+"::1/64")
		fw.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:"+s.n+"::1")
		l.wan.Run("ip", "-6", "route", "add", "2001:db8:"+s.lan+"::/64", "via", "2001:db8:"+s.n+"::2")
		lab.Link(peer, "eth0", "", fw, "lan0", "")
		addr6(peer, "eth0", "2001:db8:"+s.lan+"::2/64")
		addr6(fw, "lan0", "2001:db8:"+s.lan+"::1/64")
		peer.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:"+s.lan+"::1")
		fw.Nft(v6Firewall)
	}
	conn, err := l.relayNS.ListenUDP("udp6", "[2001:db8:ff::2]:0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRelay(conn, &RelayConfig{Identity: l.ids.relayID, Logger: testLogger(t)})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	l.relay = r
	l.relayAddr = r.LocalAddr().String()
	serveRelay(t, r, func() { conn.Close() })
	return l
}

// socket opens a peer's IPv6 socket inside ns; the test closes it.
func (l *v6Lab) socket(t *testing.T, ns *netlab.NS) *net.UDPConn {
	c, err := ns.ListenUDP("udp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestIPv6Firewall: two peers with global IPv6 addresses behind stateful
// firewalls find a direct path to each other's address (the first probe's
// hop limit of 2 opens the own firewall and dies at wan, as the TTL does
// for IPv4), and the pipe carries data on it. The firewalls are checked to
// drop what nobody asked for.
func TestIPv6Firewall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := newV6Lab(t)

	// The firewall works: a datagram from A to a socket of B that never
	// sent anything does not arrive.
	probe, err := l.peerB.ListenUDP("udp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	from := l.socket(t, l.peerA)
	to := netip.AddrPortFrom(l.addrB, uint16(probe.LocalAddr().(*net.UDPAddr).Port))
	if _, err := from.WriteToUDPAddrPort([]byte("unsolicited"), to); err != nil {
		t.Fatal(err)
	}
	probe.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := probe.ReadFromUDPAddrPort(make([]byte, 64)); err == nil {
		t.Fatal("fwB let an unsolicited datagram through")
	}

	dcfg := &Config{Conn: l.socket(t, l.peerA)}
	acfg := &Config{Conn: l.socket(t, l.peerB)}
	ids := l.ids
	p := dialDirect(t, ctx, l.relayAddr, ids.relayID, ids.aID, ids.bID, dcfg, acfg, 0)
	dp := p.waitDirect(t, ctx)
	ap, _ := p.a.Path(p.ac)
	t.Logf("IPv6 behind stateful firewalls: direct %v after the dial returned (dialer to %v, accepter to %v)",
		max(dp.Since.Sub(p.established), 0).Round(time.Millisecond), dp.Remote, ap.Remote)
	if dp.Remote.Addr() != l.addrB || ap.Remote.Addr() != l.addrA {
		t.Errorf("direct paths to %v and %v, want B's %v and A's %v", dp.Remote, ap.Remote, l.addrB, l.addrA)
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if cur, _ := p.d.Path(p.dc); cur.Kind != PathDirect {
		t.Errorf("after the transfer the dialer is %v", cur.Kind)
	}
	for _, fw := range []*netlab.NS{l.fwA, l.fwB} {
		t.Logf("%s drops: %s", fw.Name, strings.TrimSpace(fw.Run("nft", "list", "chain", "ip6", "fw", "forward")))
	}
}

// TestIPv6DualStackPeer: a dual-stack peer (a global IPv6 address beside
// its private IPv4 one, and a dual-stack socket) and an IPv4-only peer,
// both behind port-preserving NATs, with an IPv4 relay: the pipe goes
// direct over IPv4, and no IPv6 address is offered or probed.
func TestIPv6DualStackPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := newNATLab(t, natEIM, natEIM, false, natUplink)
	addr6(l.peerA, "eth0", "2001:db8:a::2/64") // never used: no route, and the relay is IPv4
	dual, err := l.peerA.ListenUDP("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dual.Close() })
	dcfg := &Config{Conn: dual}
	acfg := &Config{Conn: l.peerSocket(t, l.peerB)}
	p := dialDirectTimed(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID, dcfg, acfg, 0, nil)
	dp := p.waitDirect(t, ctx)
	ap, _ := p.a.Path(p.ac)
	t.Logf("dual-stack and IPv4-only peers: direct, dialer to %v, accepter to %v", dp.Remote, ap.Remote)
	if !dp.Remote.Addr().Unmap().Is4() || ap.Remote.Addr() != l.wanA {
		t.Errorf("direct paths to %v and %v, want IPv4 ones (A at %v)", dp.Remote, ap.Remote, l.wanA)
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
}
