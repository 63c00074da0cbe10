package fleet

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/pipetest"
)

// TestFleetPipeAcrossMembers runs a pipe whose dialer is registered at
// member a and whose accepter is registered at member b (direct paths off):
// each member forwards to a peer registered at the other (both must count
// forwarded datagrams). 1 MB goes each way, checked by SHA-256.
func TestFleetPipeAcrossMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", 2*time.Second)
	b := newTestMember(t, url, "b", 2*time.Second)
	dialerID, accepterID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	cfg := func(tm *testMember, id ed25519.PrivateKey, trusted ...ed25519.PrivateKey) *quicpipe.Config {
		c := &quicpipe.Config{
			RelayAddr:     tm.addr().String(),
			RelayKey:      tm.relayID.Public().(ed25519.PublicKey),
			Identity:      id,
			DisableDirect: true,
		}
		for _, k := range trusted {
			c.TrustedPeers = append(c.TrustedPeers, k.Public().(ed25519.PublicKey))
		}
		return c
	}
	dc, ac := pipetest.Pipe(t, ctx, cfg(a, dialerID), cfg(b, accepterID, dialerID))
	pipetest.Echo(t, ctx, dc, ac, 1<<20)
	sa, sb := a.relay.Stats(), b.relay.Stats()
	t.Logf("a forwarded %d datagrams, b %d; a holds %d remote registrations, b %d",
		sa.Forwarded, sb.Forwarded, sa.RemoteRegistrations, sb.RemoteRegistrations)
	if sa.Forwarded == 0 || sb.Forwarded == 0 {
		t.Fatal("a member forwarded nothing: the pipe did not cross members")
	}
}
