package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// gsoOOB returns a UDP_SEGMENT control message for segments of seg bytes.
func gsoOOB(seg int) []byte {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafeCmsg(oob))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	return oob
}

// sendBurst sends segs, all of one size, to to as one UDP GSO send, as
// quic-go sends a burst: on loopback the relay's GRO socket reads it whole.
func sendBurst(tb testing.TB, from *net.UDPConn, to netip.AddrPort, buf []byte, oob []byte) {
	if _, _, err := from.WriteMsgUDPAddrPort(buf, oob, to); err != nil {
		tb.Fatal(err)
	}
}

func newGRORig(tb testing.TB) *forwardRig {
	cfg := testConfig()
	cfg.GRO = true
	g := newForwardRigConfig(tb, 1200, cfg)
	if !g.c.io.gro || !g.c.io.gso {
		tb.Skip("the kernel offers no UDP_GRO or UDP_SEGMENT on this socket")
	}
	return g
}

// ownPacket returns a 1200-byte datagram for the relay's own CID, of this
// run, numbered i.
func ownPacket(c *Conn, i int) []byte {
	b := make([]byte, 1200)
	b[0] = 0x40
	b[1] = 0x80
	copy(b[2:5], c.epoch[:])
	binary.BigEndian.PutUint32(b[20:], uint32(i))
	return b
}

// TestGROForwardsWhole sends a burst of 16 datagrams for one registered
// destination as one GSO send: the relay reads it as one message (GRO),
// forwards all 16, and the sink receives each unchanged.
func TestGROForwardsWhole(t *testing.T) {
	g := newGRORig(t)
	burst := bytes.Repeat(g.pkt, 16)
	sendBurst(t, g.sender, g.to, burst, gsoOOB(len(g.pkt)))
	g.sock.SetReadDeadline(time.Now().Add(2 * time.Second))
	g.c.growGRO(len(g.ms))
	n, err := g.c.io.read(g.c.gms[:len(g.ms)], 0)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || g.c.gms[0].N != len(burst) || g.c.io.segSize(&g.c.gms[0]) != len(g.pkt) {
		t.Fatalf("read %d messages, the first of %d bytes in segments of %d; want one of %d in segments of %d",
			n, g.c.gms[0].N, g.c.io.segSize(&g.c.gms[0]), len(burst), len(g.pkt))
	}
	g.c.routeSegs(g.c.gms[:n])
	if got := g.c.Counters(); got.Forwarded != 16 || got.SendErrors != 0 || len(g.c.kept) != 0 {
		t.Fatalf("forwarded %d, send errors %d, kept %d; want 16, 0, 0", got.Forwarded, got.SendErrors, len(g.c.kept))
	}
	g.sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 70000)
	for i := range 16 {
		n, _, err := g.sink.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], g.pkt) {
			t.Fatalf("datagram %d: %d bytes, differs from the one sent", i, n)
		}
	}
}

// TestGROSplitsForServer sends one burst that mixes datagrams for a peer and
// for the relay's own server: the peer's are forwarded, the server's reach
// quic-go one per message, in order, from the sender's address, the ones
// that do not fit in quic-go's batch at its next ReadBatch.
func TestGROSplitsForServer(t *testing.T) {
	g := newGRORig(t)
	var burst []byte
	const total, own = 24, 12
	for i := range total {
		if i%2 == 0 {
			burst = append(burst, ownPacket(g.c, i/2)...)
		} else {
			burst = append(burst, g.pkt...)
		}
	}
	sendBurst(t, g.sender, g.to, burst, gsoOOB(len(g.pkt)))
	g.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var got []int
	for len(got) < own {
		n, err := g.c.ReadBatch(g.ms, 0)
		if err != nil {
			t.Fatalf("after %d datagrams for the server: %v", len(got), err)
		}
		for _, m := range g.ms[:n] {
			if m.N != 1200 || !bytes.Equal(m.Buffers[0][:5], ownPacket(g.c, 0)[:5]) {
				t.Fatalf("quic-go got a %d-byte datagram that is not the relay's", m.N)
			}
			if ua, ok := m.Addr.(*net.UDPAddr); !ok || ua.AddrPort() != g.sender.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Fatalf("quic-go got a datagram from %v, want %v", m.Addr, g.sender.LocalAddr())
			}
			got = append(got, int(binary.BigEndian.Uint32(m.Buffers[0][20:])))
		}
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("quic-go got datagrams %v, want 0 to %d in order", got, own-1)
		}
	}
	if c := g.c.Counters(); c.Forwarded != total-own || c.ToServer != own {
		t.Fatalf("forwarded %d, to server %d; want %d, %d", c.Forwarded, c.ToServer, total-own, own)
	}
}

// TestGRONoAllocs: forwarding GRO reads allocates nothing.
func TestGRONoAllocs(t *testing.T) {
	g := newGRORig(t)
	burst := bytes.Repeat(g.pkt, 8)
	oob := gsoOOB(len(g.pkt))
	g.c.growGRO(len(g.ms))
	round := func() {
		sendBurst(t, g.sender, g.to, burst, oob)
		before := g.c.Counters().Forwarded
		for g.c.Counters().Forwarded < before+8 {
			n, err := g.c.io.read(g.c.gms[:len(g.ms)], 0)
			if err != nil {
				t.Fatal(err)
			}
			g.c.routeSegs(g.c.gms[:n])
		}
	}
	round()
	if allocs := testing.AllocsPerRun(200, round); allocs != 0 {
		t.Fatalf("forwarding a GRO read of 8 datagrams allocated %.1f times, want 0", allocs)
	}
}

// listenReusePort opens a UDP socket on addr with SO_REUSEPORT, closed when
// tb ends.
func listenReusePort(tb testing.TB, addr string) *net.UDPConn {
	tb.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// TestReaders runs a second reader on the relay's port: senders hashed to
// either socket are forwarded, and every datagram for the relay's own server
// reaches the one ReadBatch, with its sender's address.
func TestReaders(t *testing.T) {
	for _, gro := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "gro"}[gro], func(t *testing.T) {
			main := listenReusePort(t, "127.0.0.1:0")
			extra := listenReusePort(t, main.LocalAddr().String())
			cfg := testConfig()
			cfg.GRO = gro
			c, err := NewConn(main, NewTable(), new(Targets), cfg)
			if err != nil {
				t.Fatal(err)
			}
			rd, err := c.NewReader(extra)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- rd.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			sink := listenLoopback(t)
			_, cids := register(t, c, sink.LocalAddr().(*net.UDPAddr).AddrPort(), 1)
			fwd := make([]byte, 1200)
			fwd[0] = 0x40
			copy(fwd[1:], cids[0][:])
			to := main.LocalAddr().(*net.UDPAddr).AddrPort()
			const senders = 32
			from := map[netip.AddrPort]bool{}
			for i := range senders {
				s := listenLoopback(t)
				ap := s.LocalAddr().(*net.UDPAddr).AddrPort()
				register(t, c, ap, 1)
				from[ap] = true
				if _, err := s.WriteToUDPAddrPort(fwd, to); err != nil {
					t.Fatal(err)
				}
				if _, err := s.WriteToUDPAddrPort(ownPacket(c, i), to); err != nil {
					t.Fatal(err)
				}
			}
			ms := make([]ipv4.Message, 8)
			for i := range ms {
				ms[i].Buffers = [][]byte{make([]byte, 1500)}
				ms[i].OOB = make([]byte, 128)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			seen := map[int]bool{}
			for len(seen) < senders {
				n, err := c.ReadBatch(ms, 0)
				if err != nil {
					t.Fatalf("after %d datagrams for the server: %v", len(seen), err)
				}
				for _, m := range ms[:n] {
					ua, _ := m.Addr.(*net.UDPAddr)
					if ua == nil || !from[ua.AddrPort()] {
						t.Fatalf("quic-go got a datagram from %v, not a sender", m.Addr)
					}
					seen[int(binary.BigEndian.Uint32(m.Buffers[0][20:]))] = true
				}
			}
			sink.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 2000)
			for i := range senders {
				if _, _, err := sink.ReadFromUDP(buf); err != nil {
					t.Fatalf("forwarded datagram %d: %v", i, err)
				}
			}
			if c.Datagrams() == 0 || rd.Datagrams() == 0 || c.Datagrams()+rd.Datagrams() != 2*senders {
				t.Fatalf("the main socket read %d datagrams, the extra reader %d; want both some, %d in all",
					c.Datagrams(), rd.Datagrams(), 2*senders)
			}
			t.Logf("main reader %d datagrams, extra reader %d", c.Datagrams(), rd.Datagrams())
		})
	}
}

func unsafeCmsg(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
