package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
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
	acc, err := quicpipe.NewAccepter(ctx, cfg(b, accepterID, dialerID))
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	accepted := make(chan *quic.Conn, 1)
	dc, err := quicpipe.Dial(ctx, cfg(a, dialerID), accepterID.Public().(ed25519.PublicKey),
		func(ctx context.Context, f *quicpipe.FirstFlight) error {
			go func() {
				c, err := acc.Accept(ctx, f)
				if err != nil {
					t.Error(err)
				}
				accepted <- c
			}()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.FailNow()
	}
	defer ac.CloseWithError(0, "")

	data := make([]byte, 1<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	go func() {
		s, err := ac.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	s, err := dc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		s.Write(data)
		s.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(got); !bytes.Equal(sum[:], want[:]) {
		t.Fatalf("echo of %d bytes: got %d bytes, SHA-256 differs", len(data), len(got))
	}
	sa, sb := a.relay.Stats(), b.relay.Stats()
	t.Logf("a forwarded %d datagrams, b %d; a holds %d remote registrations, b %d",
		sa.Forwarded, sb.Forwarded, sa.RemoteRegistrations, sb.RemoteRegistrations)
	if sa.Forwarded == 0 || sb.Forwarded == 0 {
		t.Fatal("a member forwarded nothing: the pipe did not cross members")
	}
}
