package quicpipe

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/addrprobe"
)

// newProbeRelay serves a relay on loopback with n probe sockets.
func newProbeRelay(t *testing.T, n int, cfg *RelayConfig) (*Relay, []*net.UDPConn) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var probes []*net.UDPConn
	for range n {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		probes = append(probes, pc)
	}
	if cfg == nil {
		cfg = &RelayConfig{}
	}
	cfg.Identity = GenerateIdentity()
	cfg.ProbeConns = probes
	r, err := NewRelay(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, r, func() {
		conn.Close()
		for _, pc := range probes {
			pc.Close()
		}
	})
	return r, probes
}

// probeOnce sends one request from c to `to` and waits for its reply.
func probeOnce(t *testing.T, c *net.UDPConn, to netip.AddrPort, id addrprobe.TxID, wait time.Duration) (netip.AddrPort, bool) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(addrprobe.AppendRequest(nil, id), to); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return netip.AddrPort{}, false
		}
		if n != addrprobe.Size {
			t.Fatalf("reply of %d bytes, want %d", n, addrprobe.Size)
		}
		gid, ap, err := addrprobe.ParseReply(buf[:n])
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		if gid == id {
			return ap, true
		}
	}
}

// TestRelayProbe: each probe socket answers with the address the request
// came from; garbage is counted, not answered; answers stop at the
// per-source rate.
func TestRelayProbe(t *testing.T) {
	r, probes := newProbeRelay(t, 2, &RelayConfig{ProbeRatePerSource: 5})
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me := c.LocalAddr().(*net.UDPAddr).AddrPort()
	for i, pc := range probes {
		got, ok := probeOnce(t, c, pc.LocalAddr().(*net.UDPAddr).AddrPort(), addrprobe.TxID{byte(i + 1)}, 2*time.Second)
		if !ok || got != me {
			t.Fatalf("probe socket %d: observed %v (answered %v), want %v", i, got, ok, me)
		}
	}
	to := probes[0].LocalAddr().(*net.UDPAddr).AddrPort()
	for _, bad := range [][]byte{nil, []byte("hello"), addrprobe.AppendRequest(nil, addrprobe.TxID{})[:20],
		addrprobe.AppendReply(nil, addrprobe.TxID{}, me)} {
		c.WriteToUDPAddrPort(bad, to)
	}
	// 5 a second with a burst of 5: two were answered, so of ten more sent
	// at once, at most four (and one refilled) get an answer.
	for i := range 10 {
		c.WriteToUDPAddrPort(addrprobe.AppendRequest(nil, addrprobe.TxID{0xaa, byte(i)}), to)
	}
	answered := 0
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if _, _, err := addrprobe.ParseReply(buf[:n]); err == nil {
			answered++
		}
	}
	st := r.ProbeStats()
	t.Logf("answered %d of 10 over the limit; stats %+v", answered, st)
	if answered > 5 || st.Limited < 5 {
		t.Errorf("answered %d of 10 requests over a rate of 5/s, stats %+v", answered, st)
	}
	if st.Malformed != 4 {
		t.Errorf("Malformed = %d, want 4", st.Malformed)
	}
}

// TestRelayProbeConfig: negative rates are refused.
func TestRelayProbeConfig(t *testing.T) {
	if _, err := populateRelayConfig(&RelayConfig{Identity: GenerateIdentity(), ProbeRate: -1}); err == nil {
		t.Error("negative ProbeRate accepted")
	}
}
