package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
)

// TestTunnelProcesses: a relay process with its tunnel on, a listener on
// UDP and a connector that reaches the relay only through the tunnel, which
// it finds from the ticket alone (the relay announced it to the listener);
// 4 MB each way intact, and each side says which transport it uses.
func TestTunnelProcesses(t *testing.T) {
	binary(t)
	const size = 4 << 20
	dir := t.TempDir()
	r, addr, key := startRelayProc(t, "relay", filepath.Join(dir, "r"), "127.0.0.1:0", "-tunnel", "127.0.0.1:0")
	url := r.match(t, &r.stderr, regexp.MustCompile(`tunnel for peers without UDP on tcp \S+: (wss://\S+)\n`), 30*time.Second)
	lin, lsum := randomFile(t, dir, "listen.in", size)
	cin, csum := randomFile(t, dir, "connect.in", size)
	lout, cout := createFile(t, filepath.Join(dir, "listen.out")), createFile(t, filepath.Join(dir, "connect.out"))
	l := start(t, "listen", procOpts{home: filepath.Join(dir, "l"), stdin: lin, stdout: lout},
		"listen", "-relay", addr, "-relay-key", key, "-tunnel", "off")
	ticket := l.ticket(t)
	tk, err := quicpipe.ParseTicket(ticket)
	if err != nil {
		t.Fatal(err)
	}
	if want := "wss://:" + url[strings.LastIndex(url, ":")+1:]; tk.TunnelURL != want {
		t.Fatalf("the ticket's tunnel URL is %q, want %q (announced by the relay)", tk.TunnelURL, want)
	}
	c := start(t, "connect", procOpts{home: filepath.Join(dir, "c"), stdin: cin, stdout: cout},
		"connect", "-tunnel", "only", ticket)
	c.expectExit(t, 120*time.Second, 0)
	l.expectExit(t, 10*time.Second, 0)
	if got, n := fileHash(t, lout.Name()); got != csum {
		t.Errorf("listen's stdout: %d bytes, SHA-256 %x; want connect's stdin (%x)", n, got, csum)
	}
	if got, n := fileHash(t, cout.Name()); got != lsum {
		t.Errorf("connect's stdout: %d bytes, SHA-256 %x; want listen's stdin (%x)", n, got, lsum)
	}
	if !strings.Contains(c.stderr.String(), "quicpipe: relay transport: tunnel (TLS/WebSocket, "+url+")") {
		t.Errorf("connect did not say it uses the tunnel:\n%s", c.stderr.String())
	}
	if !strings.Contains(l.stderr.String(), "quicpipe: relay transport: udp") {
		t.Errorf("listen did not say it uses UDP:\n%s", l.stderr.String())
	}
}
