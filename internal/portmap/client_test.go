package portmap

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePCP is a PCP gateway on a loopback UDP socket: it grants every MAP
// request the internal port plus 1000 for grant seconds, and records the
// lifetimes asked.
type fakePCP struct {
	conn  *net.UDPConn
	grant uint32
	mu    sync.Mutex
	asked []uint32 // lifetimes of the MAP requests
	done  chan struct{}
}

func newFakePCP(t *testing.T, grant uint32) *fakePCP {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakePCP{conn: c, grant: grant, done: make(chan struct{})}
	go g.serve()
	t.Cleanup(func() {
		c.Close()
		<-g.done
	})
	return g
}

func (g *fakePCP) serve() {
	defer close(g.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		req := buf[:n]
		switch {
		case n == 24 && req[0] == 2 && req[1] == 0:
			r := make([]byte, 24)
			r[0], r[1] = 2, 0x80
			g.conn.WriteToUDPAddrPort(r, from)
		case n == 60 && req[0] == 2 && req[1] == 1:
			life := binary.BigEndian.Uint32(req[4:])
			g.mu.Lock()
			g.asked = append(g.asked, life)
			g.mu.Unlock()
			var nonce [12]byte
			copy(nonce[:], req[24:36])
			in := binary.BigEndian.Uint16(req[40:])
			if life > 0 {
				life = g.grant
			}
			// A stray datagram first: counted, ignored.
			g.conn.WriteToUDPAddrPort([]byte{2, 0x81, 0, 0}, from)
			g.conn.WriteToUDPAddrPort(pcpMapReplyBytes(0, nonce, in, netip.AddrPortFrom(netip.MustParseAddr("11.1.0.2"), in+1000), life), from)
		}
	}
}

func (g *fakePCP) lifetimes() []uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint32(nil), g.asked...)
}

func port(c *net.UDPConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) }

// TestClientRenewsAndRemoves maps a port with a PCP gateway that grants 2
// seconds: the Client renews at half the lifetime and removes the mapping
// (a MAP request of lifetime 0) on Close.
func TestClientRenewsAndRemoves(t *testing.T) {
	g := newFakePCP(t, 2)
	c, err := Start(Config{InternalPort: 4000, Gateway: netip.MustParseAddr("127.0.0.1"), Protocols: []Protocol{PCP}, pmpPort: port(g.conn)})
	if err != nil {
		t.Fatal(err)
	}
	<-c.Ready()
	m, ok := c.Mapping()
	if want := netip.MustParseAddrPort("11.1.0.2:5000"); !ok || m.External != want || m.Protocol != PCP {
		t.Fatalf("mapping %+v %v, want %v with PCP", m, ok, want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Renewed < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not renewed twice in 10 s: %+v", c.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	l := g.lifetimes()
	if len(l) < 4 || l[0] != uint32(DefaultLifetime/time.Second) || l[len(l)-1] != 0 {
		t.Errorf("lifetimes asked %v: want the default, renewals, then 0 (removal)", l)
	}
	if st := c.Stats(); st.Mapped != 1 || st.BadReplies < 3 {
		t.Errorf("stats %+v: want one mapping and the stray datagrams counted", st)
	}
	if _, ok := c.Mapping(); ok {
		t.Error("mapping still reported after Close")
	}
}

// TestClientNoGateway probes a gateway that does not answer (a socket
// that reads nothing) and one where nothing listens (ICMP port
// unreachable): the probe ends within its budget, with no mapping.
func TestClientNoGateway(t *testing.T) {
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closed, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	for _, tc := range []struct {
		name string
		port uint16
	}{{"silent", port(silent)}, {"closed", port(closed)}} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c, err := Start(Config{InternalPort: 4000, Gateway: netip.MustParseAddr("127.0.0.1"), pmpPort: tc.port, ssdpPort: tc.port})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case <-c.Ready():
			case <-time.After(5 * time.Second):
				t.Fatal("probe still running after 5 s")
			}
			took := time.Since(start)
			if _, ok := c.Mapping(); ok {
				t.Error("a mapping without a gateway")
			}
			if st := c.Stats(); st.Probes != 1 || st.Failures != 3 {
				t.Errorf("stats %+v: want one probe, three failures", st)
			}
			t.Logf("probe ended after %v", took)
		})
	}
}

// TestProbe probes a PCP gateway that does not speak NAT-PMP or UPnP:
// Probe reports PCP alone, says why the others did not answer, and asks
// for no mapping; a gateway that answers nothing is a result without
// protocols, not an error.
func TestProbe(t *testing.T) {
	g := newFakePCP(t, 60)
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	gw := netip.MustParseAddr("127.0.0.1")
	res, err := Probe(t.Context(), Config{Gateway: gw, pmpPort: port(g.conn), ssdpPort: port(silent)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Gateway != gw || len(res.Protocols) != 1 || res.Protocols[0] != PCP {
		t.Errorf("probe %+v: want PCP alone at %v", res, gw)
	}
	if res.Err == nil || !strings.Contains(res.Err.Error(), "NAT-PMP") || !strings.Contains(res.Err.Error(), "UPnP") {
		t.Errorf("probe error %v: want why NAT-PMP and UPnP did not answer", res.Err)
	}
	if l := g.lifetimes(); len(l) != 0 {
		t.Errorf("the probe asked for mappings of lifetimes %v", l)
	}

	res, err = Probe(t.Context(), Config{Gateway: gw, pmpPort: port(silent), ssdpPort: port(silent)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Protocols) != 0 || res.Err == nil {
		t.Errorf("probe of a silent gateway %+v: want no protocols and why", res)
	}
	if _, err := Probe(t.Context(), Config{Gateway: netip.MustParseAddr("::1")}); err == nil {
		t.Error("probing an IPv6 gateway did not fail")
	}
}
