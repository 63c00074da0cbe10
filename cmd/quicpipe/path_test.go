package main

import (
	"net/netip"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestPathLoopback: with the listener's own relay on loopback, both sides
// say when the pipe goes direct, and it stays on loopback although the
// host has other addresses (docs/NAT.md, "Candidate scope").
func TestPathLoopback(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	l := start(t, "listen", procOpts{home: filepath.Join(dir, "l")}, "listen")
	c := start(t, "connect", procOpts{home: filepath.Join(dir, "c")}, "connect", l.ticket(t))
	re := regexp.MustCompile(`quicpipe: direct to (\S+) \(`)
	for _, p := range []*proc{l, c} {
		p.match(t, &p.stderr, re, 20*time.Second)
	}
	// Peers used to move to another host address about 7 s in.
	time.Sleep(8 * time.Second)
	for _, p := range []*proc{l, c} {
		for _, m := range re.FindAllStringSubmatch(p.stderr.String(), -1) {
			ap, err := netip.ParseAddrPort(m[1])
			if err != nil || !ap.Addr().IsLoopback() {
				t.Errorf("%s: direct path to %s, want loopback", p.name, m[1])
			}
		}
	}
	l.interrupt(t)
}
