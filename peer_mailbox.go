package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// The peer side of the relay's mailbox (see relay_mailbox.go): an Accepter opens
// its mailbox and accepts the flights the relay streams to it; a Dialer posts
// its first flight to the mailbox of the accepter it dials.

// ErrMailboxTaken is returned (wrapped) when another connection opened this
// accepter's mailbox at the relay, normally another process with the same
// identity. The Accepter does not take the mailbox back.
var ErrMailboxTaken = errors.New("quicpipe: mailbox taken over by another connection with the same key")

const (
	// postBusyFirstWait and postBusyMaxWait bound the pauses between
	// posts the relay refused as busy.
	postBusyFirstWait = 100 * time.Millisecond
	postBusyMaxWait   = time.Second
	// maxRetryAfter bounds the Retry-After a relay may ask for, in seconds.
	maxRetryAfter = 60
	// mailboxPending bounds the handshakes of mailbox dials in progress
	// (and established connections not yet taken by AcceptMailbox).
	mailboxPending = 16
	// mailboxAcceptTimeout bounds one mailbox handshake.
	mailboxAcceptTimeout = 30 * time.Second
)

// mailboxState is an Accepter's mailbox; the zero value is closed.
type mailboxState struct {
	mu     sync.Mutex
	client *mailboxClient
}

// mailboxClient keeps one Accepter's mailbox open: it reads the flights the
// relay writes into the open request, accepts each one, and reopens the
// mailbox when the request or the connection to the relay ends.
type mailboxClient struct {
	a      *Accepter
	ctx    context.Context
	cancel context.CancelFunc
	conns  chan *quic.Conn // established, for AcceptMailbox
	sem    chan struct{}
	wg     sync.WaitGroup

	reading atomic.Bool // the mailbox is open at the relay: read is reading it
	takeMu  sync.Mutex  // orders take's wg.Go before stop's return

	logMu      sync.Mutex
	logLast    time.Time
	suppressed int

	stopOnce sync.Once
	done     chan struct{} // closed when the mailbox stopped for good
	err      error         // why; set before done is closed
}

// OpenMailbox opens the Accepter's mailbox at its relay: dialers may then
// reach it with Dialer.DialMailbox, and AcceptMailbox returns their
// connections. It returns once the relay has confirmed the mailbox (a
// *RelayError if the relay refuses: errors.Is(err, ErrNotSupported) if its
// mailbox is off). The Accepter then keeps the mailbox open, reopening it
// after a lost connection, until CloseMailbox or Close. Calling OpenMailbox
// on an open mailbox does nothing.
//
// The relay lets only the holder of the private key open a mailbox: the
// request carries an Ed25519 signature over a value exported from the TLS
// session of the very connection that carries it.
func (a *Accepter) OpenMailbox(ctx context.Context) error {
	_, err := a.openMailbox(ctx)
	return err
}

func (a *Accepter) openMailbox(ctx context.Context) (*mailboxClient, error) {
	m := &a.mbox
	m.mu.Lock()
	defer m.mu.Unlock()
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if c := m.client; c != nil {
		select {
		case <-c.done:
			if errors.Is(c.err, ErrMailboxTaken) {
				return nil, c.err // do not take it back
			}
		default:
			return c, nil
		}
	}
	// Close must not wait for a slow relay: it ends the open at once.
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	go func() {
		select {
		case <-a.done:
			ocancel()
		case <-octx.Done():
		}
	}()
	cctx, cancel := context.WithCancel(context.Background())
	c := &mailboxClient{
		a:      a,
		ctx:    cctx,
		cancel: cancel,
		conns:  make(chan *quic.Conn),
		sem:    make(chan struct{}, mailboxPending),
		done:   make(chan struct{}),
	}
	body, err := c.open(octx)
	if err != nil {
		cancel()
		if errors.Is(err, context.Canceled) && ctx.Err() == nil {
			return nil, ErrClosed
		}
		return nil, err
	}
	m.client = c
	c.wg.Go(func() { c.run(body) })
	return c, nil
}

// AcceptMailbox waits for the next connection dialed through the Accepter's
// mailbox, opening the mailbox first if needed (see OpenMailbox). Flights
// that fail (a dialer whose key is not trusted, a dialer that gave up) are
// logged and skipped. A call waiting when CloseMailbox or Close is called
// returns ErrClosed (after CloseMailbox, the next call opens the mailbox
// again); it returns an error wrapping ErrMailboxTaken if another connection
// took the mailbox.
func (a *Accepter) AcceptMailbox(ctx context.Context) (*quic.Conn, error) {
	c, err := a.openMailbox(ctx)
	if err != nil {
		return nil, err
	}
	select {
	case qc := <-c.conns:
		return qc, nil
	case <-c.done:
		return nil, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// CloseMailbox closes the Accepter's mailbox, if open: the relay forgets it,
// dials through it are refused, and handshakes in progress are abandoned.
// Connections already returned by AcceptMailbox are not affected. It
// returns nil, or, if the mailbox had already ended on its own, the reason
// (for example an error wrapping ErrMailboxTaken); after it, OpenMailbox
// opens the mailbox again.
func (a *Accepter) CloseMailbox() error {
	m := &a.mbox
	m.mu.Lock()
	c := m.client
	m.client = nil
	m.mu.Unlock()
	if c == nil {
		return nil
	}
	var ended error
	select {
	case <-c.done:
		ended = c.err
	default:
	}
	c.stop(ErrClosed)
	c.wg.Wait()
	return ended
}

// stop ends the mailbox for good with err (the first reason wins).
func (c *mailboxClient) stop(err error) {
	c.cancel()
	c.takeMu.Lock() // a take under way has started its goroutine
	c.takeMu.Unlock()
	c.stopOnce.Do(func() {
		c.err = err
		close(c.done)
	})
}

// open sends the signed GET on the current connection to the relay and
// returns the body of the accepted request. ctx bounds the wait for the
// relay's answer; the request itself lives until c.ctx ends.
func (c *mailboxClient) open(ctx context.Context) (io.ReadCloser, error) {
	sess := c.a.p.sess
	cfg := c.a.p.cfg
	cc, qc, err := sess.currentConn(ctx)
	if err != nil {
		return nil, err
	}
	pub := cfg.Identity.Public().(ed25519.PublicKey)
	ekm, err := mailboxExporter(qc, pub)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: mailbox: TLS exporter: %w", err)
	}
	sig := ed25519.Sign(cfg.Identity, mailboxMessage(pub, ekm))
	rctx, rcancel := context.WithCancel(c.ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "https://"+ServerName+mailboxPath+EncodeKey(pub), nil)
	if err != nil {
		rcancel()
		return nil, err
	}
	req.Header.Set(mailboxSignatureHeader, base64.RawURLEncoding.EncodeToString(sig))
	sess.authorize(req)
	// The caller's ctx and the relay timeout bound the wait for the answer
	// only: canceling them before it arrives cancels the request.
	hctx, hcancel := context.WithTimeout(ctx, cfg.RelayTimeout)
	defer hcancel()
	stop := context.AfterFunc(hctx, rcancel)
	resp, err := cc.RoundTrip(req)
	if !stop() {
		if err == nil {
			resp.Body.Close()
			err = context.Cause(hctx)
		}
	}
	if err != nil {
		rcancel()
		return nil, fmt.Errorf("quicpipe: relay %s: opening the mailbox: %w", sess.addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		err := relayErrorOf(resp)
		rcancel()
		return nil, err
	}
	return &cancelBody{ReadCloser: resp.Body, cancel: rcancel}, nil
}

// cancelBody cancels its request when closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	b.cancel()
	return b.ReadCloser.Close()
}

// run reads the open mailbox and reopens it when it ends, until c.ctx ends.
func (c *mailboxClient) run(body io.ReadCloser) {
	log := c.a.p.cfg.Logger
	backoff := time.Duration(0)
	for {
		start := time.Now()
		c.reading.Store(true)
		c.a.kickSleep()
		err := c.read(body)
		c.reading.Store(false)
		body.Close()
		if c.ctx.Err() != nil {
			c.stop(ErrClosed)
			return
		}
		if errors.Is(err, ErrMailboxTaken) {
			log.Warn("mailbox closed by the relay", "err", err)
			c.stop(err)
			return
		}
		if woke := c.a.sleepGate(); woke != nil {
			// Asleep: the relay keeps the mailbox without the request.
			// Open it again on waking, at once.
			select {
			case <-woke:
			case <-c.ctx.Done():
				c.stop(ErrClosed)
				return
			}
			if body, err = c.open(c.ctx); err == nil {
				log.Debug("mailbox reopened after sleeping")
				continue
			}
			if c.ctx.Err() != nil {
				c.stop(ErrClosed)
				return
			}
			log.Warn("reopening the mailbox after sleeping failed; retrying", "err", err)
			backoff = 0
		} else {
			log.Info("mailbox lost; reopening", "err", err)
		}
		if time.Since(start) > mailboxStable {
			backoff = 0
		}
		for {
			// A short pause even the first time: the relay session is
			// typically reconnecting at the same moment.
			backoff = min(max(2*backoff, mailboxRetryMin), mailboxRetryMax)
			t := time.NewTimer(backoff)
			select {
			case <-c.ctx.Done():
				t.Stop()
				c.stop(ErrClosed)
				return
			case <-t.C:
			}
			body, err = c.open(c.ctx)
			if err == nil {
				log.Info("mailbox reopened")
				break
			}
			log.Warn("reopening the mailbox failed; retrying", "in", backoff, "err", err)
		}
	}
}

// Reopening a lost mailbox: retries back off from mailboxRetryMin to
// mailboxRetryMax, and start again from the minimum once a mailbox stayed
// open for mailboxStable.
const (
	mailboxRetryMin = 100 * time.Millisecond
	mailboxRetryMax = 10 * time.Second
	mailboxStable   = 30 * time.Second
)

// mailboxReadBuf is the initial size of the buffer of mailbox frames.
const mailboxReadBuf = 16 << 10

// Bounds of what a peer reads of a relay's answer: a JSON answer or error,
// and the body of an answer it does not need (read to reuse the stream).
const (
	maxAnswerBody = 64 << 10
	maxDrainBody  = 4096
)

// read processes the frames of one open mailbox until it ends.
func (c *mailboxClient) read(body io.Reader) error {
	buf := make([]byte, 0, mailboxReadBuf)
	for {
		typ, payload, err := readMailboxFrame(body, buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the relay ended the mailbox")
			}
			return err
		}
		switch typ {
		case mailboxFrameFlight:
			f, err := ParseFirstFlight(payload)
			if err != nil {
				c.logLimited(slog.LevelInfo, "mailbox: ignoring a bad first flight", "err", err)
				continue
			}
			c.take(f)
		case mailboxFrameClosed:
			return fmt.Errorf("%w (%s)", ErrMailboxTaken, payload)
		default:
			// Unknown frame types are skipped: later relays may send more.
		}
	}
}

// take accepts a flight delivered through the mailbox (read from the open
// request, or carried by a wake) in the background.
func (c *mailboxClient) take(f *FirstFlight) {
	if _, err := f.check(); err != nil {
		c.logLimited(slog.LevelInfo, "mailbox: ignoring a bad first flight", "err", err)
		return
	}
	select {
	case c.sem <- struct{}{}:
	default:
		c.logLimited(slog.LevelWarn, "mailbox: too many dials in progress; dropping a first flight")
		return
	}
	c.takeMu.Lock()
	defer c.takeMu.Unlock()
	if c.ctx.Err() != nil {
		<-c.sem
		return
	}
	c.wg.Go(func() {
		defer func() { <-c.sem }()
		c.accept(f)
	})
}

// logLimited logs at most one message per second: anyone can post to a
// mailbox, so what a post causes must not flood the log.
func (c *mailboxClient) logLimited(level slog.Level, msg string, args ...any) {
	c.logMu.Lock()
	now := time.Now()
	if now.Sub(c.logLast) < time.Second {
		c.suppressed++
		c.logMu.Unlock()
		return
	}
	c.logLast = now
	if c.suppressed > 0 {
		args = append(args, "suppressed", c.suppressed)
		c.suppressed = 0
	}
	c.logMu.Unlock()
	c.a.p.cfg.Logger.Log(context.Background(), level, msg, args...)
}

// accept completes one mailbox dial and hands the connection over.
func (c *mailboxClient) accept(f *FirstFlight) {
	ctx, cancel := context.WithTimeout(c.ctx, mailboxAcceptTimeout)
	qc, err := c.a.Accept(ctx, f)
	cancel()
	if err != nil {
		if c.ctx.Err() == nil {
			// A warning: a dial that failed here leaves a person waiting
			// on the other side, and the listener's log is where they
			// will look. Rate-limited, since anyone may post a flight.
			c.logLimited(slog.LevelWarn, "mailbox: a dial failed", "err", err)
		}
		return
	}
	select {
	case c.conns <- qc:
	case <-c.ctx.Done():
		qc.CloseWithError(0, "accepter closed")
	}
}

// PostToMailbox posts a first flight to the mailbox of the accepter whose
// key is peer, at the Dialer's relay, over the Dialer's connection to it. It
// returns once the relay has written the flight to the accepter, or a
// *RelayError: errors.Is(err, ErrNoMailbox) if the accepter is not
// listening there. A refusal for now (code "mailbox_busy": flights are
// piling up for that accepter; "rate_limited": this address posts too
// often) is tried again after the relay's Retry-After, or a pause growing
// from 100 ms to 1 s, while ctx leaves time for it; then the refusal is
// returned (errors.Is(err, ErrRelayLimit)).
func (d *Dialer) PostToMailbox(ctx context.Context, peer ed25519.PublicKey, f *FirstFlight) error {
	if len(peer) != ed25519.PublicKeySize {
		return fmt.Errorf("quicpipe: peer key must be %d bytes, got %d", ed25519.PublicKeySize, len(peer))
	}
	body, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	wait := postBusyFirstWait
	for {
		err := d.postOnce(ctx, peer, body)
		var re *RelayError
		if !errors.As(err, &re) || (re.Code != CodeMailboxBusy && re.Code != CodeRateLimited) {
			return err
		}
		// Busy or over the post rate: the relay refused for now. Try again
		// after the wait it asked for, else after a growing pause, while
		// ctx allows.
		pause := wait
		if re.RetryAfter > 0 {
			pause = re.RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, postBusyMaxWait)
	}
}

// postOnce posts one binary first flight to peer's mailbox.
func (d *Dialer) postOnce(ctx context.Context, peer ed25519.PublicKey, body []byte) error {
	sess := d.p.sess
	cc, _, err := sess.currentConn(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, d.p.cfg.RelayTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, "https://"+ServerName+mailboxPath+EncodeKey(peer), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mailboxContentType)
	sess.authorize(req)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("quicpipe: relay %s: posting to the mailbox: %w", sess.addr, err)
	}
	if resp.StatusCode/100 != 2 {
		return relayErrorOf(resp)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainBody))
	resp.Body.Close()
	return nil
}

// DialMailbox dials the accepter whose key is peer through its mailbox at
// the Dialer's relay: Dial with PostToMailbox as the delivery. The accepter
// must listen at the same relay (Accepter.OpenMailbox).
func (d *Dialer) DialMailbox(ctx context.Context, peer ed25519.PublicKey) (*quic.Conn, error) {
	return d.Dial(ctx, peer, func(ctx context.Context, f *FirstFlight) error {
		return d.PostToMailbox(ctx, peer, f)
	})
}

// DialMailbox is a convenience for one connection through a mailbox, as Dial
// is for one connection: the connection owns its Dialer, which closes once
// the connection ends.
func DialMailbox(ctx context.Context, cfg *Config, peer ed25519.PublicKey) (*quic.Conn, error) {
	return dialOwned(ctx, cfg, func(d *Dialer) (*quic.Conn, error) { return d.DialMailbox(ctx, peer) })
}

// relayErrorOf turns an error answer of the relay into a *RelayError and
// closes its body.
func relayErrorOf(resp *http.Response) error {
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
	var e errorResponse
	if json.Unmarshal(data, &e) != nil || e.Code == "" {
		e = errorResponse{Code: "unknown", Error: string(bytes.TrimSpace(data))}
	}
	re := &RelayError{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		re.RetryAfter = time.Duration(min(secs, maxRetryAfter)) * time.Second
	}
	return re
}
