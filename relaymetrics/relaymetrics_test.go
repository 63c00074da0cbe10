package relaymetrics

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/pipetest"
)

// pipeThroughRelay runs a relay, connects a dialer to an accepter through
// it and echoes one stream, so that every counter the test reads has moved.
func pipeThroughRelay(t *testing.T, ctx context.Context) *quicpipe.Relay {
	t.Helper()
	relayID := quicpipe.GenerateIdentity()
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{Identity: relayID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	go r.Serve(ctx)
	cfg := func(id ed25519.PrivateKey, trusted ...ed25519.PublicKey) *quicpipe.Config {
		return &quicpipe.Config{RelayAddr: r.LocalAddr().String(), RelayKey: relayID.Public().(ed25519.PublicKey),
			Identity: id, TrustedPeers: trusted}
	}
	dID, aID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	dc, ac := pipetest.Pipe(t, ctx, cfg(dID), cfg(aID, dID.Public().(ed25519.PublicKey)))
	pipetest.Echo(t, ctx, dc, ac, 64<<10)
	return r
}

// TestRelayMetrics: /metrics shows the relay's counters under their names
// and labels.
func TestRelayMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := pipeThroughRelay(t, ctx)
	ms, err := Listen("127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	resp, err := http.Get("http://" + ms.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	found := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{
			`quicpipe_relay_forwarded_packets_total{path="userspace"}`,
			`quicpipe_relay_dropped_packets_total{reason="unknown_cid"}`,
			`quicpipe_relay_rejected_requests_total{code="bad_json"}`,
			"quicpipe_relay_registrations 2",
			"quicpipe_relay_handshakes_total 2",
			"quicpipe_relay_stateless_resets_total 0",
			"quicpipe_relay_tunnels 0",
			`quicpipe_relay_address_probes_total{result="answered"} 0`,
		} {
			if strings.HasPrefix(line, name) {
				found[name] = true
			}
		}
	}
	if len(found) != 8 {
		t.Fatalf("metrics found: %v, want all 8", found)
	}
}
