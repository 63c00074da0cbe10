package quicpipe

import (
	"context"
	"crypto/ed25519"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// newTunnelEnv starts a relay on loopback with its tunnel on.
func newTunnelEnv(t testing.TB, rcfg *RelayConfig) *testEnv {
	t.Helper()
	var cfg RelayConfig
	if rcfg != nil {
		cfg = *rcfg
	}
	if cfg.Tunnel == nil {
		cfg.Tunnel = &TunnelConfig{Addr: "127.0.0.1:0"}
	}
	return newTestEnv(t, "127.0.0.1:0", &cfg)
}

// tunnelURLOf returns the URL of e's relay's tunnel.
func (e *testEnv) tunnelURLOf() string {
	return "wss://" + e.relay.TunnelAddr().String() + TunnelPath
}

// transportLog records the transports a peer reports.
type transportLog struct {
	mu  sync.Mutex
	got []Transport
}

func (l *transportLog) add(tr Transport) {
	l.mu.Lock()
	l.got = append(l.got, tr)
	l.mu.Unlock()
}

// wait returns the first transport reported, waiting up to 5s.
func (l *transportLog) wait(t testing.TB) Transport {
	t.Helper()
	for range 500 {
		l.mu.Lock()
		if len(l.got) > 0 {
			tr := l.got[0]
			l.mu.Unlock()
			return tr
		}
		l.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no transport reported")
	return ""
}

// blackhole returns the address of a UDP socket that reads and drops
// everything: a relay address whose UDP is silently blocked.
func blackhole(t testing.TB) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return c.LocalAddr().String()
}

// TestTunnelPipe connects a pipe whose peers reach the relay through its
// tunnel, one or both, and checks the data (SHA-256) both ways.
func TestTunnelPipe(t *testing.T) {
	for _, tc := range []struct {
		name         string
		dialer, acc  TunnelMode
		wantD, wantA Transport
	}{
		{"dialer-tunnelled", TunnelOnly, TunnelOff, TransportTunnel, TransportUDP},
		{"accepter-tunnelled", TunnelOff, TunnelOnly, TransportUDP, TransportTunnel},
		{"both-tunnelled", TunnelOnly, TunnelOnly, TransportTunnel, TransportTunnel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newTunnelEnv(t, nil)
			acfg, dcfg := e.config(e.bID, e.aID), e.config(e.aID)
			acfg.Tunnel, dcfg.Tunnel = tc.acc, tc.dialer
			acfg.TunnelURL, dcfg.TunnelURL = e.tunnelURLOf(), e.tunnelURLOf()
			d, a := newEndpoints(t, ctx, acfg, dcfg)
			dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
			serveEcho(ctx, ac)
			if err := echo(ctx, dc, 4<<20, 1); err != nil {
				t.Fatal(err)
			}
			serveEcho(ctx, dc)
			if err := echo(ctx, ac, 1<<20, 2); err != nil {
				t.Fatal(err)
			}
			if got := d.p.pconn.transport(); got != tc.wantD {
				t.Errorf("dialer transport %s, want %s", got, tc.wantD)
			}
			if got := a.p.pconn.transport(); got != tc.wantA {
				t.Errorf("accepter transport %s, want %s", got, tc.wantA)
			}
			ts := e.relay.TunnelStats()
			if ts.Opened == 0 || ts.Open == 0 {
				t.Errorf("tunnel stats %+v: no tunnel open", ts)
			}
			t.Logf("tunnel stats %+v; relay %+v", ts, e.relay.Stats())
		})
	}
}

// TestTunnelFallback gives the dialer a relay address whose UDP is
// silently dropped: it falls back to the tunnel after TunnelDelay and the
// pipe connects; the accepter, whose UDP works, stays on UDP.
func TestTunnelFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTunnelEnv(t, nil)
	acfg, dcfg := e.config(e.bID, e.aID), e.config(e.aID)
	acfg.TunnelURL, dcfg.TunnelURL = e.tunnelURLOf(), e.tunnelURLOf()
	dcfg.RelayAddr = blackhole(t)
	var dl, al transportLog
	dcfg.OnRelayTransport, acfg.OnRelayTransport = dl.add, al.add
	start := time.Now()
	d, a := newEndpoints(t, ctx, acfg, dcfg)
	t.Logf("both registered after %v", time.Since(start))
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 4<<20, 3); err != nil {
		t.Fatal(err)
	}
	if got := dl.wait(t); got != TransportTunnel {
		t.Errorf("dialer reports %s, want %s", got, TransportTunnel)
	}
	if got := al.wait(t); got != TransportUDP {
		t.Errorf("accepter reports %s, want %s", got, TransportUDP)
	}
	if obs := d.p.sess.registration().Observed; !forward.IsTunnelAddr(obs.Addr()) {
		t.Errorf("relay observes the dialer at %s, not a tunnel address", obs)
	}
}

// udpGate forwards datagrams between one client and the relay while open,
// and drops them all while closed: UDP to the relay blocked and unblocked.
type udpGate struct {
	conn, up *net.UDPConn
	open     atomic.Bool
	client   atomic.Pointer[net.UDPAddr]
}

func newUDPGate(t testing.TB, relay *net.UDPAddr) *udpGate {
	g := &udpGate{}
	var err error
	if g.conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if g.up, err = net.DialUDP("udp", nil, relay); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.conn.Close(); g.up.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := g.conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			g.client.Store(from)
			if g.open.Load() {
				g.up.Write(buf[:n])
			}
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := g.up.Read(buf)
			if err != nil {
				return
			}
			if c := g.client.Load(); c != nil && g.open.Load() {
				g.conn.WriteToUDP(buf[:n], c)
			}
		}
	}()
	return g
}

// TestTunnelMovesBack: a dialer whose UDP to the relay is blocked falls
// back to the tunnel; once UDP is unblocked, its probes get an answer and
// it moves back to UDP: the relay observes it at its UDP address again and
// the pipe keeps working.
func TestTunnelMovesBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTunnelEnv(t, nil)
	gate := newUDPGate(t, e.relay.LocalAddr().(*net.UDPAddr))
	acfg, dcfg := e.config(e.bID, e.aID), e.config(e.aID)
	acfg.Tunnel = TunnelOff
	dcfg.TunnelURL = e.tunnelURLOf()
	dcfg.RelayAddr = gate.conn.LocalAddr().String()
	var dl transportLog
	dcfg.OnRelayTransport = dl.add
	d, a := newEndpoints(t, ctx, acfg, dcfg)
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 1<<20, 1); err != nil {
		t.Fatal(err)
	}
	if got := d.p.pconn.transport(); got != TransportTunnel {
		t.Fatalf("dialer on %s with UDP blocked", got)
	}
	gate.open.Store(true)
	start := time.Now()
	for d.p.pconn.transport() != TransportUDP {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the dialer did not move back to UDP within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("back on UDP %v after unblocking", time.Since(start).Round(time.Millisecond))
	for forward.IsTunnelAddr(d.p.sess.registration().Observed.Addr()) {
		if time.Since(start) > 30*time.Second {
			t.Fatal("the relay still observes the dialer at its tunnel")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := echo(ctx, dc, 1<<20, 2); err != nil {
		t.Fatalf("after moving back: %v", err)
	}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if want := []Transport{TransportTunnel, TransportUDP}; !slices.Equal(dl.got, want) {
		t.Errorf("reported %v, want %v", dl.got, want)
	}
}

// TestTunnelURLForms: the forms of Config.TunnelURL (and of tickets and
// registration answers) and how a peer completes them.
func TestTunnelURLForms(t *testing.T) {
	for _, tc := range []struct{ in, relay, want, err string }{
		{"", "relay.example:4433", "wss://relay.example:443/v1/tunnel", ""},
		{"wss://:8443/v1/tunnel", "192.0.2.1:4433", "wss://192.0.2.1:8443/v1/tunnel", ""},
		{"wss://:8443", "[2001:db8::1]:4433", "wss://[2001:db8::1]:8443/v1/tunnel", ""},
		{"wss://t.example/x", "192.0.2.1:4433", "wss://t.example:443/x", ""},
		{"wss://t.example:9443/", "192.0.2.1:4433", "wss://t.example:9443/", ""},
		{"https://t.example", "192.0.2.1:4433", "https://t.example:443/v1/tunnel", ""},
		{"ws://t.example", "192.0.2.1:4433", "", "scheme must be wss"},
		{"wss://u:p@t.example", "192.0.2.1:4433", "", "only host, port and path"},
		{"wss://t.example/?q", "192.0.2.1:4433", "", "only host, port and path"},
		{"wss://t.example:0", "192.0.2.1:4433", "", "port must be 1 to 65535"},
		{"wss://t.example:", "192.0.2.1:4433", "", "empty port"},
		{"wss://t.example/a b", "192.0.2.1:4433", "", "outside printable ASCII"},
	} {
		u, err := tunnelURL(&Config{TunnelURL: tc.in, RelayAddr: tc.relay})
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case u.String() != tc.want:
			t.Errorf("%q at relay %s: %s, want %s", tc.in, tc.relay, u, tc.want)
		}
	}
}

// TestTunnelAnnounced: a relay announces its tunnel in registration
// answers (its port, or TunnelConfig.URL); a relay without one announces
// nothing; a ticket's URL reaches the dialer's Config.
func TestTunnelAnnounced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTunnelEnv(t, nil)
	d, err := NewDialer(ctx, e.config(e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, port, _ := net.SplitHostPort(e.relay.TunnelAddr().String())
	if got, want := d.Registration().TunnelURL, "wss://:"+port+TunnelPath; got != want || e.relay.TunnelURL() != want {
		t.Errorf("announced %q (relay says %q), want %q", got, e.relay.TunnelURL(), want)
	}

	e2 := newTunnelEnv(t, &RelayConfig{Tunnel: &TunnelConfig{Addr: "127.0.0.1:0", URL: "wss://tunnel.example/qp"}})
	d2, err := NewDialer(ctx, e2.config(e2.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got := d2.Registration().TunnelURL; got != "wss://tunnel.example/qp" {
		t.Errorf("announced %q, want TunnelConfig.URL", got)
	}
	if r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity(), Tunnel: &TunnelConfig{Addr: "127.0.0.1:0", URL: "ws://x"}}); err == nil || !strings.Contains(err.Error(), "TunnelConfig.URL") {
		if err == nil {
			r.Close()
		}
		t.Errorf("a bad TunnelConfig.URL: %v", err)
	}

	e3 := newTestEnv(t, "127.0.0.1:0", nil)
	d3, err := NewDialer(ctx, e3.config(e3.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if got := d3.Registration().TunnelURL; got != "" {
		t.Errorf("a relay without a tunnel announced %q", got)
	}

	tk := &Ticket{Peer: pub(e.bID), RelayAddr: "192.0.2.1:4433", RelayKey: pub(e.bID), Secret: NewTicketSecret(), TunnelURL: "wss://:8443"}
	c, err := tk.DialerConfig(nil)
	if err != nil || c.TunnelURL != "wss://:8443" {
		t.Errorf("DialerConfig: TunnelURL %q, %v", c.TunnelURL, err)
	}
	if c, _ := tk.DialerConfig(&Config{TunnelURL: "wss://mine"}); c.TunnelURL != "wss://mine" {
		t.Errorf("DialerConfig replaced the Config's TunnelURL with the ticket's: %q", c.TunnelURL)
	}
}
