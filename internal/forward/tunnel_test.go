package forward

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
)

// tunnelAddr returns the i-th test virtual address.
func tunnelAddr(i byte) netip.Addr {
	b := TunnelPrefix.Addr().As16()
	b[15] = i
	return netip.AddrFrom16(b)
}

// openTunnel opens a tunnel on c, closed when tb ends.
func openTunnel(tb testing.TB, c *Conn, i byte, queue int) *Tunnel {
	tb.Helper()
	t, err := c.OpenTunnel(tunnelAddr(i), queue)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(t.Close)
	return t
}

// TestTunnelForward: datagrams cross between the socket and tunnels both
// ways through the same forwarding rule, and between two tunnels.
func TestTunnelForward(t *testing.T) {
	g := newForwardRig(t, 1200)
	t1 := openTunnel(t, g.c, 1, 4)
	t2 := openTunnel(t, g.c, 2, 4)
	_, cids1 := register(t, g.c, t1.Addr(), 4)
	_, cids2 := register(t, g.c, t2.Addr(), 4)
	pkt := func(cid [CIDLen]byte, tag byte) []byte {
		b := make([]byte, 200)
		b[0] = 0x40
		copy(b[1:], cid[:])
		b[100] = tag
		return b
	}
	take := func(tun *Tunnel) []byte {
		t.Helper()
		select {
		case p := <-tun.Out():
			defer p.Release()
			return bytes.Clone(p.Bytes())
		case <-time.After(2 * time.Second):
			t.Fatal("nothing came out of the tunnel")
			return nil
		}
	}

	// UDP → tunnel: the sender is a registered peer.
	want := pkt(cids1[0], 1)
	g.pkt = want
	if kept := g.round(t, 1); kept != 0 {
		t.Fatalf("%d datagrams kept for quic-go", kept)
	}
	if got := take(t1); !bytes.Equal(got, want) {
		t.Fatal("the tunnel got a different datagram")
	}

	// Tunnel → UDP: to the sink's registration (the rig's CIDs).
	_, sinkCIDs := register(t, g.c, g.sink.LocalAddr().(*net.UDPAddr).AddrPort(), 1)
	want = pkt(sinkCIDs[0], 2)
	t1.Input(want)
	g.sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2000)
	n, _, err := g.sink.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatal("the sink got a different datagram")
	}

	// Tunnel → tunnel.
	want = pkt(cids2[1], 3)
	t1.Input(want)
	if got := take(t2); !bytes.Equal(got, want) {
		t.Fatal("tunnel 2 got a different datagram")
	}

	// A full queue drops and counts, never blocks.
	for range 6 {
		t2.Input(pkt(cids1[2], 4))
	}
	if got := g.c.Counters().TunnelFull; got != 2 {
		t.Fatalf("TunnelFull %d, want 2", got)
	}
	if got := t1.Dropped(); got != 2 {
		t.Fatalf("tunnel dropped %d, want 2", got)
	}

	// A tunnel not registered is an unknown source, as on UDP.
	t3 := openTunnel(t, g.c, 3, 4)
	before := g.c.Counters().UnknownSource
	t3.Input(pkt(cids2[0], 5))
	if got := g.c.Counters().UnknownSource; got != before+1 {
		t.Fatalf("UnknownSource %d, want %d", got, before+1)
	}

	// A closed tunnel is no destination, and its address is free again.
	t2.Close()
	if _, ok := g.c.NewDest(t2.Addr()); ok {
		t.Fatal("NewDest accepted a closed tunnel's address")
	}
	if _, ok := g.c.NewDest(netip.AddrPortFrom(tunnelAddr(9), TunnelPort)); ok {
		t.Fatal("NewDest accepted a virtual address without a tunnel")
	}
	if _, err := g.c.OpenTunnel(tunnelAddr(1), 4); err != ErrTunnelExists {
		t.Fatalf("OpenTunnel on an open tunnel's address: %v", err)
	}
}

// TestTunnelServerConn: datagrams from a tunnel for the relay itself come
// out of TunnelConn from the tunnel's address; what the server writes to
// that address goes into the tunnel.
func TestTunnelServerConn(t *testing.T) {
	c := newTestConn(t, testConfig())
	srv := c.TunnelConn()
	tun := openTunnel(t, c, 1, 4)
	own := make([]byte, 100)
	own[0] = 0x40
	own[1] = 0x80 // a relay CID of this run
	copy(own[2:5], c.epoch[:])
	tun.Input(own)
	buf := make([]byte, 2000)
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := srv.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], own) || from.(*net.UDPAddr).AddrPort() != tun.Addr() {
		t.Fatalf("read %d bytes from %v", n, from)
	}
	if _, err := srv.WriteTo([]byte("reply"), from); err != nil {
		t.Fatal(err)
	}
	p := <-tun.Out()
	if string(p.Bytes()) != "reply" {
		t.Fatalf("tunnel got %q", p.Bytes())
	}
	p.Release()
	// A deadline in the past, as quic-go sets to stop its reader.
	srv.SetReadDeadline(time.Unix(1, 0))
	if _, _, err := srv.ReadFrom(buf); err == nil || !err.(net.Error).Timeout() {
		t.Fatalf("read after deadline: %v", err)
	}
	srv.Close()
	srv.SetReadDeadline(time.Time{})
	if _, _, err := srv.ReadFrom(buf); err != net.ErrClosed {
		t.Fatalf("read after close: %v", err)
	}
}

// TestForwardToTunnelNoAllocs: forwarding from the socket into a tunnel
// allocates nothing either (pooled buffers).
func TestForwardToTunnelNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers at random")
	}
	g := newForwardRig(t, 1200)
	tun := openTunnel(t, g.c, 1, 64)
	_, cids := register(t, g.c, tun.Addr(), 1)
	copy(g.pkt[1:], cids[0][:])
	drain := func() {
		for {
			select {
			case p := <-tun.Out():
				p.Release()
			default:
				return
			}
		}
	}
	g.round(t, 8)
	drain()
	allocs := testing.AllocsPerRun(200, func() {
		g.round(t, 8)
		drain()
	})
	if allocs != 0 {
		t.Fatalf("forwarding 8 datagrams into a tunnel allocated %.1f times, want 0", allocs)
	}
	if got := g.c.Counters().Forwarded; got < 8*200 {
		t.Fatalf("forwarded %d, want at least %d", got, 8*200)
	}
}

// FuzzTunnelInput feeds arbitrary datagrams into a tunnel: no panic, every
// datagram counted once, forwarded ones only to a registered destination.
func FuzzTunnelInput(f *testing.F) {
	g := newForwardRig(f, 1200)
	tun, err := g.c.OpenTunnel(tunnelAddr(1), 8)
	if err != nil {
		f.Fatal(err)
	}
	register(f, g.c, tun.Addr(), 1)
	other, err := g.c.OpenTunnel(tunnelAddr(2), 8)
	if err != nil {
		f.Fatal(err)
	}
	_, ocids := register(f, g.c, other.Addr(), 1)
	f.Add(g.pkt)
	f.Add([]byte{})
	f.Add(append([]byte{0x40}, ocids[0][:]...))
	f.Add(append([]byte{0xc0, 0, 0, 0, 1, 12}, ocids[0][:]...))
	f.Add(append([]byte{0x40, 0x80}, make([]byte, 30)...))
	g.c.TunnelConn()
	buf := make([]byte, MaxTunnelDatagram)
	total := func(c Counters) uint64 {
		return c.Forwarded + c.ToServer + c.SendErrors + c.UnknownCID + c.Expired + c.PeerInitial +
			c.Malformed + c.RateLimited + c.StaleCID + c.UnknownSource + c.RelaySCID + c.TunnelFull
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		b := buf[:copy(buf, in)]
		before := total(g.c.Counters())
		tun.Input(b)
		if got := total(g.c.Counters()); got != before+1 {
			t.Fatalf("one datagram counted %d times", got-before)
		}
		for {
			select {
			case p := <-other.Out():
				p.Release()
			case p := <-g.c.tuns.srv.in:
				p.Release()
			default:
				return
			}
		}
	})
}

// BenchmarkForwardToTunnel is BenchmarkForwardBatch8 with the destination
// in a tunnel: the cost of queueing into a tunnel beside sending on UDP
// (ns/op per datagram; the tunnel's writer is drained in the loop).
func BenchmarkForwardToTunnel(b *testing.B) {
	g := newForwardRig(b, 1200)
	tun := openTunnel(b, g.c, 1, 64)
	_, cids := register(b, g.c, tun.Addr(), 1)
	copy(g.pkt[1:], cids[0][:])
	drain := func() {
		for {
			select {
			case p := <-tun.Out():
				p.Release()
			default:
				return
			}
		}
	}
	g.round(b, 8)
	drain()
	b.ReportAllocs()
	b.SetBytes(1200)
	n := 0
	for b.Loop() {
		if n%8 == 0 {
			g.round(b, 8)
			drain()
		}
		n++
	}
}

// BenchmarkTunnelInput measures a datagram from a tunnel forwarded to a UDP
// peer (classify and one sendto).
func BenchmarkTunnelInput(b *testing.B) {
	g := newForwardRig(b, 1200)
	tun := openTunnel(b, g.c, 1, 64)
	register(b, g.c, tun.Addr(), 1)
	g.c.cfg.MaxPacketsPerSecond, g.c.cfg.MaxBytesPerSecond = -1, -1 // no cap: every datagram reaches the sink
	b.ReportAllocs()
	b.SetBytes(1200)
	buf := make([]byte, 2000)
	for b.Loop() {
		tun.Input(g.pkt)
		g.sink.ReadFromUDP(buf)
	}
}
