//go:build linux

package quicpipe

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/internal/portmap"
)

// The port-mapping lab: the NAT lab's shape, with NAT routers whose WAN
// addresses are outside every reserved range (miniupnpd refuses to map on
// a private, shared, TEST-NET or benchmarking address). 11.0.0.0/8 exists
// only inside these namespaces.
//
//	peerA 10.1.0.2 ─lan0─ natA ─wan0 11.1.0.2─┐
//	                                          wan ── 192.0.2.2 relay
//	peerB 10.2.0.2 ─lan0─ natB ─wan0 11.2.0.2─┘
//
// A router maps endpoint-independently (masquerade, port-preserving) or
// endpoint-dependently (masquerade fully-random), drops new connections
// arriving on its WAN side, and runs a port-mapping server: miniupnpd
// (UPnP-IGD, NAT-PMP and PCP), a fake NAT-PMP/PCP responder of the test,
// or nothing.

// pmGateway is what answers port-mapping requests on a router.
type pmGateway int

const (
	pmNone      pmGateway = iota
	pmMiniupnpd           // miniupnpd: UPnP-IGD, NAT-PMP and PCP
	pmLate                // miniupnpd, started by the test once the pipe is relayed
	pmGarbage             // a responder answering garbage
	pmWrongPort           // a responder granting mappings it does not make
)

type pmRouter struct {
	nat natKind // natEIM or natRandom
	gw  pmGateway
}

func (r pmRouter) String() string {
	s := map[natKind]string{natEIM: "EIM", natRandom: "EDM"}[r.nat]
	switch r.gw {
	case pmMiniupnpd:
		s += " + miniupnpd"
	case pmLate:
		s += " + miniupnpd started late"
	case pmGarbage:
		s += " + garbage gateway"
	case pmWrongPort:
		s += " + wrong-port gateway"
	}
	return s
}

// ruleset is the router's nftables ruleset, with the chains miniupnpd
// fills (named in its configuration, pmConfig).
func (r pmRouter) ruleset() string {
	opt := ""
	if r.nat == natRandom {
		opt = " fully-random"
	}
	return fmt.Sprintf(`table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state new drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
}
table inet nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump postrouting_miniupnpd
		oifname "wan0" masquerade%s
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`, opt)
}

// pmConfig is miniupnpd's configuration for a router whose LAN is lan.
func pmConfig(dir, lan string) string {
	return fmt.Sprintf(`ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
lease_file=%s
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
upnp_table_name=filter
upnp_nat_table_name=nat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 %s 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, filepath.Join(dir, "leases"), lan)
}

type pmLab struct {
	lab               *netlab.Lab
	wan, relayNS      *netlab.NS
	natA, natB        *netlab.NS
	peerA, peerB      *netlab.NS
	relay             *Relay
	relayID, aID, bID ed25519.PrivateKey
	wanA, wanB        netip.Addr
	gwA, gwB          netip.Addr // the routers' LAN addresses
}

func newPMLab(t *testing.T, a, b pmRouter) *pmLab {
	if a.gw == pmMiniupnpd || b.gw == pmMiniupnpd || a.gw == pmLate {
		if _, err := exec.LookPath("miniupnpd"); err != nil {
			t.Skip("miniupnpd not installed (apt-get install miniupnpd-nftables)")
		}
	}
	l := &pmLab{lab: netlab.New(t), relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity(),
		wanA: netip.MustParseAddr("11.1.0.2"), wanB: netip.MustParseAddr("11.2.0.2"),
		gwA: netip.MustParseAddr("10.1.0.1"), gwB: netip.MustParseAddr("10.2.0.1")}
	lab := l.lab
	l.wan, l.relayNS = lab.NS("wan"), lab.NS("relay")
	l.wan.Forwarding()
	lab.Link(l.relayNS, "eth0", "192.0.2.2/24", l.wan, "relay0", "192.0.2.1/24")
	l.relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")
	l.natA, l.natB = lab.NS("natA"), lab.NS("natB")
	l.peerA, l.peerB = lab.NS("peerA"), lab.NS("peerB")
	for i, side := range []struct {
		nat, peer *netlab.NS
		r         pmRouter
	}{{l.natA, l.peerA, a}, {l.natB, l.peerB, b}} {
		n := i + 1
		lab.Link(side.nat, "wan0", fmt.Sprintf("11.%d.0.2/24", n), l.wan, fmt.Sprintf("nat%d", n), fmt.Sprintf("11.%d.0.1/24", n))
		// natB's uplink: the NAT lab's 10 ms each way would do, but
		// the times here are not the point; plain links keep it quick.
		side.nat.Run("ip", "route", "add", "default", "via", fmt.Sprintf("11.%d.0.1", n))
		side.nat.Forwarding()
		side.nat.Nft(side.r.ruleset())
		lab.Link(side.peer, "eth0", fmt.Sprintf("10.%d.0.2/24", n), side.nat, "lan0", fmt.Sprintf("10.%d.0.1/24", n))
		side.peer.Run("ip", "route", "add", "default", "via", fmt.Sprintf("10.%d.0.1", n))
		switch side.r.gw {
		case pmMiniupnpd:
			startMiniupnpd(t, side.nat, fmt.Sprintf("10.%d.0.0/24", n))
		case pmGarbage, pmWrongPort:
			startFakeGateway(t, side.nat, netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("10.%d.0.1", n)), 5351),
				netip.MustParseAddr(fmt.Sprintf("11.%d.0.2", n)), side.r.gw)
		}
	}
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

// startMiniupnpd runs miniupnpd in router ns (killed when the test ends)
// and waits until it listens.
func startMiniupnpd(t *testing.T, ns *netlab.NS, lan string) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "miniupnpd.conf")
	if err := os.WriteFile(conf, []byte(pmConfig(dir, lan)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := ns.Start("miniupnpd", nil, "miniupnpd", "-d", "-f", conf, "-P", filepath.Join(dir, "pid"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Stderr(), "Listening for NAT-PMP/PCP traffic") {
		select {
		case <-p.Done():
			t.Fatalf("miniupnpd exited: %s", p.Stderr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("miniupnpd does not listen after 10 s: %s", p.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startFakeGateway answers NAT-PMP and PCP requests at addr in ns: with
// garbage (pmGarbage), or with well-formed grants of mappings to port+1
// that nothing forwards (pmWrongPort). It stops when the test ends.
func startFakeGateway(t *testing.T, ns *netlab.NS, addr netip.AddrPort, ext netip.Addr, mode pmGateway) {
	conn, err := ns.ListenUDP("udp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		n := 0
		for {
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n++
			req := buf[:k]
			var replies [][]byte
			if mode == pmGarbage {
				// Truncated, wrong versions, wrong opcodes, random.
				replies = [][]byte{
					{0, 128},
					{0, 129, 0, 0, 1, 2, 3},
					{2, 0x81, 0, 0},
					{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7},
					append([]byte{2, 0x81, 0, 0}, make([]byte, 56)...), // PCP MAP reply, wrong nonce
					append([]byte{0, 130}, make([]byte, 14)...),
					[]byte(strings.Repeat("garbage", n%5+1)),
				}
			} else {
				replies = [][]byte{fakeGrant(req, ext)}
			}
			for _, r := range replies {
				if r != nil {
					conn.WriteToUDPAddrPort(r, from)
				}
			}
		}
	}()
}

// fakeGrant answers a NAT-PMP or PCP request with success, granting
// mappings to the internal port plus one.
func fakeGrant(req []byte, ext netip.Addr) []byte {
	switch {
	case len(req) == 2 && req[0] == 0 && req[1] == 0: // NAT-PMP address
		b := []byte{0, 128, 0, 0, 0, 0, 0, 1}
		e := ext.As4()
		return append(b, e[:]...)
	case len(req) == 12 && req[0] == 0 && req[1] == 1: // NAT-PMP map
		b := make([]byte, 16)
		b[0], b[1] = 0, 129
		binary.BigEndian.PutUint32(b[4:], 1)
		in := binary.BigEndian.Uint16(req[4:])
		binary.BigEndian.PutUint16(b[8:], in)
		binary.BigEndian.PutUint16(b[10:], in+1)
		copy(b[12:16], req[8:12])
		return b
	case len(req) >= 24 && req[0] == 2 && req[1] == 0: // PCP ANNOUNCE
		b := make([]byte, 24)
		b[0], b[1] = 2, 0x80
		return b
	case len(req) >= 60 && req[0] == 2 && req[1] == 1: // PCP MAP
		b := make([]byte, 60)
		b[0], b[1] = 2, 0x81
		copy(b[4:8], req[4:8])
		copy(b[24:60], req[24:60])
		in := binary.BigEndian.Uint16(req[40:])
		binary.BigEndian.PutUint16(b[42:], in+1)
		e := netip.AddrFrom16(ext.As16()).As16()
		copy(b[44:60], e[:])
		return b
	}
	return nil
}

// peerCfg is the configuration of a peer in ns behind gateway gw: port
// mapping through the namespace (or off), over the given protocols.
func (l *pmLab) peerCfg(t *testing.T, ns *netlab.NS, gw netip.Addr, on bool, retry time.Duration, protos ...portmap.Protocol) *Config {
	c, err := ns.ListenUDP("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &Config{Conn: c, PortMapping: PortMappingConfig{
		Disable:     !on,
		Gateway:     gw,
		DialContext: ns.DialContext,
		ListenPacket: func(_ context.Context, network, address string) (net.PacketConn, error) {
			c, err := ns.ListenUDP(network, address)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		protocols: protos,
		retry:     retry,
	}}
}

// TestPortMapping connects peers behind endpoint-dependent NATs that run
// miniupnpd: with port mapping the pipe moves onto a direct path to the
// mapped address, with each protocol; without it stays relayed. Gateways
// that answer garbage or grant a port they do not forward are survived:
// the pipe stays relayed and works, the bad answers counted.
func TestPortMapping(t *testing.T) {
	edmUPnP := pmRouter{natRandom, pmMiniupnpd}
	eim := pmRouter{natEIM, pmNone}
	for _, tc := range []struct {
		name       string
		a, b       pmRouter
		mapA, mapB bool
		protos     []portmap.Protocol
		wantDirect bool
		wantVia    string // the accepter's PathInfo.Via, when A's mapping is the path
	}{
		{"edm-pcp-vs-eim", edmUPnP, eim, true, false, []portmap.Protocol{portmap.PCP}, true, "port mapping (PCP)"},
		{"edm-natpmp-vs-eim", edmUPnP, eim, true, false, []portmap.Protocol{portmap.NATPMP}, true, "port mapping (NAT-PMP)"},
		{"edm-upnp-vs-eim", edmUPnP, eim, true, false, []portmap.Protocol{portmap.UPnP}, true, "port mapping (UPnP)"},
		{"edm-mapping-vs-edm-mapping", edmUPnP, edmUPnP, true, true, nil, true, ""},
		{"edm-without-mapping-vs-eim", edmUPnP, eim, false, false, nil, false, ""},
		{"edm-garbage-gateway-vs-eim", pmRouter{natRandom, pmGarbage}, eim, true, false, nil, false, ""},
		{"edm-wrong-port-gateway-vs-eim", pmRouter{natRandom, pmWrongPort}, eim, true, false, nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			l := newPMLab(t, tc.a, tc.b)
			dcfg := l.peerCfg(t, l.peerA, l.gwA, tc.mapA, 0, tc.protos...)
			acfg := l.peerCfg(t, l.peerB, l.gwB, tc.mapB, 0, tc.protos...)
			p := dialDirectTimed(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID, dcfg, acfg, 0, nil)
			where := fmt.Sprintf("A behind %v (mapping %v), B behind %v (mapping %v)", tc.a, tc.mapA, tc.b, tc.mapB)

			var direct bool
			var dp, ap PathInfo
			if tc.wantDirect {
				dp = p.waitDirect(t, ctx)
				ap, _ = p.a.Path(p.ac)
				direct = true
			} else {
				// One full punch round and the start of the retry.
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
				t.Logf("port mapping table: %s: direct path %v (dialer, via %q) / %v (accepter, via %q) after %v; dialer %+v",
					where, dp.Remote, dp.Via, ap.Remote, ap.Via, dp.Since.Sub(p.established).Round(time.Millisecond), ds.PortMapping)
			} else {
				t.Logf("port mapping table: %s: relayed after a punch round; dialer %+v", where, ds.PortMapping)
			}
			if direct != tc.wantDirect {
				t.Fatalf("direct %v, want %v; dialer %+v, accepter %+v", direct, tc.wantDirect, ds, as)
			}

			pmA := ds.PortMapping
			switch {
			case tc.a.gw == pmMiniupnpd && tc.mapA:
				if pmA.Mapped != 1 || pmA.External.Addr() != l.wanA || pmA.Protocol == "" {
					t.Errorf("dialer's port mapping %+v, want one on %v", pmA, l.wanA)
				}
				if want := netip.AddrPortFrom(l.wanA, pmA.External.Port()); tc.wantVia != "" && (ap.Remote != want || ap.Via != tc.wantVia) {
					t.Errorf("accepter's path %v via %q, want %v via %q", ap.Remote, ap.Via, want, tc.wantVia)
				}
			case !tc.mapA:
				if pmA != (PortMappingStats{}) {
					t.Errorf("port mapping off, but dialer's stats %+v", pmA)
				}
			case tc.a.gw == pmGarbage:
				if pmA.Mapped != 0 || pmA.BadReplies == 0 {
					t.Errorf("garbage gateway: dialer's port mapping %+v, want no mapping and bad replies counted", pmA)
				}
			case tc.a.gw == pmWrongPort:
				if pmA.Mapped != 1 || pmA.External.Addr() != l.wanA {
					t.Errorf("wrong-port gateway: dialer's port mapping %+v, want the (useless) grant", pmA)
				}
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

			if tc.a.gw == pmMiniupnpd && tc.mapA {
				// Closing the dialer removes its mapping from the router.
				port := fmt.Sprint(pmA.External.Port())
				if !strings.Contains(l.natA.Run("nft", "list", "chain", "inet", "nat", "prerouting_miniupnpd"), port) {
					t.Errorf("no DNAT rule for port %s in natA's miniupnpd chain", port)
				}
				p.d.Close()
				if s := l.natA.Run("nft", "list", "chain", "inet", "nat", "prerouting_miniupnpd"); strings.Contains(s, "dport "+port) {
					t.Errorf("the mapping of port %s survived the dialer's Close:\n%s", port, s)
				}
			}
		})
	}
}

// TestPortMappingOtherNetns: a socket of another network namespace gets no
// port mapping unless the configuration opens the client's sockets there
// (the caller's gateway is not the socket's); a loopback or private relay
// gets none either.
func TestPortMappingOtherNetns(t *testing.T) {
	lab := netlab.New(t)
	ns := lab.NS("peer")
	conn, err := ns.ListenUDP("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	log := slog.New(slog.DiscardHandler)
	public := netip.MustParseAddrPort("192.0.2.2:4433")
	gw := netip.MustParseAddr("10.9.0.1")
	if c := startPortMapping(conn, public, &Config{PortMapping: PortMappingConfig{Gateway: gw}}, log, nil); c != nil {
		c.Close()
		t.Error("port mapping started for a socket of another namespace without hooks")
	}
	hooks := PortMappingConfig{
		Gateway:     gw,
		DialContext: ns.DialContext,
		ListenPacket: func(_ context.Context, network, address string) (net.PacketConn, error) {
			return nil, errors.New("unused")
		},
	}
	for _, relay := range []string{"127.0.0.1:4433", "10.0.0.1:4433"} {
		if c := startPortMapping(conn, netip.MustParseAddrPort(relay), &Config{PortMapping: hooks}, log, nil); c != nil {
			c.Close()
			t.Errorf("port mapping started with a relay at %s", relay)
		}
	}
	c := startPortMapping(conn, public, &Config{PortMapping: hooks}, log, nil)
	if c == nil {
		t.Fatal("port mapping did not start with the namespace's hooks")
	}
	<-c.Ready()
	if st := c.Stats(); st.Probes != 1 {
		t.Errorf("stats %+v, want one probe", st)
	}
	c.Close()
}

// TestPortMappingLate starts miniupnpd on A's endpoint-dependent NAT only
// once the pipe has settled on the relay: A's client probes again (after
// 1 s here, 5 minutes by default), maps the port, and the new candidate,
// announced at once, moves the pipe onto a direct path.
func TestPortMappingLate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := newPMLab(t, pmRouter{natRandom, pmLate}, pmRouter{natEIM, pmNone})
	dcfg := l.peerCfg(t, l.peerA, l.gwA, true, time.Second)
	acfg := l.peerCfg(t, l.peerB, l.gwB, false, 0)
	p := dialDirectTimed(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID, dcfg, acfg, 0, nil)
	if _, err := p.dw.wait(ctx, func(pi PathInfo) bool { return pi.Kind == PathRelayed && pi.Reason != "" }); err != nil {
		t.Fatalf("no failed punch round: %v; dialer %+v", err, p.d.DirectStats())
	}
	if st := p.d.DirectStats().PortMapping; st.Mapped != 0 || st.Probes == 0 {
		t.Fatalf("port mapping %+v before the gateway started", st)
	}
	started := time.Now()
	startMiniupnpd(t, l.natA, "10.1.0.0/24")
	ap, err := p.aw.wait(ctx, isDirect)
	if err != nil {
		t.Fatalf("accepter: no direct path after the gateway started: %v; dialer %+v", err, p.d.DirectStats())
	}
	st := p.d.DirectStats().PortMapping
	t.Logf("port mapping table: gateway started late: direct path %v via %q %v after it started; dialer %+v",
		ap.Remote, ap.Via, ap.Since.Sub(started).Round(time.Millisecond), st)
	// A gateway that comes up while the client probes may answer NAT-PMP
	// before its PCP side is ready (miniupnpd serves both on one port):
	// either mapping is the point here.
	if !strings.HasPrefix(ap.Via, "port mapping (") || ap.Remote != st.External {
		t.Errorf("accepter's path %v via %q, want %v via a port mapping", ap.Remote, ap.Via, st.External)
	}
	if err := transfer(ctx, p.dc, p.ac, 256<<10, nil); err != nil {
		t.Fatal(err)
	}
}
