package quicpipe_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/quicpipe/quicpipe"
)

// exampleRelay runs a relay with a mailbox on loopback until ctx ends and
// returns its address and public key.
func exampleRelay(ctx context.Context) (addr string, key ed25519.PublicKey) {
	id := quicpipe.GenerateIdentity()
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{Identity: id, Mailbox: &quicpipe.MailboxConfig{}})
	if err != nil {
		log.Fatal(err)
	}
	go r.Serve(ctx)
	return r.LocalAddr().String(), id.Public().(ed25519.PublicKey)
}

// This example carries a first flight by hand: the dialer's DeliverFunc
// turns it into one line of text, which the accepter parses and accepts.
// Any channel works (a chat message, a QR code, a file).
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayAddr, relayKey := exampleRelay(ctx)
	accepterID, dialerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()

	acc, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:    relayAddr,
		RelayKey:     relayKey,
		Identity:     accepterID,
		TrustedPeers: []ed25519.PublicKey{dialerID.Public().(ed25519.PublicKey)},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer acc.Close()

	lines := make(chan string, 1) // stands for the out-of-band channel
	go func() {
		flight, err := quicpipe.ParseFirstFlight([]byte(<-lines))
		if err != nil {
			log.Fatal(err)
		}
		conn, err := acc.Accept(ctx, flight)
		if err != nil {
			log.Fatal(err)
		}
		s, err := conn.AcceptStream(ctx)
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(s, s) // echo
		s.Close()
	}()

	conn, err := quicpipe.Dial(ctx, &quicpipe.Config{
		RelayAddr: relayAddr,
		RelayKey:  relayKey,
		Identity:  dialerID,
	}, accepterID.Public().(ed25519.PublicKey), func(ctx context.Context, f *quicpipe.FirstFlight) error {
		lines <- f.String() // one JSON line
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		log.Fatal(err)
	}
	s.Write([]byte("hello through the relay"))
	s.Close()
	answer, err := io.ReadAll(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(answer))
	// Output: hello through the relay
}

// This example lets the relay's mailbox carry the first flight: the
// accepter opens its mailbox and hands out a ticket; whoever holds the
// ticket dials with it.
func ExampleDialTicket() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayAddr, relayKey := exampleRelay(ctx)
	accepterID := quicpipe.GenerateIdentity()

	// The ticket's secret derives the dialer's identity: the accepter
	// trusts it.
	ticket := &quicpipe.Ticket{
		Peer:      accepterID.Public().(ed25519.PublicKey),
		RelayAddr: relayAddr,
		RelayKey:  relayKey,
		Secret:    quicpipe.NewTicketSecret(),
	}
	acc, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:    relayAddr,
		RelayKey:     relayKey,
		Identity:     accepterID,
		TrustedPeers: []ed25519.PublicKey{ticket.DialerIdentity().Public().(ed25519.PublicKey)},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer acc.Close()
	if err := acc.OpenMailbox(ctx); err != nil {
		log.Fatal(err)
	}
	text := ticket.String() // what the accepter hands out

	go func() {
		conn, err := acc.AcceptMailbox(ctx)
		if err != nil {
			log.Fatal(err)
		}
		s, err := conn.AcceptStream(ctx)
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(s, s) // echo
		s.Close()
	}()

	parsed, err := quicpipe.ParseTicket(text)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := quicpipe.DialTicket(ctx, parsed, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		log.Fatal(err)
	}
	s.Write([]byte("hello through the mailbox"))
	s.Close()
	answer, err := io.ReadAll(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(answer))
	// Output: hello through the mailbox
}

// A relay serves the registration API and the mailbox, and forwards packets,
// until its context ends or it is closed. Peers need its address and its
// public key (EncodeKey gives the text form the command prints).
func ExampleListenRelay() {
	identity := quicpipe.GenerateIdentity()
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{
		Identity: identity,
		Mailbox:  &quicpipe.MailboxConfig{},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()

	fmt.Println(r.LocalAddr().(*net.UDPAddr).IP)
	cancel() // or r.Shutdown(ctx) to drain first
	fmt.Println("Serve:", <-done)
	r.Close()
	// Output:
	// 127.0.0.1
	// Serve: <nil>
}

// An accepter holds a mailbox at its relay; a dialer that knows the
// accepter's public key (and the relay's) dials it there, and the relay
// carries the first flight.
func ExampleAccepter_AcceptMailbox() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayAddr, relayKey := exampleRelay(ctx)
	accepterID, dialerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()

	acc, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:    relayAddr,
		RelayKey:     relayKey,
		Identity:     accepterID,
		TrustedPeers: []ed25519.PublicKey{dialerID.Public().(ed25519.PublicKey)},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer acc.Close()
	if err := acc.OpenMailbox(ctx); err != nil {
		log.Fatal(err)
	}
	go func() {
		conn, err := acc.AcceptMailbox(ctx)
		if err != nil {
			return
		}
		s, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s) // echo
		s.Close()
	}()

	conn, err := quicpipe.DialMailbox(ctx, &quicpipe.Config{
		RelayAddr: relayAddr,
		RelayKey:  relayKey,
		Identity:  dialerID,
	}, accepterID.Public().(ed25519.PublicKey))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		log.Fatal(err)
	}
	io.WriteString(s, "hello through the mailbox")
	s.Close()
	answer, err := io.ReadAll(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(answer))
	// Output: hello through the mailbox
}
