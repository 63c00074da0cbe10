//go:build linux

package xdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// This file builds and checks Ethernet/IP/UDP frames from scratch, in plain
// Go, so that the tests compare the program's output with an independent
// computation.

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeARP  = 0x0806

	protoTCP    = 6
	protoUDP    = 17
	protoICMP   = 1
	protoICMPv6 = 58

	ethLen = 14
	ip4Len = 20
	ip6Len = 40
	udpLen = 8
)

// frame describes a test frame. The zero value of each field selects a
// sensible default in bytes().
type frame struct {
	srcMAC, dstMAC [6]byte
	etherType      uint16 // if zero, from src's IP version
	vlan           bool   // insert an 802.1Q tag
	src, dst       netip.AddrPort
	ttl            uint8 // if zero, 64
	proto          uint8 // if zero, UDP
	ipOptions      bool  // IPv4: four bytes of options (IHL 6)
	fragOff        uint16
	ext6           []byte // IPv6: insert an 8-byte extension header of type ext6[0]
	zeroCsum       bool   // send a zero UDP checksum
	badIPCsum      bool
	payload        []byte
}

var (
	macA = [6]byte{0x02, 0, 0, 0, 0, 0xa}
	macR = [6]byte{0x02, 0, 0, 0, 0, 0x1}
)

// bytes builds the frame with correct checksums (unless asked otherwise).
func (f frame) bytes() []byte {
	if f.srcMAC == ([6]byte{}) {
		f.srcMAC = macA
	}
	if f.dstMAC == ([6]byte{}) {
		f.dstMAC = macR
	}
	if f.ttl == 0 {
		f.ttl = 64
	}
	if f.proto == 0 {
		f.proto = protoUDP
	}
	v4 := f.src.Addr().Is4()
	et := f.etherType
	if et == 0 {
		et = etherTypeIPv6
		if v4 {
			et = etherTypeIPv4
		}
	}
	b := append([]byte(nil), f.dstMAC[:]...)
	b = append(b, f.srcMAC[:]...)
	if f.vlan {
		b = binary.BigEndian.AppendUint16(b, etherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	b = binary.BigEndian.AppendUint16(b, et)

	udp := binary.BigEndian.AppendUint16(nil, f.src.Port())
	udp = binary.BigEndian.AppendUint16(udp, f.dst.Port())
	udp = binary.BigEndian.AppendUint16(udp, uint16(udpLen+len(f.payload)))
	udp = append(udp, 0, 0)
	udp = append(udp, f.payload...)
	if f.proto == protoUDP && !f.zeroCsum {
		binary.BigEndian.PutUint16(udp[6:], udpChecksum(f.src.Addr(), f.dst.Addr(), udp))
	}

	if v4 {
		ihl := 5
		if f.ipOptions {
			ihl = 6
		}
		h := make([]byte, ihl*4)
		h[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(udp)))
		binary.BigEndian.PutUint16(h[4:], 0x1234)
		binary.BigEndian.PutUint16(h[6:], f.fragOff)
		h[8] = f.ttl
		h[9] = f.proto
		s, d := f.src.Addr().As4(), f.dst.Addr().As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		if f.ipOptions {
			copy(h[20:], []byte{1, 1, 1, 0}) // NOP, NOP, NOP, end of options
		}
		binary.BigEndian.PutUint16(h[10:], ipv4Checksum(h))
		if f.badIPCsum {
			h[10] ^= 0x55
		}
		b = append(b, h...)
		return append(b, udp...)
	}
	h := make([]byte, ip6Len)
	h[0] = 0x60
	h[1] = 0x0a // some traffic class and flow label
	h[3] = 0x77
	next, ext := f.proto, []byte(nil)
	if len(f.ext6) > 0 {
		next = f.ext6[0]
		ext = []byte{f.proto, 0, 1, 4, 0, 0, 0, 0} // PadN option filling 8 bytes
	}
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(udp)))
	h[6] = next
	h[7] = f.ttl
	s, d := f.src.Addr().As16(), f.dst.Addr().As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	b = append(b, h...)
	b = append(b, ext...)
	return append(b, udp...)
}

// sum16 is the one's complement sum of b, folded.
func sum16(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum
}

// ipv4Checksum is the checksum of header h with its checksum field taken as
// zero.
func ipv4Checksum(h []byte) uint16 {
	c := append([]byte(nil), h...)
	c[10], c[11] = 0, 0
	return ^uint16(sum16(0, c))
}

// udpChecksum computes the checksum of UDP datagram udp (checksum field
// taken as zero) from src to dst, as a sender would.
func udpChecksum(src, dst netip.Addr, udp []byte) uint16 {
	c := append([]byte(nil), udp...)
	c[6], c[7] = 0, 0
	var pseudo []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		pseudo = append(append(append(pseudo, s[:]...), d[:]...), 0, protoUDP)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(c)))
	} else {
		s, d := src.As16(), dst.As16()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(c)))
		pseudo = append(pseudo, 0, 0, 0, protoUDP)
	}
	ck := ^uint16(sum16(sum16(0, pseudo), c))
	if ck == 0 {
		ck = 0xffff
	}
	return ck
}

// parsed is a frame read back by parse.
type parsed struct {
	dstMAC, srcMAC [6]byte
	v4             bool
	ip             []byte // IP header
	udp            []byte // UDP header and payload
	src, dst       netip.AddrPort
	ttl            uint8
}

// parse reads an untagged IPv4 or IPv6 UDP frame without extension headers
// or options.
func parse(b []byte) (parsed, error) {
	var p parsed
	if len(b) < ethLen {
		return p, fmt.Errorf("frame of %d bytes", len(b))
	}
	copy(p.dstMAC[:], b[0:6])
	copy(p.srcMAC[:], b[6:12])
	b = b[ethLen-2:]
	et := binary.BigEndian.Uint16(b)
	b = b[2:]
	var sa, da netip.Addr
	switch et {
	case etherTypeIPv4:
		if len(b) < ip4Len+udpLen || b[0] != 0x45 || b[9] != protoUDP {
			return p, fmt.Errorf("not a plain IPv4 UDP packet")
		}
		n := int(binary.BigEndian.Uint16(b[2:]))
		if n > len(b) || n < ip4Len+udpLen {
			return p, fmt.Errorf("IPv4 total length %d of %d bytes", n, len(b))
		}
		p.v4, p.ip, p.udp, p.ttl = true, b[:ip4Len], b[ip4Len:n], b[8]
		sa, da = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	case etherTypeIPv6:
		if len(b) < ip6Len+udpLen || b[0]>>4 != 6 || b[6] != protoUDP {
			return p, fmt.Errorf("not a plain IPv6 UDP packet")
		}
		n := ip6Len + int(binary.BigEndian.Uint16(b[4:]))
		if n > len(b) {
			return p, fmt.Errorf("IPv6 payload length %d of %d bytes", n, len(b))
		}
		p.ip, p.udp, p.ttl = b[:ip6Len], b[ip6Len:n], b[7]
		sa, da = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return p, fmt.Errorf("EtherType %#04x", et)
	}
	if ul := int(binary.BigEndian.Uint16(p.udp[4:])); ul != len(p.udp) {
		return p, fmt.Errorf("UDP length %d in %d bytes", ul, len(p.udp))
	}
	p.src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(p.udp[0:]))
	p.dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(p.udp[2:]))
	return p, nil
}

// checksumsValid reports whether the IPv4 header checksum (if any) and the
// UDP checksum (unless zero over IPv4) of p are the ones a sender computes.
func (p parsed) checksumsValid() error {
	if p.v4 {
		if got, want := binary.BigEndian.Uint16(p.ip[10:]), ipv4Checksum(p.ip); got != want {
			return fmt.Errorf("IPv4 header checksum %#04x, computed %#04x", got, want)
		}
	}
	got := binary.BigEndian.Uint16(p.udp[6:])
	if got == 0 && p.v4 {
		return nil
	}
	if want := udpChecksum(p.src.Addr(), p.dst.Addr(), p.udp); got != want {
		return fmt.Errorf("UDP checksum %#04x, computed %#04x", got, want)
	}
	return nil
}

// QUIC-shaped payloads.

// shortHeader is a 1-RTT packet for dcid with n bytes of "ciphertext".
func shortHeader(dcid [CIDLen]byte, n int) []byte {
	b := append([]byte{0x40 | 0x21}, dcid[:]...)
	for i := range n {
		b = append(b, byte(i*7+3))
	}
	return b
}

// Long header packet types (QUIC v1).
const (
	typeInitial   = 0
	typeHandshake = 2
)

// longHeader is a long-header packet of type typ for dcid (any length).
func longHeader(typ byte, dcid []byte, n int) []byte {
	b := []byte{0xc0 | typ<<4 | 0x01, 0, 0, 0, 1, byte(len(dcid))}
	b = append(b, dcid...)
	b = append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8) // SCID
	for i := range n {
		b = append(b, byte(i*5+1))
	}
	return b
}

// firstDiff returns the first index where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
