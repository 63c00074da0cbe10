package quicpipe

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestInScope(t *testing.T) {
	for _, tc := range []struct {
		relay, addr string
		want        bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "192.0.2.2", false},
		{"127.0.0.1", "10.0.0.2", false},
		{"::1", "fd00::2", false},
		{"10.0.0.1", "10.0.0.2", true},
		{"10.0.0.1", "169.254.1.2", true},
		{"10.0.0.1", "127.0.0.1", false},
		{"10.0.0.1", "203.0.113.7", false},
		{"100.64.0.1", "192.168.1.2", true},
		{"203.0.113.1", "203.0.113.7", true},
		{"203.0.113.1", "192.168.1.2", true},
		{"203.0.113.1", "127.0.0.1", false},
		{"2001:db8::1", "fd00::2", true},
		{"::ffff:127.0.0.1", "127.0.0.1", true},
	} {
		if got := inScope(netip.MustParseAddr(tc.relay), netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("inScope(%s, %s) = %v, want %v", tc.relay, tc.addr, got, tc.want)
		}
	}
}

// TestCandidatesInterfaceAddrs checks that a socket on the unspecified
// address offers the addresses Config.InterfaceAddrs lists, with its port,
// filtered like those of the interfaces, and none when the list fails.
func TestCandidatesInterfaceAddrs(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := uint16(conn.LocalAddr().(*net.UDPAddr).Port)
	relay := netip.MustParseAddrPort("10.0.0.1:4433")
	list := func() ([]netip.Addr, error) {
		return []netip.Addr{
			netip.MustParseAddr("10.0.0.2"),
			netip.MustParseAddr("127.0.0.1"),   // loopback: never
			netip.MustParseAddr("203.0.113.7"), // wider than the relay's scope
			netip.MustParseAddr("fd00::2"),     // other family
			netip.MustParseAddr("::ffff:192.168.1.2"),
		}, nil
	}
	got := gatherCandidates(conn, relay, netip.AddrPort{}, false, list)
	want := []candidate{
		{candLocal, netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)},
		{candLocal, netip.AddrPortFrom(netip.MustParseAddr("192.168.1.2"), port)},
	}
	if !slices.Equal(got, want) {
		t.Errorf("candidates %v, want %v", got, want)
	}
	fail := func() ([]netip.Addr, error) { return nil, errors.New("no interfaces here") }
	if got := gatherCandidates(conn, relay, netip.AddrPort{}, false, fail); len(got) != 0 {
		t.Errorf("candidates %v when listing fails, want none", got)
	}
}

// TestCandidatesTunnelObserved: a peer whose relay saw it through a tunnel
// (a virtual address in 100::/64) does not offer that address.
func TestCandidatesTunnelObserved(t *testing.T) {
	conn, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer conn.Close()
	relay := netip.MustParseAddrPort("[2001:db8::1]:4433")
	virtual := netip.MustParseAddrPort("[100::1:2:3:4]:1")
	observed := netip.MustParseAddrPort("[2001:db8::7]:5000")
	none := func() ([]netip.Addr, error) { return nil, nil }
	observedOf := func(cs []candidate) []netip.AddrPort {
		var out []netip.AddrPort
		for _, c := range cs {
			if c.kind == candObserved {
				out = append(out, c.addr)
			}
		}
		return out
	}
	if got := observedOf(gatherCandidates(conn, relay, virtual, true, none)); len(got) != 0 {
		t.Errorf("observed candidates %v for a tunnel's virtual address, want none", got)
	}
	if got := observedOf(gatherCandidates(conn, relay, observed, true, none)); len(got) != 1 || got[0] != observed {
		t.Errorf("observed candidates %v, want %v", got, observed)
	}
}
