package fleet

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/relaymetrics"
)

// TestMetrics: a member's counters and the relay's remote registrations
// are served at /metrics beside the relay's own.
func TestMetrics(t *testing.T) {
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", 2*time.Second)
	b := newTestMember(t, url, "b", 2*time.Second)
	key := newKey(t)
	newClient(t, a).do(t, http.MethodPost, key, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registration", func() bool {
		_, ok := b.relay.FleetRecord(key)
		return ok
	})
	ms, err := relaymetrics.Listen("127.0.0.1:0", b.relay, NewCollector(b.m))
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	resp, err := http.Get("http://" + ms.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := []string{
		"quicpipe_relay_remote_registrations 1",
		"quicpipe_relay_registrations 1",
		"quicpipe_fleet_applied_total 1",
		`quicpipe_fleet_ignored_entries_total{reason="malformed"} 0`,
		"quicpipe_fleet_heartbeats_total",
		"quicpipe_fleet_pending_writes 0",
	}
	found := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, w := range want {
			if strings.HasPrefix(sc.Text(), w) {
				found[w] = true
			}
		}
	}
	for _, w := range want {
		if !found[w] {
			t.Errorf("/metrics has no line %q", w)
		}
	}
}
