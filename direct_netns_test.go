//go:build linux

package quicpipe

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// The NAT lab: peers behind NAT routers in network namespaces, a relay on
// a "public" segment, one router between them all:
//
//	peerA 10.1.0.2 ─lan0─ natA ─wan0 198.51.100.2─┐
//	                                               wan ── 192.0.2.2 relay
//	peerB 10.2.0.2 ─lan0─ natB ─wan0 203.0.113.2─┘
//
// or, for two peers on one LAN:
//
//	peerA 10.3.0.2 ─┐
//	                br0 natA ─wan0 198.51.100.2── wan ── 192.0.2.2 relay
//	peerB 10.3.0.3 ─┘
//
// wan is a plain router, so a probe sent with TTL 2 by a peer passes its own
// NAT and dies at wan without reaching the other NAT. The NAT routers
// masquerade what leaves wan0 (nftables), port-preserving by default.
// Peers and relay run in this test process on sockets created inside their
// namespaces. The last NAT's uplink (natB's, or natA's on one LAN) may be
// an emulated link with a delay or a rate limit (netlab.ShapedLink: this
// kernel has no netem); the relayed and the direct path both cross it.

// natKind is how a NAT router behaves.
type natKind int

const (
	// natEIM: port-preserving masquerade (endpoint-independent mapping
	// while the port is free) and, like real home routers, an input
	// chain that drops new connections arriving on the WAN side.
	natEIM natKind = iota
	// natBare: the same masquerade with no input firewall: an unsolicited
	// packet to the router's WAN address gets a conntrack entry, which
	// can collide with a mapping made right after.
	natBare
	// natRandom: masquerade fully-random (a random port for every new
	// mapping: endpoint-dependent) with the input firewall.
	natRandom
)

func isRelayed(p PathInfo) bool { return p.Kind == PathRelayed }

func (k natKind) String() string {
	return [...]string{"port-preserving", "port-preserving, no input firewall", "fully-random"}[k]
}

func (k natKind) ruleset() string {
	opt := ""
	if k == natRandom {
		opt = " fully-random"
	}
	rs := fmt.Sprintf(`table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade%s
	}
}
`, opt)
	if k != natBare {
		rs += `table ip filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state new drop
	}
}
`
	}
	return rs
}

type natLab struct {
	lab                    *netlab.Lab
	wan, relayNS           *netlab.NS
	natA, natB             *netlab.NS // natB == natA on one LAN
	peerA, peerB           *netlab.NS
	relay                  *Relay
	relayID, aID, bID      ed25519.PrivateKey
	wanA, wanB, lanA, lanB netip.Addr
}

// newNATLab builds the lab with peer A behind a NAT of kind ka and peer B
// behind one of kind kb, or both behind one NAT of kind ka if sameLAN. A
// non-zero uplink shapes the last NAT's link to wan.
func newNATLab(t *testing.T, ka, kb natKind, sameLAN bool, uplink netlab.Shape) *natLab {
	l := &natLab{lab: netlab.New(t), relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()}
	buildNATNetwork(l, ka, kb, sameLAN, uplink)
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
	return l
}

// buildNATNetwork builds the namespaces, links and rules of the lab.
func buildNATNetwork(l *natLab, ka, kb natKind, sameLAN bool, uplink netlab.Shape) {
	lab := l.lab
	l.wan, l.relayNS = lab.NS("wan"), lab.NS("relay")
	l.wan.Forwarding()
	lab.Link(l.relayNS, "eth0", "192.0.2.2/24", l.wan, "relay0", "192.0.2.1/24")
	l.relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")

	shaped := uplink != (netlab.Shape{})
	l.natA = lab.NS("natA")
	l.wanA, l.wanB = netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("203.0.113.2")
	if sameLAN && shaped {
		lab.ShapedLink(l.natA, "wan0", "198.51.100.2", l.wan, "natA0", "198.51.100.1", uplink)
	} else {
		lab.Link(l.natA, "wan0", "198.51.100.2/24", l.wan, "natA0", "198.51.100.1/24")
	}
	l.natA.Run("ip", "route", "add", "default", "via", "198.51.100.1")
	l.natA.Forwarding()
	l.natA.Nft(ka.ruleset())
	l.peerA, l.peerB = lab.NS("peerA"), lab.NS("peerB")
	if sameLAN {
		l.natB, l.wanB = l.natA, l.wanA
		l.lanA, l.lanB = netip.MustParseAddr("10.3.0.2"), netip.MustParseAddr("10.3.0.3")
		l.natA.Run("ip", "link", "add", "br0", "type", "bridge")
		lab.Link(l.peerA, "eth0", "10.3.0.2/24", l.natA, "lanA", "")
		lab.Link(l.peerB, "eth0", "10.3.0.3/24", l.natA, "lanB", "")
		for _, ifc := range []string{"lanA", "lanB"} {
			l.natA.Run("ip", "link", "set", ifc, "master", "br0")
		}
		l.natA.Run("ip", "addr", "add", "10.3.0.1/24", "dev", "br0")
		l.natA.Run("ip", "link", "set", "br0", "up")
		for _, p := range []*netlab.NS{l.peerA, l.peerB} {
			p.Run("ip", "route", "add", "default", "via", "10.3.0.1")
		}
	} else {
		l.natB = lab.NS("natB")
		if shaped {
			lab.ShapedLink(l.natB, "wan0", "203.0.113.2", l.wan, "natB0", "203.0.113.1", uplink)
		} else {
			lab.Link(l.natB, "wan0", "203.0.113.2/24", l.wan, "natB0", "203.0.113.1/24")
		}
		l.natB.Run("ip", "route", "add", "default", "via", "203.0.113.1")
		l.natB.Forwarding()
		l.natB.Nft(kb.ruleset())
		l.lanA, l.lanB = netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2")
		lab.Link(l.peerA, "eth0", "10.1.0.2/24", l.natA, "lan0", "10.1.0.1/24")
		lab.Link(l.peerB, "eth0", "10.2.0.2/24", l.natB, "lan0", "10.2.0.1/24")
		l.peerA.Run("ip", "route", "add", "default", "via", "10.1.0.1")
		l.peerB.Run("ip", "route", "add", "default", "via", "10.2.0.1")
	}
}

// peerSocket opens a peer's socket inside ns; the test closes it.
func (l *natLab) peerSocket(t testing.TB, ns *netlab.NS) *net.UDPConn {
	c, err := ns.ListenUDP("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dial connects a dialer in peerA to an accepter in peerB through the
// relay. timing, if not nil, replaces both peers' direct-path timers.
func (l *natLab) dial(t *testing.T, ctx context.Context, timing *directTiming) *directPeers {
	dcfg := &Config{Conn: l.peerSocket(t, l.peerA)}
	acfg := &Config{Conn: l.peerSocket(t, l.peerB)}
	return dialDirectTimed(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID, dcfg, acfg, 0, timing)
}

// cut drops the traffic between the two NATs' WAN addresses at the wan
// router (the direct path; the relay's traffic passes); the returned func
// restores it.
func (l *natLab) cut(t *testing.T) (restore func()) {
	l.wan.Nft(fmt.Sprintf(`table ip cut {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr %[1]s ip daddr %[2]s drop
		ip saddr %[2]s ip daddr %[1]s drop
	}
}
`, l.wanA, l.wanB))
	return func() { l.wan.Run("nft", "delete", "table", "ip", "cut") }
}

// natUplink delays the last NAT's uplink in the NAT tests by 10 ms each
// way: a round trip between the peers, direct or relayed, takes 20 ms, so
// that the measured times count round trips as on a real network.
var natUplink = netlab.Shape{Delay: 10 * time.Millisecond}

// TestNAT connects two peers across each NAT combination of the lab and
// checks (or, where theory says punching cannot work, reports) whether the
// connection finds a direct path; the relayed pipe must work in every case.
// The outcomes and timings go into docs/NAT.md.
func TestNAT(t *testing.T) {
	slow := defaultDirectTiming
	slow.lowTTL = 0
	for _, tc := range []struct {
		name       string
		a, b       natKind
		sameLAN    bool
		timing     *directTiming
		wantDirect bool // false: report the outcome only
	}{
		{"port-preserving", natEIM, natEIM, false, nil, true},
		{"no-input-firewall", natBare, natBare, false, nil, true},
		{"no-input-firewall-no-low-ttl", natBare, natBare, false, &slow, false},
		{"fully-random-vs-port-preserving", natRandom, natEIM, false, nil, false},
		{"same-lan", natEIM, natEIM, true, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			l := newNATLab(t, tc.a, tc.b, tc.sameLAN, natUplink)
			p := l.dial(t, ctx, tc.timing)
			where := fmt.Sprintf("A behind %v, B behind %v", tc.a, tc.b)
			if tc.sameLAN {
				where = fmt.Sprintf("A and B on one LAN behind %v", tc.a)
			}

			var direct bool
			var dp PathInfo
			if tc.wantDirect {
				dp = p.waitDirect(t, ctx)
				direct = true
			} else {
				// One full punch round and the start of the retry, unless
				// a direct path turns up.
				deadline := time.Now().Add(15 * time.Second)
				for time.Now().Before(deadline) {
					dp, _ = p.d.Path(p.dc)
					direct = dp.Kind == PathDirect
					if direct || p.d.DirectStats().PunchAttempts >= 2 {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			ds, as := p.d.DirectStats(), p.a.DirectStats()
			if direct {
				t.Logf("NAT table: %s: direct path %v after %v (dialer %+v, accepter %+v)",
					where, dp.Remote, dp.Since.Sub(p.established).Round(time.Millisecond), ds, as)
			} else {
				t.Logf("NAT table: %s: no direct path after a punch round; relayed (dialer %+v, accepter %+v)", where, ds, as)
			}

			wantRemote := netip.AddrPortFrom(l.wanB, netAddrPort(p.a.Registration().Observed).Port())
			if tc.sameLAN {
				wantRemote = netip.AddrPortFrom(l.lanB, p.a.LocalAddr().(*net.UDPAddr).AddrPort().Port())
			}
			if direct && tc.wantDirect && dp.Remote != wantRemote {
				t.Errorf("direct path to %v, want %v", dp.Remote, wantRemote)
			}

			before := l.relay.Stats().Forwarded
			const size = 1 << 20
			if err := transfer(ctx, p.dc, p.ac, size, nil); err != nil {
				t.Fatalf("transfer: %v", err)
			}
			fwd := l.relay.Stats().Forwarded - before
			switch {
			case direct && fwd > 100:
				t.Errorf("the relay forwarded %d datagrams during a direct transfer", fwd)
			case !direct && fwd < size/1300:
				t.Errorf("relayed transfer, but the relay forwarded only %d datagrams", fwd)
			}
		})
	}
}

// TestNATFallback moves a connection onto the direct path between two
// port-preserving NATs, cuts that path in the middle of a 10 MB transfer
// (the relay's traffic still passes), and checks that the connection falls
// back to the relay, the transfer completes intact, and the connection
// returns to the direct path once it works again.
func TestNATFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l := newNATLab(t, natEIM, natEIM, false, natUplink)
	p := l.dial(t, ctx, nil)
	dp := p.waitDirect(t, ctx)
	t.Logf("direct path %v after %v", dp.Remote, dp.Since.Sub(p.established).Round(time.Millisecond))

	var cutAt time.Time
	var restore func()
	before := l.relay.Stats().Forwarded
	err := transfer(ctx, p.dc, p.ac, 10<<20, func() {
		cutAt = time.Now()
		restore = l.cut(t)
	})
	if restore == nil {
		t.Fatal("the path was never cut")
	}
	if err != nil {
		restore()
		t.Fatalf("transfer across the cut: %v", err)
	}
	took := time.Since(cutAt)
	fb, err := p.dw.wait(ctx, isRelayed)
	if err != nil {
		restore()
		t.Fatal(err)
	}
	fwd := l.relay.Stats().Forwarded - before
	t.Logf("NAT table: fallback to the relay %v after the cut; the rest of the 10 MB took %v after the cut, %d datagrams through the relay; dialer %+v",
		fb.Since.Sub(cutAt).Round(time.Millisecond), took.Round(time.Millisecond), fwd, p.d.DirectStats())
	if fwd < (4<<20)/1300 {
		t.Errorf("the relay forwarded only %d datagrams after the cut", fwd)
	}
	if st := p.d.DirectStats(); st.Fallbacks < 1 {
		t.Errorf("dialer stats %+v: no fallback counted", st)
	}

	restore()
	restoredAt := time.Now()
	back, err := p.dw.wait(ctx, func(pi PathInfo) bool { return pi.Kind == PathDirect && pi.Since.After(restoredAt) })
	if err != nil {
		t.Fatalf("no return to the direct path: %v; dialer %+v", err, p.d.DirectStats())
	}
	t.Logf("NAT table: back on the direct path %v, %v after the restore", back.Remote, back.Since.Sub(restoredAt).Round(time.Millisecond))
	before = l.relay.Stats().Forwarded
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if fwd := l.relay.Stats().Forwarded - before; fwd > 100 {
		t.Errorf("the relay forwarded %d datagrams after the return to the direct path", fwd)
	}
	if s := strings.TrimSpace(l.wan.Run("nft", "list", "tables")); strings.Contains(s, "cut") {
		t.Errorf("cut rule still there: %s", s)
	}
}

// TestNATCandidatesChange gives peer B a new address while its connection
// is on the direct path: B notices, announces its new candidates in a new
// punch round, and the connection stays on its working path.
func TestNATCandidatesChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newNATLab(t, natEIM, natEIM, false, netlab.Shape{})
	timing := defaultDirectTiming
	timing.refresh = 200 * time.Millisecond // own candidates checked often
	p := l.dial(t, ctx, &timing)
	dp := p.waitDirect(t, ctx)
	a0 := p.a.DirectStats().PunchAttempts

	changed := time.Now()
	l.peerB.Run("ip", "addr", "add", "10.2.0.3/24", "dev", "eth0")
	for p.a.DirectStats().PunchAttempts == a0 {
		if ctx.Err() != nil {
			t.Fatalf("no new round after the address change: accepter %+v", p.a.DirectStats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("new round %v after the address change", time.Since(changed).Round(time.Millisecond))
	if info, _ := p.d.Path(p.dc); info.Kind != PathDirect || info.Remote != dp.Remote {
		t.Errorf("path %+v after the change, want still %v", info, dp.Remote)
	}
	if err := transfer(ctx, p.dc, p.ac, 256<<10, nil); err != nil {
		t.Fatal(err)
	}
}
