//go:build linux

package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	netnsfd "github.com/quicpipe/quicpipe/internal/netns"
)

// The end-to-end tests run the program on a veth interface, in network
// namespaces they create:
//
//	A (peer) a0 ───── g1 ┐
//	                     G (router) g2 ───── r0 R (relay, program on r0)
//	B (peer) b0 ───── g3 ┘
//
//	A  a0 192.0.2.2/24    2001:db8:1::2/64   (G: .1, ::1)
//	R  r0 198.51.100.2/24 2001:db8:2::2/64   (G: .1, ::1)
//	B  b0 203.0.113.2/24  2001:db8:3::2/64   (G: .1, ::1)
//
// The relay reaches both peers through its gateway G, as a relay on a public
// host does: the program sends each packet back to the MAC address it came
// from, and G routes it to the other peer.
type relayNet struct {
	a, g, r, b netns
}

var (
	relayPort = relay4.Port()
	gwA4      = "192.0.2.1"
	gwR4      = "198.51.100.1"
	gwB4      = "203.0.113.1"
	gwA6      = "2001:db8:1::1"
	gwR6      = "2001:db8:2::1"
	gwB6      = "2001:db8:3::1"
)

func newRelayNet(t *testing.T) *relayNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("xdp: network namespaces and XDP need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed: %v", err)
	}
	n := &relayNet{a: newNetns(t, "a"), g: newNetns(t, "g"), r: newNetns(t, "r"), b: newNetns(t, "b")}
	for _, l := range []struct {
		gw, peer       string
		ns             netns
		gw4, gw6       string
		addr4, addr6   netip.Addr
		route4, route6 string
	}{
		{"g1", "a0", n.a, gwA4, gwA6, peerA4.Addr(), peerA6.Addr(), gwA4, gwA6},
		{"g2", "r0", n.r, gwR4, gwR6, relay4.Addr(), relay6.Addr(), gwR4, gwR6},
		{"g3", "b0", n.b, gwB4, gwB6, peerB4.Addr(), peerB6.Addr(), gwB4, gwB6},
	} {
		n.g.ip(t, "link", "add", l.gw, "type", "veth", "peer", "name", l.peer, "netns", l.ns.Name)
		n.g.ip(t, "addr", "add", l.gw4+"/24", "dev", l.gw)
		n.g.ip(t, "addr", "add", l.gw6+"/64", "dev", l.gw, "nodad")
		n.g.ip(t, "link", "set", l.gw, "up")
		l.ns.ip(t, "addr", "add", l.addr4.String()+"/24", "dev", l.peer)
		l.ns.ip(t, "addr", "add", l.addr6.String()+"/64", "dev", l.peer, "nodad")
		l.ns.ip(t, "link", "set", l.peer, "up")
		l.ns.ip(t, "route", "add", "default", "via", l.route4)
		l.ns.ip(t, "-6", "route", "add", "default", "via", l.route6)
	}
	n.g.exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return n
}

// attach attaches the program to R's r0 in mode, or skips the test if this
// kernel cannot load BPF programs.
func (n *relayNet) attach(t *testing.T, mode Mode) *Program {
	t.Helper()
	var p *Program
	err := n.r.Do(func() (err error) {
		p, err = Attach(Config{Interface: "r0", Ports: []uint16{relayPort}, Mode: mode})
		return err
	})
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) || errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("xdp: this kernel or sandbox cannot load BPF programs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if p.Mode() != mode {
		t.Fatalf("attached in %v mode, want %v", p.Mode(), mode)
	}
	return p
}

func TestVeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode Mode
		// passOnPeer attaches an XDP_PASS program to g2, r0's peer.
		passOnPeer bool
	}{
		{"native", ModeNative, true},
		{"generic", ModeGeneric, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newRelayNet(t)
			// Real NICs deliver complete UDP checksums; a veth carries a
			// locally sent datagram with only its pseudo-header sum
			// (CHECKSUM_PARTIAL) unless offload is off, so turn it off on
			// the peers to test what the program does with real ones.
			n.a.exec(t, "ethtool", "-K", "a0", "tx", "off")
			n.b.exec(t, "ethtool", "-K", "b0", "tx", "off")
			p := n.attach(t, tc.mode)
			if tc.passOnPeer {
				// A veth transmits XDP_TX frames only to a peer that runs
				// XDP itself (see README.md).
				n.g.AttachXDPPass("g2")
			}
			for _, fam := range []struct {
				name                 string
				a, r, b              netip.AddrPort
				forwarded            Outcome
				udpIn, udpCsumErrors string
			}{
				{"ipv4", peerA4, relay4, peerB4, ForwardedIPv4, "Udp:InDatagrams", "Udp:InCsumErrors"},
				{"ipv6", peerA6, relay6, peerB6, ForwardedIPv6, "Udp6InDatagrams", "Udp6InCsumErrors"},
			} {
				t.Run(fam.name, func(t *testing.T) {
					testRelayPath(t, n, p, fam.a, fam.r, fam.b, fam.forwarded, fam.udpIn, fam.udpCsumErrors)
				})
			}
		})
	}
}

// testRelayPath sends QUIC-shaped datagrams between A and B through the
// relay's address and checks that the program, not the relay's socket,
// delivered them, with valid checksums.
func testRelayPath(t *testing.T, n *relayNet, p *Program, addrA, addrR, addrB netip.AddrPort,
	forwarded Outcome, udpIn, udpCsumErrors string) {
	const count = 20
	ca, cr, cb := n.a.listenUDP(t, addrA), n.r.listenUDP(t, addrR), n.b.listenUDP(t, addrB)
	toB, toA := testCID(0x31), testCID(0x32)
	if addrA.Addr().Is6() {
		toB, toA = testCID(0x41), testCID(0x42)
	}
	// B's entry names the relay's address; A's takes it from the packet.
	if err := p.Put(toB, addrB, addrR); err != nil {
		t.Fatal(err)
	}
	if err := p.Put(toA, addrA, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	before, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	snmpB := n.b.snmp(t)

	for _, dir := range []struct {
		name     string
		from, to *net.UDPConn
		cid      [CIDLen]byte
	}{{"A to B", ca, cb, toB}, {"B to A", cb, ca, toA}} {
		for i := range count {
			if _, err := dir.from.WriteToUDPAddrPort(shortHeader(dir.cid, 100+i), addrR); err != nil {
				t.Fatal(err)
			}
		}
		for i := range count {
			got, from := recv(t, dir.to, time.Second)
			if got == nil {
				// What the program did, what the veth did with it
				// (xdp_tx, xdp_tx_errors), what B's UDP made of it.
				c, _ := p.Counters()
				snmp := n.b.snmp(t)
				t.Logf("program: %v\nr0: %s\nB: %s %d, %s %d", c.Map(), n.r.exec(t, "ethtool", "-S", "r0"),
					udpIn, snmp[udpIn], udpCsumErrors, snmp[udpCsumErrors])
				t.Fatalf("%s: received %d of %d datagrams", dir.name, i, count)
			}
			if from != addrR {
				t.Errorf("%s: datagram from %v, want the relay %v", dir.name, from, addrR)
			}
			if !bytes.Equal(got, shortHeader(dir.cid, len(got)-1-CIDLen)) || len(got) < 100+1+CIDLen {
				t.Errorf("%s: payload of %d bytes changed", dir.name, len(got))
			}
		}
	}

	// A datagram for an unknown CID goes to the relay's socket: it must be
	// the first the socket sees, so none of the forwarded ones reached it.
	miss := shortHeader(cidUnknown, 30)
	if _, err := ca.WriteToUDPAddrPort(miss, addrR); err != nil {
		t.Fatal(err)
	}
	if got, from := recv(t, cr, time.Second); !bytes.Equal(got, miss) || from != addrA {
		t.Errorf("relay socket got %d bytes from %v first, want the %d-byte miss from %v", len(got), from, len(miss), addrA)
	}

	after, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after[forwarded].Packets - before[forwarded].Packets; d != 2*count {
		t.Errorf("%v counted %d, want %d", forwarded, d, 2*count)
	}
	if d := after[PassMiss].Packets - before[PassMiss].Packets; d != 1 {
		t.Errorf("miss counted %d, want 1", d)
	}
	snmpB2 := n.b.snmp(t)
	if d := snmpB2[udpIn] - snmpB[udpIn]; d != count {
		t.Errorf("B's %s rose by %d, want %d", udpIn, d, count)
	}
	if d := snmpB2[udpCsumErrors] - snmpB[udpCsumErrors]; d != 0 {
		t.Errorf("B's %s rose by %d", udpCsumErrors, d)
	}

	// Control: B's kernel does check checksums on this path. A datagram
	// with a wrong checksum, sent raw from A, is forwarded by the program
	// and must then be refused by B and counted as a checksum error.
	sendBadChecksum(t, n.a, addrA, addrR, shortHeader(toB, 50))
	good := shortHeader(toB, 60)
	if _, err := ca.WriteToUDPAddrPort(good, addrR); err != nil {
		t.Fatal(err)
	}
	if got, _ := recv(t, cb, time.Second); !bytes.Equal(got, good) {
		t.Errorf("B got %d bytes after the bad datagram, want the %d-byte good one", len(got), len(good))
	}
	after2, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after2[forwarded].Packets - after[forwarded].Packets; d != 2 {
		t.Errorf("%v counted %d of the bad and the good datagram, want 2", forwarded, d)
	}
	if d := n.b.snmp(t)[udpCsumErrors] - snmpB2[udpCsumErrors]; d != 1 {
		t.Errorf("B's %s rose by %d for the bad datagram, want 1", udpCsumErrors, d)
	}
}

// recv reads one datagram, or returns nil after timeout.
func recv(t *testing.T, c *net.UDPConn, timeout time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(timeout))
	k, from, err := c.ReadFromUDPAddrPort(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, netip.AddrPort{}
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf[:k], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// sendBadChecksum sends a UDP datagram from src to dst through a raw socket
// in ns, with its correct checksum minus one.
func sendBadChecksum(t *testing.T, ns netns, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	udp := binary.BigEndian.AppendUint16(nil, src.Port())
	udp = binary.BigEndian.AppendUint16(udp, dst.Port())
	udp = binary.BigEndian.AppendUint16(udp, uint16(udpLen+len(payload)))
	udp = append(udp, 0, 0)
	udp = append(udp, payload...)
	ck := udpChecksum(src.Addr(), dst.Addr(), udp) - 1
	if ck == 0 {
		ck = 0xfffe
	}
	binary.BigEndian.PutUint16(udp[6:], ck)
	err := ns.Do(func() error {
		family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: dst.Addr().As16()})
		if dst.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		}
		// A raw socket for protocol UDP sends udp as the IP payload, as is.
		fd, err := unix.Socket(family, unix.SOCK_RAW, unix.IPPROTO_UDP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, udp, 0, sa)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAttachModes checks which mode ModeAuto picks on a veth (native) and
// on loopback (generic, which has no driver support), and that Close
// detaches the program.
func TestAttachModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("xdp: network namespaces and XDP need root")
	}
	ns := newNetns(t, "m")
	ns.ip(t, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.ip(t, "link", "set", "v0", "up")
	for _, tc := range []struct {
		dev  string
		mode Mode
		want Mode
		show string // what ip link show says while attached
	}{
		{"v0", ModeAuto, ModeNative, " xdp "},
		{"lo", ModeAuto, ModeGeneric, " xdpgeneric "},
		{"v0", ModeGeneric, ModeGeneric, " xdpgeneric "},
	} {
		t.Run(tc.dev+" "+tc.mode.String(), func(t *testing.T) {
			var p *Program
			err := ns.Do(func() (err error) {
				p, err = Attach(Config{Interface: tc.dev, Ports: []uint16{relayPort}, Mode: tc.mode})
				return err
			})
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) || errors.Is(err, ebpf.ErrNotSupported) {
				t.Skipf("xdp: this kernel or sandbox cannot load BPF programs: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.Mode() != tc.want {
				t.Errorf("attached in %v mode, want %v", p.Mode(), tc.want)
			}
			if out := ns.ip(t, "link", "show", tc.dev); !strings.Contains(out, tc.show) {
				t.Errorf("ip link show %s while attached lacks %q:\n%s", tc.dev, tc.show, out)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if out := ns.ip(t, "link", "show", tc.dev); strings.Contains(out, "xdp") {
				t.Errorf("still attached after Close:\n%s", out)
			}
		})
	}
}

// TestAttachGoneOnExit checks that a process that exits without calling
// Close leaves no program on the interface: the attachment is a link owned
// by the process's file descriptors.
func TestAttachGoneOnExit(t *testing.T) {
	const env = "QUICPIPE_XDP_TEST_CHILD_NETNS"
	if name := os.Getenv(env); name != "" {
		// The child: attach, check, and exit without Close.
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			t.Fatal(err)
		}
		err = netnsfd.Do(f, func() error {
			_, err := Attach(Config{Interface: "v0", Ports: []uint16{relayPort}, Mode: ModeNative})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if out := run(t, "ip", "-n", name, "link", "show", "v0"); !strings.Contains(out, " xdp ") {
			t.Fatalf("not attached:\n%s", out)
		}
		os.Stdout.WriteString("child attached\n")
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("xdp: network namespaces and XDP need root")
	}
	loadTest(t, Config{}) // skips where BPF cannot load at all
	ns := newNetns(t, "x")
	ns.ip(t, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	cmd := exec.Command(os.Args[0], "-test.run=^TestAttachGoneOnExit$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+ns.Name)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "child attached") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// The kernel releases the link as the process's files close, before
	// its parent sees it exit; allow a moment all the same.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out := ns.ip(t, "link", "show", "v0")
		if !strings.Contains(out, "xdp") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("program still attached after its process exited:\n%s", out)
		}
	}
}
