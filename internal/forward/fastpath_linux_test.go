package forward

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/quicpipe/quicpipe/xdp"
	"golang.org/x/sys/unix"
)

// xdpFastPath is the XDP program, loaded but not attached, run on crafted
// frames (BPF_PROG_TEST_RUN) to see where it sends a datagram.
type xdpFastPath struct {
	*xdp.Program
	relay netip.AddrPort // the frames' destination
}

func (f xdpFastPath) lookup(t *testing.T, cid [CIDLen]byte) (netip.AddrPort, bool) {
	t.Helper()
	action, out, err := f.Run(xdpTestFrame(cid, f.relay))
	if err != nil {
		t.Fatal(err)
	}
	if action != xdp.ActionTX {
		return netip.AddrPort{}, false
	}
	dst := netip.AddrFrom4([4]byte(out[30:34]))
	return netip.AddrPortFrom(dst, uint16(out[36])<<8|uint16(out[37])), true
}

// TestReputRaceXDP is TestReputRace against the XDP program's map.
func TestReputRaceXDP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("BPF needs root")
	}
	relay := netip.MustParseAddrPort("127.0.0.1:4433")
	p, err := xdp.Load(xdp.Config{Ports: []uint16{relay.Port()}, FilterSources: true})
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, xdp.ErrNotSupported) {
		t.Skipf("this kernel cannot load the XDP program: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	// The test frames come from 127.0.0.9:40000: a registered peer, as the
	// program forwards only from the addresses of live registrations.
	if err := p.AllowSource(netip.MustParseAddrPort("127.0.0.9:40000")); err != nil {
		t.Fatal(err)
	}
	testReputRace(t, xdpFastPath{p, relay})
}

// xdpTestFrame returns an Ethernet frame carrying an IPv4 UDP datagram from
// 127.0.0.9:40000 to dst, a 40-byte short-header QUIC packet for cid, with a
// valid IPv4 header checksum and no UDP checksum.
func xdpTestFrame(cid [CIDLen]byte, dst netip.AddrPort) []byte {
	payload := append([]byte{0x41}, cid[:]...)
	payload = append(payload, make([]byte, 40-len(payload))...)
	f := []byte{
		0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, // Ethernet, IPv4
		0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 9, 0, 0, 0, 0, // IPv4
		0x9c, 0x40, 0, 0, 0, 0, 0, 0, // UDP from 40000
	}
	ip, udp := f[14:34], f[34:42]
	copy(ip[16:20], dst.Addr().AsSlice())
	ipLen, udpLen := 20+8+len(payload), 8+len(payload)
	ip[2], ip[3] = byte(ipLen>>8), byte(ipLen)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
	udp[2], udp[3] = byte(dst.Port()>>8), byte(dst.Port())
	udp[4], udp[5] = byte(udpLen>>8), byte(udpLen)
	return append(f, payload...)
}
