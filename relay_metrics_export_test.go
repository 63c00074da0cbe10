package quicpipe

import (
	"context"
	"testing"
)

// RelayForMetricsTest runs a pipe between a dialer and an accepter through a
// test relay, echoes 64 KiB over it and returns the relay, for
// TestRelayMetrics (package quicpipe_test, which imports relaymetrics; that
// package imports this one, so the test cannot live here).
func RelayForMetricsTest(t *testing.T, ctx context.Context) *Relay {
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{})
	dc, ac, _, _ := e.pipe(t, ctx, false)
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 64<<10, 1); err != nil {
		t.Fatal(err)
	}
	return e.relay
}
