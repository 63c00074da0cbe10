//go:build linux

package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/quicpipe/quicpipe/internal/netlab"
	"golang.org/x/sys/unix"
)

// Addresses from the documentation ranges: peer A, the relay R, peer B.
var (
	peerA4 = netip.MustParseAddrPort("192.0.2.2:40000")
	relay4 = netip.MustParseAddrPort("198.51.100.2:4433")
	peerB4 = netip.MustParseAddrPort("203.0.113.2:5555")
	peerA6 = netip.MustParseAddrPort("[2001:db8:1::2]:40000")
	relay6 = netip.MustParseAddrPort("[2001:db8:2::2]:4433")
	peerB6 = netip.MustParseAddrPort("[2001:db8:3::2]:5555")

	relayPorts = []uint16{4433, 4434}
)

// testCID returns a peer CID (high bit clear) starting with b.
func testCID(b byte) [CIDLen]byte {
	return [CIDLen]byte{b, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab}
}

// The test map's CIDs.
var (
	cidB4       = testCID(0x11) // to peerB4 from relay4
	cidB4Any    = testCID(0x12) // to peerB4, source from the packet
	cidB4Mapped = testCID(0x13) // to peerB4 from relay4, both given IPv4-mapped
	cidB6       = testCID(0x21) // to peerB6 from relay6
	cidB6Any    = testCID(0x22) // to peerB6, source from the packet
	cidUnknown  = testCID(0x7f)
	cidRelay    = [CIDLen]byte{0x80 | 0x11, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab}
)

// loadTest loads the program with cfg, or skips the test when this process
// cannot load BPF programs at all.
func loadTest(tb testing.TB, cfg Config) *Program {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("xdp: loading BPF programs needs root")
	}
	p, err := Load(cfg)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) || errors.Is(err, ebpf.ErrNotSupported) {
		tb.Skipf("xdp: this kernel or sandbox cannot load BPF programs: %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// loadWithEntries loads the program for relayPorts and fills its map.
func loadWithEntries(tb testing.TB) *Program {
	tb.Helper()
	p := loadTest(tb, Config{Ports: relayPorts})
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	for _, e := range []struct {
		cid      [CIDLen]byte
		dst, src netip.AddrPort
	}{
		{cidB4, peerB4, relay4},
		{cidB4Any, peerB4, netip.AddrPort{}},
		{cidB4Mapped, mapped(peerB4), mapped(relay4)},
		{cidB6, peerB6, relay6},
		{cidB6Any, peerB6, netip.AddrPortFrom(netip.IPv6Unspecified(), 0)},
	} {
		if err := p.Put(e.cid, e.dst, e.src); err != nil {
			tb.Fatal(err)
		}
	}
	return p
}

// runCounted runs p on in and checks that exactly one counter, want's, moved
// by one frame of len(in) bytes, and that the action matches want.
func runCounted(t *testing.T, p *Program, in []byte, want Outcome) []byte {
	t.Helper()
	before, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	action, out, err := p.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	after, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for o := range after {
		d := Stat{after[o].Packets - before[o].Packets, after[o].Bytes - before[o].Bytes}
		exp := Stat{}
		if Outcome(o) == want {
			exp = Stat{1, uint64(len(in))}
		}
		if d != exp {
			t.Errorf("counter %v moved by %+v, want %+v", Outcome(o), d, exp)
		}
	}
	wantAction := ActionPass
	if want.Forwarded() {
		wantAction = ActionTX
	}
	if action != wantAction {
		t.Errorf("action %d, want %d", action, wantAction)
	}
	return out
}

// checkForwarded checks every field of the forwarded frame out against the
// frame in that produced it.
func checkForwarded(t *testing.T, in, out []byte, wantSrc, wantDst netip.AddrPort) {
	t.Helper()
	if len(out) != len(in) {
		t.Fatalf("output of %d bytes from %d", len(out), len(in))
	}
	pi, err := parse(in)
	if err != nil {
		t.Fatalf("input: %v", err)
	}
	po, err := parse(out)
	if err != nil {
		t.Fatalf("output: %v", err)
	}
	if po.dstMAC != pi.srcMAC || po.srcMAC != pi.dstMAC {
		t.Errorf("MACs %x -> %x, want %x -> %x", po.srcMAC, po.dstMAC, pi.dstMAC, pi.srcMAC)
	}
	if !bytes.Equal(out[12:14], in[12:14]) {
		t.Errorf("EtherType changed")
	}
	if po.src != wantSrc || po.dst != wantDst {
		t.Errorf("%v -> %v, want %v -> %v", po.src, po.dst, wantSrc, wantDst)
	}
	if po.ttl != pi.ttl-1 {
		t.Errorf("TTL %d from %d, want one less", po.ttl, pi.ttl)
	}
	// Unchanged: IPv4 version to fragment offset and protocol; IPv6 version
	// to next header; the UDP length and payload; anything after the IP
	// packet (Ethernet padding).
	if po.v4 {
		if !bytes.Equal(po.ip[:8], pi.ip[:8]) || po.ip[9] != pi.ip[9] {
			t.Errorf("IPv4 header changed beyond addresses, TTL and checksum:\n%x\n%x", pi.ip, po.ip)
		}
	} else if !bytes.Equal(po.ip[:7], pi.ip[:7]) {
		t.Errorf("IPv6 header changed beyond addresses and hop limit:\n%x\n%x", pi.ip, po.ip)
	}
	if !bytes.Equal(po.udp[4:6], pi.udp[4:6]) || !bytes.Equal(po.udp[8:], pi.udp[8:]) {
		t.Errorf("UDP length or payload changed")
	}
	end := ethLen + len(pi.ip) + len(pi.udp)
	if !bytes.Equal(out[end:], in[end:]) {
		t.Errorf("bytes after the IP packet changed")
	}
	if err := po.checksumsValid(); err != nil {
		t.Error(err)
	}
	inCk, outCk := binary.BigEndian.Uint16(pi.udp[6:]), binary.BigEndian.Uint16(po.udp[6:])
	switch {
	case inCk == 0 && outCk != 0:
		t.Errorf("zero UDP checksum over IPv4 became %#04x", outCk)
	case inCk != 0 && outCk == 0:
		t.Errorf("UDP checksum %#04x became zero (no checksum)", inCk)
	}
}

func v4(cid [CIDLen]byte) frame {
	return frame{src: peerA4, dst: relay4, payload: shortHeader(cid, 40)}
}

func v6(cid [CIDLen]byte) frame {
	return frame{src: peerA6, dst: relay6, payload: shortHeader(cid, 40)}
}

func with(f frame, change func(*frame)) frame {
	change(&f)
	return f
}

// padded returns b padded with 0xee to the 60-byte Ethernet minimum.
func padded(b []byte) []byte {
	for len(b) < 60 {
		b = append(b, 0xee)
	}
	return b
}

func TestForward(t *testing.T) {
	p := loadWithEntries(t)
	r4port := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(relay4.Addr(), port) }
	for _, tc := range []struct {
		name     string
		in       []byte
		want     Outcome
		src, dst netip.AddrPort
	}{
		{"ipv4", v4(cidB4).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 source from packet", v4(cidB4Any).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 source from packet, second port",
			with(v4(cidB4Any), func(f *frame) { f.dst = r4port(4434) }).bytes(), ForwardedIPv4, r4port(4434), peerB4},
		{"ipv4 entry given IPv4-mapped", v4(cidB4Mapped).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 zero UDP checksum", with(v4(cidB4), func(f *frame) { f.zeroCsum = true }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 don't fragment", with(v4(cidB4), func(f *frame) { f.fragOff = 0x4000 }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 TTL 2", with(v4(cidB4), func(f *frame) { f.ttl = 2 }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 TTL 255", with(v4(cidB4), func(f *frame) { f.ttl = 255 }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 shortest packet, padded frame",
			padded(with(v4(cidB4), func(f *frame) { f.payload = shortHeader(cidB4, 0) }).bytes()), ForwardedIPv4, relay4, peerB4},
		{"ipv4 handshake", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidB4[:], 60) }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 initial to a known DCID", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeInitial, cidB4[:], 1200) }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 long header, shortest", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidB4[:], 0)[:18] }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv4 full-size", with(v4(cidB4), func(f *frame) { f.payload = shortHeader(cidB4, 1500-20-8-13) }).bytes(), ForwardedIPv4, relay4, peerB4},
		{"ipv6", v6(cidB6).bytes(), ForwardedIPv6, relay6, peerB6},
		{"ipv6 source from packet", v6(cidB6Any).bytes(), ForwardedIPv6, relay6, peerB6},
		{"ipv6 hop limit 2", with(v6(cidB6), func(f *frame) { f.ttl = 2 }).bytes(), ForwardedIPv6, relay6, peerB6},
		{"ipv6 handshake", with(v6(cidB6), func(f *frame) { f.payload = longHeader(typeHandshake, cidB6[:], 100) }).bytes(), ForwardedIPv6, relay6, peerB6},
		{"ipv6 full-size", with(v6(cidB6), func(f *frame) { f.payload = shortHeader(cidB6, 1500-40-8-13) }).bytes(), ForwardedIPv6, relay6, peerB6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runCounted(t, p, tc.in, tc.want)
			checkForwarded(t, tc.in, out, tc.src, tc.dst)
		})
	}
}

// TestForwardChecksumEdges forwards datagrams whose input or output UDP
// checksum is 0xffff, the transmitted form of a computed zero.
func TestForwardChecksumEdges(t *testing.T) {
	p := loadWithEntries(t)
	for _, tc := range []struct {
		name string
		src  netip.AddrPort // of the datagram whose checksum must be 0xffff
		dst  netip.AddrPort
		cid  [CIDLen]byte
		v4   bool
	}{
		{"ipv4 output", relay4, peerB4, cidB4, true},
		{"ipv4 input", peerA4, relay4, cidB4, true},
		{"ipv6 output", relay6, peerB6, cidB6, false},
		{"ipv6 input", peerA6, relay6, cidB6, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Vary two payload bytes until the chosen datagram's
			// checksum comes out as 0xffff.
			payload := shortHeader(tc.cid, 20)
			found := false
			for x := range 1 << 16 {
				binary.BigEndian.PutUint16(payload[len(payload)-2:], uint16(x))
				if frameChecksum(frame{src: tc.src, dst: tc.dst, payload: payload}) == 0xffff {
					found = true
					break
				}
			}
			if !found {
				t.Fatal("no payload gives a checksum of 0xffff")
			}
			in := v6(tc.cid)
			wantSrc, wantDst := relay6, peerB6
			if tc.v4 {
				in, wantSrc, wantDst = v4(tc.cid), relay4, peerB4
			}
			in.payload = payload
			b := in.bytes()
			out := runCounted(t, p, b, map[bool]Outcome{true: ForwardedIPv4, false: ForwardedIPv6}[tc.v4])
			checkForwarded(t, b, out, wantSrc, wantDst)
		})
	}
}

// frameChecksum is the UDP checksum bytes() gives f.
func frameChecksum(f frame) uint16 {
	pf, err := parse(f.bytes())
	if err != nil {
		panic(err)
	}
	return binary.BigEndian.Uint16(pf.udp[6:])
}

func TestPass(t *testing.T) {
	p := loadWithEntries(t)
	setUDPLen := func(b []byte, off, n int) []byte {
		binary.BigEndian.PutUint16(b[off+4:], uint16(n))
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want Outcome
	}{
		{"ipv4 unknown CID", v4(cidUnknown).bytes(), PassMiss},
		{"ipv6 unknown CID", v6(cidUnknown).bytes(), PassMiss},
		{"ipv4 relay's own CID", v4(cidRelay).bytes(), PassRelayCID},
		{"ipv6 relay's own CID", v6(cidRelay).bytes(), PassRelayCID},
		{"long header, relay's own CID", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidRelay[:], 50) }).bytes(), PassRelayCID},
		// A sleeping listener's datagram (first byte 0x12, then a type with
		// the high bit set): read as a relay CID, passed up unlooked-up.
		{"sleep datagram", with(v4(cidB4), func(f *frame) { f.payload = append([]byte{0x12, 0x81}, make([]byte, 32)...) }).bytes(), PassRelayCID},
		{"initial, unknown DCID", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeInitial, cidUnknown[:], 1200) }).bytes(), PassMiss},
		{"initial, 8-byte DCID", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeInitial, cidB4[:8], 1200) }).bytes(), PassDCIDLen},
		{"initial, 20-byte DCID", with(v6(cidB6), func(f *frame) { f.payload = longHeader(typeInitial, append(cidB6[:], 1, 2, 3, 4, 5, 6, 7, 8), 1200) }).bytes(), PassDCIDLen},
		{"initial, empty DCID", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeInitial, nil, 1200) }).bytes(), PassDCIDLen},
		{"long header, 17 bytes", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidB4[:], 0)[:17] }).bytes(), PassShort},
		{"12-byte payload", with(v4(cidB4), func(f *frame) { f.payload = shortHeader(cidB4, 0)[:12] }).bytes(), PassShort},
		{"empty payload", with(v6(cidB6), func(f *frame) { f.payload = nil }).bytes(), PassShort},
		{"ipv4 options", with(v4(cidB4), func(f *frame) { f.ipOptions = true }).bytes(), PassIPOptions},
		{"ipv4 more fragments", with(v4(cidB4), func(f *frame) { f.fragOff = 0x2000 }).bytes(), PassFragment},
		{"ipv4 fragment offset", with(v4(cidB4), func(f *frame) { f.fragOff = 0x00b9 }).bytes(), PassFragment},
		{"ipv6 hop-by-hop options", with(v6(cidB6), func(f *frame) { f.ext6 = []byte{0} }).bytes(), PassIPv6Ext},
		{"ipv6 destination options", with(v6(cidB6), func(f *frame) { f.ext6 = []byte{60} }).bytes(), PassIPv6Ext},
		{"ipv6 routing header", with(v6(cidB6), func(f *frame) { f.ext6 = []byte{43} }).bytes(), PassIPv6Ext},
		{"ipv6 fragment header", with(v6(cidB6), func(f *frame) { f.ext6 = []byte{44} }).bytes(), PassIPv6Ext},
		{"vlan", with(v4(cidB4), func(f *frame) { f.vlan = true }).bytes(), PassVLAN},
		{"arp", with(v4(cidB4), func(f *frame) { f.etherType = etherTypeARP }).bytes(), PassNotIP},
		{"ipv4 tcp", with(v4(cidB4), func(f *frame) { f.proto = protoTCP }).bytes(), PassNotUDP},
		{"ipv4 icmp", with(v4(cidB4), func(f *frame) { f.proto = protoICMP }).bytes(), PassNotUDP},
		{"ipv6 tcp", with(v6(cidB6), func(f *frame) { f.proto = protoTCP }).bytes(), PassNotUDP},
		{"ipv6 icmpv6", with(v6(cidB6), func(f *frame) { f.proto = protoICMPv6 }).bytes(), PassNotUDP},
		{"ipv4 wrong port", with(v4(cidB4), func(f *frame) { f.dst = netip.AddrPortFrom(relay4.Addr(), 53) }).bytes(), PassWrongPort},
		{"ipv6 wrong port", with(v6(cidB6), func(f *frame) { f.dst = netip.AddrPortFrom(relay6.Addr(), 4435) }).bytes(), PassWrongPort},
		{"ipv4 packet, ipv6 entry", v4(cidB6).bytes(), PassFamilyMismatch},
		{"ipv6 packet, ipv4 entry", v6(cidB4).bytes(), PassFamilyMismatch},
		{"ipv6 packet, ipv4-mapped entry", v6(cidB4Mapped).bytes(), PassFamilyMismatch},
		{"ipv4 TTL 1", with(v4(cidB4), func(f *frame) { f.ttl = 1 }).bytes(), PassTTL},
		{"ipv6 hop limit 1", with(v6(cidB6), func(f *frame) { f.ttl = 1 }).bytes(), PassTTL},
		{"multicast MAC", with(v4(cidB4), func(f *frame) { f.dstMAC = [6]byte{0x01, 0x00, 0x5e, 0, 0, 1} }).bytes(), PassMulticast},
		{"broadcast MAC", with(v6(cidB6), func(f *frame) { f.dstMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }).bytes(), PassMulticast},
		{"ipv4 bad header checksum", with(v4(cidB4), func(f *frame) { f.badIPCsum = true }).bytes(), PassMalformed},
		{"ipv6 zero UDP checksum", with(v6(cidB6), func(f *frame) { f.zeroCsum = true }).bytes(), PassMalformed},
		{"ipv6 packet in IPv4 EtherType", with(v6(cidB6), func(f *frame) { f.etherType = etherTypeIPv4 }).bytes(), PassMalformed},
		{"ipv4 packet in IPv6 EtherType", with(v4(cidB4), func(f *frame) { f.etherType = etherTypeIPv6 }).bytes(), PassMalformed},
		{"ipv4 UDP length beyond IP payload", setUDPLen(v4(cidB4).bytes(), ethLen+ip4Len, udpLen+53+1), PassMalformed},
		{"ipv4 UDP length below 8", setUDPLen(v4(cidB4).bytes(), ethLen+ip4Len, 7), PassMalformed},
		{"ipv6 UDP length beyond IP payload", setUDPLen(v6(cidB6).bytes(), ethLen+ip6Len, udpLen+53+1), PassMalformed},
		{"ipv4 UDP length below IP payload", setUDPLen(v4(cidB4).bytes(), ethLen+ip4Len, udpLen+53-1), PassMalformed},
		{"ipv6 UDP length below IP payload", setUDPLen(v6(cidB6).bytes(), ethLen+ip6Len, udpLen+53-1), PassMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runCounted(t, p, tc.in, tc.want)
			if i := firstDiff(out, tc.in); i >= 0 {
				t.Errorf("passed frame changed at byte %d", i)
			}
		})
	}
}

// TestTruncated runs every prefix of frames the program forwards: each one
// must be passed unchanged, never dropped or forwarded, and counted.
func TestTruncated(t *testing.T) {
	p := loadWithEntries(t)
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"ipv4 short header", v4(cidB4).bytes()},
		{"ipv6 short header", v6(cidB6).bytes()},
		{"ipv4 long header", with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidB4[:], 20) }).bytes()},
		{"ipv6 long header", with(v6(cidB6Any), func(f *frame) { f.payload = longHeader(typeHandshake, cidB6Any[:], 20) }).bytes()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := p.Counters()
			if err != nil {
				t.Fatal(err)
			}
			runs := 0
			for n := range len(tc.in) + 1 {
				in := tc.in[:n:n]
				action, out, err := p.Run(in)
				if n < ethLen {
					// BPF_PROG_TEST_RUN refuses frames shorter than
					// an Ethernet header; no driver delivers them.
					if err == nil {
						t.Errorf("%d bytes: ran with action %d, want the kernel to refuse", n, action)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
				runs++
				want := ActionPass
				if n == len(tc.in) {
					want = ActionTX
				}
				if action != want {
					t.Errorf("%d of %d bytes: action %d, want %d", n, len(tc.in), action, want)
				}
				if want == ActionPass && !bytes.Equal(out, in) {
					t.Errorf("%d bytes: passed frame changed", n)
				}
			}
			after, err := p.Counters()
			if err != nil {
				t.Fatal(err)
			}
			passed := after.Passed().Packets - before.Passed().Packets
			fwd := after.Forwarded().Packets - before.Forwarded().Packets
			if passed != uint64(runs-1) || fwd != 1 {
				t.Errorf("counted %d passed and %d forwarded of %d runs", passed, fwd, runs)
			}
		})
	}
}

// TestNoPorts checks that a program without ports forwards nothing.
func TestNoPorts(t *testing.T) {
	p := loadTest(t, Config{})
	if err := p.Put(cidB4, peerB4, relay4); err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{v4(cidB4).bytes(), v6(cidB4).bytes()} {
		runCounted(t, p, in, PassWrongPort)
	}
}

func TestPutDelete(t *testing.T) {
	p := loadTest(t, Config{Ports: relayPorts})
	in := v4(cidB4).bytes()
	runCounted(t, p, in, PassMiss)

	if err := p.Put(cidB4, peerB4, relay4); err != nil {
		t.Fatal(err)
	}
	checkForwarded(t, in, runCounted(t, p, in, ForwardedIPv4), relay4, peerB4)

	// Put replaces: the peer moved.
	moved := netip.MustParseAddrPort("203.0.113.99:6000")
	if err := p.Put(cidB4, moved, relay4); err != nil {
		t.Fatal(err)
	}
	checkForwarded(t, in, runCounted(t, p, in, ForwardedIPv4), relay4, moved)

	if err := p.Delete(cidB4); err != nil {
		t.Fatal(err)
	}
	runCounted(t, p, in, PassMiss)
	if err := p.Delete(cidB4); err != nil {
		t.Errorf("deleting a missing CID: %v", err)
	}

	if err := p.Put(cidRelay, peerB4, relay4); err == nil {
		t.Error("Put accepted a relay CID")
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Put(cidB4, peerB4, relay4); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Put after Close: %v, want net.ErrClosed", err)
	}
	if err := p.Delete(cidB4); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Delete after Close: %v, want net.ErrClosed", err)
	}
	if _, err := p.Counters(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Counters after Close: %v, want net.ErrClosed", err)
	}
	if _, _, err := p.Run(in); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Run after Close: %v, want net.ErrClosed", err)
	}
}

// TestMapFull checks that a full map evicts instead of refusing entries.
func TestMapFull(t *testing.T) {
	const size = 64
	p := loadTest(t, Config{Ports: relayPorts, MapSize: size})
	const n = 4 * size
	for i := range n {
		c := testCID(byte(i % 128))
		c[1] = byte(i / 128)
		if err := p.Put(c, peerB4, relay4); err != nil {
			t.Fatalf("Put %d of %d into a map of %d: %v", i+1, n, size, err)
		}
	}
	hits := 0
	for i := range n {
		c := testCID(byte(i % 128))
		c[1] = byte(i / 128)
		if action, _, err := p.Run(v4(c).bytes()); err != nil {
			t.Fatal(err)
		} else if action == ActionTX {
			hits++
		}
	}
	if hits == 0 || hits > size {
		t.Errorf("%d of %d CIDs forwarded by a map of %d", hits, n, size)
	}
}

// TestVerifierError checks that a program the verifier refuses yields an
// error carrying the verifier's whole log.
func TestVerifierError(t *testing.T) {
	loadTest(t, Config{}) // skips where BPF cannot load at all
	spec, err := loadQuicpipe()
	if err != nil {
		t.Fatal(err)
	}
	// Return without setting R0: the verifier refuses to read it.
	spec.Programs[quicpipeProgQuicpipeXdp].Instructions = asm.Instructions{asm.Return()}
	p, err := loadSpec(spec, Config{MapSize: 1})
	if err == nil {
		p.Close()
		t.Fatal("the verifier accepted a program that returns an unset R0")
	}
	ve, ok := errors.AsType[*ebpf.VerifierError](err)
	if !ok {
		t.Fatalf("error %v is not a VerifierError", err)
	}
	if len(ve.Log) == 0 {
		t.Fatal("verifier log is empty")
	}
	for _, line := range ve.Log {
		if !strings.Contains(err.Error(), line) {
			t.Errorf("error lacks log line %q:\n%v", line, err)
		}
	}
	if !strings.HasPrefix(err.Error(), "xdp: load: ") {
		t.Errorf("error %q lacks its prefix", err)
	}
}

func TestAttachErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("xdp: attaching needs root")
	}
	_, err := Attach(Config{Interface: "qp-no-such-if", Ports: relayPorts})
	if err == nil {
		t.Fatal("attached to a missing interface")
	}
	t.Log(err)
}

// FuzzRun runs the program on arbitrary frames. It must never drop or
// abort, must leave passed frames unchanged, and must forward only frames
// that keep their length and come out with checksums as valid as they came
// in.
func FuzzRun(f *testing.F) {
	for _, fr := range []frame{
		v4(cidB4), v4(cidB4Any), v6(cidB6), v6(cidB6Any), v4(cidUnknown), v6(cidRelay),
		with(v4(cidB4), func(f *frame) { f.zeroCsum = true }),
		with(v4(cidB4), func(f *frame) { f.payload = longHeader(typeHandshake, cidB4[:], 30) }),
		with(v6(cidB6), func(f *frame) { f.payload = longHeader(typeInitial, cidB6[:8], 30) }),
		with(v4(cidB4), func(f *frame) { f.ipOptions = true }),
		with(v6(cidB6), func(f *frame) { f.ext6 = []byte{60} }),
		with(v4(cidB4), func(f *frame) { f.vlan = true }),
	} {
		f.Add(fr.bytes())
	}
	p := loadWithEntries(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		action, out, err := p.Run(in)
		if len(in) < ethLen {
			return // the kernel refuses these
		}
		if err != nil {
			t.Fatal(err)
		}
		switch action {
		case ActionPass:
			if !bytes.Equal(out, in) {
				t.Fatalf("passed frame changed at byte %d", firstDiff(out, in))
			}
		case ActionTX:
			if len(out) != len(in) {
				t.Fatalf("forwarded %d bytes of %d", len(out), len(in))
			}
			pi, err := parse(in)
			if err != nil {
				t.Fatalf("forwarded a frame this test cannot parse: %v", err)
			}
			po, err := parse(out)
			if err != nil {
				t.Fatalf("output: %v", err)
			}
			if (pi.checksumsValid() == nil) != (po.checksumsValid() == nil) {
				t.Fatalf("checksum validity changed: in %v, out %v", pi.checksumsValid(), po.checksumsValid())
			}
		default:
			t.Fatalf("action %d", action)
		}
	})
}

// BenchmarkRun measures Program.Run: one BPF_PROG_TEST_RUN system call,
// which copies the frame in and out, around one run of the program.
func BenchmarkRun(b *testing.B) {
	p := loadWithEntries(b)
	for _, bc := range benchFrames() {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := p.Run(bc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkProgram reports the kernel's own timing of one run of the
// program (prog-ns/op), beside that of a program that only returns XDP_PASS:
// the difference is what parsing, lookup and rewriting cost.
func BenchmarkProgram(b *testing.B) {
	p := loadWithEntries(b)
	empty, err := netlab.NewXDPPassProgram()
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	for _, bc := range append(benchFrames(), benchFrame{"empty program", v4(cidB4).bytes()}) {
		prog := p.k.objs.QuicpipeXdp
		if bc.name == "empty program" {
			prog = empty
		}
		b.Run(bc.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				// Repeat 1: a repeated run would see the frame as the
				// previous run left it.
				_, d, err := prog.Benchmark(bc.in, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "prog-ns/op")
		})
	}
}

// BenchmarkPutDelete measures a relay's work for one CID: Put, then Delete,
// one system call each.
func BenchmarkPutDelete(b *testing.B) {
	p := loadTest(b, Config{})
	dst := netip.MustParseAddrPort("192.0.2.1:443")
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Put(cidB4, dst, netip.AddrPort{}); err != nil {
			b.Fatal(err)
		}
		if err := p.Delete(cidB4); err != nil {
			b.Fatal(err)
		}
	}
}

type benchFrame struct {
	name string
	in   []byte
}

func benchFrames() []benchFrame {
	return []benchFrame{
		{"ipv4 hit", v4(cidB4).bytes()},
		{"ipv6 hit", v6(cidB6).bytes()},
		{"ipv4 miss", v4(cidUnknown).bytes()},
	}
}
