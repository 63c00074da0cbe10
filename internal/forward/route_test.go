package forward

import (
	"crypto/rand"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
)

// testConfig is the forwarding configuration of a relay with RelayConfig's
// default caps.
func testConfig() Config {
	var k quic.StatelessResetKey
	rand.Read(k[:])
	return Config{ResetKey: &k, MaxPacketsPerSecond: 100000, MaxBytesPerSecond: 125_000_000}
}

// listenLoopback returns a UDP socket on 127.0.0.1, closed when tb ends.
func listenLoopback(tb testing.TB) *net.UDPConn {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	tb.Cleanup(func() { c.Close() })
	return c
}

// newTestConn returns a Conn on its own loopback socket, with an empty
// table and target set.
func newTestConn(tb testing.TB, cfg Config) *Conn {
	tb.Helper()
	c, err := NewConn(listenLoopback(tb), NewTable(), new(Targets), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// register does what the relay does for a registration of n CIDs
// forwarding to (and from) to, valid for an hour: it publishes n random peer
// CIDs (high bit clear) for a new entry and adds to to the target set.
func register(tb testing.TB, c *Conn, to netip.AddrPort, n int) (*Entry, [][CIDLen]byte) {
	tb.Helper()
	d, ok := c.NewDest(to)
	if !ok {
		tb.Fatalf("the socket cannot send to %v", to)
	}
	e := new(Entry)
	e.SetDest(d)
	e.SetExpires(time.Now().Add(time.Hour).UnixNano())
	c.targets.Add(KeyOf(to))
	cids := make([][CIDLen]byte, n)
	for i := range cids {
		rand.Read(cids[i][:])
		cids[i][0] &= 0x7f
		c.table.Insert(cids[i], e)
	}
	return e, cids
}

// forwardRig drives the relay's forwarding path (batch read, classify,
// batch send) on its own loopback socket, without quic-go's read loop, so
// that tests and benchmarks can count its cost per datagram.
type forwardRig struct {
	c      *Conn
	sock   *net.UDPConn // the forwarding socket under test
	sender *net.UDPConn
	sink   *net.UDPConn
	to     netip.AddrPort
	ms     []ipv4.Message
	pkt    []byte
}

func newForwardRig(tb testing.TB, size int) *forwardRig {
	tb.Helper()
	return newForwardRigConfig(tb, size, testConfig())
}

// newForwardRigConfig is newForwardRig with the engine configured by cfg.
func newForwardRigConfig(tb testing.TB, size int, cfg Config) *forwardRig {
	tb.Helper()
	g := &forwardRig{sock: listenLoopback(tb), sender: listenLoopback(tb), sink: listenLoopback(tb)}
	var err error
	if g.c, err = NewConn(g.sock, NewTable(), new(Targets), cfg); err != nil {
		tb.Fatal(err)
	}
	_, cids := register(tb, g.c, g.sink.LocalAddr().(*net.UDPAddr).AddrPort(), 64)
	// The sender is a registered peer too: the relay forwards only from
	// the addresses of live registrations.
	register(tb, g.c, g.sender.LocalAddr().(*net.UDPAddr).AddrPort(), 1)
	g.pkt = make([]byte, size)
	g.pkt[0] = 0x40 // short header
	copy(g.pkt[1:], cids[6][:])
	g.to = g.sock.LocalAddr().(*net.UDPAddr).AddrPort()
	g.ms = make([]ipv4.Message, 8)
	for i := range g.ms {
		g.ms[i].Buffers = [][]byte{make([]byte, 1500)}
		g.ms[i].OOB = make([]byte, 128)
	}
	return g
}

// round sends n datagrams to the forwarding socket and forwards them all. It
// returns how many were left for quic-go.
func (g *forwardRig) round(tb testing.TB, n int) int {
	for range n {
		if _, err := g.sender.WriteToUDPAddrPort(g.pkt, g.to); err != nil {
			tb.Fatal(err)
		}
	}
	kept := 0
	for done := 0; done < n; {
		k, err := g.c.io.read(g.ms, 0)
		if err != nil {
			tb.Fatal(err)
		}
		done += k
		kept += g.c.route(g.ms[:k])
	}
	return kept
}

func TestForwardNoAllocs(t *testing.T) {
	g := newForwardRig(t, 1200)
	g.round(t, 8) // warm up: sizes the batch buffers
	allocs := testing.AllocsPerRun(200, func() { g.round(t, 8) })
	if allocs != 0 {
		t.Fatalf("forwarding 8 datagrams allocated %.1f times, want 0", allocs)
	}
	if got := g.c.Counters().Forwarded; got < 8*200 {
		t.Fatalf("forwarded %d datagrams, want at least %d", got, 8*200)
	}
	// The sink really receives them, unchanged.
	g.sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2000)
	n, _, err := g.sink.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != string(g.pkt) {
		t.Fatal("forwarded datagram differs from the one sent")
	}
}

func TestForwardMixedBatch(t *testing.T) {
	// Datagrams for quic-go are compacted into the lowest slots, in order,
	// with their bytes and addresses intact; forwarded ones are sent first.
	g := newForwardRig(t, 1200)
	own := make([]byte, 100)
	own[0] = 0x40
	own[1] = 0x80 // relay's own CID, of this run
	copy(own[2:5], g.c.epoch[:])
	for i := range 4 {
		g.sender.WriteToUDPAddrPort(g.pkt, g.to)
		own[20] = byte(i)
		g.sender.WriteToUDPAddrPort(own, g.to)
	}
	var kept []byte
	for done := 0; done < 8; {
		k, err := g.c.io.read(g.ms, 0)
		if err != nil {
			t.Fatal(err)
		}
		done += k
		n := g.c.route(g.ms[:k])
		for i := range n {
			m := g.ms[i]
			if m.N != len(own) || m.Buffers[0][1] != 0x80 {
				t.Fatalf("slot %d holds a %d-byte datagram, want the relay's own", i, m.N)
			}
			if m.Addr.String() != g.sender.LocalAddr().String() {
				t.Fatalf("slot %d address %v, want %v", i, m.Addr, g.sender.LocalAddr())
			}
			kept = append(kept, m.Buffers[0][20])
		}
	}
	if string(kept) != "\x00\x01\x02\x03" {
		t.Fatalf("kept datagrams in order %v, want 0 1 2 3", kept)
	}
	if st := g.c.Counters(); st.Forwarded != 4 || st.ToServer != 4 {
		t.Fatalf("forwarded %d, to server %d; want 4 and 4", st.Forwarded, st.ToServer)
	}
}

func TestClassify(t *testing.T) {
	r := newTestConn(t, testConfig())
	_, cids := register(t, r, netip.MustParseAddrPort("127.0.0.1:9"), 8)
	reg := cids[2]
	var unknown [CIDLen]byte
	rand.Read(unknown[:])
	unknown[0] &= 0x7f
	peer := KeyOf(netip.MustParseAddrPort("127.0.0.1:9")) // the registered peer's address
	short := func(cid [CIDLen]byte) []byte { return append([]byte{0x40}, append(cid[:], make([]byte, 30)...)...) }
	long := func(cid []byte) []byte {
		b := []byte{0xc0, 0, 0, 0, 1, byte(len(cid))}
		b = append(b, cid...)
		b = append(b, 0) // SCID length 0
		return append(b, make([]byte, 30)...)
	}
	relayOwn := reg
	relayOwn[0] |= 0x80
	copy(relayOwn[1:4], r.epoch[:])
	stale := relayOwn
	stale[1] ^= 0xff // an earlier run's epoch
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		name string
		b    []byte
		want verdict
	}{
		{"empty", nil, dropMalformed},
		{"12 bytes", make([]byte, 12), dropMalformed},
		{"short registered", short(reg), forward},
		{"short unknown", short(unknown), dropUnknown},
		{"short relay own", short(relayOwn), toServer},
		{"short relay own, earlier run", short(stale), resetStale},
		{"long relay own, earlier run", long(stale[:]), toServer},
		{"long registered", long(reg[:]), forward},
		{"long unknown", long(unknown[:]), toServer},
		{"long relay own", long(relayOwn[:]), toServer},
		{"long 8-byte DCID", long(make([]byte, 8)), toServer},
		{"long truncated", long(reg[:])[:10], dropMalformed},
		{"long truncated DCID", long(reg[:])[:15], toServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, d := r.classify(tc.b, &srcCheck{key: peer}, now)
			if got != tc.want {
				t.Fatalf("classify = %d, want %d", got, tc.want)
			}
			if got == forward && (d == nil || d.AP.Port() != 9) {
				t.Fatalf("forward destination %v, want port 9", d)
			}
		})
	}
	// The forwarding rule: a registered CID from an address that no live
	// registration forwards to is dropped.
	stranger := KeyOf(netip.MustParseAddrPort("127.0.0.1:10"))
	if got, _ := r.classify(short(reg), &srcCheck{key: stranger}, now); got != dropUnknownSource {
		t.Fatalf("classify from an unknown source = %d, want %d", got, dropUnknownSource)
	}
	// A relay's handshake packet (its SCID is a relay CID) is never
	// forwarded, even from a registered address.
	relayReply := append([]byte{0xc0, 0, 0, 0, 1, CIDLen}, reg[:]...)
	relayReply = append(append(append(relayReply, CIDLen), relayOwn[:]...), make([]byte, 30)...)
	if got, _ := r.classify(relayReply, &srcCheck{key: peer}, now); got != dropRelaySCID {
		t.Fatalf("classify of a relay's handshake packet = %d, want %d", got, dropRelaySCID)
	}
	// An expired registration stops forwarding at once, before the janitor
	// removes it.
	if got, _ := r.classify(short(reg), &srcCheck{key: peer}, now+int64(2*time.Hour)); got != dropExpired {
		t.Fatalf("classify after expiry = %d, want %d", got, dropExpired)
	}
}

// BenchmarkForward measures the relay's forwarding path per datagram: batch
// read, lookup and batch send of 1200-byte datagrams over loopback. The
// sender's sendto calls are included; compare with BenchmarkLoopbackBaseline.
func BenchmarkForward(b *testing.B) {
	g := newForwardRig(b, 1200)
	g.round(b, 8)
	b.ReportAllocs()
	b.SetBytes(1200)
	for b.Loop() {
		g.round(b, 1)
	}
}

// BenchmarkForwardBatch8 is BenchmarkForward with eight datagrams per batch;
// ns/op is per datagram.
func BenchmarkForwardBatch8(b *testing.B) {
	g := newForwardRig(b, 1200)
	g.round(b, 8)
	b.ReportAllocs()
	b.SetBytes(1200)
	n := 0
	for b.Loop() {
		if n%8 == 0 {
			g.round(b, 8)
		}
		n++
	}
}

// BenchmarkClassify measures the forwarding decision alone with 100,000
// registered CIDs.
func BenchmarkClassify(b *testing.B) {
	// The clock stands still here, so the per-registration caps (a policy,
	// not a cost) are raised beyond what b.N datagrams need.
	cfg := testConfig()
	cfg.MaxPacketsPerSecond, cfg.MaxBytesPerSecond = 1<<40, 1<<50
	r := newTestConn(b, cfg)
	_, cids := register(b, r, netip.MustParseAddrPort("127.0.0.1:9"), 100000)
	pkts := make([][]byte, 1024)
	for i := range pkts {
		cid := cids[i*97]
		pkts[i] = append([]byte{0x40}, append(cid[:], make([]byte, 1187)...)...)
	}
	now := time.Now().UnixNano()
	src := KeyOf(netip.MustParseAddrPort("127.0.0.1:9"))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A fresh check each time: the source is looked up for every
		// datagram, as for a batch whose datagrams all come from different
		// sources.
		if v, _ := r.classify(pkts[i&1023], &srcCheck{key: src}, now); v != forward {
			b.Fatal("not forwarded")
		}
		i++
	}
}

// BenchmarkLoopbackBaseline is the floor for BenchmarkForward: the same
// sender, one plain recvfrom and one plain sendto per datagram, no lookup.
func BenchmarkLoopbackBaseline(b *testing.B) {
	g := newForwardRig(b, 1200)
	sink := g.sink.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, 1500)
	b.ReportAllocs()
	b.SetBytes(1200)
	for b.Loop() {
		if _, err := g.sender.WriteToUDPAddrPort(g.pkt, g.to); err != nil {
			b.Fatal(err)
		}
		n, _, err := g.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := g.sock.WriteToUDPAddrPort(buf[:n], sink); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzRelayDatagram feeds arbitrary datagrams to the relay's forwarding
// decision and batch routing: nothing may panic, a datagram is forwarded
// only for a registered CID, and everything else is kept for quic-go or
// dropped and counted.
//
// The batch takes the real path: the registered sender sends the datagram
// twice to the relay's socket, the relay reads both with recvmmsg (so route
// sees real source addresses), and what it forwards or answers with a
// stateless reset is read back at the sink and at the sender, so that no
// socket buffer fills up over a long run.
func FuzzRelayDatagram(f *testing.F) {
	g := newForwardRig(f, 1200)
	f.Add(g.pkt)
	f.Add([]byte{})
	f.Add([]byte{0x40})
	f.Add(append([]byte{0xc0, 0, 0, 0, 1, 12}, g.pkt[1:13]...))
	f.Add(append([]byte{0xc0, 0, 0, 0, 1, 8}, make([]byte, 40)...))
	f.Add(append([]byte{0xc0, 0, 0, 0, 1, 12}, append(g.pkt[1:13], 12)...))
	f.Add(append([]byte{0x40, 0x80}, make([]byte, 30)...))
	from := g.sender.LocalAddr().(*net.UDPAddr).AddrPort()
	sink := g.sink.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, fuzzMaxDatagram)
	rbuf := make([]byte, 2000)
	f.Fuzz(func(t *testing.T, in []byte) {
		// Longer inputs are cut by copy, not by a branch on the length:
		// such a branch is coverage that only inputs over the limit
		// reach, and the fuzzer then spends its minimization time (60s
		// per input by default, counted as no execs) on an O(n²) search
		// for a shorter input that cannot exist.
		b := buf[:copy(buf, in)]
		v, d := g.c.classify(b, &srcCheck{key: KeyOf(from)}, time.Now().UnixNano())
		if v == forward {
			if d == nil || d.AP != sink {
				t.Fatalf("forwarded to %v", d)
			}
			if len(b) < 1+CIDLen {
				t.Fatal("forwarded a datagram too short for a CID")
			}
		}
		before := g.c.Counters()
		const batch = 2
		for range batch {
			if _, err := g.sender.WriteToUDPAddrPort(b, g.to); err != nil {
				t.Fatal(err)
			}
		}
		g.sock.SetReadDeadline(time.Now().Add(5 * time.Second))
		for done := 0; done < batch; {
			n, err := g.c.io.read(g.ms[:batch-done], 0)
			if err != nil {
				t.Fatal(err)
			}
			done += n
			ms := g.ms[:n]
			k := g.c.route(ms)
			if k < 0 || k > len(ms) {
				t.Fatalf("route kept %d of %d", k, len(ms))
			}
			for i := range k {
				if string(ms[i].Buffers[0][:ms[i].N]) != string(b) {
					t.Fatalf("slot %d kept for quic-go holds %d bytes, not the datagram", i, ms[i].N)
				}
				if a, ok := ms[i].Addr.(*net.UDPAddr); !ok || a.AddrPort() != from {
					t.Fatalf("slot %d kept for quic-go from %v, want %v", i, ms[i].Addr, from)
				}
			}
		}
		after := g.c.Counters()
		fwd, resets, sendErrs := after.Forwarded-before.Forwarded, after.Resets-before.Resets, after.SendErrors-before.SendErrors
		if fwd > 0 && !(v == forward || v == dropRateLimited) {
			t.Fatalf("forwarded %d datagrams that classify says are %d", fwd, v)
		}
		counted := fwd + resets + after.ToServer - before.ToServer +
			after.UnknownCID - before.UnknownCID + after.Expired - before.Expired +
			after.PeerInitial - before.PeerInitial + after.Malformed - before.Malformed +
			after.RateLimited - before.RateLimited + after.StaleCID - before.StaleCID +
			after.UnknownSource - before.UnknownSource + after.RelaySCID - before.RelaySCID
		if sendErrs == 0 && counted != batch {
			t.Fatalf("%d datagrams counted, want %d (%+v -> %+v)", counted, batch, before, after)
		}
		// What was forwarded arrives at the sink unchanged; what was
		// answered with a reset gets a shorter datagram back.
		for range fwd {
			g.sink.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, src, err := g.sink.ReadFromUDPAddrPort(rbuf)
			if err != nil {
				t.Fatalf("a forwarded datagram did not arrive: %v", err)
			}
			if string(rbuf[:n]) != string(b) || src != g.to {
				t.Fatalf("sink got %d bytes from %v, want the %d-byte datagram from %v", n, src, len(b), g.to)
			}
		}
		for range resets {
			g.sender.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, src, err := g.sender.ReadFromUDPAddrPort(rbuf)
			if err != nil {
				t.Fatalf("a stateless reset did not arrive: %v", err)
			}
			if n >= len(b) || n < minResetLen || src != g.to {
				t.Fatalf("reset of %d bytes from %v answers a %d-byte datagram", n, src, len(b))
			}
		}
	})
}

// fuzzMaxDatagram is the longest datagram FuzzRelayDatagram sends: the
// size of the rig's read buffers.
const fuzzMaxDatagram = 1500

// TestForwardSegments forwards runs of datagrams for one destination, which
// the relay sends as UDP GSO messages where the kernel allows: every
// datagram must arrive whole, in order, with its own length.
func TestForwardSegments(t *testing.T) {
	g := newForwardRig(t, 1200)
	sizes := []int{1200, 1200, 1200, 700, 1200, 1200, 13, 1200}
	sent := make([][]byte, len(sizes))
	for i, n := range sizes {
		p := make([]byte, n)
		copy(p, g.pkt[:1+CIDLen])
		for j := 1 + CIDLen; j < n; j++ {
			p[j] = byte(i*31 + j)
		}
		sent[i] = p
		if _, err := g.sender.WriteToUDPAddrPort(p, g.to); err != nil {
			t.Fatal(err)
		}
	}
	for done := 0; done < len(sizes); {
		k, err := g.c.io.read(g.ms, 0)
		if err != nil {
			t.Fatal(err)
		}
		done += k
		if kept := g.c.route(g.ms[:k]); kept != 0 {
			t.Fatalf("%d datagrams kept for quic-go, want 0", kept)
		}
	}
	buf := make([]byte, 2000)
	g.sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i, want := range sent {
		n, _, err := g.sink.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if string(buf[:n]) != string(want) {
			t.Fatalf("datagram %d: got %d bytes, want %d (contents differ: %v)", i, n, len(want), n == len(want))
		}
	}
	if st := g.c.Counters(); st.Forwarded != uint64(len(sizes)) {
		t.Fatalf("Forwarded = %d, want %d", st.Forwarded, len(sizes))
	}
	t.Logf("UDP GSO in use: %v", g.c.io.usesGSO())
}

// TestForwardSourceRule: in one batch, datagrams for a registered CID from
// the registered sender are forwarded and those from an unregistered socket
// are dropped (unknown_source), whatever their order.
func TestForwardSourceRule(t *testing.T) {
	g := newForwardRig(t, 200)
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	for _, c := range []*net.UDPConn{g.sender, stranger, stranger, g.sender, stranger, g.sender, g.sender, stranger} {
		if _, err := c.WriteToUDPAddrPort(g.pkt, g.to); err != nil {
			t.Fatal(err)
		}
	}
	for done := 0; done < 8; {
		k, err := g.c.io.read(g.ms, 0)
		if err != nil {
			t.Fatal(err)
		}
		done += k
		if n := g.c.route(g.ms[:k]); n != 0 {
			t.Fatalf("%d datagrams kept for quic-go, want 0", n)
		}
	}
	if st := g.c.Counters(); st.Forwarded != 4 || st.UnknownSource != 4 {
		t.Fatalf("forwarded %d, unknown_source %d; want 4 and 4", st.Forwarded, st.UnknownSource)
	}
}

// TestUnknownSourceWakesFollow: a datagram for a registered CID from an
// unregistered address calls Config.Follow with its entry at once, at most
// every followWakeEvery.
func TestUnknownSourceWakesFollow(t *testing.T) {
	follow := make(chan *Entry, 64)
	cfg := testConfig()
	cfg.Follow = func(e *Entry) {
		select {
		case follow <- e:
		default:
		}
	}
	r := newTestConn(t, cfg)
	e, cids := register(t, r, netip.MustParseAddrPort("127.0.0.1:9"), 1)
	pkt := append([]byte{0x40}, append(cids[0][:], make([]byte, 30)...)...)
	moved := KeyOf(netip.MustParseAddrPort("127.0.0.1:10"))
	now := time.Now().UnixNano()
	for i, at := range []int64{now, now + 1e6, now + followWakeEvery + 1} {
		if v, _ := r.classify(pkt, &srcCheck{key: moved}, at); v != dropUnknownSource {
			t.Fatalf("classify = %d, want %d", v, dropUnknownSource)
		}
		select {
		case got := <-follow:
			if i == 1 {
				t.Error("woke the janitor twice within followWakeEvery")
			}
			if got != e {
				t.Error("woke the janitor for another registration")
			}
		default:
			if i != 1 {
				t.Errorf("datagram %d did not wake the janitor", i)
			}
		}
	}
}

// TestSleepDatagrams: a datagram whose first byte is SleepMarker goes to
// Config.Sleep, with its source, whatever bytes 1..12 hold (a sleep
// datagram's look like a relay CID of another run: never a stateless
// reset); without the hook, or from a tunnel, it is dropped as an unknown
// CID.
func TestSleepDatagrams(t *testing.T) {
	sleepy := append([]byte{SleepMarker, 0x81}, make([]byte, 32)...)
	from := netip.MustParseAddrPort("127.0.0.1:9")
	off := newTestConn(t, testConfig())
	now := time.Now().UnixNano()
	if got, _ := off.classify(sleepy, &srcCheck{key: KeyOf(from)}, now); got != dropUnknown {
		t.Fatalf("without a Sleep hook: classify = %d, want %d", got, dropUnknown)
	}
	type got struct {
		b    []byte
		from netip.AddrPort
	}
	ch := make(chan got, 4)
	cfg := testConfig()
	cfg.Sleep = func(b []byte, from netip.AddrPort) { ch <- got{append([]byte(nil), b...), from} }
	g := newForwardRigConfig(t, len(sleepy), cfg)
	if v, _ := g.c.classify(sleepy, &srcCheck{key: KeyOf(from), tunnel: true}, now); v != dropUnknown {
		t.Fatalf("from a tunnel: classify = %d, want %d", v, dropUnknown)
	}
	g.pkt = sleepy
	g.sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n := g.round(t, 1); n != 0 {
		t.Fatalf("%d datagrams left for quic-go, want 0", n)
	}
	select {
	case x := <-ch:
		if string(x.b) != string(sleepy) || x.from != g.sender.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("Sleep got %x from %v", x.b, x.from)
		}
	default:
		t.Fatal("Sleep not called")
	}
	if c := g.c.Counters(); c.Sleep != 1 || c.Resets != 0 {
		t.Fatalf("counters: %d sleep datagrams, %d resets; want 1 and 0", c.Sleep, c.Resets)
	}
}
