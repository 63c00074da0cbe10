package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

// keyList is a repeatable flag of public keys.
type keyList []ed25519.PublicKey

func (l *keyList) String() string {
	s := make([]string, len(*l))
	for i, k := range *l {
		s[i] = quicpipe.EncodeKey(k)
	}
	return strings.Join(s, ",")
}

func (l *keyList) Set(v string) error {
	k, err := quicpipe.ParseKey(v)
	if err != nil {
		return err
	}
	*l = append(*l, k)
	return nil
}

// cmdListen prints a ticket and serves the dials made with it.
func cmdListen(ctx context.Context, e *env) error {
	fs := newFlagSet(e, "listen", "",
		"Prints a ticket, then accepts a dial made with it through the relay's mailbox and\n"+
			"pipes standard input to the dialer and what it sends to standard output. The\n"+
			"session ends when both sides have reached the end of their input (Ctrl-D on a\n"+
			"terminal), or on Ctrl-C. A terminal from which nothing was sent does not hold the\n"+
			"session open: \"quicpipe listen > file\" ends when the dialer's input does\n"+
			"(-recv: send nothing, whatever standard input is). Exit status: 0 for a complete\n"+
			"session, 1 on errors, 130/143 on Ctrl-C/SIGTERM.\n\n"+
			"With -tcp, every connection the dialer makes is forwarded to a local TCP service\n"+
			"instead, until Ctrl-C; the ticket is then also printed on standard output.\n"+
			"Scripts: -q, -ticket-file, -timeout.\n\n"+
			"Without -relay, a relay runs inside this process on loopback: the dialer must then\n"+
			"run on this machine (or use -relay-listen with an address it can reach).\n\n"+
			"Trust: by default the ticket carries a fresh secret and whoever holds the ticket\n"+
			"may connect. With -allow, the ticket carries no secret and only the listed keys\n"+
			"(see \"quicpipe key\") may connect.\n")
	relayAddr := fs.String("relay", "", "relay UDP `address` (host:port); empty: run one in this process")
	var relayKey keyList
	fs.Var(&relayKey, "relay-key", "public `key` of the relay given with -relay")
	relayToken := fs.String("relay-token", "", "bearer `token` for a relay that requires one")
	relayListen := fs.String("relay-listen", "127.0.0.1:0", "UDP `address` of the in-process relay (without -relay)")
	tcpTarget := fs.String("tcp", "", "forward each incoming connection to this TCP `address` (host:port)")
	var allow keyList
	fs.Var(&allow, "allow", "accept only dialers with this public `key` (repeatable); the ticket then has no secret")
	identity := fs.String("identity", defaultIdentity("identity"), "identity `file` (created if missing)")
	showQR := fs.Bool("qr", true, "show the ticket as a QR code when standard error is a terminal")
	verbose := fs.Bool("v", false, "log everything, not only warnings")
	recvOnly := fs.Bool("recv", false, "only receive: do not read standard input (this side's input is empty)")
	ticketFile := fs.String("ticket-file", "", "also write the ticket to this `file` (mode 0600) once the listener is ready; removed at exit")
	timeout := fs.Duration("timeout", 0, "give up if no dialer has connected within this `duration` (0: wait until stopped)")
	sf := addScriptFlags(fs)
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageError(fs, e, "unexpected arguments %q", fs.Args())
	case *relayAddr != "" && len(relayKey) != 1:
		return usageError(fs, e, "-relay needs the relay's key: -relay-key KEY")
	case *relayAddr == "" && len(relayKey) != 0:
		return usageError(fs, e, "-relay-key needs -relay")
	case *timeout < 0:
		return usageError(fs, e, "-timeout must not be negative")
	}
	sf.apply(e)
	if *ticketFile != "" {
		// A script waiting for the file must not read an earlier run's.
		if err := os.Remove(*ticketFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("-ticket-file: %w", err)
		}
	}
	if *relayAddr != "" {
		if err := checkRelayAddr(*relayAddr); err != nil {
			return usageError(fs, e, "%v", err)
		}
	}
	log := logger(e, *verbose)
	key, err := loadIdentity(e, *identity)
	if err != nil {
		return err
	}

	ticket := &quicpipe.Ticket{Peer: publicKey(key), RelayAddr: *relayAddr}
	where := "relay " + *relayAddr
	if *relayAddr == "" {
		relay, err := startRelay(ctx, *relayListen, log)
		if err != nil {
			return err
		}
		defer relay.Close()
		ticket.RelayAddr = relay.Addr().String()
		ticket.RelayKey = relay.key
		where = "a relay in this process at " + ticket.RelayAddr
	} else {
		ticket.RelayKey = relayKey[0]
	}
	trusted := []ed25519.PublicKey(allow)
	if len(trusted) == 0 {
		ticket.Secret = quicpipe.NewTicketSecret()
		trusted = []ed25519.PublicKey{publicKey(ticket.DialerIdentity())}
	}
	text, err := ticket.MarshalText()
	if err != nil {
		return fmt.Errorf("cannot make a ticket for relay %s: %w", ticket.RelayAddr, err)
	}
	a, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:    ticket.RelayAddr,
		RelayKey:     ticket.RelayKey,
		RelayToken:   *relayToken,
		Identity:     key,
		TrustedPeers: trusted,
		QUICConfig:   peerQUICConfig(),
		Logger:       log,
		OnPathChange: pathReporter(e),
	})
	pipe := *tcpTarget == ""
	if err != nil {
		if rerr := relayProblem(err, true); rerr != nil && ctx.Err() == nil {
			return rerr
		}
		return interrupted(ctx, err, pipe)
	}
	defer a.Close()
	if err := a.OpenMailbox(ctx); err != nil {
		var re *quicpipe.RelayError
		if errors.As(err, &re) && re.Code == "not_found" {
			return fmt.Errorf("the relay does not offer mailboxes: %w", err)
		}
		if rerr := relayProblem(err, true); rerr != nil && ctx.Err() == nil {
			return rerr
		}
		return interrupted(ctx, err, pipe)
	}

	fmt.Fprintf(e.stderr, "quicpipe: listening through %s\n", where)
	if len(allow) > 0 {
		fmt.Fprintf(e.stderr, "quicpipe: accepting %d allowed key(s)\n", len(allow))
	}
	if *ticketFile != "" {
		if err := writeTicketFile(*ticketFile, text); err != nil {
			return err
		}
		defer os.Remove(*ticketFile)
	}
	if *tcpTarget != "" {
		// Standard output is not the data stream: the ticket goes there.
		fmt.Fprintf(e.stdout, "%s\n", text)
	}
	connectFlags := ""
	if !pipe {
		connectFlags = "-tcp-listen 127.0.0.1:0 " // it prints the port it chose
	}
	fmt.Fprintf(e.stderr, "quicpipe: on the other side, run\n\n    %s connect %s%s\n\n", selfCommand(e.arg0), connectFlags, text)
	if *showQR && isTerminal(e.stderrFile) {
		if q, err := renderQR(string(text)); err == nil {
			fmt.Fprint(e.stderr, q)
		}
	}

	if !pipe {
		return serveTCP(ctx, e, a, *tcpTarget, *verbose, *timeout)
	}
	actx, cancelAccept := ctx, context.CancelFunc(func() {})
	if *timeout > 0 {
		actx, cancelAccept = context.WithTimeout(ctx, *timeout)
	}
	qc, err := a.AcceptMailbox(actx)
	cancelAccept()
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return fmt.Errorf("no dialer connected within %v (-timeout)", *timeout)
		}
		return interrupted(ctx, err, pipe)
	}
	// One session: the mailbox stays open so that every later dial is
	// refused with a clear code rather than left to time out or closed
	// half-way through its handshake.
	rctx, stopRefusing := context.WithCancel(ctx)
	refusing := make(chan struct{})
	go func() {
		defer close(refusing)
		refuseDials(rctx, e, a)
	}()
	defer func() {
		stopRefusing()
		<-refusing
	}()
	fmt.Fprintf(e.stderr, "quicpipe: connected to %s\n", quicpipe.EncodeKey(quicpipe.PeerKey(qc.ConnectionState().TLS)))
	stop := context.AfterFunc(ctx, func() { qc.CloseWithError(codeInterrupted, "interrupted") })
	s, err := qc.AcceptStream(ctx)
	if err == nil {
		err = readHeader(s)
	}
	if err == nil {
		// Taking the session: the dialer reports the connection now.
		_, err = s.Write(streamHeader[:])
	}
	if !stop() || ctx.Err() != nil {
		qc.CloseWithError(codeInterrupted, "interrupted")
		return stopped(ctx)
	}
	if err != nil {
		qc.CloseWithError(codeError, "")
		return connError(err)
	}
	in, inTerm := stdinFor(e, *recvOnly)
	prog := newProgress(e.stderr, showProgress(inTerm, isTerminal(e.stdoutFile), isTerminal(e.stderrFile)), isTerminal(e.stdoutFile))
	prog.start()
	err = pipeStdio(ctx, qc, s, in, e.stdout, true, inTerm, prog)
	prog.finish()
	return err
}

// refuseDials closes every connection dialed through a's mailbox with
// codeBusy, until ctx is done: the listener serves one session.
func refuseDials(ctx context.Context, e *env, a *quicpipe.Accepter) {
	for {
		qc, err := a.AcceptMailbox(ctx)
		if err != nil {
			return
		}
		qc.CloseWithError(codeBusy, "busy")
		fmt.Fprintf(e.stderr, "quicpipe: refused another dialer (%s): already connected\n", quicpipe.EncodeKey(quicpipe.PeerKey(qc.ConnectionState().TLS)))
	}
}

// interrupted turns an error caused by a signal into the signal's error in
// a stdin/stdout session (pipe), which it leaves incomplete, or into
// success in the modes that run until stopped.
func interrupted(ctx context.Context, err error, pipe bool) error {
	switch {
	case ctx.Err() == nil:
		return err
	case pipe:
		return stopped(ctx)
	}
	return nil
}

// inProcessRelay is the relay listen runs when no -relay is given.
type inProcessRelay struct {
	*quicpipe.Relay
	key  ed25519.PublicKey
	done chan struct{}
}

// startRelay starts a relay with a throwaway key and its mailbox on.
func startRelay(ctx context.Context, addr string, log *slog.Logger) (*inProcessRelay, error) {
	id := quicpipe.GenerateIdentity()
	r, err := quicpipe.ListenRelay(addr, &quicpipe.RelayConfig{
		Identity: id,
		Mailbox:  &quicpipe.MailboxConfig{},
	})
	if err != nil {
		return nil, err
	}
	if r.Addr().IP.IsUnspecified() {
		r.Close()
		return nil, fmt.Errorf("-relay-listen %s: give an address dialers can reach, not the unspecified address", addr)
	}
	ir := &inProcessRelay{Relay: r, key: publicKey(id), done: make(chan struct{})}
	go func() {
		defer close(ir.done)
		if err := r.Serve(ctx); err != nil {
			log.Warn("in-process relay stopped", "err", err)
		}
	}()
	return ir, nil
}

// serveTCP forwards every stream of every connection dialed through the
// mailbox to target, until ctx is done.
// With a timeout, it gives up if no connection came within it.
func serveTCP(ctx context.Context, e *env, a *quicpipe.Accepter, target string, verbose bool, timeout time.Duration) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	conns := map[*quic.Conn]struct{}{}
	defer func() {
		mu.Lock()
		for qc := range conns {
			qc.CloseWithError(codeOK, "")
		}
		mu.Unlock()
	}()
	fmt.Fprintf(e.stderr, "quicpipe: forwarding connections to tcp %s\n", target)
	for first := true; ; first = false {
		actx, cancelAccept := ctx, context.CancelFunc(func() {})
		if first && timeout > 0 {
			actx, cancelAccept = context.WithTimeout(ctx, timeout)
		}
		qc, err := a.AcceptMailbox(actx)
		cancelAccept()
		if err != nil {
			if ctx.Err() == nil && actx.Err() != nil {
				return fmt.Errorf("no dialer connected within %v (-timeout)", timeout)
			}
			return interrupted(ctx, err, false)
		}
		peer := quicpipe.EncodeKey(quicpipe.PeerKey(qc.ConnectionState().TLS))
		fmt.Fprintf(e.stderr, "quicpipe: connected to %s\n", peer)
		mu.Lock()
		conns[qc] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			err := serveConnTCP(ctx, e, qc, target, verbose)
			mu.Lock()
			delete(conns, qc)
			mu.Unlock()
			if err != nil && ctx.Err() == nil && !cleanEnd(err) {
				fmt.Fprintf(e.stderr, "quicpipe: connection to %s ended: %v\n", peer, err)
			} else if ctx.Err() == nil {
				fmt.Fprintf(e.stderr, "quicpipe: %s disconnected\n", peer)
			}
		})
	}
}

// serveConnTCP forwards the streams of one connection to target.
func serveConnTCP(ctx context.Context, e *env, qc *quic.Conn, target string, verbose bool) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := qc.AcceptStream(ctx)
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := readHeader(s); err != nil {
				fmt.Fprintf(e.stderr, "quicpipe: stream %d: %v\n", s.StreamID(), err)
				return
			}
			d := net.Dialer{Timeout: 10 * time.Second}
			c, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				fmt.Fprintf(e.stderr, "quicpipe: cannot reach %s: %v\n", target, err)
				s.CancelRead(codeUnreachable)
				s.CancelWrite(codeUnreachable)
				return
			}
			if verbose {
				fmt.Fprintf(e.stderr, "quicpipe: stream %d → %s\n", s.StreamID(), c.LocalAddr())
			}
			if err := forwardTCP(c.(*net.TCPConn), s); err != nil && verbose {
				fmt.Fprintf(e.stderr, "quicpipe: stream %d: %v\n", s.StreamID(), err)
			}
		})
	}
}
