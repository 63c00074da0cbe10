//go:build linux

package quicpipe

import (
	"context"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestNATFallbackShortIdleTimeout: the quicpipe command gives its peer
// connections a short idle timeout so that a vanished peer is noticed
// within seconds (cmd/quicpipe: peerKeepAlive 1 s, peerIdleTimeout 8 s).
// A direct path that dies while the connection is idle must not take the
// connection with it: the fallback to the relay (deadAfter, 3.5 s) and the
// first answer through the relay come well before the idle timeout. The
// connection is cut idle, the worst case (only keep-alives flow), and is
// checked alive after twice the idle timeout, then carries data.
func TestNATFallbackShortIdleTimeout(t *testing.T) {
	const idle = 8 * time.Second // cmd/quicpipe's peerIdleTimeout
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l := newNATLab(t, natEIM, natEIM, false, natUplink)
	qconf := &quic.Config{KeepAlivePeriod: time.Second, MaxIdleTimeout: idle}
	dcfg := &Config{Conn: l.peerSocket(t, l.peerA), QUICConfig: qconf}
	acfg := &Config{Conn: l.peerSocket(t, l.peerB), QUICConfig: qconf}
	p := dialDirect(t, ctx, l.relay.LocalAddr().String(), l.relayID, l.aID, l.bID, dcfg, acfg, 0)
	p.waitDirect(t, ctx)

	restore := l.cut(t)
	defer restore()
	cutAt := time.Now()
	// A connection that dies ends the wait at once.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	context.AfterFunc(p.dc.Context(), wcancel)
	fb, err := p.dw.wait(wctx, isRelayed)
	if err != nil {
		t.Fatalf("no fallback: %v; the connection: %v", err, context.Cause(p.dc.Context()))
	}
	t.Logf("idle connection back on the relay %v after the cut", fb.Since.Sub(cutAt).Round(time.Millisecond))
	select {
	case <-p.dc.Context().Done():
		t.Fatalf("the dialer's connection ended: %v", context.Cause(p.dc.Context()))
	case <-p.ac.Context().Done():
		t.Fatalf("the accepter's connection ended: %v", context.Cause(p.ac.Context()))
	case <-time.After(2*idle - time.Since(cutAt)):
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatalf("transfer through the relay after the cut: %v", err)
	}
}
