package main

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// checksum is the Internet checksum of b, folded, not inverted.
func checksum(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum
}

// udpFrame builds an Ethernet/IPv4/UDP frame with valid checksums (a zero
// UDP checksum if noUDPSum).
func udpFrame(src, dst netip.AddrPort, payload []byte, noUDPSum bool) []byte {
	f := make([]byte, 42+len(payload))
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^uint16(checksum(ip, 0)))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	if !noUDPSum {
		binary.BigEndian.PutUint16(udp[6:], udpChecksum(f))
	}
	return f
}

func udpChecksum(f []byte) uint16 {
	ip, udp := f[14:34], f[34:]
	pseudo := make([]byte, 12)
	copy(pseudo, ip[12:20])
	pseudo[9] = 17
	copy(pseudo[10:], udp[4:6])
	saved := binary.BigEndian.Uint16(udp[6:])
	binary.BigEndian.PutUint16(udp[6:], 0)
	c := ^uint16(checksum(udp, checksum(pseudo, 0)))
	binary.BigEndian.PutUint16(udp[6:], saved)
	if c == 0 {
		c = 0xffff
	}
	return c
}

func TestReflector(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	from := netip.MustParseAddrPort("10.77.1.2:7004")
	via := netip.MustParseAddrPort("10.77.2.2:4433")
	to := netip.MustParseAddrPort("10.77.3.2:9000")
	prog, err := loadXDP("qpb_reflector", reflectorProgram(from, via, to))
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	pass, err := loadXDP("qpb_pass", passProgram())
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	payload := make([]byte, 1200)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name     string
		frame    []byte
		want     uint32
		noUDPSum bool
	}{
		{"checksummed", udpFrame(from, via, payload, false), xdpTX, false},
		{"no UDP checksum", udpFrame(from, via, payload, true), xdpTX, true},
		{"odd payload", udpFrame(from, via, payload[:3], false), xdpTX, false},
		{"other port", udpFrame(from, netip.AddrPortFrom(via.Addr(), 53), payload, false), xdpPass, false},
		{"truncated", udpFrame(from, via, payload, false)[:40], xdpPass, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]byte(nil), tc.frame...)
			ret, out, err := runXDP(prog, in)
			if err != nil {
				t.Fatal(err)
			}
			if ret != tc.want {
				t.Fatalf("returned %d, want %d", ret, tc.want)
			}
			if ret != xdpTX {
				if string(out) != string(tc.frame) {
					t.Fatal("a passed frame was changed")
				}
				return
			}
			want := udpFrame(via, to, tc.frame[42:], tc.noUDPSum)
			copy(want[0:6], tc.frame[6:12])
			copy(want[6:12], tc.frame[0:6])
			if string(out) != string(want) {
				t.Fatalf("reflected frame\n got %x\nwant %x", out[:42], want[:42])
			}
		})
	}
	if ret, _, err := runXDP(pass, udpFrame(from, via, payload, false)); err != nil || ret != xdpPass {
		t.Fatalf("pass program returned %d, %v", ret, err)
	}
}

func runXDP(p *ebpf.Program, frame []byte) (uint32, []byte, error) {
	out := make([]byte, len(frame)+256)
	ret, err := p.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		return 0, nil, err
	}
	return ret, out[:len(frame)], nil
}
