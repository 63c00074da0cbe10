package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

// cmdConnect dials the listener a ticket names.
func cmdConnect(ctx context.Context, e *env) error {
	fs := newFlagSet(e, "connect", " TICKET",
		"Dials the listener that printed TICKET, through its relay, and pipes standard input\n"+
			"to it and what it sends to standard output. The session ends when both sides have\n"+
			"reached the end of their input (Ctrl-D on a terminal), or on Ctrl-C. A terminal\n"+
			"from which nothing was sent does not hold the session open: \"quicpipe connect\n"+
			"TICKET > file\" ends when the listener's input does (-recv: send nothing, whatever\n"+
			"standard input is). Exit status: 0 for a complete session, 1 on errors, 130/143\n"+
			"on Ctrl-C/SIGTERM.\n\n"+
			"With -tcp-listen, every connection made to a local TCP port is forwarded to the\n"+
			"listener instead (which forwards it to its -tcp service), until Ctrl-C.\n\n"+
			"A ticket with a secret is all the dialer needs. For a ticket without one, the\n"+
			"listener must allow this side's key (printed by \"quicpipe key\").\n")
	tcpListen := fs.String("tcp-listen", "", "accept TCP connections on this `address` and forward each one")
	identity := fs.String("identity", defaultIdentity("identity"), "identity `file`, used when the ticket has no secret")
	relayToken := fs.String("relay-token", "", "bearer `token` for a relay that requires one")
	timeout := fs.Duration("timeout", 30*time.Second, "give up if the listener has not answered within this `duration`")
	verbose := fs.Bool("v", false, "log everything, not only warnings")
	recvOnly := fs.Bool("recv", false, "only receive: do not read standard input (this side's input is empty)")
	tf := addTunnelFlags(fs)
	sf := addScriptFlags(fs)
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError(fs, e, "need exactly one ticket")
	}
	sf.apply(e)
	ticket, err := quicpipe.ParseTicket(fs.Arg(0))
	if err != nil {
		return err
	}
	log := logger(e, *verbose)
	cfg := &quicpipe.Config{RelayAddr: ticket.RelayAddr, RelayToken: *relayToken, QUICConfig: peerQUICConfig(), Logger: log, OnPathChange: pathReporter(ctx, e, ticket.RelayAddr)}
	if tf.url == "" {
		tf.url = ticket.TunnelURL // -tunnel-url overrides the ticket's
	}
	if err := tf.apply(cfg, e); err != nil {
		return usageError(fs, e, "%v", err)
	}
	if ticket.Secret == nil {
		key, err := loadIdentity(e, *identity)
		if err != nil {
			return err
		}
		cfg.Identity = key
		fmt.Fprintf(e.stderr, "quicpipe: the ticket has no secret; dialing as %s\n", quicpipe.EncodeKey(publicKey(key)))
	}
	dctx, cancel := context.WithTimeout(ctx, *timeout)
	conn, d, err := dialTicket(dctx, ticket, cfg)
	cancel()
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return interrupted(ctx, err, *tcpListen == "")
		case relayProblem(err, false) != nil:
			return relayProblem(err, false)
		case noMailbox(err):
			return errNoListener(ticket.RelayAddr)
		case errors.Is(err, quicpipe.ErrKeyRefused):
			return fmt.Errorf("the listener refused this side's key %s (a ticket without a secret needs the listener to -allow it): %w",
				quicpipe.EncodeKey(publicKey(dialerIdentity(ticket, cfg))), err)
		case errors.Is(err, context.DeadlineExceeded):
			// The error says whether the listener answered at all.
			return fmt.Errorf("gave up after %v: %w", *timeout, err)
		}
		return connError(err)
	}
	defer func() {
		conn.CloseWithError(0, "")
		d.Close()
	}()
	tf.announce(e)

	if *tcpListen != "" {
		fmt.Fprintf(e.stderr, "quicpipe: connected to %s\n", quicpipe.EncodeKey(ticket.Peer))
		return serveTCPListen(ctx, e, conn, *tcpListen, *verbose)
	}
	s, err := openSession(ctx, conn, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "quicpipe: connected to %s\n", quicpipe.EncodeKey(ticket.Peer))
	in, inTerm := stdinFor(e, *recvOnly)
	prog := newProgress(e.stderr, showProgress(inTerm, isTerminal(e.stdoutFile), isTerminal(e.stderrFile)), isTerminal(e.stdoutFile))
	prog.start()
	err = pipeStdio(ctx, conn, s, in, e.stdout, false, inTerm, prog)
	prog.finish()
	return err
}

// openSession opens the stdin/stdout stream and waits, up to timeout, until
// the listener takes the session by answering its header. A listener that
// serves another dialer closes the connection with codeBusy instead.
func openSession(ctx context.Context, conn *quic.Conn, timeout time.Duration) (*quic.Stream, error) {
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(codeInterrupted, "interrupted") })
	s, err := conn.OpenStreamSync(ctx)
	if err == nil {
		_, err = s.Write(streamHeader[:])
	}
	if err == nil {
		s.SetReadDeadline(time.Now().Add(timeout))
		var h [len(streamHeader)]byte
		if _, err = io.ReadFull(s, h[:]); err == nil && h != streamHeader {
			err = fmt.Errorf("the listener answered with % x, not the quicpipe header", h)
		}
		s.SetReadDeadline(time.Time{})
	}
	if !stop() || ctx.Err() != nil {
		conn.CloseWithError(codeInterrupted, "interrupted")
		return nil, stopped(ctx)
	}
	if err == nil {
		return s, nil
	}
	if cause := context.Cause(conn.Context()); cause != nil {
		err = cause // the connection's end explains the stream's failure
	}
	conn.CloseWithError(codeError, "")
	switch {
	case cleanEnd(err):
		return nil, errors.New("the listener closed the connection without taking the session (it stopped, or serves another dialer)")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, fmt.Errorf("the listener did not take the session within %v", timeout)
	}
	return nil, connError(err)
}

// serveTCPListen forwards each TCP connection accepted on addr over a new
// stream, until ctx is done or the connection ends.
func serveTCPListen(ctx context.Context, e *env, conn *quic.Conn, addr string, verbose bool) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		conn.CloseWithError(codeError, "")
		return err
	}
	fmt.Fprintf(e.stderr, "quicpipe: forwarding tcp %s to the listener\n", ln.Addr())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	go func() {
		<-conn.Context().Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	// Closing the connection ends the forwarding goroutines.
	code := quic.ApplicationErrorCode(codeError)
	defer func() { conn.CloseWithError(code, "") }()
	for {
		c, err := ln.Accept()
		if err != nil {
			ln.Close()
			if ctx.Err() != nil {
				code = codeOK
				return nil
			}
			if cerr := context.Cause(conn.Context()); cerr != nil {
				if cleanEnd(cerr) {
					code = codeOK
					fmt.Fprintln(e.stderr, "quicpipe: the listener closed the connection")
					return nil
				}
				return fmt.Errorf("connection to the listener: %w", connError(cerr))
			}
			return err
		}
		wg.Go(func() {
			s, err := conn.OpenStreamSync(ctx)
			if err == nil {
				_, err = s.Write(streamHeader[:])
			}
			if err != nil {
				c.Close()
				return
			}
			if verbose {
				fmt.Fprintf(e.stderr, "quicpipe: %s → stream %d\n", c.RemoteAddr(), s.StreamID())
			}
			err = forwardTCP(c.(*net.TCPConn), s)
			switch {
			case targetDown(err):
				// Said even without -v: the TCP client saw only a reset.
				fmt.Fprintf(e.stderr, "quicpipe: the listener could not reach its TCP service; reset the connection from %s\n", c.RemoteAddr())
			case err != nil && verbose:
				fmt.Fprintf(e.stderr, "quicpipe: stream %d: %v\n", s.StreamID(), err)
			}
		})
	}
}

// dialerIdentity returns the key connect dials with.
func dialerIdentity(t *quicpipe.Ticket, cfg *quicpipe.Config) ed25519.PrivateKey {
	if cfg.Identity != nil {
		return cfg.Identity
	}
	return t.DialerIdentity()
}
