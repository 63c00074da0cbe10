package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// TestPathRelayed: when probes cannot pass, both sides say that the pipe
// stays on the relay and why. The processes run in a namespace of the
// test where nftables lets through only the traffic of the relay's port.
func TestPathRelayed(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	binary(t)
	ns := netlab.New(t).NS("path")
	ns.Nft(`table inet qppath {
	chain output {
		type filter hook output priority filter; policy accept;
		udp dport 4477 accept
		udp sport 4477 accept
		meta l4proto udp drop
	}
}`)
	dir := t.TempDir()
	var l, c *proc
	in := func(fn func()) {
		if err := ns.Do(func() error { fn(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// A child process inherits the network namespace of the thread that
	// starts it.
	in(func() {
		l = start(t, "listen", procOpts{home: filepath.Join(dir, "l")}, "listen", "-relay-listen", "127.0.0.1:4477")
	})
	ticket := l.ticket(t)
	in(func() { c = start(t, "connect", procOpts{home: filepath.Join(dir, "c")}, "connect", ticket) })
	re := regexp.MustCompile(`quicpipe: relayed via 127\.0\.0\.1:4477 \(no direct path: no answer from the other side's address (127\.0\.0\.1:\d+)\)`)
	for _, p := range []*proc{l, c} {
		p.match(t, &p.stderr, re, 30*time.Second)
	}
	if strings.Contains(l.stderr.String()+c.stderr.String(), "direct to") {
		t.Error("a side went direct")
	}
	l.interrupt(t)
}
