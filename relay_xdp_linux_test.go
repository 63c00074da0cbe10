//go:build linux

package quicpipe

// The XDP end-to-end test and benchmark run an in-process relay, with its XDP
// program attached, and two in-process peers, each with its socket in a
// network namespace the test creates:
//
//	A (dialer)   a0 ───── g1 ┐
//	                         G (router) g2 ───── r0 R (relay, program on r0)
//	B (accepter) b0 ───── g3 ┘
//
//	A  a0 192.0.2.2/24    2001:db8:1::2/64   (G: .1, ::1)
//	R  r0 198.51.100.2/24 2001:db8:2::2/64   (G: .1, ::1)
//	B  b0 203.0.113.2/24  2001:db8:3::2/64   (G: .1, ::1)
//
// The program answers each packet to the MAC address it came from, so the
// relay reaches both peers through one neighbour, G, as a relay on a public
// host reaches everyone through its gateway. What the kernel needs here (see
// xdp/README.md): in native mode, g2 (r0's veth peer) runs an XDP_PASS
// program, or XDP_TX frames are lost; a0 and b0 send with transmit checksum
// offload off, so that their datagrams carry complete UDP checksums as a NIC
// would deliver them; duplicate address detection is off.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/xdp"
)

var (
	xdpBenchDuration = flag.Duration("xdpbench.duration", time.Second,
		"how long BenchmarkRelayXDPvsUserspace sends in each round on each path")
	xdpBenchRounds = flag.Int("xdpbench.rounds", 3,
		"rounds of BenchmarkRelayXDPvsUserspace, alternating the paths; it reports medians")
)

const xdpRelayPort = 4433

// xdpFamily is the address plan of one IP version.
type xdpFamily struct {
	name             string
	a, r, b          netip.Addr // A's, R's and B's addresses
	forwarded        string     // the program's counter for forwarded frames
	inDatagrams      string     // the receivers' UDP counters (xdpNetns.udpSNMP)
	inCsumErrors     string
	gwA, gwR, gwB    string // G's addresses on each link
	prefix, defRoute string
}

var xdpFamilies = []xdpFamily{
	{
		name: "ipv4",
		a:    netip.MustParseAddr("192.0.2.2"), r: netip.MustParseAddr("198.51.100.2"), b: netip.MustParseAddr("203.0.113.2"),
		forwarded: "forwarded_ipv4", inDatagrams: "Udp:InDatagrams", inCsumErrors: "Udp:InCsumErrors",
		gwA: "192.0.2.1", gwR: "198.51.100.1", gwB: "203.0.113.1", prefix: "/24", defRoute: "default",
	},
	{
		name: "ipv6",
		a:    netip.MustParseAddr("2001:db8:1::2"), r: netip.MustParseAddr("2001:db8:2::2"), b: netip.MustParseAddr("2001:db8:3::2"),
		forwarded: "forwarded_ipv6", inDatagrams: "Udp6InDatagrams", inCsumErrors: "Udp6InCsumErrors",
		gwA: "2001:db8:1::1", gwR: "2001:db8:2::1", gwB: "2001:db8:3::1", prefix: "/64", defRoute: "default",
	},
}

var xdpModes = []struct {
	name string
	mode xdp.Mode
}{{"native", xdp.ModeNative}, {"generic", xdp.ModeGeneric}}

// xdpSkipUnlessAble skips unless the test runs as root on a kernel that
// loads the XDP program.
func xdpSkipUnlessAble(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("XDP end to end: network namespaces and BPF need root")
	}
	p, err := xdp.Load(xdp.Config{})
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, xdp.ErrNotSupported) {
		tb.Skipf("XDP end to end: this kernel cannot load the XDP program: %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	p.Close()
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Fatalf("iproute2 is needed: %v", err)
	}
	if _, err := exec.LookPath("ethtool"); err != nil {
		tb.Fatalf("ethtool is needed: %v", err)
	}
}

// xdpCommand runs a command for at most 10 seconds.
func xdpCommand(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// xdpNetns is a namespace of an internal/netlab lab (deleted at the end of
// the test, failed or not) with the helpers these tests use.
type xdpNetns struct{ *netlab.NS }

func newXDPNetns(tb testing.TB, lab *netlab.Lab, role string) xdpNetns {
	tb.Helper()
	n := xdpNetns{lab.NS(role)}
	// Addresses, link-local ones included, are usable at once.
	n.exec(tb, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return n
}

func (n xdpNetns) ip(tb testing.TB, args ...string) string {
	tb.Helper()
	return n.Run(append([]string{"ip"}, args...)...)
}

func (n xdpNetns) exec(tb testing.TB, args ...string) string {
	tb.Helper()
	return n.Run(args...)
}

// listenUDP opens a UDP socket on addr inside the namespace, closed at the
// end of the test.
func (n xdpNetns) listenUDP(tb testing.TB, addr netip.AddrPort) *net.UDPConn {
	tb.Helper()
	c, err := n.ListenUDP("udp", addr.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// udpSNMP returns the namespace's UDP counters: "Udp:InCsumErrors" and the
// like from /proc/net/snmp, "Udp6InCsumErrors" and the like from
// /proc/net/snmp6.
func (n xdpNetns) udpSNMP(tb testing.TB) map[string]uint64 {
	tb.Helper()
	m, err := n.UDPCounters()
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// xdpLab is the topology at the top of this file.
type xdpLab struct {
	a, g, r, b xdpNetns
	mode       xdp.Mode
}

func newXDPLab(tb testing.TB, mode xdp.Mode) *xdpLab {
	tb.Helper()
	nl := netlab.New(tb)
	lab := &xdpLab{
		a: newXDPNetns(tb, nl, "a"), g: newXDPNetns(tb, nl, "g"),
		r: newXDPNetns(tb, nl, "r"), b: newXDPNetns(tb, nl, "b"),
		mode: mode,
	}
	for _, l := range []struct {
		gw, dev string
		ns      xdpNetns
		gwAddr  func(xdpFamily) string
		addr    func(xdpFamily) netip.Addr
	}{
		{"g1", "a0", lab.a, func(f xdpFamily) string { return f.gwA }, func(f xdpFamily) netip.Addr { return f.a }},
		{"g2", "r0", lab.r, func(f xdpFamily) string { return f.gwR }, func(f xdpFamily) netip.Addr { return f.r }},
		{"g3", "b0", lab.b, func(f xdpFamily) string { return f.gwB }, func(f xdpFamily) netip.Addr { return f.b }},
	} {
		lab.g.ip(tb, "link", "add", l.gw, "type", "veth", "peer", "name", l.dev, "netns", l.ns.Name)
		for _, f := range xdpFamilies {
			var nodad []string
			if f.a.Is6() {
				nodad = []string{"nodad"}
			}
			lab.g.ip(tb, append([]string{"addr", "add", l.gwAddr(f) + f.prefix, "dev", l.gw}, nodad...)...)
			l.ns.ip(tb, append([]string{"addr", "add", l.addr(f).String() + f.prefix, "dev", l.dev}, nodad...)...)
		}
		lab.g.ip(tb, "link", "set", l.gw, "up")
		l.ns.ip(tb, "link", "set", l.dev, "up")
		for _, f := range xdpFamilies {
			l.ns.ip(tb, "route", "add", f.defRoute, "via", l.gwAddr(f))
		}
	}
	lab.g.exec(tb, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// Complete UDP checksums from the peers, as from a NIC: the program
	// updates them incrementally and cannot complete a partial one.
	lab.a.exec(tb, "ethtool", "-K", "a0", "tx", "off")
	lab.b.exec(tb, "ethtool", "-K", "b0", "tx", "off")
	if mode == xdp.ModeNative {
		lab.g.AttachXDPPass("g2")
	}
	return lab
}

// startRelay runs a relay in R on addr's family, with the XDP program on r0
// when withXDP is set. NewRelay runs on a thread inside R, so that the
// program attaches to R's r0. The returned function stops the relay; the
// test's cleanup does too.
func (lab *xdpLab) startRelay(tb testing.TB, addr netip.Addr, cfg RelayConfig, withXDP bool) (*Relay, func()) {
	tb.Helper()
	if withXDP {
		cfg.FastPath = xdpFastPath("r0", lab.mode)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	var r *Relay
	var conn *net.UDPConn
	err := lab.r.Do(func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, xdpRelayPort)))
		if err != nil {
			return err
		}
		if r, err = NewRelay(c, &cfg); err != nil {
			c.Close()
			return err
		}
		conn = c
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("relay: Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				tb.Errorf("relay: Serve still running 10s after its context ended")
			}
			conn.Close()
		})
	}
	tb.Cleanup(stop)
	if withXDP {
		if m, ok := xdpMode(r); !ok || m != lab.mode {
			tb.Fatalf("relay's XDP program attached %v (%v), want %v", ok, m, lab.mode)
		}
	} else if _, ok := xdpMode(r); ok {
		tb.Fatal("relay attached an XDP program without RelayConfig.FastPath")
	}
	return r, stop
}

// diagnose logs what the program, r0 and the peers' UDP saw.
func (lab *xdpLab) diagnose(tb testing.TB, r *Relay) {
	st := r.Stats()
	tb.Logf("relay: forwarded %d, to server %d, dropped %v\nprogram: %v", st.Forwarded, st.ToServer, st.Dropped, st.XDP)
	for _, c := range []struct {
		ns   xdpNetns
		args []string
	}{
		{lab.r, []string{"ethtool", "-S", "r0"}}, // xdp_tx, xdp_tx_errors
		{lab.a, []string{"grep", "-hE", "^Udp:|^Udp6(InDatagrams|InCsumErrors)", "/proc/net/snmp", "/proc/net/snmp6"}},
		{lab.b, []string{"grep", "-hE", "^Udp:|^Udp6(InDatagrams|InCsumErrors)", "/proc/net/snmp", "/proc/net/snmp6"}},
	} {
		out, err := xdpCommand("ip", append([]string{"netns", "exec", c.ns.Name}, c.args...)...)
		tb.Logf("%s in %s: %v\n%s", strings.Join(c.args, " "), c.ns.Name, err, out)
	}
}

// xdpFastPath returns a RelayConfig.FastPath attaching the XDP program to
// iface, as package relayxdp's (which imports this package, so tests here
// cannot use it) does.
func xdpFastPath(iface string, mode xdp.Mode) func(FastPathConfig) (FastPath, error) {
	return func(fc FastPathConfig) (FastPath, error) {
		rate := func(v int64) int64 { return min(max(v, 0), xdp.MaxRate) }
		prog, err := xdp.Attach(xdp.Config{
			Interface:                iface,
			Ports:                    []uint16{fc.Port},
			Mode:                     mode,
			FilterSources:            true,
			MaxPacketsPerSecond:      rate(fc.MaxPacketsPerSecond),
			MaxBytesPerSecond:        rate(fc.MaxBytesPerSecond),
			MaxTotalPacketsPerSecond: rate(fc.MaxTotalPacketsPerSecond),
			MaxTotalBytesPerSecond:   rate(fc.MaxTotalBytesPerSecond),
		})
		if err != nil {
			return nil, err
		}
		return prog, nil
	}
}

// xdpProgram returns r's XDP program, or nil.
func xdpProgram(r *Relay) *xdp.Program {
	p, _ := r.FastPath().(*xdp.Program)
	return p
}

// xdpMode reports the mode of r's XDP program and whether it has one.
func xdpMode(r *Relay) (xdp.Mode, bool) {
	if p := xdpProgram(r); p != nil {
		return p.Mode(), true
	}
	return 0, false
}

// xdpStat reads one of the program's counters from a stats snapshot.
func xdpStat(s RelayStats, name string) uint64 { return s.XDP[name].Packets }

// xdpForgetAll deletes every registered CID from the relay's XDP map, as an
// eviction would, and returns how many it deleted.
func xdpForgetAll(tb testing.TB, r *Relay) int {
	tb.Helper()
	r.regMu.Lock()
	defer r.regMu.Unlock()
	n := 0
	for _, reg := range r.regs.(*memRegistry).regs {
		cids, err := deriveRange(nil, []byte(reg.key), reg.first, int(reg.num))
		if err != nil {
			tb.Fatal(err)
		}
		for _, c := range cids {
			if err := r.xdp.prog.Delete(c); err != nil {
				tb.Fatal(err)
			}
			n++
		}
	}
	return n
}

// TestRelayXDPEndToEnd runs a pipe between two peers through a relay whose
// XDP program forwards their packets in the kernel, in native and generic
// mode, over IPv4 and IPv6: 10 MB echoed with a SHA-256 check, most of it
// forwarded by the program, no checksum errors at the receivers; then the
// map loses the peers' CIDs, the userspace path forwards what misses and
// puts the CIDs back, and the program takes over again.
func TestRelayXDPEndToEnd(t *testing.T) {
	xdpSkipUnlessAble(t)
	for _, m := range xdpModes {
		t.Run(m.name, func(t *testing.T) {
			lab := newXDPLab(t, m.mode)
			for _, fam := range xdpFamilies {
				t.Run(fam.name, func(t *testing.T) { testRelayXDPPipe(t, lab, fam) })
			}
		})
	}
}

func testRelayXDPPipe(t *testing.T, lab *xdpLab, fam xdpFamily) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	relayID, aID, bID := GenerateIdentity(), GenerateIdentity(), GenerateIdentity()
	r, _ := lab.startRelay(t, fam.r, RelayConfig{Identity: relayID}, true)
	t.Cleanup(func() {
		if t.Failed() {
			lab.diagnose(t, r)
		}
	})
	relayAddr := netip.AddrPortFrom(fam.r, xdpRelayPort)
	connA := lab.a.listenUDP(t, netip.AddrPortFrom(fam.a, 0))
	connB := lab.b.listenUDP(t, netip.AddrPortFrom(fam.b, 0))
	snmpA, snmpB := lab.a.udpSNMP(t), lab.b.udpSNMP(t)

	dc, ac := xdpPipe(t, ctx, relayAddr, relayID, aID, bID, connA, connB)
	go func() { // the accepter echoes every stream
		for {
			s, err := ac.AcceptStream(ctx)
			if err != nil {
				return
			}
			go func() {
				io.Copy(s, s)
				s.Close()
			}()
		}
	}()

	// 10 MB each way.
	const size = 10 << 20
	start := time.Now()
	if err := echo(ctx, dc, size, 0x5a); err != nil {
		t.Fatalf("echo through the relay: %v (relay stats %+v)", err, r.Stats())
	}
	elapsed := time.Since(start)
	st := r.Stats()
	kernel, user := xdpStat(st, fam.forwarded), st.Forwarded
	t.Logf("%v mode, %s: 2×%d bytes echoed in %v; forwarded by XDP %d datagrams, by userspace %d; XDP passed to the stack: miss %d, relay_cid %d",
		lab.mode, fam.name, size, elapsed.Round(time.Millisecond), kernel, user, xdpStat(st, "miss"), xdpStat(st, "relay_cid"))
	if want := uint64(2 * size / 1500); kernel < want {
		t.Errorf("XDP forwarded %d datagrams, want at least %d for 2×%d bytes", kernel, want, size)
	}
	if kernel*10 < (kernel+user)*9 {
		t.Errorf("XDP forwarded %d of %d relayed datagrams, want at least 90%%", kernel, kernel+user)
	}
	// The receivers' kernels accepted every datagram's checksum (the
	// transfer could not have completed otherwise) and refused none.
	for _, p := range []struct {
		name   string
		ns     xdpNetns
		before map[string]uint64
	}{{"A", lab.a, snmpA}, {"B", lab.b, snmpB}} {
		after := p.ns.udpSNMP(t)
		for _, k := range []string{"Udp:InCsumErrors", "Udp6InCsumErrors"} {
			if d := after[k] - p.before[k]; d != 0 {
				t.Errorf("%s's %s rose by %d", p.name, k, d)
			}
		}
		if d := after[fam.inDatagrams] - p.before[fam.inDatagrams]; d < kernel/4 {
			t.Errorf("%s's %s rose by only %d", p.name, fam.inDatagrams, d)
		}
	}

	// The map loses the peers' CIDs. The userspace relay forwards what the
	// program now misses and puts those CIDs back, at most once per CID per
	// second: let a second pass since it last did so.
	if user > 0 {
		time.Sleep(1100 * time.Millisecond)
	}
	deleted := xdpForgetAll(t, r)
	s0 := r.Stats()
	if err := echo(ctx, dc, 64<<10, 0x6b); err != nil {
		t.Fatalf("echo after the map lost its entries: %v", err)
	}
	s1 := r.Stats()
	missed, byUser := xdpStat(s1, "miss")-xdpStat(s0, "miss"), s1.Forwarded-s0.Forwarded
	t.Logf("deleted %d CIDs from the map; the next 2×64 KiB: XDP miss %d, userspace forwarded %d, XDP forwarded %d",
		deleted, missed, byUser, xdpStat(s1, fam.forwarded)-xdpStat(s0, fam.forwarded))
	if deleted == 0 || missed == 0 || byUser == 0 {
		t.Errorf("after deleting %d CIDs from the map: %d misses, %d forwarded by userspace; want both above 0", deleted, missed, byUser)
	}
	if err := echo(ctx, dc, 1<<20, 0x7c); err != nil {
		t.Fatalf("echo after the CIDs were put back: %v", err)
	}
	s2 := r.Stats()
	kernel2, user2 := xdpStat(s2, fam.forwarded)-xdpStat(s1, fam.forwarded), s2.Forwarded-s1.Forwarded
	t.Logf("then 2×1 MiB: XDP forwarded %d, userspace %d, XDP miss %d", kernel2, user2, xdpStat(s2, "miss")-xdpStat(s1, "miss"))
	if want := uint64(2 * (1 << 20) / 1500); kernel2 < want || kernel2*10 < (kernel2+user2)*9 {
		t.Errorf("after the userspace path put the CIDs back, XDP forwarded %d and userspace %d datagrams; want XDP at least %d and 90%%",
			kernel2, user2, want)
	}
}

// xdpPipe connects a Dialer on connA to an Accepter on connB through the
// relay and returns both ends of the connection.
func xdpPipe(t *testing.T, ctx context.Context, relay netip.AddrPort, relayID, aID, bID ed25519.PrivateKey,
	connA, connB *net.UDPConn) (dialed, accepted *quic.Conn) {
	t.Helper()
	config := func(id ed25519.PrivateKey, conn *net.UDPConn) *Config {
		return &Config{
			RelayAddr: relay.String(),
			RelayKey:  relayID.Public().(ed25519.PublicKey),
			Identity:  id,
			Conn:      conn,
			Logger:    testLogger(t),
			// Keep the traffic on the relay: A and B could reach each
			// other through G.
			DisableDirect: true,
		}
	}
	acfg := config(bID, connB)
	acfg.TrustedPeers = []ed25519.PublicKey{aID.Public().(ed25519.PublicKey)}
	d, a := newEndpoints(t, ctx, acfg, config(aID, connA))
	dialed, accepted = dialAccept(t, ctx, d, a, bID.Public().(ed25519.PublicKey), nil, 0)
	return dialed, accepted
}

// BenchmarkRelayXDPvsUserspace sends 1200-byte QUIC-short-header-shaped
// datagrams for one registered CID from A, as fast as one sender goroutine
// can (sendmmsg, 64 per call), through the relay to a receiver in B, on the
// same veth topology: through the userspace relay (no program attached), and
// through the XDP program. It alternates the two for -xdpbench.rounds rounds
// of -xdpbench.duration each, and reports the medians, for each path, of the
// datagrams per second that B received and of the machine-wide CPU time (all
// CPUs' non-idle time from /proc/stat, sender and receiver included) per
// datagram received, and their ratios. The CPU figures count whatever else
// the machine runs meanwhile: run it on a quiet machine. Run it with
// -benchtime=1x: a run takes the same time whatever b.N is.
func BenchmarkRelayXDPvsUserspace(b *testing.B) {
	xdpSkipUnlessAble(b)
	for _, m := range xdpModes {
		b.Run(m.name, func(b *testing.B) {
			lab := newXDPLab(b, m.mode)
			var users, kernels []xdpLoad
			for i := range max(*xdpBenchRounds, 1) {
				users = append(users, lab.load(b, false))
				kernels = append(kernels, lab.load(b, true))
				b.Logf("%v mode, round %d: userspace %s", m.mode, i+1, users[i])
				b.Logf("%v mode, round %d: XDP %s", m.mode, i+1, kernels[i])
			}
			med := func(ls []xdpLoad, f func(xdpLoad) float64) float64 {
				v := make([]float64, len(ls))
				for i, l := range ls {
					v[i] = f(l)
				}
				slices.Sort(v)
				if len(v)%2 == 1 {
					return v[len(v)/2]
				}
				return (v[len(v)/2-1] + v[len(v)/2]) / 2
			}
			userPPS, kernelPPS := med(users, xdpLoad.pps), med(kernels, xdpLoad.pps)
			userCPU, kernelCPU := med(users, xdpLoad.cpuPerPacket), med(kernels, xdpLoad.cpuPerPacket)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(userPPS, "user-pps")
			b.ReportMetric(kernelPPS, "xdp-pps")
			b.ReportMetric(userCPU, "user-cpu-ns/pkt")
			b.ReportMetric(kernelCPU, "xdp-cpu-ns/pkt")
			b.ReportMetric(med(users, xdpLoad.lossPercent), "user-loss-%")
			b.ReportMetric(med(kernels, xdpLoad.lossPercent), "xdp-loss-%")
			b.ReportMetric(100*med(append(users, kernels...), func(l xdpLoad) float64 { return l.background }), "idle-busy-%")
			b.ReportMetric(kernelPPS/userPPS, "pps-xdp/user")
			b.ReportMetric(userCPU/kernelCPU, "cpu-user/xdp")
		})
	}
}

// xdpLoad is the outcome of one load run.
type xdpLoad struct {
	sent, received   uint64
	window           time.Duration // first send to last receipt
	busy, total      time.Duration // non-idle and all CPU time, all CPUs
	background       float64       // busy share of all CPUs just before, without traffic
	byUser, byKernel uint64        // datagrams the relay and the program forwarded
}

func (l xdpLoad) pps() float64 { return float64(l.received) / l.window.Seconds() }

func (l xdpLoad) cpuPerPacket() float64 { return float64(l.busy.Nanoseconds()) / float64(l.received) }

func (l xdpLoad) lossPercent() float64 {
	return 100 * (1 - float64(l.received)/float64(max(l.sent, 1)))
}

func (l xdpLoad) String() string {
	return fmt.Sprintf("sent %d (%.0f/s), received %d (%.0f/s, %.1f%% lost), CPU busy %v of %v (%.0f ns per received datagram; %.0f%% busy before, idle), relay forwarded %d, XDP %d",
		l.sent, float64(l.sent)/l.window.Seconds(), l.received, l.pps(), l.lossPercent(),
		l.busy.Round(time.Millisecond), l.total.Round(time.Millisecond), l.cpuPerPacket(), 100*l.background, l.byUser, l.byKernel)
}

// xdpCPUTime returns the machine's non-idle and total CPU time from the
// first line of /proc/stat (in USER_HZ ticks, 100 per second on Linux).
func xdpCPUTime(tb testing.TB) (busy, total time.Duration) {
	tb.Helper()
	f, err := os.Open("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		tb.Fatal(err)
	}
	// cpu user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already counted in user time.
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		tb.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var ticks [8]uint64
	for i := range ticks {
		ticks[i], _ = strconv.ParseUint(fields[1+i], 10, 64)
	}
	const tick = 10 * time.Millisecond
	idle := ticks[3] + ticks[4]
	var all uint64
	for _, v := range ticks {
		all += v
	}
	return time.Duration(all-idle) * tick, time.Duration(all) * tick
}

// load runs one measurement over IPv4: a relay in R (userspace only, or with
// the program), one registered CID forwarding to a receiver in B, a sender
// in A.
func (lab *xdpLab) load(b *testing.B, withXDP bool) xdpLoad {
	b.Helper()
	fam := xdpFamilies[0]
	r, stop := lab.startRelay(b, fam.r, RelayConfig{
		Identity:            GenerateIdentity(),
		MaxPacketsPerSecond: -1,
		MaxBytesPerSecond:   -1,
	}, withXDP)
	defer stop()
	relayAddr := netip.AddrPortFrom(fam.r, xdpRelayPort)

	recv := lab.b.listenUDP(b, netip.AddrPortFrom(fam.b, 0))
	defer recv.Close()
	xdpForceBuffer(b, recv, unix.SO_RCVBUFFORCE, 16<<20)
	key := newCIDKey()
	if _, _, _, err := r.register(key, 1, 1, recv.LocalAddr().(*net.UDPAddr), nil); err != nil {
		b.Fatal(err)
	}
	cids, err := deriveRange(nil, key, 1, 1)
	if err != nil {
		b.Fatal(err)
	}
	pkt := make([]byte, 1200)
	rand.Read(pkt)
	pkt[0] = 0x40 | pkt[0]&0x3f // short header, fixed bit set
	copy(pkt[1:], cids[0][:])

	var send *net.UDPConn
	err = lab.a.Do(func() (err error) {
		send, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.a, 0)), net.UDPAddrFromAddrPort(relayAddr))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	defer send.Close()
	// The sender is a registered peer: the relay and its program forward
	// only from the addresses of live registrations.
	if _, _, _, err := r.register(newCIDKey(), 1, 1, send.LocalAddr().(*net.UDPAddr), nil); err != nil {
		b.Fatal(err)
	}

	// The path works (and neighbours are resolved) before the clock starts.
	buf := make([]byte, 2048)
	for i := 0; ; i++ {
		if i == 20 {
			b.Fatalf("no datagram reached B through the relay (relay stats %+v)", r.Stats())
		}
		if _, err := send.Write(pkt); err != nil {
			b.Fatal(err)
		}
		recv.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _, err := recv.ReadFromUDPAddrPort(buf); err == nil && bytes.Equal(buf[:n], pkt) {
			break
		}
	}
	// Drain stragglers of the warm-up.
	for {
		recv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := recv.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
	}
	// What the machine does without this traffic: the CPU figures include
	// it.
	idleBusy0, idleTotal0 := xdpCPUTime(b)
	time.Sleep(300 * time.Millisecond)
	idleBusy1, idleTotal1 := xdpCPUTime(b)
	before := r.Stats()

	var sending atomic.Bool
	sending.Store(true)
	var received atomic.Uint64
	var last atomic.Int64
	recvDone := make(chan error, 1)
	go func() { // count until 100 ms pass without a datagram once the sender stopped
		pc := ipv4.NewPacketConn(recv)
		ms := make([]ipv4.Message, 64)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 1500)}
		}
		for {
			recv.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := pc.ReadBatch(ms, 0)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if !sending.Load() {
					recvDone <- nil
					return
				}
				continue
			}
			if err != nil {
				recvDone <- err
				return
			}
			for _, m := range ms[:n] {
				if m.N != len(pkt) {
					recvDone <- fmt.Errorf("received a %d-byte datagram, want %d", m.N, len(pkt))
					return
				}
			}
			received.Add(uint64(n))
			last.Store(time.Now().UnixNano())
		}
	}()

	pc := ipv4.NewPacketConn(send)
	ms := make([]ipv4.Message, 64)
	for i := range ms {
		ms[i].Buffers = [][]byte{pkt}
	}
	busy0, total0 := xdpCPUTime(b)
	start := time.Now()
	var sent uint64
	for deadline := start.Add(*xdpBenchDuration); time.Now().Before(deadline); {
		n, err := pc.WriteBatch(ms, 0)
		if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.ECONNREFUSED) {
			b.Fatal(err)
		}
		sent += uint64(max(n, 0))
	}
	sending.Store(false)
	select {
	case err := <-recvDone:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		b.Fatal("receiver still busy 10s after the sender stopped")
	}
	busy1, total1 := xdpCPUTime(b)
	after := r.Stats()
	l := xdpLoad{
		sent:       sent,
		received:   received.Load(),
		window:     time.Duration(last.Load() - start.UnixNano()),
		busy:       busy1 - busy0,
		total:      total1 - total0,
		background: float64(idleBusy1-idleBusy0) / float64(max(idleTotal1-idleTotal0, 1)),
		byUser:     after.Forwarded - before.Forwarded,
		byKernel:   xdpStat(after, fam.forwarded) - xdpStat(before, fam.forwarded),
	}
	if l.received == 0 {
		b.Fatalf("B received nothing: %s", l)
	}
	// Each path did the forwarding it is measured for.
	fwd, other := l.byUser, l.byKernel
	if withXDP {
		fwd, other = l.byKernel, l.byUser
	}
	if fwd < l.received || other > l.received/100 {
		b.Errorf("wrong path: %s", l)
	}
	return l
}

// xdpForceBuffer sets a socket buffer size above the system's limit (root).
func xdpForceBuffer(tb testing.TB, c *net.UDPConn, opt, size int) {
	tb.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size) }); err != nil {
		tb.Fatal(err)
	}
	if serr != nil {
		tb.Fatal(serr)
	}
}
