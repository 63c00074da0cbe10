package quicpipe

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestRelaySessionRecheckObserved moves a peer behind a loopback NAT to a
// new public port. Its relay session must learn the new address within a
// second or so, not at the next refresh (a third of the 60 s registration
// TTL), and report the change:
//   - "recheck": the direct-path manager asks (recheckObserved), as after a
//     fallback; the request from the new port makes the relay migrate the
//     connection;
//   - "path-challenge": nobody asks; the session's next keep-alive reaches
//     the relay from the new port, the relay validates that path with a
//     PATH_CHALLENGE, and the session asks on seeing it.
func TestRelaySessionRecheckObserved(t *testing.T) {
	for _, tc := range []struct {
		name string
		ask  bool
	}{{"recheck", true}, {"path-challenge", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			e := newTestEnv(t, "127.0.0.1:0", nil)
			nat := newImpairNAT(t, e.relay.udpAddr(), 0, 0)
			cfg := e.config(e.aID)
			cfg.RelayAddr = nat.inside.LocalAddr().String()
			cfg.RelayKeepAlive = 300 * time.Millisecond
			cfg.DisableDirect = true
			d, err := NewDialer(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			before := d.Registration().Observed
			changed := make(chan struct{}, 1)
			d.p.sess.setOnObserved(func() {
				select {
				case changed <- struct{}{}:
				default:
				}
			})

			nat.rebindAll(t)
			start := time.Now()
			if tc.ask {
				d.p.sess.recheckObserved()
			}
			select {
			case <-changed:
			case <-time.After(3 * time.Second):
				t.Fatalf("observed address still %v 3 s after the rebinding", d.Registration().Observed)
			}
			took := time.Since(start)
			nat.mu.Lock()
			var want *net.UDPAddr
			for _, c := range nat.clients {
				want = c.out.Load().LocalAddr().(*net.UDPAddr)
			}
			nat.mu.Unlock()
			got := d.Registration().Observed
			t.Logf("observed %v -> %v, %v after the rebinding", before, got, took.Round(time.Millisecond))
			if got != netAddrPort(want.AddrPort()) {
				t.Errorf("observed %v after the rebinding, want the NAT's new port %v", got, want)
			}
		})
	}
}
