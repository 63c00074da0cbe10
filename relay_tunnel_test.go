package quicpipe

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rawTunnel opens a WebSocket to e's relay's tunnel as a peer would, with
// subprotocols protos, skipping the outer certificate check.
func rawTunnel(t *testing.T, ctx context.Context, url string, protos ...string) (*websocket.Conn, error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	t.Cleanup(tr.CloseIdleConnections)
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: tr},
		Subprotocols: protos,
	})
	if err == nil {
		t.Cleanup(func() { ws.CloseNow() })
	}
	return ws, err
}

// waitStats polls the relay's tunnel counters until ok holds (5s at most).
func waitStats(t *testing.T, r *Relay, what string, ok func(TunnelStats) bool) {
	t.Helper()
	for range 500 {
		if ok(r.TunnelStats()) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: tunnel stats %+v", what, r.TunnelStats())
}

// TestTunnelBadInput: each kind of bad input to the tunnel listener is
// refused, counted, and leaves a working pipe through the tunnel alone.
func TestTunnelBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTunnelEnv(t, &RelayConfig{Tunnel: &TunnelConfig{
		Addr: "127.0.0.1:0", MaxTunnelsPerSource: 6, IdleTimeout: 2 * time.Second,
	}})
	url := e.tunnelURLOf()
	r := e.relay

	// A pipe whose dialer is tunnelled, checked again at the end.
	acfg, dcfg := e.config(e.bID, e.aID), e.config(e.aID)
	acfg.Tunnel, dcfg.Tunnel, dcfg.TunnelURL = TunnelOff, TunnelOnly, url
	d, a := newEndpoints(t, ctx, acfg, dcfg)
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)

	// Wrong path, no subprotocol: no tunnel.
	if _, err := rawTunnel(t, ctx, strings.Replace(url, TunnelPath, "/v1/other", 1), tunnelSubprotocol); err == nil {
		t.Error("upgrade on another path succeeded")
	}
	if ws, err := rawTunnel(t, ctx, url); err == nil {
		if _, _, err := ws.Read(ctx); err == nil {
			t.Error("tunnel without the subprotocol carried a message")
		}
	}
	waitStats(t, r, "bad upgrades", func(s TunnelStats) bool { return s.BadUpgrades == 2 })

	// A text message, an oversized one, a broken frame: each closes its
	// tunnel and is counted.
	ws, err := rawTunnel(t, ctx, url, tunnelSubprotocol)
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(ctx, websocket.MessageText, []byte("hello"))
	waitStats(t, r, "text message", func(s TunnelStats) bool { return s.Malformed == 1 })
	ws, err = rawTunnel(t, ctx, url, tunnelSubprotocol)
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(ctx, websocket.MessageBinary, make([]byte, 1501))
	waitStats(t, r, "oversized message", func(s TunnelStats) bool { return s.Oversized == 1 })
	tc, err := tls.Dial("tcp", r.TunnelAddr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	tc.Write([]byte("GET " + TunnelPath + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + tunnelSubprotocol + "\r\n\r\n"))
	buf := make([]byte, 1024)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := tc.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "101") {
		t.Fatalf("raw upgrade: %q, %v", buf[:n], err)
	}
	tc.Write([]byte{0x82, 0x05, 1, 2, 3, 4, 5}) // an unmasked client frame: a protocol error
	waitStats(t, r, "broken frame", func(s TunnelStats) bool { return s.ReadErrors == 1 })

	// Idle tunnels close; so does a half-open one (nothing ever arrives).
	if _, err := rawTunnel(t, ctx, url, tunnelSubprotocol); err != nil {
		t.Fatal(err)
	}
	waitStats(t, r, "idle", func(s TunnelStats) bool { return s.Idle >= 1 })

	// Over the per-source limit (6: the dialer's tunnel and five more),
	// connections are closed before their handshake.
	for range 5 {
		rawTunnel(t, ctx, url, tunnelSubprotocol)
	}
	if _, err := rawTunnel(t, ctx, url, tunnelSubprotocol); err == nil {
		t.Error("a tunnel over the per-source limit opened")
	}
	waitStats(t, r, "limit", func(s TunnelStats) bool { return s.Refused >= 1 })

	if err := echo(ctx, dc, 1<<20, 7); err != nil {
		t.Fatalf("the pipe through the tunnel: %v", err)
	}
	t.Logf("tunnel stats %+v", r.TunnelStats())
}

// testCA returns a CA and a certificate it issued for 127.0.0.1.
func testCA(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTunnelOuterTLS: the outer certificate is accepted when it holds the
// relay's pinned key, or when it chains to the peer's roots; otherwise the
// tunnel is refused. With a CA-issued outer certificate, the relay is still
// authenticated by its pinned key inside.
func TestTunnelOuterTLS(t *testing.T) {
	roots, cert := testCA(t)
	for _, tc := range []struct {
		name    string
		cert    *tls.Certificate
		roots   bool
		wrongID bool // the peer pins another relay key
		ok      bool
	}{
		{"pinned", nil, false, false, true},
		{"ca-trusted", &cert, true, false, true},
		{"ca-untrusted", &cert, false, false, false},
		{"pinned-other-key", nil, false, true, false},
		{"ca-trusted-other-key", &cert, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			e := newTunnelEnv(t, &RelayConfig{Tunnel: &TunnelConfig{Addr: "127.0.0.1:0", Certificate: tc.cert}})
			cfg := e.config(e.aID)
			cfg.Tunnel, cfg.TunnelURL = TunnelOnly, e.tunnelURLOf()
			cfg.RelayTimeout = 3 * time.Second
			if tc.roots {
				cfg.TunnelRootCAs = roots
			}
			if tc.wrongID {
				cfg.RelayKey = GenerateIdentity().Public().(ed25519.PublicKey)
			}
			d, err := NewDialer(ctx, cfg)
			if err == nil {
				d.Close()
			}
			if (err == nil) != tc.ok {
				t.Fatalf("NewDialer: %v, want success %v", err, tc.ok)
			}
		})
	}
}

// TestTunnelFlood: a tunnel that floods the relay with datagrams (unknown
// CIDs, garbage, Initials) is counted and dropped and leaves a tunnelled
// pipe working.
func TestTunnelFlood(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTunnelEnv(t, nil)
	acfg, dcfg := e.config(e.bID, e.aID), e.config(e.aID)
	acfg.Tunnel, dcfg.Tunnel, dcfg.TunnelURL = TunnelOff, TunnelOnly, e.tunnelURLOf()
	d, a := newEndpoints(t, ctx, acfg, dcfg)
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)

	ws, err := rawTunnel(t, ctx, e.tunnelURLOf(), tunnelSubprotocol)
	if err != nil {
		t.Fatal(err)
	}
	before := e.relay.Stats()
	const n = 20000
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 1200)
		for i := range n {
			rand.Read(b)
			b[0] = []byte{0x40, 0xc0, 0x00}[i%3] // short and long headers with random CIDs
			if err := ws.Write(ctx, websocket.MessageBinary, b[:100+i%1100]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := echo(ctx, dc, 4<<20, 9); err != nil {
		t.Fatalf("the pipe during the flood: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var dropped uint64
	for range 500 {
		st := e.relay.Stats()
		dropped = 0
		for k, v := range st.Dropped {
			dropped += v - before.Dropped[k]
		}
		if dropped+(st.ToServer-before.ToServer) >= n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("flood of %d datagrams: %d dropped, relay %+v", n, dropped, e.relay.Stats().Dropped)
	if dropped < n/2 {
		t.Errorf("only %d of %d flooded datagrams dropped", dropped, n)
	}
}

// pausedConn is a TCP connection whose reads wait while paused: a peer that
// stops reading its tunnel.
type pausedConn struct {
	net.Conn
	paused atomic.Bool
}

func (c *pausedConn) Read(b []byte) (int, error) {
	for c.paused.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	return c.Conn.Read(b)
}

// Close ends the pause, so that a paused Read returns the close's error.
func (c *pausedConn) Close() error {
	c.paused.Store(false)
	return c.Conn.Close()
}

// TestTunnelSlowReader: a tunnelled accepter stops reading its tunnel while
// a registered UDP peer floods its CIDs. The relay's queue for that tunnel
// drops (never blocking its reader), the tunnel is cut off after
// WriteTimeout, and the relay keeps forwarding for others.
func TestTunnelSlowReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTunnelEnv(t, &RelayConfig{Tunnel: &TunnelConfig{Addr: "127.0.0.1:0", QueueLen: 64, WriteTimeout: time.Second}})
	var conn atomic.Pointer[pausedConn]
	acfg := e.config(e.bID, e.aID)
	acfg.Tunnel, acfg.TunnelURL = TunnelOnly, e.tunnelURLOf()
	acfg.CIDKey = bytes.Repeat([]byte{7}, 32)
	acfg.TunnelDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		pc := &pausedConn{Conn: c}
		conn.Store(pc) // the last one dialed carries the tunnel
		return pc, nil
	}
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	dcfg := e.config(e.aID)
	dcfg.Tunnel, dcfg.Conn = TunnelOff, sock
	newEndpoints(t, ctx, acfg, dcfg) // both registered: the dialer's socket is a target

	cid, err := DeriveCID(acfg.CIDKey, 1)
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 1200)
	pkt[0] = 0x40
	copy(pkt[1:], cid[:])
	relay := e.relay.LocalAddr().(*net.UDPAddr).AddrPort()
	paused := conn.Load()
	paused.paused.Store(true)
	t.Cleanup(func() { paused.paused.Store(false) }) // before the peers close
	start := time.Now()
	for e.relay.TunnelStats().SlowReaders == 0 {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no slow reader cut off after 20s: %+v", e.relay.TunnelStats())
		}
		for range 200 {
			sock.WriteToUDPAddrPort(pkt, relay)
		}
		time.Sleep(time.Millisecond)
	}
	st := e.relay.TunnelStats()
	t.Logf("cut off after %v: %+v", time.Since(start).Round(time.Millisecond), st)
	if st.Dropped == 0 {
		t.Error("the full queue dropped nothing")
	}
	paused.paused.Store(false)

	// The relay still serves: a new tunnelled pipe works.
	e2cfg, e2dcfg := e.config(e.bID, e.aID), e.config(e.aID)
	e2cfg.Tunnel, e2dcfg.Tunnel, e2dcfg.TunnelURL = TunnelOff, TunnelOnly, e.tunnelURLOf()
	d, a := newEndpoints(t, ctx, e2cfg, e2dcfg)
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 1<<20, 3); err != nil {
		t.Fatalf("after the slow reader: %v", err)
	}
}
