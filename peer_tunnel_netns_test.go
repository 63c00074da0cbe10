//go:build linux

package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// The tunnel in the NAT lab (topology in direct_netns_test.go): the relay
// (192.0.2.2) also listens on TCP for its tunnel; a NAT router that drops
// every UDP datagram it forwards ("meta l4proto udp drop" in natA's or
// natB's forward chain) leaves its peer only TCP, so the peer falls back
// to the tunnel while the other peer stays on UDP, or both are tunnelled.

// tunnelLab is the NAT lab with a relay whose mailbox and tunnel are on.
type tunnelLab struct {
	*natLab
	url string
}

func newTunnelLab(t *testing.T) *tunnelLab {
	l := &natLab{lab: netlab.New(t), relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()}
	buildNATNetwork(l, natEIM, natEIM, false, natUplink)
	conn, err := l.relayNS.ListenUDP("udp4", "192.0.2.2:0")
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := l.relayNS.Do(func() (err error) { ln, err = net.Listen("tcp4", "192.0.2.2:0"); return err }); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	r, err := NewRelay(conn, &RelayConfig{Identity: l.relayID, Mailbox: &MailboxConfig{}, Logger: testLogger(t),
		Tunnel: &TunnelConfig{Listener: ln}})
	if err != nil {
		conn.Close()
		ln.Close()
		t.Fatal(err)
	}
	l.relay = r
	serveRelay(t, r, func() { conn.Close() })
	return &tunnelLab{natLab: l, url: "wss://" + r.TunnelAddr().String() + TunnelPath}
}

// config is a peer's Config in ns: its socket, and its tunnel's TCP
// connections, are opened there.
func (l *tunnelLab) config(t *testing.T, ns *netlab.NS, id ed25519.PrivateKey, trusted ...ed25519.PublicKey) *Config {
	log := testLogger(t)
	if log == nil {
		log = warnLogger(t)
	}
	conn := l.peerSocket(t, ns)
	return &Config{
		RelayAddr:      l.relay.LocalAddr().String(),
		RelayKey:       pub(l.relayID),
		Identity:       id,
		TrustedPeers:   trusted,
		Conn:           conn,
		InterfaceAddrs: socketInterfaceAddrs(conn),
		Logger:         log,
		TunnelURL:      l.url,
		TunnelDialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
}

// blockUDP drops every UDP datagram the NAT router ns forwards.
func blockUDP(t *testing.T, ns *netlab.NS, verdict string) {
	nftForward(t, ns, "noudp", "meta l4proto udp "+verdict)
}

// tunnelPipeSize is how much each lab pipe carries each way: 50 MB, less
// under the race detector (TestTunnelLabPipe's 50 MB case runs without it).
func tunnelPipeSize() int {
	if raceEnabled {
		return 4 << 20
	}
	return 50 << 20
}

// TestTunnelLabPipe: a peer whose router drops all UDP connects to one on
// UDP, the reverse, and both tunnelled; the data both ways is intact.
func TestTunnelLabPipe(t *testing.T) {
	for _, tc := range []struct {
		name           string
		blockA, blockB bool
	}{
		{"dialer-blocked", true, false},
		{"accepter-blocked", false, true},
		{"both-blocked", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			l := newTunnelLab(t)
			if tc.blockA {
				blockUDP(t, l.natA, "drop")
			}
			if tc.blockB {
				blockUDP(t, l.natB, "drop")
			}
			var trA, trB transportLog
			acfg := l.config(t, l.peerB, l.bID, pub(l.aID))
			acfg.OnRelayTransport = trB.add
			dcfg := l.config(t, l.peerA, l.aID)
			dcfg.OnRelayTransport = trA.add
			a, err := NewAccepter(ctx, acfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			d, err := NewDialer(ctx, dcfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			dc, ac := dialAccept(t, ctx, d, a, pub(l.bID), nil, 0)
			serveEcho(ctx, ac)
			size := tunnelPipeSize()
			start := time.Now()
			if err := echo(ctx, dc, size, 1); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d MB each way in %v", size>>20, time.Since(start).Round(time.Millisecond))
			for _, c := range []struct {
				name    string
				log     *transportLog
				blocked bool
			}{{"dialer", &trA, tc.blockA}, {"accepter", &trB, tc.blockB}} {
				want := TransportUDP
				if c.blocked {
					want = TransportTunnel
				}
				if got := c.log.wait(t); got != want {
					t.Errorf("%s reached the relay over %s, want %s", c.name, got, want)
				}
			}
			t.Logf("relay: %+v; tunnel: %+v", l.relay.Stats(), l.relay.TunnelStats())
		})
	}
}

// TestTunnelLabFallbackTiming measures the time from NewDialer to
// registered when UDP to the relay works, is silently dropped, or is
// refused (ICMP port unreachable); with UDP blocked, it must stay within
// TunnelDelay plus the tunnel's handshakes plus 0.5 s of the UDP case.
func TestTunnelLabFallbackTiming(t *testing.T) {
	times := map[string]time.Duration{}
	for _, verdict := range []string{"", "drop", "reject"} {
		name := verdict
		if name == "" {
			name = "udp"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			l := newTunnelLab(t)
			if verdict != "" {
				blockUDP(t, l.natA, verdict)
			}
			var tr transportLog
			cfg := l.config(t, l.peerA, l.aID)
			cfg.OnRelayTransport = tr.add
			start := time.Now()
			d, err := NewDialer(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			defer d.Close()
			times[name] = took
			want := TransportUDP
			if verdict != "" {
				want = TransportTunnel
			}
			if got := tr.wait(t); got != want {
				t.Errorf("transport %s, want %s", got, want)
			}
			t.Logf("registered over %s after %v", want, took.Round(time.Millisecond))
		})
	}
	base, ok := times["udp"]
	for _, v := range []string{"drop", "reject"} {
		if got, ok2 := times[v]; ok && ok2 {
			// The tunnel's handshakes: TCP, TLS and the upgrade, 3 round
			// trips on the lab's sub-millisecond links.
			if limit := base + defaultTunnelDelay + 500*time.Millisecond; got > limit {
				t.Errorf("UDP %s: registered after %v, more than %v", v, got, limit)
			}
		}
	}
}

// TestTunnelLabProxy: peer A's router forwards nothing at all (no UDP, no
// TCP); only the HTTP proxy running on the router (tinyproxy, with basic
// authentication) reaches out. The dialer opens its tunnel through the
// proxy with HTTP CONNECT and the pipe works; with a wrong password it
// cannot reach the relay.
func TestTunnelLabProxy(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		ok             bool
	}{
		{"through-proxy", "secret", true},
		{"wrong-password", "wrong", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			l := newTunnelLab(t)
			nftForward(t, l.natA, "noforward", `iifname "lan0" drop`)
			l.natA.Tinyproxy("10.1.0.1", "10.1.0.0/24", "peer", "secret")
			a, err := NewAccepter(ctx, l.config(t, l.peerB, l.bID, pub(l.aID)))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			dcfg := l.config(t, l.peerA, l.aID)
			proxy, _ := url.Parse("http://peer:" + tc.password + "@10.1.0.1:8888")
			dcfg.TunnelProxy = http.ProxyURL(proxy)
			dcfg.RelayTimeout = 5 * time.Second
			var tr transportLog
			dcfg.OnRelayTransport = tr.add
			d, err := NewDialer(ctx, dcfg)
			if !tc.ok {
				if err == nil {
					d.Close()
					t.Fatal("the dialer reached the relay with a wrong proxy password")
				}
				if !strings.Contains(err.Error(), "the tunnel failed too") || !strings.Contains(err.Error(), "Unauthorized") {
					t.Errorf("the error does not say why the tunnel failed: %v", err)
				}
				t.Logf("refused as expected: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			dc, ac := dialAccept(t, ctx, d, a, pub(l.bID), nil, 0)
			serveEcho(ctx, ac)
			if err := echo(ctx, dc, 4<<20, 1); err != nil {
				t.Fatal(err)
			}
			if got := tr.wait(t); got != TransportTunnel {
				t.Errorf("dialer reports %s", got)
			}
		})
	}
}

// startMitmdump runs mitmproxy's mitmdump inside ns as an HTTP proxy on
// listen:8080 that intercepts TLS (its own CA signs a certificate for
// every server) and does not check the servers' certificates; it returns
// the proxy's CA. It skips the test if mitmdump is not installed (Debian:
// mitmproxy).
func startMitmdump(t *testing.T, ns *netlab.NS, listen string) *x509.CertPool {
	t.Helper()
	bin, err := exec.LookPath("mitmdump")
	if err != nil {
		t.Skip("mitmdump is not installed (apt-get install mitmproxy)")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, bin, "--mode", "regular",
		"--listen-host", listen, "--listen-port", "8080", "--ssl-insecure", "--set", "confdir="+dir, "-q")
	cmd.Env = append(os.Environ(), "HOME="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("mitmdump:\n%s", out.String())
		}
	})
	for range 300 {
		var c net.Conn
		err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", listen+":8080", time.Second); return err })
		if err == nil {
			c.Close()
			pem, err := os.ReadFile(filepath.Join(dir, "mitmproxy-ca-cert.pem"))
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				t.Fatal("mitmproxy's CA certificate does not parse")
			}
			return pool
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("mitmdump did not start:\n%s", out.String())
	return nil
}

// TestTunnelLabInspectingProxy: peer A's only way out is a TLS-inspecting
// proxy (mitmproxy) on its router. With the proxy's CA among its tunnel
// roots, the dialer's tunnel works through the interception and the pipe
// connects; without it, the outer TLS is refused; and a trusted outer
// certificate does not replace the relay's pinned key inside: a dialer
// that pins another key is refused.
func TestTunnelLabInspectingProxy(t *testing.T) {
	for _, tc := range []struct {
		name            string
		trust, wrongKey bool
		want            string // in the error; empty: success
	}{
		{"ca-trusted", true, false, ""},
		{"ca-not-trusted", false, false, "neither the relay's pinned key nor trusted"},
		{"ca-trusted-other-relay-key", true, true, "not the pinned relay key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			l := newTunnelLab(t)
			nftForward(t, l.natA, "noforward", `iifname "lan0" drop`)
			ca := startMitmdump(t, l.natA, "10.1.0.1")
			a, err := NewAccepter(ctx, l.config(t, l.peerB, l.bID, pub(l.aID)))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			dcfg := l.config(t, l.peerA, l.aID)
			proxy, _ := url.Parse("http://10.1.0.1:8080")
			dcfg.TunnelProxy = http.ProxyURL(proxy)
			dcfg.RelayTimeout = 5 * time.Second
			if tc.trust {
				dcfg.TunnelRootCAs = ca
			}
			if tc.wrongKey {
				dcfg.RelayKey = pub(GenerateIdentity())
			}
			d, err := NewDialer(ctx, dcfg)
			if tc.want != "" {
				if err == nil {
					d.Close()
					t.Fatal("the dialer registered")
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %q, want one saying %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			dc, ac := dialAccept(t, ctx, d, a, pub(l.bID), nil, 0)
			serveEcho(ctx, ac)
			if err := echo(ctx, dc, 1<<20, 1); err != nil {
				t.Fatal(err)
			}
		})
	}
}
