package quicpipe_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/relaymetrics"
)

func TestRelayMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := quicpipe.RelayForMetricsTest(t, ctx)
	ms, err := relaymetrics.Listen("127.0.0.1:0", r)
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
		} {
			if strings.HasPrefix(line, name) {
				found[name] = true
			}
		}
	}
	if len(found) != 5 {
		t.Fatalf("metrics found: %v, want all 5", found)
	}
}
