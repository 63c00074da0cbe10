//go:build linux

package quicpipe

// The forwarding-loop attacks of docs/RELAY.md ("Forwarding rule"), played
// for real on loopback: an attacker registers a key K0 at a relay from its
// real address, then shakes hands with another relay (or another address of
// the same relay) from a spoofed source, the first relay's address. The
// second relay's answers go to the first, which forwards them by their DCID
// (one of K0's) to the attacker, who thus completes a handshake it could not
// otherwise, and registers a key K whose target is the first relay. Done
// both ways, one datagram for K then bounces between the relays until their
// rate caps run dry. The same works without a spoofed handshake by migrating
// an honest HTTP/3 connection to the spoofed address: the relay's path
// challenge reaches the attacker through the other relay.
//
// The attacker's quic-go transport reads from its real socket and sends the
// datagrams of chosen connections through a raw socket (IP_HDRINCL) with a
// forged source address, which needs root.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/sys/unix"

	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/xdp"
)

// spoofConn is the attacker's socket as quic-go sees it: a plain
// net.PacketConn (so quic-go calls ReadFrom and WriteTo) reading from a real
// UDP socket, and sending what goes to a destination in spoof from the forged
// source given there, through a raw IPv4 socket.
type spoofConn struct {
	udp *net.UDPConn
	raw int
	mu  sync.Mutex
	// spoof maps a destination to the source its datagrams get.
	spoof map[netip.AddrPort]netip.AddrPort
}

func newSpoofConn(t testing.TB) *spoofConn {
	return newSpoofConnIn(t, func(f func() error) error { return f() }, netip.MustParseAddr("127.0.0.1"))
}

// newSpoofConnIn opens the attacker's sockets on addr through do, which runs
// a function in a network namespace (or not).
func newSpoofConnIn(t testing.TB, do func(func() error) error, addr netip.Addr) *spoofConn {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("spoofing a source address needs a raw socket (root)")
	}
	var c *spoofConn
	err := do(func() error {
		udp, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		if err != nil {
			return err
		}
		raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			udp.Close()
			return fmt.Errorf("raw socket: %w", err)
		}
		c = &spoofConn{udp: udp, raw: raw, spoof: make(map[netip.AddrPort]netip.AddrPort)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (c *spoofConn) setSpoof(dst, src netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spoof[dst] = src
}

func (c *spoofConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.udp.ReadFrom(b) }

func (c *spoofConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("spoofConn: not a UDP address")
	}
	dst := netAddrPort(ua.AddrPort())
	c.mu.Lock()
	src, ok := c.spoof[dst]
	c.mu.Unlock()
	if !ok {
		return c.udp.WriteTo(b, addr)
	}
	return len(b), sendSpoofed(c.raw, src, dst, b)
}

// sendSpoofed sends payload as a UDP datagram from src to dst (IPv4) through
// raw socket fd. The kernel fills in the IP header checksum; the UDP
// checksum is left out (zero), which IPv4 allows.
func sendSpoofed(fd int, src, dst netip.AddrPort, payload []byte) error {
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[6] = 0x40 // don't fragment
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
}

func (c *spoofConn) Close() error {
	err := c.udp.Close()
	if c.raw >= 0 {
		unix.Close(c.raw)
		c.raw = -1
	}
	return err
}
func (c *spoofConn) LocalAddr() net.Addr                { return c.udp.LocalAddr() }
func (c *spoofConn) SetDeadline(t time.Time) error      { return c.udp.SetDeadline(t) }
func (c *spoofConn) SetReadDeadline(t time.Time) error  { return c.udp.SetReadDeadline(t) }
func (c *spoofConn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// loopAttacker is one quic-go transport on a spoofConn, its CIDs derived from
// k0 (registered at the relays it attacks through).
type loopAttacker struct {
	sc *spoofConn
	tr *quic.Transport
	k0 []byte
}

func newLoopAttacker(t testing.TB) *loopAttacker {
	t.Helper()
	return newLoopAttackerOn(t, newSpoofConn(t))
}

func newLoopAttackerOn(t testing.TB, sc *spoofConn) *loopAttacker {
	t.Helper()
	k0 := newCIDKey()
	gen, err := newCIDGenerator(k0)
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: sc, ConnectionIDLength: CIDLen, ConnectionIDGenerator: gen}
	t.Cleanup(func() { tr.Close() })
	return &loopAttacker{sc: sc, tr: tr, k0: k0}
}

// client returns an HTTP/3 client for the registration API of the relay at
// addr, over one connection of the attacker's transport.
func (a *loopAttacker) client(t testing.TB, addr netip.AddrPort, relayKey ed25519.PublicKey) (*http.Client, func()) {
	t.Helper()
	tlsConf, err := ClientTLSConfig(nil, relayKey, http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	rt := &http3.Transport{
		TLSClientConfig: http3.ConfigureTLSConfig(tlsConf),
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: 2 * time.Second, KeepAlivePeriod: 100 * time.Millisecond},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return a.tr.Dial(ctx, net.UDPAddrFromAddrPort(addr), tlsCfg, cfg)
		},
	}
	return &http.Client{Transport: rt, Timeout: 3 * time.Second}, func() { rt.Close() }
}

// register POSTs a registration of key with num CIDs.
func loopRegister(c *http.Client, key []byte, num int64) error {
	req, err := http.NewRequest(http.MethodPost, "https://quicpipe"+registerPath, bytes.NewReader(regBody(key, 1, num)))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("register: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// loopRelay is a relay of these tests.
type loopRelay struct {
	r    *Relay
	id   ed25519.PrivateKey
	addr netip.AddrPort // where clients reach it
}

func startLoopRelay(t testing.TB, listen string, reach netip.Addr, cfg RelayConfig) *loopRelay {
	t.Helper()
	cfg.Identity = GenerateIdentity()
	cfg.Logger = testLogger(t)
	r, err := ListenRelay(listen, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, r, nil)
	return &loopRelay{r: r, id: cfg.Identity, addr: netip.AddrPortFrom(reach, uint16(r.udpAddr().Port))}
}

func (l *loopRelay) key() ed25519.PublicKey { return l.id.Public().(ed25519.PublicKey) }

// spoofedRegister has the attacker register key at relay dst over a
// handshake whose source is spoofed as from: the replies reach the attacker
// only if some relay forwards them to it. It reports whether the
// registration went through.
func (a *loopAttacker) spoofedRegister(t testing.TB, dst *loopRelay, from netip.AddrPort, key []byte) error {
	t.Helper()
	a.sc.setSpoof(dst.addr, from)
	c, done := a.client(t, dst.addr, dst.key())
	defer done()
	return loopRegister(c, key, 8)
}

// injectAndCount sends one datagram for the first CID of key to relay to and
// returns how many datagrams the relays forwarded in the next second.
func injectAndCount(t testing.TB, key []byte, to netip.AddrPort, relays ...*loopRelay) uint64 {
	t.Helper()
	src, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	return injectFromAndCount(t, src, key, to, relays...)
}

// injectFromAndCount is injectAndCount from src; with XDP, what the
// programs forwarded counts too.
func injectFromAndCount(t testing.TB, src *net.UDPConn, key []byte, to netip.AddrPort, relays ...*loopRelay) uint64 {
	t.Helper()
	// The injector is a registered peer at the first relay, as an
	// attacker can always be.
	if _, _, _, err := relays[0].r.register(newCIDKey(), 1, 1, src.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	sum := func() (n uint64) {
		for _, l := range relays {
			st := l.r.Stats()
			n += st.Forwarded + xdpStat(st, "forwarded_ipv4") + xdpStat(st, "forwarded_ipv6")
		}
		return n
	}
	before := sum()
	cid, _ := DeriveCID(key, 1)
	pkt := append([]byte{0x40}, append(cid[:], make([]byte, 1187)...)...)
	if _, err := src.WriteToUDPAddrPort(pkt, to); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	return sum() - before
}

// TestForwardingLoopTwoRelays plays the spoofed-handshake attack against two
// relays on loopback. Before the forwarding rule, one datagram became
// hundreds of thousands; now the spoofed handshakes never complete (the
// relays do not forward each other's handshake packets) and the datagram is
// not forwarded at all.
func TestForwardingLoopTwoRelays(t *testing.T) {
	r1 := startLoopRelay(t, "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"), RelayConfig{})
	r2 := startLoopRelay(t, "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"), RelayConfig{})
	a := newLoopAttacker(t)
	for _, r := range []*loopRelay{r1, r2} {
		c, done := a.client(t, r.addr, r.key())
		if err := loopRegister(c, a.k0, 2048); err != nil {
			t.Fatalf("registering K0 at %v from the attacker's real address: %v", r.addr, err)
		}
		done()
	}
	k := newCIDKey()
	err2 := a.spoofedRegister(t, r2, r1.addr, k)
	err1 := a.spoofedRegister(t, r1, r2.addr, k)
	t.Logf("registration of K at R2 spoofed from R1: %v; at R1 spoofed from R2: %v", err2, err1)
	fwd := injectAndCount(t, k, r2.addr, r2, r1)
	t.Logf("one datagram for K became %d forwarded datagrams in 1s (R1 %+v, R2 %+v)", fwd,
		r1.r.Stats().Dropped, r2.r.Stats().Dropped)
	if err1 == nil || err2 == nil {
		t.Errorf("a spoofed handshake completed through the other relay's forwarding")
	}
	if fwd > 0 {
		t.Errorf("the injected datagram was forwarded %d times, want 0", fwd)
	}
	for _, r := range []*loopRelay{r1, r2} {
		if st := r.r.Stats(); st.Dropped["unknown_source"]+st.Dropped["relay_scid"] == 0 {
			t.Errorf("relay %v counted no unknown_source or relay_scid drop: %v", r.addr, st.Dropped)
		}
	}
}

// TestForwardingLoopOneRelayTwoAddresses plays the attack against one relay
// reachable at two addresses on one port: the attacker registers K with the
// relay's second address as the target, so that the relay forwards K's
// packets to itself. Such a target is refused, whatever route leads to it.
func TestForwardingLoopOneRelayTwoAddresses(t *testing.T) {
	r := startLoopRelay(t, "0.0.0.0:0", netip.MustParseAddr("127.0.0.1"), RelayConfig{AllowPrivateTargets: true})
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), r.addr.Port())
	a := newLoopAttacker(t)
	c, done := a.client(t, r.addr, r.key())
	if err := loopRegister(c, a.k0, 2048); err != nil {
		t.Fatalf("registering K0 from the attacker's real address: %v", err)
	}
	done()
	k := newCIDKey()
	err := a.spoofedRegister(t, r, other, k)
	t.Logf("registration of K spoofed from the relay's other address %v: %v", other, err)
	fwd := injectAndCount(t, k, r.addr, r)
	t.Logf("one datagram for K became %d forwarded datagrams in 1s (%v)", fwd, r.r.Stats().Dropped)
	if err == nil {
		t.Errorf("a registration whose target is the relay's own address went through")
	}
	if fwd > 0 {
		t.Errorf("the injected datagram was forwarded %d times, want 0", fwd)
	}
	// However the relay came to see that address, it refuses it as a
	// target.
	if _, _, code, err := r.r.register(newCIDKey(), 1, 1, net.UDPAddrFromAddrPort(other), nil); code != "target" {
		t.Errorf("registering %v as a target: code %q (%v), want \"target\"", other, code, err)
	}
}

// TestForwardingLoopMigration plays the attack without a spoofed handshake:
// the attacker's honest HTTP/3 connections to two relays, each holding the
// registrations of K0 and K, move to a spoofed source (the other relay's
// address). quic-go validates the new path with a PATH_CHALLENGE sent to
// that address, which the other relay used to forward to the attacker; then
// the relay followed its connection and K forwarded from relay to relay.
func TestForwardingLoopMigration(t *testing.T) {
	r1 := startLoopRelay(t, "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"), RelayConfig{})
	r2 := startLoopRelay(t, "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"), RelayConfig{})
	a := newLoopAttacker(t)
	k := newCIDKey()
	for _, r := range []*loopRelay{r1, r2} {
		c, done := a.client(t, r.addr, r.key())
		defer done()
		for _, key := range [][]byte{a.k0, k} {
			if err := loopRegister(c, key, 2048); err != nil {
				t.Fatalf("registering at %v: %v", r.addr, err)
			}
		}
	}
	// From now on the connections' packets leave from the other relay's
	// address; their keep-alives make quic-go probe the new path.
	a.sc.setSpoof(r1.addr, r2.addr)
	a.sc.setSpoof(r2.addr, r1.addr)
	moved := func() bool {
		r1.r.regMu.Lock()
		defer r1.r.regMu.Unlock()
		r2.r.regMu.Lock()
		defer r2.r.regMu.Unlock()
		g1, g2 := r1.r.regs.get(string(k)), r2.r.regs.get(string(k))
		return g1 != nil && g2 != nil && g1.Dest().AP == r2.addr && g2.Dest().AP == r1.addr
	}
	deadline := time.Now().Add(4 * time.Second)
	for !moved() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	loop := moved()
	fwd := injectAndCount(t, k, r2.addr, r2, r1)
	t.Logf("registrations followed to the other relay: %v; one datagram for K became %d forwarded datagrams in 1s", loop, fwd)
	if loop {
		t.Errorf("the relays' registrations of K followed a migration to each other's address")
	}
	// R2 forwards it once, to the attacker's real address.
	if fwd > 1 {
		t.Errorf("the injected datagram was forwarded %d times, want at most 1", fwd)
	}
}

// startXDPRelayIn runs a relay on addr:xdpRelayPort in namespace ns of an
// xdpLab, with its XDP program (generic mode) on dev.
func startXDPRelayIn(t testing.TB, ns xdpNetns, dev string, addr netip.Addr, cfg RelayConfig) *loopRelay {
	t.Helper()
	cfg.Identity = GenerateIdentity()
	cfg.Logger = testLogger(t)
	cfg.FastPath = xdpFastPath(dev, xdp.ModeGeneric)
	var r *Relay
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, xdpRelayPort)))
		if err != nil {
			return err
		}
		if r, err = NewRelay(c, &cfg); err != nil {
			c.Close()
			return err
		}
		r.ownConn = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, r, nil)
	return &loopRelay{r: r, id: cfg.Identity, addr: netip.AddrPortFrom(addr, xdpRelayPort)}
}

// TestForwardingLoopXDP plays the spoofed-handshake attack against two
// relays whose XDP programs forward in the kernel, each relay in its own
// namespace of the XDP lab (R1 in R on r0, R2 in B on b0; the attacker in
// A). Before the forwarding rule, each datagram the userspace relays let
// through bounced ~63 times (its TTL) in the kernels; now the handshake
// fails and the injected datagram is not forwarded at all.
func TestForwardingLoopXDP(t *testing.T) {
	xdpSkipUnlessAble(t)
	lab := newXDPLab(t, xdp.ModeGeneric)
	lab.g.exec(t, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	fam := xdpFamilies[0]
	r1 := startXDPRelayIn(t, lab.r, "r0", fam.r, RelayConfig{})
	r2 := startXDPRelayIn(t, lab.b, "b0", fam.b, RelayConfig{})
	a := newLoopAttackerOn(t, newSpoofConnIn(t, lab.a.Do, fam.a))
	for _, r := range []*loopRelay{r1, r2} {
		c, done := a.client(t, r.addr, r.key())
		if err := loopRegister(c, a.k0, 2048); err != nil {
			t.Fatalf("registering K0 at %v from the attacker's real address: %v", r.addr, err)
		}
		done()
	}
	k := newCIDKey()
	err2 := a.spoofedRegister(t, r2, r1.addr, k)
	err1 := a.spoofedRegister(t, r1, r2.addr, k)
	t.Logf("registration of K at R2 spoofed from R1: %v; at R1 spoofed from R2: %v", err2, err1)
	src := lab.a.listenUDP(t, netip.AddrPortFrom(fam.a, 0))
	if _, _, _, err := r1.r.register(newCIDKey(), 1, 1, src.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	fwd := injectFromAndCount(t, src, k, r2.addr, r2, r1)
	s1, s2 := r1.r.Stats(), r2.r.Stats()
	t.Logf("one datagram for K became %d forwarded datagrams in 1s\nR1 userspace %d, program %v\nR2 userspace %d, program %v",
		fwd, s1.Forwarded, s1.XDP, s2.Forwarded, s2.XDP)
	if err1 == nil || err2 == nil {
		t.Errorf("a spoofed handshake completed through the other relay's forwarding")
	}
	if fwd > 0 {
		t.Errorf("the injected datagram was forwarded %d times, want 0", fwd)
	}
}

// TestRelayXDPRateCap sends 30,000 datagrams per second for 2 s to one
// registration of a relay capped at 1,000 per second, with its XDP program
// on: what the program and userspace forward together stays within the cap
// and its one-second burst.
func TestRelayXDPRateCap(t *testing.T) {
	xdpSkipUnlessAble(t)
	lab := newXDPLab(t, xdp.ModeGeneric)
	fam := xdpFamilies[0]
	const pps = 1000
	r, _ := lab.startRelay(t, fam.r, RelayConfig{Identity: GenerateIdentity(), MaxPacketsPerSecond: pps}, true)
	recv := lab.b.listenUDP(t, netip.AddrPortFrom(fam.b, 0))
	key := newCIDKey()
	if _, _, _, err := r.register(key, 1, 1, recv.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	var send *net.UDPConn
	err := lab.a.Do(func() (err error) {
		send, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.a, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.r, xdpRelayPort)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	if _, _, _, err := r.register(newCIDKey(), 1, 1, send.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	cid, _ := DeriveCID(key, 1)
	pkt := append([]byte{0x40}, append(cid[:], make([]byte, 1187)...)...)
	// 300 datagrams every 10 ms for 2 s.
	start := time.Now()
	sent := 0
	for i := range 200 {
		for range 300 {
			if _, err := send.Write(pkt); err == nil {
				sent++
			}
		}
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * 10 * time.Millisecond)))
	}
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	st := r.Stats()
	fwd := st.Forwarded + xdpStat(st, fam.forwarded)
	limit := uint64(pps*elapsed.Seconds()) + pps + 20
	t.Logf("sent %d in %v at a cap of %d/s: forwarded %d (program %d, userspace %d); dropped by the program %d, by userspace %v",
		sent, elapsed.Round(time.Millisecond), pps, fwd, xdpStat(st, fam.forwarded), st.Forwarded,
		xdpStat(st, "rate_limit"), st.Dropped["rate_limit"])
	if fwd > limit {
		t.Errorf("forwarded %d datagrams, want at most %d", fwd, limit)
	}
	if fwd < pps {
		t.Errorf("forwarded %d datagrams, want at least the burst of %d", fwd, pps)
	}
}

// TestTargetOnRelayHost: a relay refuses as a target any address of its
// host on its own port: its interface addresses, read in the relay's network
// namespace (also when they change, at the next refresh), and any loopback
// address. The same addresses on other ports are ordinary targets.
func TestTargetOnRelayHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	ns := netlab.New(t).NS("h")
	ns.Run("ip", "link", "set", "lo", "up")
	ns.Run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.Run("ip", "addr", "add", "10.99.0.1/24", "dev", "d0")
	ns.Run("ip", "link", "set", "d0", "up")
	var r *Relay
	err := ns.Do(func() (err error) {
		r, err = ListenRelay("0.0.0.0:4433", &RelayConfig{Identity: GenerateIdentity(), AllowPrivateTargets: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	try := func(target string) string {
		t.Helper()
		_, _, code, _ := r.register(newCIDKey(), 1, 1, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(target)), nil)
		return code
	}
	for _, tc := range []struct{ target, code string }{
		{"10.99.0.1:4433", "target"},
		{"127.0.0.2:4433", "target"},
		{"10.99.0.1:4434", ""},
		{"10.99.0.9:4433", ""},
	} {
		if got := try(tc.target); got != tc.code {
			t.Errorf("target %s: code %q, want %q", tc.target, got, tc.code)
		}
	}
	// An address added later counts after the next refresh, which reads
	// the relay's namespace whatever thread it runs on.
	ns.Run("ip", "addr", "add", "10.99.0.2/24", "dev", "d0")
	r.locals.refresh()
	if got := try("10.99.0.2:4433"); got != "target" {
		t.Errorf("target on an address added later: code %q, want \"target\"", got)
	}
}

// TestWakeFollow: the forwarding engine's follow hook (its side is
// forward's TestUnknownSourceWakesFollow) hands the janitor the registration
// whose entry it is given, without blocking when the janitor is busy.
func TestWakeFollow(t *testing.T) {
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // not served: nothing reads r.follow but this test
	key := newCIDKey()
	if _, _, _, err := r.register(key, 1, 1, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}, nil); err != nil {
		t.Fatal(err)
	}
	cid, _ := DeriveCID(key, 1)
	e := r.table.Lookup(cid[:])
	r.wakeFollow(e)
	select {
	case reg := <-r.follow:
		if reg.key != string(key) {
			t.Error("woke the janitor for another registration")
		}
	default:
		t.Error("the follow hook did not wake the janitor")
	}
	for range cap(r.follow) + 1 {
		r.wakeFollow(e) // never blocks, even with the channel full
	}
}
