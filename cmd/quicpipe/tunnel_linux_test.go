package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/internal/testbin"
)

// TestTunnelEnvProxy: quicpipe connect in a network whose router forwards
// nothing (no UDP, no TCP) and runs an HTTP proxy, its only way out; the
// user sets HTTPS_PROXY (with a user and password) and passes no flag
// about the tunnel or the proxy. The relay's tunnel listens on TCP 8443,
// not 443: connect finds it in the listener's ticket, falls back to it
// when UDP gets no answer, and opens it through the proxy from the
// environment; 1 MB each way arrives intact.
//
//	peer 10.1.0.2 ─lan0─ router (tinyproxy 10.1.0.1:8888) ─wan0 198.51.100.2── wan ─┬─ 192.0.2.2 relay
//	                                                                                 └─ 203.0.113.2 listener
func TestTunnelEnvProxy(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	bin := binary(t)
	lab := netlab.New(t)
	wan, relayNS, lisNS, router, peer := lab.NS("wan"), lab.NS("relay"), lab.NS("lis"), lab.NS("router"), lab.NS("peer")
	wan.Forwarding()
	for _, l := range []struct {
		ns       *netlab.NS
		addr, gw string
	}{{relayNS, "192.0.2.2/24", "192.0.2.1/24"}, {lisNS, "203.0.113.2/24", "203.0.113.1/24"}, {router, "198.51.100.2/24", "198.51.100.1/24"}} {
		lab.Link(l.ns, "wan0", l.addr, wan, l.ns.Name[len(l.ns.Name)-3:]+"0", l.gw)
		l.ns.Run("ip", "route", "add", "default", "via", strings.TrimSuffix(l.gw, "/24"))
	}
	router.Forwarding()
	router.Nft(`table ip filter {
	chain forward { type filter hook forward priority filter; policy accept; iifname "lan0" drop; }
}
table ip nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
}`)
	lab.Link(peer, "eth0", "10.1.0.2/24", router, "lan0", "10.1.0.1/24")
	peer.Run("ip", "route", "add", "default", "via", "10.1.0.1")
	router.Tinyproxy("10.1.0.1", "10.1.0.0/24", "peer", "s3cret")

	dir := t.TempDir()
	env := testbin.Env()
	r := relayNS.Start("relay", env, bin, "relay", "-listen", "192.0.2.2:4433", "-tunnel", "192.0.2.2:8443",
		"-identity", filepath.Join(dir, "relay.key"), "-probe", "off")
	key := r.Match(regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)

	const size = 1 << 20
	lin, lsum := randomFile(t, dir, "listen.in", size)
	cin, csum := randomFile(t, dir, "connect.in", size)
	lin.Close()
	cin.Close()
	lout, cout := filepath.Join(dir, "listen.out"), filepath.Join(dir, "connect.out")
	ticketFile := filepath.Join(dir, "ticket")
	l := lisNS.Start("listen", append(env, "HOME="+filepath.Join(dir, "l"), "XDG_CONFIG_HOME="+filepath.Join(dir, "l")),
		"sh", "-c", `exec "$0" listen -relay 192.0.2.2:4433 -relay-key "$1" -ticket-file "$2" -qr=false <"$3" >"$4"`,
		bin, key, ticketFile, lin.Name(), lout)
	var ticket string
	for deadline := time.Now().Add(30 * time.Second); ticket == ""; {
		if b, err := os.ReadFile(ticketFile); err == nil && len(b) > 0 {
			ticket = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listener wrote no ticket:\n%s", l.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	tk, err := quicpipe.ParseTicket(ticket)
	if err != nil {
		t.Fatal(err)
	}
	if tk.TunnelURL != "wss://:8443/v1/tunnel" {
		t.Fatalf("the ticket's tunnel URL is %q, want the relay's announcement wss://:8443/v1/tunnel", tk.TunnelURL)
	}

	c := peer.Start("connect", append(env, "HOME="+filepath.Join(dir, "c"), "XDG_CONFIG_HOME="+filepath.Join(dir, "c"),
		"HTTPS_PROXY=http://peer:s3cret@10.1.0.1:8888"),
		"sh", "-c", `exec "$0" connect "$1" <"$2" >"$3"`, bin, ticket, cin.Name(), cout)
	for _, p := range []*netlab.Proc{c, l} {
		select {
		case <-p.Done():
		case <-time.After(90 * time.Second):
			t.Fatalf("%s did not finish within 90 s:\n%s", p.Name, p.Stderr())
		}
	}
	if got, n := fileHash(t, lout); got != csum {
		t.Errorf("listen's output: %d bytes, SHA-256 %x; want connect's input (%x)", n, got, csum)
	}
	if got, n := fileHash(t, cout); got != lsum {
		t.Errorf("connect's output: %d bytes, SHA-256 %x; want listen's input (%x)", n, got, lsum)
	}
	if want := "quicpipe: relay transport: tunnel (TLS/WebSocket, wss://192.0.2.2:8443/v1/tunnel)"; !strings.Contains(c.Stderr(), want) {
		t.Errorf("connect did not say %q:\n%s", want, c.Stderr())
	}
	if t.Failed() {
		t.Logf("connect:\n%s\nlisten:\n%s", c.Stderr(), l.Stderr())
	}
}
