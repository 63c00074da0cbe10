package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
)

// pathWatch records the path changes of one peer's connections.
type pathWatch struct {
	mu     sync.Mutex
	events []PathInfo
	signal chan struct{}
}

func newPathWatch() *pathWatch { return &pathWatch{signal: make(chan struct{}, 1)} }

func (w *pathWatch) record(_ *quic.Conn, p PathInfo) {
	w.mu.Lock()
	w.events = append(w.events, p)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// wait waits until the latest event satisfies ok, and returns it.
func (w *pathWatch) wait(ctx context.Context, ok func(PathInfo) bool) (PathInfo, error) {
	for {
		w.mu.Lock()
		var last PathInfo
		n := len(w.events)
		if n > 0 {
			last = w.events[n-1]
		}
		w.mu.Unlock()
		if n > 0 && ok(last) {
			return last, nil
		}
		select {
		case <-w.signal:
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for a path change (last %+v after %d changes): %w", last, n, ctx.Err())
		}
	}
}

func isDirect(p PathInfo) bool  { return p.Kind == PathDirect }
func isRelayed(p PathInfo) bool { return p.Kind == PathRelayed }

// directPeers are a Dialer and an Accepter with direct paths on, and one
// connection between them.
type directPeers struct {
	d           *Dialer
	a           *Accepter
	dc, ac      *quic.Conn
	dw, aw      *pathWatch
	established time.Time
}

// dialDirect connects a new Dialer and Accepter with direct paths on.
// dcfg and acfg (either may be nil) complete their configurations. The
// first flight reaches the accepter flightDelay after the dialer hands it
// over.
func dialDirect(t testing.TB, ctx context.Context, relayAddr string, relayID, aID, bID ed25519.PrivateKey, dcfg, acfg *Config, flightDelay time.Duration) *directPeers {
	t.Helper()
	p := &directPeers{dw: newPathWatch(), aw: newPathWatch()}
	base := func(c *Config, id ed25519.PrivateKey, w *pathWatch) *Config {
		var out Config
		if c != nil {
			out = *c
		}
		out.RelayAddr = relayAddr
		out.RelayKey = relayID.Public().(ed25519.PublicKey)
		out.Identity = id
		out.OnPathChange = w.record
		if out.Logger == nil {
			out.Logger = testLogger(t)
		}
		return &out
	}
	ac := base(acfg, bID, p.aw)
	ac.TrustedPeers = []ed25519.PublicKey{aID.Public().(ed25519.PublicKey)}
	d, a := newEndpoints(t, ctx, ac, base(dcfg, aID, p.dw))
	dc, accepted := dialAccept(t, ctx, d, a, bID.Public().(ed25519.PublicKey), nil, flightDelay)
	p.established = time.Now()
	p.ac = accepted
	p.d, p.a, p.dc = d, a, dc
	return p
}

// waitDirect waits until both sides use a direct path and returns the
// dialer's.
func (p *directPeers) waitDirect(t testing.TB, ctx context.Context) PathInfo {
	t.Helper()
	dp, err := p.dw.wait(ctx, isDirect)
	if err != nil {
		t.Fatalf("dialer: %v (stats %+v)", err, p.d.DirectStats())
	}
	if _, err := p.aw.wait(ctx, isDirect); err != nil {
		t.Fatalf("accepter: %v (stats %+v)", err, p.a.DirectStats())
	}
	return dp
}

// transfer sends size bytes from the dialer to the accepter on a new
// stream and checks their SHA-256 on arrival. during, if not nil, runs
// once the first half is on its way.
func transfer(ctx context.Context, dc, ac *quic.Conn, size int, during func()) error {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i*131 + i>>11)
	}
	want := sha256.Sum256(payload)
	got := make(chan error, 1)
	go func() {
		s, err := ac.AcceptStream(ctx)
		if err != nil {
			got <- err
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, s)
		if err != nil {
			got <- err
			return
		}
		if n != int64(size) || [32]byte(h.Sum(nil)) != want {
			got <- fmt.Errorf("received %d of %d bytes, SHA-256 match %v", n, size, [32]byte(h.Sum(nil)) == want)
			return
		}
		s.Write([]byte{1}) // receipt
		s.Close()
		got <- nil
	}()
	s, err := dc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	half := size / 2
	if _, err := s.Write(payload[:half]); err != nil {
		return err
	}
	if during != nil {
		during()
	}
	if _, err := s.Write(payload[half:]); err != nil {
		return err
	}
	s.Close()
	if err := <-got; err != nil {
		return err
	}
	var receipt [1]byte
	if _, err := io.ReadFull(s, receipt[:]); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	return nil
}

// TestDirectLoopback connects two peers on this host through a relay on
// loopback: the relay-observed address is a working direct path, and the
// connection must move onto it and carry a transfer without the relay.
func TestDirectLoopback(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newTestEnv(t, tc.listen, nil)
			p := dialDirect(t, ctx, e.relay.Addr().String(), e.relayID, e.aID, e.bID, nil, nil, 0)
			dp := p.waitDirect(t, ctx)
			t.Logf("direct after %v: %+v", time.Since(p.established).Round(time.Millisecond), dp)
			if want := netAddrPort(p.a.Registration().Observed); dp.Remote != want {
				t.Errorf("dialer's direct path goes to %v, want the accepter's address %v", dp.Remote, want)
			}
			if info, ok := p.d.Path(p.dc); !ok || info.Kind != PathDirect {
				t.Errorf("Dialer.Path = %+v, %v; want direct", info, ok)
			}
			before := e.relay.Stats().Forwarded
			const size = 4 << 20
			if err := transfer(ctx, p.dc, p.ac, size, nil); err != nil {
				t.Fatal(err)
			}
			if fwd := e.relay.Stats().Forwarded - before; fwd > 100 {
				t.Errorf("the relay forwarded %d datagrams during a direct transfer", fwd)
			}
			// The application never sees the path machinery: no stream
			// or datagram of ours reaches it.
			actx, acancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer acancel()
			if s, err := p.ac.AcceptStream(actx); err == nil {
				t.Errorf("unexpected stream %d", s.StreamID())
			}
			ds, as := p.d.DirectStats(), p.a.DirectStats()
			t.Logf("dialer %+v; accepter %+v", ds, as)
			if ds.PunchSuccesses < 1 || as.PunchSuccesses < 1 || ds.Fallbacks != 0 {
				t.Errorf("stats: dialer %+v, accepter %+v", ds, as)
			}
			if ra := p.dc.RemoteAddr().(*net.UDPAddr).AddrPort(); netAddrPort(ra) != netAddrPort(e.relay.Addr().AddrPort()) {
				t.Errorf("quic-go's remote address is %v, want the relay's", ra)
			}
		})
	}
}

// TestDirectDisabled checks that DisableDirect keeps a connection on the
// relay and sends no control datagrams.
func TestDirectDisabled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	off := &Config{DisableDirect: true}
	p := dialDirect(t, ctx, e.relay.Addr().String(), e.relayID, e.aID, e.bID, off, off, 0)
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.d.Path(p.dc); ok {
		t.Error("Dialer.Path reports a managed path with direct paths off")
	}
	if st := p.d.DirectStats(); st != (DirectStats{}) {
		t.Errorf("stats with direct paths off: %+v", st)
	}
	if fwd := e.relay.Stats().Forwarded; fwd < (1<<20)/1300 {
		t.Errorf("the relay forwarded only %d datagrams", fwd)
	}
}

// dialOneSideDisabled connects a dialer with direct paths on (fast punch
// rounds) to an accepter with them off.
func dialOneSideDisabled(t *testing.T, ctx context.Context) *directPeers {
	t.Helper()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	fast := defaultDirectTiming
	fast.pingsPerCand, fast.retryMin = 4, 200*time.Millisecond
	p := dialDirect(t, ctx, e.relay.Addr().String(), e.relayID, e.aID, e.bID,
		&Config{directTiming: &fast}, &Config{DisableDirect: true}, 0)
	return p
}

// TestDirectOneSideDisabled: a peer with direct paths on facing one with
// them off stays relayed and keeps working.
func TestDirectOneSideDisabled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := dialOneSideDisabled(t, ctx)
	for p.d.DirectStats().PunchAttempts < 2 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	// PathRelayed is the zero Kind: ok tells a relayed path from none.
	if info, ok := p.d.Path(p.dc); !ok || info.Kind != PathRelayed {
		t.Errorf("Dialer.Path = %+v, %v; want relayed", info, ok)
	}
	if st := p.d.DirectStats(); st.PunchAttempts < 2 || st.PunchSuccesses != 0 {
		t.Errorf("stats %+v: want retried rounds and no success", st)
	}
}

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
	pc := &peerConn{relayUDP: net.UDPAddrFromAddrPort(relay), ctrl: make(chan ctrlPacket, 8)}
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

// TestControlMessages checks the sealing, authentication and encoding of
// control datagrams.
func TestControlMessages(t *testing.T) {
	m := make([]byte, 72)
	for i := range m {
		m[i] = byte(i)
	}
	client, err := pathKeysFrom(m, true)
	if err != nil {
		t.Fatal(err)
	}
	server, _ := pathKeysFrom(m, false)
	other, _ := pathKeysFrom(append([]byte{99}, m[1:]...), false)

	cands := candidatesMsg{round: 7, ack: 3, needAck: true, cands: []candidate{
		{candObserved, netip.MustParseAddrPort("203.0.113.9:4000")},
		{candLocal, netip.MustParseAddrPort("[2001:db8::1]:4000")},
	}}
	dcid := CID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	pkt := client.seal(dcid[:], cands.marshal())
	if !isCtrl(pkt) || string(pkt[1:13]) != string(dcid[:]) {
		t.Fatalf("header %x", pkt[:13])
	}
	if tag, ok := ctrlTag(pkt); !ok || tag != server.tag {
		t.Fatalf("tag %x, want %x", tag, server.tag)
	}
	body, err := server.open(pkt)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseBody(body)
	if err != nil {
		t.Fatal(err)
	}
	if g := got.(*candidatesMsg); fmt.Sprint(*g) != fmt.Sprint(cands) {
		t.Errorf("candidates %+v, want %+v", *g, cands)
	}
	// The sender cannot open its own message (a reflected probe), nor a
	// peer of another session, and no bit may change.
	if _, err := client.open(pkt); err == nil {
		t.Error("a side opened its own message")
	}
	if _, err := other.open(pkt); err == nil {
		t.Error("another session's keys opened the message")
	}
	for i := range pkt {
		bad := append([]byte(nil), pkt...)
		bad[i] ^= 0x01
		if _, err := server.open(bad); err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
	}
	ping := probeMsg{typ: msgPing, txid: [8]byte{9, 8, 7}, addr: netip.MustParseAddrPort("10.0.0.2:5")}
	body, err = client.open(server.seal(nil, ping.marshal()))
	if err != nil {
		t.Fatal(err)
	}
	if g, err := parseBody(body); err != nil || *g.(*probeMsg) != ping {
		t.Errorf("ping %+v, %v", g, err)
	}
}

// FuzzParseBody feeds arbitrary bodies to the control message parser.
func FuzzParseBody(f *testing.F) {
	f.Add((&probeMsg{typ: msgPong, addr: netip.MustParseAddrPort("1.2.3.4:5")}).marshal())
	f.Add((&candidatesMsg{round: 1, cands: []candidate{{candLocal, netip.MustParseAddrPort("[::1]:9")}}}).marshal())
	f.Add([]byte{msgCandidates, 0, 0, 0, 0, 1, 0, 0, 0, 0, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseBody(b)
		if err != nil {
			if !errors.Is(err, errCtrl) {
				t.Fatalf("error %v", err)
			}
			return
		}
		var again []byte
		switch m := m.(type) {
		case *probeMsg:
			again = m.marshal()
		case *candidatesMsg:
			again = m.marshal()
		}
		if m2, err := parseBody(again); err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
			t.Fatalf("round trip: %v, %v != %v", err, m2, m)
		}
	})
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
	pc := &peerConn{relayUDP: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:4433")), ctrl: make(chan ctrlPacket, 1)}
	ms := quicBatch(8)
	if a := testing.AllocsPerRun(100, func() { pc.sortBatch(ms) }); a != 0 {
		t.Errorf("%v allocations per batch", a)
	}
}

// BenchmarkSortBatch is the direct-path cost on the receive path, per
// batch of 8 datagrams (quic-go's batch size).
func BenchmarkSortBatch(b *testing.B) {
	pc := &peerConn{relayUDP: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:4433")), ctrl: make(chan ctrlPacket, 1)}
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

// TestProbeValidation drives one connection's path state machine with
// crafted control datagrams: a pong counts only for a ping of ours and from
// where it went, a ping is answered once (a replay is not), and an
// unauthenticated datagram changes nothing.
func TestProbeValidation(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	own, peerSock, other := listen(), listen(), listen()
	relay := netip.MustParseAddrPort("127.0.0.1:9") // never used here
	pc := newPeerConn(own, relay, true)
	m := newDirectManager(pc, relay, func() netip.AddrPort { return netip.AddrPort{} }, nil, &Config{Logger: testLogger(t)})
	defer m.close()
	mat := make([]byte, 72)
	for i := range mat {
		mat[i] = byte(i)
	}
	mine, _ := pathKeysFrom(mat, true)
	theirs, _ := pathKeysFrom(mat, false)
	c := &pathConn{m: m, route: &connRoute{}, keys: mine, pings: make(map[[8]byte]pingRec)}
	peerAddr := peerSock.LocalAddr().(*net.UDPAddr).AddrPort()
	otherAddr := other.LocalAddr().(*net.UDPAddr).AddrPort()
	ownAddr := own.LocalAddr().(*net.UDPAddr).AddrPort()
	now := time.Now()

	readPong := func(s *net.UDPConn) *probeMsg {
		t.Helper()
		buf := make([]byte, 1500)
		s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil
		}
		body, err := theirs.open(buf[:n])
		if err != nil {
			t.Fatalf("answer does not open: %v", err)
		}
		msg, err := parseBody(body)
		if err != nil {
			t.Fatal(err)
		}
		return msg.(*probeMsg)
	}

	// A ping from the peer is answered, with the address it came from.
	ping := (&probeMsg{typ: msgPing, txid: [8]byte{1}, addr: ownAddr}).marshal()
	pkt := theirs.seal(nil, ping)
	c.handle(ctrlPacket{b: pkt, from: peerAddr}, now)
	if p := readPong(peerSock); p == nil || p.typ != msgPong || p.txid != [8]byte{1} || p.addr != peerAddr {
		t.Fatalf("pong %+v", p)
	}
	// The same ping again, even from elsewhere, is a replay.
	c.handle(ctrlPacket{b: pkt, from: otherAddr}, now)
	if p := readPong(other); p != nil {
		t.Errorf("a replayed ping was answered: %+v", p)
	}
	// A ping sealed with our own key (reflected) does not open.
	c.handle(ctrlPacket{b: mine.seal(nil, ping), from: peerAddr}, now)
	if p := readPong(peerSock); p != nil {
		t.Error("a reflected ping was answered")
	}

	// Our ping to the peer: a pong from another address, or with another
	// txid, does not move the connection; the right one does.
	c.targets = []*target{{addr: peerAddr}}
	c.sendPing(now, peerAddr, false)
	var id [8]byte
	for k := range c.pings {
		id = k
	}
	pong := func(txid [8]byte) []byte {
		return theirs.seal(nil, (&probeMsg{typ: msgPong, txid: txid, addr: ownAddr}).marshal())
	}
	c.handle(ctrlPacket{b: pong(id), from: otherAddr}, now)
	c.handle(ctrlPacket{b: pong([8]byte{9}), from: peerAddr}, now)
	if c.direct != nil || c.route.direct.Load() != nil {
		t.Fatal("moved onto a path by a pong that does not count")
	}
	c.handle(ctrlPacket{b: pong(id), from: peerAddr}, now.Add(time.Millisecond))
	if d := c.route.direct.Load(); d == nil || *d != peerAddr || c.info.Kind != PathDirect {
		t.Fatalf("not moved onto the validated path: route %v, info %+v", d, c.info)
	}
	if st := m.stats(); st.ControlDropped != 1 {
		t.Errorf("stats %+v: want 1 dropped (the reflected ping)", st)
	}
}
