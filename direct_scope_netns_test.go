//go:build linux

package quicpipe

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// TestDirectScopeLoopback checks that with a loopback relay the peers
// offer, probe and use only loopback addresses, although the host has
// another address (192.0.2.2, here on lo), and that
// DirectAnyScope offers that address again.
//
// Topology: one namespace; lo with 127.0.0.1/8 and 192.0.2.2/32.
// The relay listens on 127.0.0.1, both peers on 0.0.0.0.
func TestDirectScopeLoopback(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	for _, anyScope := range []bool{false, true} {
		name := "scoped"
		if anyScope {
			name = "anyscope"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			lab := netlab.New(t)
			ns := lab.NS("scope")
			ns.Run("ip", "addr", "add", "192.0.2.2/32", "dev", "lo")

			relayID := GenerateIdentity()
			conn, err := ns.ListenUDP("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewRelay(conn, &RelayConfig{Identity: relayID, Logger: testLogger(t)})
			if err != nil {
				conn.Close()
				t.Fatal(err)
			}
			serveRelay(t, r, func() { conn.Close() })
			sock := func() *Config {
				c, err := ns.ListenUDP("udp4", "0.0.0.0:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return &Config{Conn: c, DirectAnyScope: anyScope}
			}
			p := dialDirect(t, ctx, r.LocalAddr().String(), relayID, GenerateIdentity(), GenerateIdentity(), sock(), sock(), 0)
			p.waitDirect(t, ctx)
			// Let a candidate refresh and a few probe rounds pass.
			time.Sleep(candidateRefresh + time.Second)

			other := netip.MustParseAddr("192.0.2.2")
			var offered bool
			for _, m := range []*directManager{p.d.p.direct, p.a.p.direct} {
				for _, c := range m.cands.get(time.Now()) {
					if c.addr.Addr() == other {
						offered = true
					} else if !c.addr.Addr().IsLoopback() {
						t.Errorf("candidate %v", c.addr)
					}
				}
			}
			if offered != anyScope {
				t.Errorf("192.0.2.2 offered: %v, want %v", offered, anyScope)
			}
			if anyScope {
				return
			}
			for _, w := range []*pathWatch{p.dw, p.aw} {
				w.mu.Lock()
				for _, e := range w.events {
					if e.Kind == PathDirect && !e.Remote.Addr().IsLoopback() {
						t.Errorf("direct path to %v", e.Remote)
					}
				}
				w.mu.Unlock()
			}
		})
	}
}
