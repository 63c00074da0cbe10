package quicpipe

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestPathReason checks that a search for a direct path that ends without
// one is reported once through OnPathChange, with PathInfo.Reason saying
// why, and that retries failing alike are not reported again.
func TestPathReason(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := dialOneSideDisabled(t, ctx)
	info, err := p.dw.wait(ctx, func(p PathInfo) bool { return p.Kind == PathRelayed && p.Reason != "" })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.Reason, "did not take part") || info.Remote != info.Relay {
		t.Errorf("path %+v: want relayed because the other side did not take part", info)
	}
	for p.d.DirectStats().PunchAttempts < 3 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	p.dw.mu.Lock()
	n := len(p.dw.events)
	p.dw.mu.Unlock()
	if n != 1 {
		t.Errorf("%d path changes after %d rounds failing alike, want 1", n, p.d.DirectStats().PunchAttempts)
	}
	if got, _ := p.d.Path(p.dc); got.Reason != info.Reason {
		t.Errorf("Dialer.Path reason %q, want %q", got.Reason, info.Reason)
	}
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
	m := newDirectManager(pc, relay, func() netip.AddrPort { return netip.AddrPort{} }, nil, &Config{Logger: testLogger(t)}, nil)
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
