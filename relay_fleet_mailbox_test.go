package quicpipe

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

// TestDeliverMailbox: a flight handed in by another fleet member
// (DeliverMailbox) reaches the accepter as a post does, and is refused with
// the answers a post would get.
func TestDeliverMailbox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, &MailboxConfig{MaxPostBytes: 4000})
	aID, bID := GenerateIdentity(), GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, bID, pub(aID))
	go echoMailbox(ctx, a)

	// The dialer's flight goes to the relay by DeliverMailbox, not by a
	// post: what another member's Member does.
	d := e.dialer(t, ctx, aID)
	qc, err := d.Dial(ctx, pub(bID), func(ctx context.Context, f *FirstFlight) error {
		b, err := f.MarshalBinary()
		if err != nil {
			return err
		}
		return e.relay.DeliverMailbox(ctx, pub(bID), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(ctx, qc, 1000, 0); err != nil {
		t.Fatal(err)
	}
	if s := e.relay.MailboxStats(); s.HandedIn != 1 || s.Delivered != 1 || s.HandedOut != 0 {
		t.Fatalf("stats %+v, want 1 handed in and delivered", s)
	}

	flight := testFlightBinary(t)
	for _, c := range []struct {
		name   string
		key    []byte
		flight []byte
		status int
		code   string
	}{
		{"nobody holds it", pub(GenerateIdentity()), flight, http.StatusNotFound, CodeNoMailbox},
		{"bad flight", pub(bID), []byte{1, 2, 3}, http.StatusBadRequest, CodeBadFlight},
		{"too large", pub(bID), make([]byte, 4001), http.StatusRequestEntityTooLarge, CodeBodyTooLarge},
		{"bad key", []byte{1, 2, 3}, flight, http.StatusBadRequest, CodeBadKey},
	} {
		err := e.relay.DeliverMailbox(ctx, c.key, c.flight)
		if !isRelayError(err, c.status, c.code) {
			t.Errorf("%s: %v, want %d %s", c.name, err, c.status, c.code)
		}
	}

	off, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if err := off.DeliverMailbox(ctx, pub(bID), flight); !isRelayError(err, http.StatusNotFound, CodeNotFound) {
		t.Errorf("relay without a mailbox: %v, want 404 not_found", err)
	}
	if off.YieldMailbox(pub(bID)) {
		t.Error("relay without a mailbox yielded one")
	}
}

// TestYieldMailbox: a mailbox another member took (YieldMailbox) ends as a
// mailbox taken at this relay does: its accepter is told, and the relay
// holds it no more.
func TestYieldMailbox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	aID, bID := GenerateIdentity(), GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, bID, pub(aID))
	done := make(chan error, 1)
	go func() {
		_, err := a.AcceptMailbox(ctx)
		done <- err
	}()
	if e.relay.YieldMailbox(pub(aID)) {
		t.Fatal("yielded a mailbox nobody holds")
	}
	if !e.relay.YieldMailbox(pub(bID)) {
		t.Fatal("did not yield the open mailbox")
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrMailboxTaken) {
			t.Fatalf("accepter: %v, want ErrMailboxTaken", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the accepter was not told within 5s")
	}
	if s := e.relay.MailboxStats(); s.Open != 0 || s.Yielded != 1 {
		t.Fatalf("stats %+v, want none open, 1 yielded", s)
	}
	if err := e.relay.DeliverMailbox(ctx, pub(bID), testFlightBinary(t)); !errors.Is(err, ErrNoMailbox) {
		t.Fatalf("deliver after the yield: %v, want ErrNoMailbox", err)
	}
}
