package anycast

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// backend is a UDP server on loopback that answers each datagram with its
// name followed by the datagram, to the address it came from.
func backend(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestProxy: a peer's datagrams reach the backend Route picks, from one
// upstream address per peer, and the answers come back from the proxy's
// address.
func TestProxy(t *testing.T) {
	p, err := New(backend(t, "a"), backend(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(want string) {
		t.Helper()
		if _, err := c.WriteToUDP([]byte("x"), p.Addr()); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != want {
			t.Fatalf("answer %q, want %q", got, want)
		}
		if from != p.Addr().AddrPort() {
			t.Fatalf("answer from %v, want the proxy's address %v", from, p.Addr())
		}
	}
	ask("a:x")
	if err := p.Route(1); err != nil {
		t.Fatal(err)
	}
	ask("b:x")
	if err := p.Route(2); err == nil {
		t.Fatal("Route(2) of 2 backends did not fail")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
