package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/anycast"
)

// ownRegistrations is the number of registrations r holds itself (not
// another member's).
func ownRegistrations(r *quicpipe.Relay) int {
	s := r.Stats()
	return s.Registrations - s.RemoteRegistrations
}

// TestFleetRehash: two members with one identity behind one address (an
// anycast proxy); a listener holds its mailbox and a dialer a pipe through
// member a. The proxy switches every peer to member b, as a re-hash does:
// b answers the peers' packets for a's relay CIDs with stateless resets
// (keyed by the shared identity, so the peers accept them), the peers
// register again at b and the listener reopens its mailbox there, within
// about one RelayKeepAlive; the pipe, forwarded by b now, loses nothing;
// a new dial reaches the listener through b.
func TestFleetRehash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := startNATS(t, true)
	id := quicpipe.GenerateIdentity()
	a := newMailboxMember(t, url, "a", nil, id)
	b := newMailboxMember(t, url, "b", nil, id)
	ap := func(tm *mailboxMember) netip.AddrPort {
		return tm.relay.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	}
	proxy, err := anycast.New(ap(a), ap(b))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	const keepAlive = 2 * time.Second // quicpipe's default RelayKeepAlive
	cfg := func(me ed25519.PrivateKey, trusted ...ed25519.PrivateKey) *quicpipe.Config {
		c := a.peerConfig(me, trusted...)
		c.RelayAddr = proxy.Addr().String()
		c.RelayKeepAlive = keepAlive
		return c
	}
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc, err := quicpipe.NewAccepter(ctx, cfg(listenerID, dialerID))
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := quicpipe.NewDialer(ctx, cfg(dialerID))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	accepted := acceptOne(ctx, acc)
	dc, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.Fatal("the listener accepted nothing")
	}
	defer ac.CloseWithError(0, "")
	if n := ownRegistrations(a.relay); n != 2 {
		t.Fatalf("a holds %d registrations, want the two peers'", n)
	}
	if n := ownRegistrations(b.relay); n != 0 {
		t.Fatalf("b holds %d registrations before the switch, want 0", n)
	}

	// A transfer that spans the switch: the dialer sends 16 KB every 10 ms
	// until stopped, the listener echoes.
	stop := make(chan struct{})
	result := startPacedEcho(t, ctx, dc, ac, stop)
	time.Sleep(500 * time.Millisecond)

	fwdA, fwdB := a.relay.Stats().Forwarded, b.relay.Stats().Forwarded
	if err := proxy.Route(1); err != nil {
		t.Fatal(err)
	}
	moved := waitFor(t, 5*keepAlive, "b holds both peers' registrations and the mailbox", func() bool {
		return ownRegistrations(b.relay) == 2 && b.relay.MailboxStats().Open == 1
	})
	t.Logf("after the switch: b holds both registrations and the mailbox after %v (RelayKeepAlive %v)", moved, keepAlive)
	sb := b.relay.Stats()
	if sb.Resets == 0 {
		t.Fatal("b sent no stateless reset for a's relay CIDs")
	}
	t.Logf("b: %d stateless resets, %d handshakes", sb.Resets, sb.Handshakes)
	waitFor(t, 5*time.Second, "a lets the mailbox go", func() bool { return a.relay.MailboxStats().Open == 0 })
	waitFor(t, 5*time.Second, "a holds b's records of the peers instead of its own", func() bool {
		return ownRegistrations(a.relay) == 0 && a.relay.Stats().RemoteRegistrations == 2
	})

	time.Sleep(500 * time.Millisecond)
	close(stop)
	r := <-result
	if r.err != nil {
		t.Fatalf("the pipe across the switch: %v", r.err)
	}
	t.Logf("the pipe carried %d bytes each way across the switch", r.n)
	if b.relay.Stats().Forwarded == fwdB {
		t.Fatal("b forwarded nothing of the pipe after the switch")
	}
	t.Logf("forwarded after the switch: a %d, b %d datagrams", a.relay.Stats().Forwarded-fwdA, b.relay.Stats().Forwarded-fwdB)

	// The listener listens at b now: a new dial reaches it.
	accepted = acceptOne(ctx, acc)
	dc2, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatalf("dial after the switch: %v", err)
	}
	defer dc2.CloseWithError(0, "")
	if ac2 := <-accepted; ac2 == nil {
		t.Fatal("the listener accepted nothing after the switch")
	} else {
		ac2.CloseWithError(0, "")
	}
	if got := b.relay.MailboxStats().Delivered; got != 1 {
		t.Fatalf("b delivered %d flights, want 1", got)
	}
}

// echoResult is the outcome of a paced echo: the bytes sent (and received
// back, identical), or what went wrong.
type echoResult struct {
	n   int
	err error
}

// startPacedEcho has accepted echo one stream and sends 16 KB over it from
// dialed every 10 ms until stop is closed; the result says whether the echo
// came back whole (SHA-256).
func startPacedEcho(t *testing.T, ctx context.Context, dialed, accepted *quic.Conn, stop <-chan struct{}) <-chan echoResult {
	t.Helper()
	go func() {
		s, err := accepted.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	s, err := dialed.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type sentSum struct {
		n   int
		sum []byte
	}
	wrote := make(chan sentSum, 1)
	go func() {
		h := sha256.New()
		n := 0
		defer func() { wrote <- sentSum{n, h.Sum(nil)} }()
		chunk := make([]byte, 16<<10)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				s.Close()
				return
			case <-tick.C:
			}
			rand.Read(chunk)
			if _, err := s.Write(chunk); err != nil {
				return
			}
			h.Write(chunk)
			n += len(chunk)
		}
	}()
	res := make(chan echoResult, 1)
	go func() {
		got := sha256.New()
		n, err := io.Copy(got, s)
		w := <-wrote
		switch {
		case err != nil:
			res <- echoResult{int(n), fmt.Errorf("after %d of %d bytes: %w", n, w.n, err)}
		case int(n) != w.n || !bytes.Equal(got.Sum(nil), w.sum):
			res <- echoResult{int(n), fmt.Errorf("echo of %d bytes: got %d bytes back, SHA-256 differs", w.n, n)}
		default:
			res <- echoResult{int(n), nil}
		}
	}()
	return res
}
