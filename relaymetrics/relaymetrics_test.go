package relaymetrics

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicpipe/quicpipe"
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
	relayKey := relayID.Public().(ed25519.PublicKey)
	dID, aID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	a, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr: r.LocalAddr().String(), RelayKey: relayKey, Identity: aID,
		TrustedPeers: []ed25519.PublicKey{dID.Public().(ed25519.PublicKey)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	d, err := quicpipe.NewDialer(ctx, &quicpipe.Config{RelayAddr: r.LocalAddr().String(), RelayKey: relayKey, Identity: dID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	accepted := make(chan *quic.Conn, 1)
	c, err := d.Dial(ctx, aID.Public().(ed25519.PublicKey), func(ctx context.Context, f *quicpipe.FirstFlight) error {
		go func() {
			ac, err := a.Accept(ctx, f)
			if err != nil {
				t.Error(err)
				close(accepted)
				return
			}
			accepted <- ac
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ac := <-accepted
	if ac == nil {
		t.FailNow()
	}
	go func() {
		s, err := ac.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("x", 64<<10)
	go func() {
		io.WriteString(s, msg)
		s.Close()
	}()
	if got, err := io.ReadAll(s); err != nil || string(got) != msg {
		t.Fatalf("echo through the relay: %d bytes, %v", len(got), err)
	}
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
