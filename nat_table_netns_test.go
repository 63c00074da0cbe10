//go:build linux

package quicpipe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// The success table of docs/NAT.md: for every pair of network kinds, N
// pipes (each with new sockets, so new NAT mappings) and whether each
// found a direct path within its first punch round, and when. It takes
// minutes, so it runs only with QUICPIPE_NAT_TABLE=N (N attempts per pair,
// at least 10):
//
//	QUICPIPE_NAT_TABLE=10 go test -count=1 -run 'TestNATTable$' -v . | grep '^    nat_table'
//
// IPv4 kinds build one side of this lab (B's uplink delays 10 ms each way,
// as in TestNAT):
//
//	peer 10.x.0.2 ─lan0─ router ─wan0─ wan ── 192.0.2.2 relay
//	peer 10.x.0.2 ─lan0─ home ─ 100.64.x.2 ─ cgnat ─wan0─ wan   (double NAT)
//
// An EDM+port-mapping router runs miniupnpd and has WAN address 11.x.0.2
// (miniupnpd works only on a non-reserved address, as in the port-mapping
// lab); its peer maps its port through the namespace.
type netKind int

const (
	kindEIMFirewall netKind = iota // port-preserving masquerade, input firewall (a home router)
	kindEIMBare                    // the same without the input firewall
	kindEDM                        // masquerade fully-random, input firewall
	kindDouble                     // a home router (EIM + firewall) behind a carrier-grade NAT (EIM, 100.64/10 inside)
	kindIPv6                       // a global IPv6 address behind a stateful firewall, no NAT (the IPv6 lab)
	kindEDMMap                     // EDM whose router runs miniupnpd (UPnP-IGD, NAT-PMP, PCP); the peer maps its port
)

func (k netKind) String() string {
	return [...]string{"EIM+firewall", "EIM bare", "EDM", "double NAT", "IPv6 firewall", "EDM+port mapping"}[k]
}

// ruleset of a NAT router of kind k (kindDouble: the home router).
func (k netKind) nat() natKind {
	switch k {
	case kindEIMBare:
		return natBare
	case kindEDM, kindEDMMap:
		return natRandom
	}
	return natEIM
}

// tableSide builds side n (1 or 2) of the IPv4 lab behind kind k and
// returns the peer's namespace.
func tableSide(t *testing.T, lab *netlab.Lab, wan *netlab.NS, n int, k netKind, shape netlab.Shape) *netlab.NS {
	wanAddr := [...]string{"", "198.51.100.2", "203.0.113.2"}[n]
	wanGW := [...]string{"", "198.51.100.1", "203.0.113.1"}[n]
	if k == kindEDMMap {
		wanAddr, wanGW = fmt.Sprintf("11.%d.0.2", n), fmt.Sprintf("11.%d.0.1", n)
	}
	edge := lab.NS(fmt.Sprintf("nat%d", n))
	if shape != (netlab.Shape{}) {
		lab.ShapedLink(edge, "wan0", wanAddr, wan, fmt.Sprintf("nat%d0", n), wanGW, shape)
	} else {
		lab.Link(edge, "wan0", wanAddr+"/24", wan, fmt.Sprintf("nat%d0", n), wanGW+"/24")
	}
	edge.Run("ip", "route", "add", "default", "via", wanGW)
	edge.Forwarding()
	inner := edge
	if k == kindDouble {
		// The carrier's NAT: endpoint-independent (RFC 6888 asks for it),
		// no firewall of its own.
		edge.Nft(natBare.ruleset())
		home := lab.NS(fmt.Sprintf("home%d", n))
		cg := fmt.Sprintf("100.64.%d.", n)
		lab.Link(home, "wan0", cg+"2/24", edge, "cgn0", cg+"1/24")
		home.Run("ip", "route", "add", "default", "via", cg+"1")
		home.Forwarding()
		inner = home
	}
	if k == kindEDMMap {
		inner.Nft(pmRouter{natRandom, pmMiniupnpd}.ruleset())
	} else {
		inner.Nft(k.nat().ruleset())
	}
	peer := lab.NS(fmt.Sprintf("peer%d", n))
	lan := fmt.Sprintf("10.%d.0.", n)
	lab.Link(peer, "eth0", lan+"2/24", inner, "lan0", lan+"1/24")
	peer.Run("ip", "route", "add", "default", "via", lan+"1")
	if k == kindEDMMap {
		startMiniupnpd(t, inner, lan+"0/24")
	}
	return peer
}

// tableConfig is the configuration of a peer in ns, side n, behind kind
// k: a socket of ns, and for kindEDMMap port mapping with its router
// through ns (otherwise port mapping stays off: the socket lives in
// another namespace).
func tableConfig(t *testing.T, ns *netlab.NS, n int, k netKind) *Config {
	c, err := ns.ListenUDP("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cfg := &Config{Conn: c}
	if k == kindEDMMap {
		cfg.PortMapping = PortMappingConfig{
			Gateway:     netip.AddrFrom4([4]byte{10, byte(n), 0, 1}),
			DialContext: ns.DialContext,
			ListenPacket: func(_ context.Context, network, address string) (net.PacketConn, error) {
				c, err := ns.ListenUDP(network, address)
				if err != nil {
					return nil, err
				}
				return c, nil
			},
		}
	}
	return cfg
}

// tableResult is one pair's row.
type tableResult struct {
	a, b    netKind
	n, ok   int
	times   []time.Duration // time to direct of the successful attempts
	relayed []string        // reasons of failed attempts
}

func (r *tableResult) String() string {
	outcome := "relayed"
	switch {
	case r.ok == r.n:
		outcome = "direct"
	case r.ok > 0:
		outcome = "direct or relayed"
	}
	tt := "—"
	if len(r.times) > 0 {
		slices.Sort(r.times)
		tt = fmt.Sprintf("%v (%v–%v)", r.times[len(r.times)/2].Round(time.Millisecond),
			r.times[0].Round(time.Millisecond), r.times[len(r.times)-1].Round(time.Millisecond))
	}
	why := ""
	if len(r.relayed) > 0 {
		why = "; relayed: " + r.relayed[0]
	}
	return fmt.Sprintf("| %v | %v | %s | %s | %d of %d%s |", r.a, r.b, outcome, tt, r.ok, r.n, why)
}

// TestNATTable measures the success table (see tableSide).
func TestNATTable(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("QUICPIPE_NAT_TABLE"))
	if n == 0 {
		t.Skip("set QUICPIPE_NAT_TABLE=N (N >= 10 attempts per pair) to measure the success table of docs/NAT.md")
	}
	n = max(n, 10)
	kinds := []netKind{kindEIMFirewall, kindEIMBare, kindEDM, kindDouble, kindEDMMap}
	var rows []string
	for i, a := range kinds {
		for _, b := range kinds[i:] {
			t.Run(fmt.Sprintf("%v-%v", a, b), func(t *testing.T) {
				r := measurePair(t, a, b, n)
				t.Logf("row %s", r)
				rows = append(rows, r.String())
			})
		}
	}
	t.Run("IPv6", func(t *testing.T) {
		r := measureIPv6(t, n)
		t.Logf("row %s", r)
		rows = append(rows, r.String())
	})
	t.Logf("NAT table (%d attempts per pair):\n%s", n, strings.Join(rows, "\n"))
}

// punchWindow is how long an attempt waits for a direct path: the first
// punch round (16 probes 250 ms apart after at most 1 s) and some slack.
const punchWindow = 6 * time.Second

func measurePair(t *testing.T, a, b netKind, n int) *tableResult {
	if a == kindEDMMap || b == kindEDMMap {
		if _, err := exec.LookPath("miniupnpd"); err != nil {
			t.Skip("miniupnpd not installed (apt-get install miniupnpd-nftables)")
		}
	}
	l := &natLab{lab: netlab.New(t), relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()}
	l.wan, l.relayNS = l.lab.NS("wan"), l.lab.NS("relay")
	l.wan.Forwarding()
	l.lab.Link(l.relayNS, "eth0", "192.0.2.2/24", l.wan, "relay0", "192.0.2.1/24")
	l.relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")
	l.peerA = tableSide(t, l.lab, l.wan, 1, a, netlab.Shape{})
	l.peerB = tableSide(t, l.lab, l.wan, 2, b, natUplink)
	conn, err := l.relayNS.ListenUDP("udp4", "192.0.2.2:0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRelay(conn, &RelayConfig{Identity: l.relayID, Logger: testLogger(t)})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	l.relay = r
	serveRelay(t, r, func() { conn.Close() })
	return attempts(t, a, b, n, func(ctx context.Context) *directPeers {
		return dialDirectTimed(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID,
			tableConfig(t, l.peerA, 1, a), tableConfig(t, l.peerB, 2, b), 0, nil)
	})
}

func measureIPv6(t *testing.T, n int) *tableResult {
	l := newV6Lab(t)
	return attempts(t, kindIPv6, kindIPv6, n, func(ctx context.Context) *directPeers {
		return dialDirect(t, ctx, l.relayAddr, l.ids.relayID, l.ids.aID, l.ids.bID,
			&Config{Conn: l.socket(t, l.peerA)}, &Config{Conn: l.socket(t, l.peerB)}, 0)
	})
}

// attempts dials n pipes one after the other, each on new sockets, and
// records which found a direct path within punchWindow, and when.
func attempts(t *testing.T, a, b netKind, n int, dial func(context.Context) *directPeers) *tableResult {
	res := &tableResult{a: a, b: b, n: n}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), punchWindow+15*time.Second)
		p := dial(ctx)
		wctx, wcancel := context.WithTimeout(ctx, punchWindow)
		dp, err := p.dw.wait(wctx, isDirect)
		if err == nil {
			_, err = p.aw.wait(wctx, isDirect)
		}
		wcancel()
		if err == nil {
			res.ok++
			res.times = append(res.times, max(dp.Since.Sub(p.established), 0))
		} else {
			cur, _ := p.d.Path(p.dc)
			res.relayed = append(res.relayed, cur.Reason)
		}
		// The pipe must work either way.
		if err := transfer(ctx, p.dc, p.ac, 64<<10, nil); err != nil {
			t.Errorf("attempt's transfer: %v", err)
		}
		p.d.Close()
		p.a.Close()
		cancel()
	}
	return res
}
