package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/internal/testbin"
)

// TestDoctorNAT runs quicpipe doctor behind NATs of the lab against a relay
// process (probe ports on by default):
//
//	peer 10.1.0.2 ─lan0─ nat ─wan0 198.51.100.2── wan ── 192.0.2.2 relay
//
// and checks the mapping it reports and its verdict: an endpoint-independent
// NAT (port-preserving masquerade with an input firewall) gives "direct
// connections likely", an endpoint-dependent one (masquerade fully-random)
// "only with peers that have an easy NAT", and a firewall that lets UDP out
// only to the relay's own port an unknown verdict, never a guess.
func TestDoctorNAT(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	bin := binary(t)
	for _, tc := range []struct {
		name, nft, mapping, verdict string
	}{
		{"eim", `table ip nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
}
table ip filter {
	chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state new drop; }
}`, "endpoint-independent", "direct connections likely"},
		{"edm", `table ip nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade fully-random; }
}
table ip filter {
	chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state new drop; }
}`, "endpoint-dependent", "direct connections only with peers that have an easy NAT"},
		{"relay-port-only", `table ip nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
}
table ip filter {
	chain forward { type filter hook forward priority filter; policy accept; iifname "lan0" udp dport != 4433 drop; }
}`, "unknown", "direct connections: unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := netlab.New(t)
			wan, relayNS, nat, peer := lab.NS("wan"), lab.NS("relay"), lab.NS("nat"), lab.NS("peer")
			wan.Forwarding()
			lab.Link(relayNS, "eth0", "192.0.2.2/24", wan, "relay0", "192.0.2.1/24")
			relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")
			lab.Link(nat, "wan0", "198.51.100.2/24", wan, "nat0", "198.51.100.1/24")
			nat.Run("ip", "route", "add", "default", "via", "198.51.100.1")
			nat.Forwarding()
			nat.Nft(tc.nft)
			lab.Link(peer, "eth0", "10.1.0.2/24", nat, "lan0", "10.1.0.1/24")
			peer.Run("ip", "route", "add", "default", "via", "10.1.0.1")

			dir := t.TempDir()
			env := testbin.Env()
			r := relayNS.Start("relay", env, bin, "relay", "-listen", "192.0.2.2:4433", "-identity", filepath.Join(dir, "relay.key"))
			key := r.Match(regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)
			d := peer.Start("doctor", env, bin, "doctor", "-relay", "192.0.2.2:4433", "-relay-key", key, "-timeout", "2s")
			select {
			case <-d.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("doctor did not finish within 30 s")
			}
			out := d.Stdout()
			t.Logf("quicpipe doctor behind %s:\n%s", tc.name, out)
			for _, want := range []string{
				"relay 192.0.2.2:4433: UDP ok",
				"local address: 10.1.0.2:",
				"mapping: " + tc.mapping,
				"port mapping: none answered at 10.1.0.1",
				"verdict: " + tc.verdict,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q", want)
				}
			}
			if tc.mapping != "unknown" && strings.Count(out, "public address: 198.51.100.2:") != 2 {
				t.Errorf("want two public addresses at the NAT's 198.51.100.2")
			}
		})
	}
}

// TestDoctorPortMapping runs quicpipe doctor behind an endpoint-dependent
// NAT (masquerade fully-random) whose router runs miniupnpd (UPnP-IGD,
// NAT-PMP and PCP). The router's WAN address is outside the reserved
// ranges (miniupnpd refuses to work on those; 11.0.0.0/8 exists only in
// the namespaces):
//
//	peer 10.1.0.2 ─lan0─ nat + miniupnpd ─wan0 11.1.0.2── wan ── 192.0.2.2 relay
//
// The doctor sees the mapping vary by destination, lists the protocols the
// gateway answers, and says direct connections are likely: a pipe maps its
// port there, and the mapped address is the same for every destination.
func TestDoctorPortMapping(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("miniupnpd"); err != nil {
		t.Skip("miniupnpd not installed (apt-get install miniupnpd-nftables)")
	}
	bin := binary(t)
	lab := netlab.New(t)
	wan, relayNS, nat, peer := lab.NS("wan"), lab.NS("relay"), lab.NS("nat"), lab.NS("peer")
	wan.Forwarding()
	lab.Link(relayNS, "eth0", "192.0.2.2/24", wan, "relay0", "192.0.2.1/24")
	relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")
	lab.Link(nat, "wan0", "11.1.0.2/24", wan, "nat0", "11.1.0.1/24")
	nat.Run("ip", "route", "add", "default", "via", "11.1.0.1")
	nat.Forwarding()
	// The chains miniupnpd fills are named in its configuration below.
	nat.Nft(`table inet filter {
	chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state new drop; }
	chain forward { type filter hook forward priority filter; policy accept; jump miniupnpd; }
	chain miniupnpd { }
}
table inet nat {
	chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump postrouting_miniupnpd
		oifname "wan0" masquerade fully-random
	}
	chain prerouting_miniupnpd { }
	chain postrouting_miniupnpd { }
}`)
	lab.Link(peer, "eth0", "10.1.0.2/24", nat, "lan0", "10.1.0.1/24")
	peer.Run("ip", "route", "add", "default", "via", "10.1.0.1")

	dir := t.TempDir()
	conf := filepath.Join(dir, "miniupnpd.conf")
	if err := os.WriteFile(conf, []byte(`ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
lease_file=`+filepath.Join(dir, "leases")+`
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
upnp_table_name=filter
upnp_nat_table_name=nat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 10.1.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`), 0o600); err != nil {
		t.Fatal(err)
	}
	m := nat.Start("miniupnpd", nil, "miniupnpd", "-d", "-f", conf, "-P", filepath.Join(dir, "miniupnpd.pid"))
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(m.Stderr(), "Listening for NAT-PMP/PCP traffic"); {
		select {
		case <-m.Done():
			t.Fatalf("miniupnpd exited: %s", m.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("miniupnpd does not listen after 10 s: %s", m.Stderr())
		}
	}

	env := testbin.Env()
	r := relayNS.Start("relay", env, bin, "relay", "-listen", "192.0.2.2:4433", "-identity", filepath.Join(dir, "relay.key"))
	key := r.Match(regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)
	d := peer.Start("doctor", env, bin, "doctor", "-relay", "192.0.2.2:4433", "-relay-key", key, "-timeout", "2s")
	select {
	case <-d.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("doctor did not finish within 30 s")
	}
	out := d.Stdout()
	t.Logf("quicpipe doctor behind an endpoint-dependent NAT with miniupnpd:\n%s", out)
	for _, want := range []string{
		"relay 192.0.2.2:4433: UDP ok",
		"mapping: endpoint-dependent",
		"port mapping: PCP, NAT-PMP, UPnP (gateway 10.1.0.1)",
		"verdict: direct connections likely (the NAT maps by destination, but the gateway maps ports with PCP, NAT-PMP, UPnP",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The probes map nothing: miniupnpd's chains stay empty.
	if rules := nat.Run("nft", "list", "chain", "inet", "nat", "prerouting_miniupnpd"); strings.Contains(rules, "dnat") {
		t.Errorf("the doctor's probe made miniupnpd map a port:\n%s", rules)
	}
}

// TestPathVerdict: a pipe between a peer behind an endpoint-dependent NAT
// (A, connect) and one behind an endpoint-independent NAT (B, listen)
// stays relayed, and each side's relayed line gives its own network's
// verdict, as quicpipe doctor would:
//
//	peerA 10.1.0.2 ─ natA (fully-random) 198.51.100.2 ─┐
//	                                                    wan ── 192.0.2.2 relay
//	peerB 10.2.0.2 ─ natB (port-preserving) 203.0.113.2 ┘
func TestPathVerdict(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	bin := binary(t)
	lab := netlab.New(t)
	wan, relayNS := lab.NS("wan"), lab.NS("relay")
	wan.Forwarding()
	lab.Link(relayNS, "eth0", "192.0.2.2/24", wan, "relay0", "192.0.2.1/24")
	relayNS.Run("ip", "route", "add", "default", "via", "192.0.2.1")
	peers := map[string]*netlab.NS{}
	for _, n := range []struct{ name, wan, gw, lan, lanGW, opt string }{
		{"A", "198.51.100.2/24", "198.51.100.1", "10.1.0.2/24", "10.1.0.1", " fully-random"},
		{"B", "203.0.113.2/24", "203.0.113.1", "10.2.0.2/24", "10.2.0.1", ""},
	} {
		nat, peer := lab.NS("nat"+n.name), lab.NS("peer"+n.name)
		lab.Link(nat, "wan0", n.wan, wan, "nat"+n.name+"0", n.gw+"/24")
		nat.Run("ip", "route", "add", "default", "via", n.gw)
		nat.Forwarding()
		nat.Nft(`table ip nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade` + n.opt + `; }
}
table ip filter {
	chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state new drop; }
}`)
		lab.Link(peer, "eth0", n.lan, nat, "lan0", n.lanGW+"/24")
		peer.Run("ip", "route", "add", "default", "via", n.lanGW)
		peers[n.name] = peer
	}
	dir := t.TempDir()
	r := relayNS.Start("relay", testbin.Env(), bin, "relay", "-listen", "192.0.2.2:4433", "-identity", filepath.Join(dir, "relay.key"))
	key := r.Match(regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)
	in := func(ns *netlab.NS, fn func()) {
		// A child process inherits the network namespace of the thread
		// that starts it.
		if err := ns.Do(func() error { fn(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	var l, c *proc
	in(peers["B"], func() {
		l = start(t, "listen", procOpts{home: filepath.Join(dir, "l")}, "listen", "-relay", "192.0.2.2:4433", "-relay-key", key)
	})
	ticket := l.ticket(t)
	in(peers["A"], func() { c = start(t, "connect", procOpts{home: filepath.Join(dir, "c")}, "connect", ticket) })
	for _, w := range []struct {
		p       *proc
		verdict string
	}{
		{c, "direct connections only with peers that have an easy NAT"},
		{l, "direct connections likely"},
	} {
		re := regexp.MustCompile(`quicpipe: relayed via 192\.0\.2\.2:4433 \(no direct path: [^;]+; this network: ([^)]+)\)`)
		got := w.p.match(t, &w.p.stderr, re, 40*time.Second)
		if got != w.verdict {
			t.Errorf("%s: verdict %q, want %q", w.p.name, got, w.verdict)
		}
	}
	if s := l.stderr.String() + c.stderr.String(); strings.Contains(s, "direct to") {
		t.Errorf("a side went direct:\n%s", s)
	}
	l.interrupt(t)
}

// TestDoctorIPv6: behind a stateful IPv6 firewall (no NAT), with the relay
// reached over IPv6, the doctor sees the host's own address at both probe
// ports, so no NAT, and lists the host's global IPv6 address:
//
//	peer 2001:db8:a::2 ─lan0─ fw ─wan0 2001:db8:1::2── wan ── 2001:db8:ff::2 relay
func TestDoctorIPv6(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	bin := binary(t)
	lab := netlab.New(t)
	wan, relayNS, fw, peer := lab.NS("wan"), lab.NS("relay"), lab.NS("fw"), lab.NS("peer")
	addr := func(ns *netlab.NS, ifc, cidr string) { ns.Run("ip", "-6", "addr", "add", cidr, "dev", ifc, "nodad") }
	for _, ns := range []*netlab.NS{wan, relayNS, fw, peer} {
		// No duplicate address detection: link-local addresses (which
		// neighbour discovery uses) are usable at once.
		ns.Sysctl("net.ipv6.conf.all.accept_dad", "0")
		ns.Sysctl("net.ipv6.conf.default.accept_dad", "0")
	}
	for _, ns := range []*netlab.NS{wan, fw} {
		ns.Sysctl("net.ipv6.conf.all.forwarding", "1")
	}
	lab.Link(relayNS, "eth0", "", wan, "relay0", "")
	addr(relayNS, "eth0", "2001:db8:ff::2/64")
	addr(wan, "relay0", "2001:db8:ff::1/64")
	relayNS.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:ff::1")
	lab.Link(fw, "wan0", "", wan, "fw0", "")
	addr(fw, "wan0", "2001:db8:1::2/64")
	addr(wan, "fw0", "2001:db8:1::1/64")
	fw.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
	wan.Run("ip", "-6", "route", "add", "2001:db8:a::/64", "via", "2001:db8:1::2")
	lab.Link(peer, "eth0", "", fw, "lan0", "")
	addr(peer, "eth0", "2001:db8:a::2/64")
	addr(fw, "lan0", "2001:db8:a::1/64")
	peer.Run("ip", "-6", "route", "add", "default", "via", "2001:db8:a::1")
	fw.Nft(`table ip6 fw {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" drop
	}
}`)
	dir := t.TempDir()
	env := testbin.Env()
	r := relayNS.Start("relay", env, bin, "relay", "-listen", "[2001:db8:ff::2]:4433", "-identity", filepath.Join(dir, "relay.key"))
	key := r.Match(regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)
	d := peer.Start("doctor", env, bin, "doctor", "-relay", "[2001:db8:ff::2]:4433", "-relay-key", key, "-timeout", "2s")
	select {
	case <-d.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("doctor did not finish within 30 s")
	}
	out := d.Stdout()
	t.Logf("quicpipe doctor behind an IPv6 firewall:\n%s", out)
	for _, want := range []string{
		"relay [2001:db8:ff::2]:4433: UDP ok",
		"local address: [2001:db8:a::2]:",
		"mapping: none",
		"IPv6: global address 2001:db8:a::2 on this host",
		"verdict: direct connections likely",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
