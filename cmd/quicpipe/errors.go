package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

// How the command words its errors: each message says what is wrong, where
// (the relay's address, the flag) and what to do, once, after the
// command's own prefix ("quicpipe connect: ").

// message returns err's text without the library's "quicpipe: " prefixes:
// the command starts every message with its own name already.
func message(err error) string {
	s := strings.TrimPrefix(err.Error(), "quicpipe: ")
	return strings.ReplaceAll(s, ": quicpipe: ", ": ")
}

// checkRelayAddr checks the -relay flag: a host and a port, since the
// address goes into the ticket as it is given.
func checkRelayAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && ae.Err == "missing port in address" {
			return fmt.Errorf("-relay %s has no port: give host:port, as \"quicpipe relay\" prints it (its default port is 4433)", addr)
		}
		return fmt.Errorf("-relay %s is not host:port: %v", addr, err)
	}
	if host == "" {
		return fmt.Errorf("-relay %s has no host: give the relay's address or name, as dialers will reach it", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("-relay %s: the port must be a number from 1 to 65535", addr)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsUnspecified() {
		return fmt.Errorf("-relay %s: dialers cannot reach the unspecified address; give the relay's real address", addr)
	}
	return nil
}

// relayProblem explains a failed connection to the relay, or returns nil
// if err is not one: to a listener, whose relay is its -relay flag, or to
// a dialer, whose relay is the ticket's.
func relayProblem(err error, listener bool) error {
	var ce *quicpipe.RelayConnError
	if !errors.As(err, &ce) {
		return nil
	}
	waited := ce.Waited.Round(100 * time.Millisecond)
	switch {
	case errors.Is(err, quicpipe.ErrRelayUnreachable) && listener:
		return explain(err, "relay %s (-relay) unreachable: no answer within %v; check the address, that \"quicpipe relay\" runs there, and that UDP to it is allowed",
			ce.Addr, waited)
	case errors.Is(err, quicpipe.ErrRelayUnreachable):
		return explain(err, "the ticket's relay %s is unreachable: no answer within %v; the listener may have stopped (without -relay it takes its relay with it), or UDP to the relay is blocked",
			ce.Addr, waited)
	case errors.Is(err, quicpipe.ErrRelayKeyMismatch) && listener:
		got := "another key"
		if ce.Presented != nil {
			got = "the key " + quicpipe.EncodeKey(ce.Presented)
		}
		return explain(err, "the relay at %s presented %s, not the -relay-key %s: give the key it printed (\"relay key ...\")",
			ce.Addr, got, quicpipe.EncodeKey(ce.Pinned))
	case errors.Is(err, quicpipe.ErrRelayKeyMismatch):
		return explain(err, "the relay at %s is not the one the ticket names (it presented another key): the ticket is stale, or another relay took that address",
			ce.Addr)
	}
	return nil
}

// Just after a relay restart, a running listener has not reopened its
// mailbox yet: it learns of the restart at its next keep-alive to the relay
// (2 s, later if packets to the relay were lost meanwhile), then reopens it
// in one round trip. Connect keeps trying while the relay says that nobody
// listens, for noMailboxGrace, one dial every noMailboxRetry.
const (
	noMailboxGrace = 5 * time.Second
	noMailboxRetry = 500 * time.Millisecond
)

// dialTicket dials t, retrying while the relay answers that nobody is
// listening with it, for up to noMailboxGrace. The caller closes the
// returned Dialer, which unregisters from the relay before the command
// exits.
func dialTicket(ctx context.Context, t *quicpipe.Ticket, cfg *quicpipe.Config) (*quic.Conn, *quicpipe.Dialer, error) {
	dcfg, err := t.DialerConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	end := time.Now().Add(noMailboxGrace)
	for {
		conn, d, err := dialTicketOnce(ctx, t, dcfg)
		if err == nil || !noMailbox(err) || time.Now().Add(noMailboxRetry).After(end) {
			return conn, d, err
		}
		timer := time.NewTimer(noMailboxRetry)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, nil, err
		case <-timer.C:
		}
	}
}

// dialTicketOnce dials t's accepter through its mailbox from a new Dialer.
func dialTicketOnce(ctx context.Context, t *quicpipe.Ticket, cfg *quicpipe.Config) (*quic.Conn, *quicpipe.Dialer, error) {
	d, err := quicpipe.NewDialer(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	conn, err := d.DialMailbox(ctx, t.Peer)
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return conn, d, nil
}

// noMailbox reports whether err is the relay's answer that nobody listens
// with the ticket.
func noMailbox(err error) bool {
	return errors.Is(err, quicpipe.ErrNoMailbox)
}

// errNoListener is connect's error when the relay still knows nobody
// listening with the ticket after noMailboxGrace.
func errNoListener(relay string) error {
	return fmt.Errorf("nobody is listening with this ticket at relay %s (tried for %v): the listener has stopped, or it is still reconnecting to a restarted relay; if it runs, try again in a few seconds",
		relay, noMailboxGrace)
}

// explained is an error whose message says it all: it keeps the error it
// explains for errors.Is and errors.As without repeating its text.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// explain returns err with the message format says instead of its own.
func explain(err error, format string, args ...any) error {
	return &explained{msg: fmt.Sprintf(format, args...), err: err}
}
