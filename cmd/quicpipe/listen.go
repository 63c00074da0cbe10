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
	o, err := parseListenFlags(e)
	if err != nil {
		return err
	}
	log := logger(e, o.verbose)
	key, err := loadIdentity(e, o.identity)
	if err != nil {
		return err
	}

	ticket := &quicpipe.Ticket{Peer: publicKey(key), RelayAddr: o.relayAddr}
	where := "relay " + o.relayAddr
	if o.relayAddr == "" {
		relay, err := startRelay(ctx, o.relayListen, log)
		if err != nil {
			return err
		}
		defer relay.Close()
		ticket.RelayAddr = relay.LocalAddr().String()
		ticket.RelayKey = relay.key
		where = "a relay in this process at " + ticket.RelayAddr
	} else {
		ticket.RelayKey = o.relayKey[0]
	}
	trusted := []ed25519.PublicKey(o.allow)
	if len(trusted) == 0 {
		ticket.Secret = quicpipe.NewTicketSecret()
		trusted = []ed25519.PublicKey{publicKey(ticket.DialerIdentity())}
	}
	if _, err := ticket.MarshalText(); err != nil {
		return fmt.Errorf("cannot make a ticket for relay %s: %w", ticket.RelayAddr, err)
	}
	pipe := o.tcpTarget == ""
	a, err := openListener(ctx, e, ticket, o, key, trusted, log)
	if err != nil {
		return err
	}
	defer a.Close()
	// The ticket tells dialers whose UDP is blocked where the relay's
	// tunnel is: as this listener was told, or as the relay announced it.
	ticket.TunnelURL = ticketTunnel(o.tunnel.url, a.Registration().TunnelURL, ticket.RelayAddr)
	text, err := ticket.MarshalText()
	if err != nil {
		return fmt.Errorf("cannot make a ticket for relay %s: %w", ticket.RelayAddr, err)
	}

	fmt.Fprintf(e.stderr, "quicpipe: listening through %s\n", where)
	if len(o.allow) > 0 {
		fmt.Fprintf(e.stderr, "quicpipe: accepting %d allowed key(s)\n", len(o.allow))
	}
	if o.ticketFile != "" {
		if err := writeTicketFile(o.ticketFile, text); err != nil {
			return err
		}
		defer os.Remove(o.ticketFile)
	}
	showTicket(e, text, pipe, o.showQR)
	if !pipe {
		return serveTCP(ctx, e, a, o.tcpTarget, o.verbose, o.timeout)
	}
	return servePipe(ctx, e, a, o)
}

// listenOpts are listen's flags.
type listenOpts struct {
	relayAddr, relayToken, relayListen string
	relayKey, allow                    keyList
	tcpTarget, identity, ticketFile    string
	showQR, verbose, recvOnly          bool
	timeout                            time.Duration
	tunnel                             *tunnelFlags
}

// parseListenFlags parses and checks listen's flags, and removes the
// ticket file of an earlier run.
func parseListenFlags(e *env) (*listenOpts, error) {
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
	var o listenOpts
	fs.StringVar(&o.relayAddr, "relay", "", "relay UDP `address` (host:port); empty: run one in this process")
	fs.Var(&o.relayKey, "relay-key", "public `key` of the relay given with -relay")
	fs.StringVar(&o.relayToken, "relay-token", "", "bearer `token` for a relay that requires one")
	fs.StringVar(&o.relayListen, "relay-listen", "127.0.0.1:0", "UDP `address` of the in-process relay (without -relay)")
	fs.StringVar(&o.tcpTarget, "tcp", "", "forward each incoming connection to this TCP `address` (host:port)")
	fs.Var(&o.allow, "allow", "accept only dialers with this public `key` (repeatable); the ticket then has no secret")
	fs.StringVar(&o.identity, "identity", defaultIdentity("identity"), "identity `file` (created if missing)")
	fs.BoolVar(&o.showQR, "qr", true, "show the ticket as a QR code when standard error is a terminal")
	fs.BoolVar(&o.verbose, "v", false, "log everything, not only warnings")
	fs.BoolVar(&o.recvOnly, "recv", false, "only receive: do not read standard input (this side's input is empty)")
	fs.StringVar(&o.ticketFile, "ticket-file", "", "also write the ticket to this `file` (mode 0600) once the listener is ready; removed at exit")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up if no dialer has connected within this `duration` (0: wait until stopped)")
	o.tunnel = addTunnelFlags(fs)
	sf := addScriptFlags(fs)
	if err := parseFlags(fs, e); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() != 0:
		return nil, usageError(fs, e, "unexpected arguments %q", fs.Args())
	case o.relayAddr != "" && len(o.relayKey) != 1:
		return nil, usageError(fs, e, "-relay needs the relay's key: -relay-key KEY")
	case o.relayAddr == "" && len(o.relayKey) != 0:
		return nil, usageError(fs, e, "-relay-key needs -relay")
	case o.timeout < 0:
		return nil, usageError(fs, e, "-timeout must not be negative")
	}
	sf.apply(e)
	if err := o.tunnel.apply(&quicpipe.Config{}, e); err != nil {
		return nil, usageError(fs, e, "%v", err)
	}
	if o.ticketFile != "" {
		// A script waiting for the file must not read an earlier run's.
		if err := os.Remove(o.ticketFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("-ticket-file: %w", err)
		}
	}
	if o.relayAddr != "" {
		if err := checkRelayAddr(o.relayAddr); err != nil {
			return nil, usageError(fs, e, "%v", err)
		}
	}
	return &o, nil
}

// openListener opens the Accepter of a listen and its mailbox.
func openListener(ctx context.Context, e *env, ticket *quicpipe.Ticket, o *listenOpts, key ed25519.PrivateKey,
	trusted []ed25519.PublicKey, log *slog.Logger) (*quicpipe.Accepter, error) {
	pipe := o.tcpTarget == ""
	cfg := &quicpipe.Config{
		RelayAddr:    ticket.RelayAddr,
		RelayKey:     ticket.RelayKey,
		RelayToken:   o.relayToken,
		Identity:     key,
		TrustedPeers: trusted,
		QUICConfig:   peerQUICConfig(),
		Logger:       log,
		OnPathChange: pathReporter(ctx, e, ticket.RelayAddr),
	}
	o.tunnel.apply(cfg, e) // checked by parseListenFlags
	a, err := quicpipe.NewAccepter(ctx, cfg)
	if err != nil {
		if rerr := relayProblem(err, true); rerr != nil && ctx.Err() == nil {
			return nil, rerr
		}
		return nil, interrupted(ctx, err, pipe)
	}
	o.tunnel.announce(e)
	if err := a.OpenMailbox(ctx); err != nil {
		a.Close()
		if errors.Is(err, quicpipe.ErrNotSupported) {
			return nil, fmt.Errorf("the relay does not offer mailboxes: %w", err)
		}
		if rerr := relayProblem(err, true); rerr != nil && ctx.Err() == nil {
			return nil, rerr
		}
		return nil, interrupted(ctx, err, pipe)
	}
	return a, nil
}

// showTicket tells the user how to connect: the connect command with the
// ticket, and a QR code on a terminal. With -tcp (pipe false), standard
// output is not the data stream: the ticket goes there too.
func showTicket(e *env, text []byte, pipe, showQR bool) {
	if !pipe {
		fmt.Fprintf(e.stdout, "%s\n", text)
	}
	connectFlags := ""
	if !pipe {
		connectFlags = "-tcp-listen 127.0.0.1:0 " // it prints the port it chose
	}
	fmt.Fprintf(e.stderr, "quicpipe: on the other side, run\n\n    %s connect %s%s\n\n", selfCommand(e.arg0), connectFlags, text)
	if showQR && isTerminal(e.stderrFile) {
		if q, err := renderQR(string(text)); err == nil {
			fmt.Fprint(e.stderr, q)
		}
	}
}

// servePipe accepts one dial through a's mailbox and pipes standard input
// and output through its session; later dials are refused.
func servePipe(ctx context.Context, e *env, a *quicpipe.Accepter, o *listenOpts) error {
	actx, cancelAccept := ctx, context.CancelFunc(func() {})
	if o.timeout > 0 {
		actx, cancelAccept = context.WithTimeout(ctx, o.timeout)
	}
	qc, err := a.AcceptMailbox(actx)
	cancelAccept()
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return fmt.Errorf("no dialer connected within %v (-timeout)", o.timeout)
		}
		return interrupted(ctx, err, true)
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
	in, inTerm := stdinFor(e, o.recvOnly)
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
	if r.LocalAddr().(*net.UDPAddr).IP.IsUnspecified() {
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
