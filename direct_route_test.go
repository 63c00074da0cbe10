package quicpipe

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
)

// TestPeerConnRouteNoAllocs checks that sending through a connection's
// route allocates nothing, relayed or direct.
func TestPeerConnRouteNoAllocs(t *testing.T) {
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.SetReadBuffer(1 << 20)
	relay := sink.LocalAddr().(*net.UDPAddr).AddrPort()
	pc := newPeerConn(a, relay, true)
	remote := net.UDPAddrFromAddrPort(relay)
	r := &connRoute{}
	pc.addRoute(remote, r)
	b := make([]byte, 1200)
	b[0] = 0x40
	go func() { // drain
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	for _, tc := range []struct {
		name   string
		direct *netip.AddrPort
	}{{"relayed", nil}, {"direct", &relay}} {
		r.direct.Store(tc.direct)
		allocs := testing.AllocsPerRun(200, func() {
			if _, _, err := pc.WriteMsgUDP(b, nil, remote); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per send", tc.name, allocs)
		}
	}
}

// TestSortBatch checks that control datagrams leave the batch, the others
// keep their slots' buffers and order and get the relay as their source.
func TestSortBatch(t *testing.T) {
	relay := netip.MustParseAddrPort("192.0.2.1:4433")
	pc := &peerConn{directRoutes: directRoutes{relayUDP: net.UDPAddrFromAddrPort(relay), ctrl: make(chan ctrlPacket, 8)}}
	from := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 999}
	ctrl := func(b byte) []byte {
		d := make([]byte, ctrlOverhead+4)
		d[0], d[1] = ctrlMarker, b
		return d
	}
	datagrams := [][]byte{
		{0x40, 1, 1}, ctrl(2), {0xc0, 3, 3, 3}, {0x05, 9, 9}, ctrl(4), {0x41, 5},
	}
	ms := make([]ipv4.Message, len(datagrams))
	bufs := make([][]byte, len(datagrams))
	for i, d := range datagrams {
		bufs[i] = make([]byte, 64)
		ms[i].Buffers = [][]byte{bufs[i]}
		ms[i].OOB = make([]byte, 16)
		ms[i].N = copy(bufs[i], d)
		ms[i].NN = i
		ms[i].Addr = from
	}
	n := pc.sortBatch(ms)
	want := [][]byte{{0x40, 1, 1}, {0xc0, 3, 3, 3}, {0x41, 5}}
	if n != len(want) {
		t.Fatalf("kept %d datagrams, want %d", n, len(want))
	}
	for i := range n {
		if &ms[i].Buffers[0][0] != &bufs[i][0] {
			t.Errorf("slot %d has another slot's buffer", i)
		}
		if got := ms[i].Buffers[0][:ms[i].N]; string(got) != string(want[i]) {
			t.Errorf("slot %d = %x, want %x", i, got, want[i])
		}
		if ms[i].Addr.(*net.UDPAddr).AddrPort() != relay {
			t.Errorf("slot %d source %v, want the relay", i, ms[i].Addr)
		}
	}
	if ms[1].NN != 2 || ms[2].NN != 5 {
		t.Errorf("OOB lengths not moved with their datagrams: %d %d", ms[1].NN, ms[2].NN)
	}
	if len(pc.ctrl) != 2 || pc.ctrlDrop.Load() != 1 {
		t.Fatalf("%d control datagrams queued, %d dropped; want 2 and 1 (malformed)", len(pc.ctrl), pc.ctrlDrop.Load())
	}
	if p := <-pc.ctrl; p.from != netip.MustParseAddrPort("198.51.100.7:999") || p.b[1] != 2 {
		t.Errorf("control datagram %x from %v", p.b, p.from)
	}
}

// quicBatch returns a batch of n QUIC-looking datagrams as quic-go hands
// them to ReadBatch.
func quicBatch(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	from := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 999}
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1500)}
		ms[i].OOB = make([]byte, 64)
		ms[i].Buffers[0][0] = 0x40
		ms[i].N = 1252
		ms[i].Addr = from
	}
	return ms
}

// TestSortBatchNoAllocs: a batch without control datagrams costs no
// allocation.
func TestSortBatchNoAllocs(t *testing.T) {
	pc := &peerConn{directRoutes: directRoutes{relayUDP: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:4433")), ctrl: make(chan ctrlPacket, 1)}}
	ms := quicBatch(8)
	if a := testing.AllocsPerRun(100, func() { pc.sortBatch(ms) }); a != 0 {
		t.Errorf("%v allocations per batch", a)
	}
}

// BenchmarkSortBatch is the direct-path cost on the receive path, per
// batch of 8 datagrams (quic-go's batch size).
func BenchmarkSortBatch(b *testing.B) {
	pc := &peerConn{directRoutes: directRoutes{relayUDP: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:4433")), ctrl: make(chan ctrlPacket, 1)}}
	ms := quicBatch(8)
	for b.Loop() {
		pc.sortBatch(ms)
	}
}

// BenchmarkRouteLookup is the direct-path cost on the send path, per
// datagram or GSO batch: the route lookup and the atomic loads, without
// the syscall.
func BenchmarkRouteLookup(b *testing.B) {
	pc := &peerConn{}
	remote := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:4433"))
	for i := range 4 { // a few other connections
		pc.addRoute(net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(i))), &connRoute{})
	}
	r := &connRoute{}
	d := netip.MustParseAddrPort("203.0.113.2:5000")
	r.direct.Store(&d)
	pc.addRoute(remote, r)
	var sink netip.AddrPort
	for b.Loop() {
		if m := pc.routes.Load(); m != nil {
			if rt := (*m)[remote]; rt != nil {
				if rt.wantDCID.Load() {
					b.Fatal("unexpected")
				}
				if p := rt.direct.Load(); p != nil {
					sink = *p
				}
			}
		}
	}
	_ = sink
}
