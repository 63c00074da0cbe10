package quicpipe

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestRelaySessionRecheckObserved moves a peer behind a loopback NAT to a
// new public port and asks its relay session to check its observed
// address: the new address must be known within a second or so (the
// relay migrates the session's connection when the check arrives from
// it), not at the next refresh (a third of the 60 s registration TTL), and
// the session must report the change.
func TestRelaySessionRecheckObserved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	nat := newImpairNAT(t, e.relay.Addr(), 0, 0)
	cfg := e.config(e.aID)
	cfg.RelayAddr = nat.inside.LocalAddr().String()
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
	d.p.sess.recheckObserved()
	select {
	case <-changed:
	case <-time.After(3 * time.Second):
		t.Fatalf("observed address still %v 3 s after the rebinding and the recheck", d.Registration().Observed)
	}
	took := time.Since(start)
	nat.mu.Lock()
	var want *net.UDPAddr
	for _, c := range nat.clients {
		want = c.out.Load().LocalAddr().(*net.UDPAddr)
	}
	nat.mu.Unlock()
	got := d.Registration().Observed
	t.Logf("observed %v -> %v, %v after the recheck", before, got, took.Round(time.Millisecond))
	if got != netAddrPort(want.AddrPort()) {
		t.Errorf("observed %v after the rebinding, want the NAT's new port %v", got, want)
	}
}
