package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/fleet/natsnode"
)

// TestRelayFleetMailbox: two relay processes of one fleet (one identity,
// -fleet on one NATS node); "quicpipe listen" holds its mailbox at relay a,
// "quicpipe connect" dials through relay b (its ticket rewritten to name
// b): b hands the first flight to a over NATS, and 1 MB goes each way.
func TestRelayFleetMailbox(t *testing.T) {
	binary(t)
	node, err := natsnode.Start(natsnode.Config{Name: "n", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	url := node.ClientURL()
	// One home: the relays share the identity file, as a fleet's members do.
	home := t.TempDir()
	_, addrA, key := startRelayProc(t, "relay-a", home, "127.0.0.1:0", "-fleet", url, "-fleet-member", "a")
	_, addrB, keyB := startRelayProc(t, "relay-b", home, "127.0.0.1:0", "-fleet", url, "-fleet-member", "b")
	if key != keyB {
		t.Fatalf("the relays' keys differ: %s and %s", key, keyB)
	}

	const size = 1 << 20
	dir := t.TempDir()
	lin, lsum := randomFile(t, dir, "listen.in", size)
	cin, csum := randomFile(t, dir, "connect.in", size)
	lout, cout := createFile(t, filepath.Join(dir, "listen.out")), createFile(t, filepath.Join(dir, "connect.out"))
	l := start(t, "listen", procOpts{home: filepath.Join(dir, "l"), stdin: lin, stdout: lout}, "listen", "-relay", addrA, "-relay-key", key)
	ticket, err := quicpipe.ParseTicket(l.ticket(t))
	if err != nil {
		t.Fatal(err)
	}
	if ticket.RelayAddr != addrA {
		t.Fatalf("the ticket names relay %s, want a at %s", ticket.RelayAddr, addrA)
	}
	ub, err := net.ResolveUDPAddr("udp", addrB)
	if err != nil {
		t.Fatal(err)
	}
	ticket.RelayAddr = ub.String()
	c := start(t, "connect", procOpts{home: filepath.Join(dir, "c"), stdin: cin, stdout: cout}, "connect", ticket.String())
	c.expectExit(t, 60*time.Second, 0)
	l.expectExit(t, 10*time.Second, 0)
	if got, n := fileHash(t, lout.Name()); got != csum {
		t.Errorf("listen's stdout: %d bytes, SHA-256 %x; want connect's stdin (%x)", n, got, csum)
	}
	if got, n := fileHash(t, cout.Name()); got != lsum {
		t.Errorf("connect's stdout: %d bytes, SHA-256 %x; want listen's stdin (%x)", n, got, lsum)
	}
}
