package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// Registration describes a peer's current registration with its relay.
type Registration struct {
	// Observed is this peer's public address as the relay sees it (what
	// STUN would tell).
	Observed netip.AddrPort
	// First and Num give the registered window of CID indexes.
	First, Num uint32
	// Expires is when the registration lapses unless refreshed.
	Expires time.Time
	// TunnelURL is the URL of the relay's TLS/WebSocket tunnel as the
	// relay announced it (Config.TunnelURL's form: "wss://:8443/v1/tunnel"
	// leaves out the relay's host), or "" if it announced none. A
	// listener's tickets carry it.
	TunnelURL string
}

// relaySession keeps a peer registered with its relay: one HTTP/3
// connection over the peer's own socket, refreshed before the registration
// expires and before quic-go issues a CID outside the registered window, and
// re-established when it drops.
type relaySession struct {
	tr        *quic.Transport
	addr      *net.UDPAddr
	tlsConf   *tls.Config
	pinned    ed25519.PublicKey // the relay's key; nil with Config.RelayTLSConfig
	key       []byte
	gen       *cidGenerator
	window    uint32
	timeout   time.Duration
	token     string
	keepAlive time.Duration
	log       *slog.Logger

	regEnd  atomic.Uint32 // last registered CID index
	kick    chan struct{}
	recheck chan struct{} // see recheckObserved

	regMu sync.Mutex // serializes registrations; guards h3, cc, qc
	h3    *http3.Transport
	cc    *http3.ClientConn
	qc    *quic.Conn

	mu         sync.Mutex // guards reg, ttl, offer and onObserved
	reg        Registration
	ttl        time.Duration
	offer      *sleepOffer // what the relay's last answer said of sleep
	onObserved func()      // called when the observed address changes

	// gate, if set (an Accepter's), returns nil while the peer is awake,
	// and while it sleeps a channel closed when it wakes: the session
	// then neither refreshes nor reconnects (peer_sleep.go).
	gate atomic.Pointer[func() <-chan struct{}]

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
}

func newRelaySession(tr *quic.Transport, addr *net.UDPAddr, tlsConf *tls.Config, key []byte, gen *cidGenerator, cfg *Config) *relaySession {
	s := &relaySession{
		tr:        tr,
		addr:      addr,
		tlsConf:   http3.ConfigureTLSConfig(tlsConf),
		key:       key,
		gen:       gen,
		window:    uint32(cfg.RegistrationWindow),
		timeout:   cfg.RelayTimeout,
		token:     cfg.RelayToken,
		keepAlive: cfg.RelayKeepAlive,
		log:       cfg.Logger,
		kick:      make(chan struct{}, 1),
		recheck:   make(chan struct{}, 1),
		closed:    make(chan struct{}),
		h3:        &http3.Transport{},
	}
	if cfg.RelayTLSConfig == nil {
		s.pinned = cfg.RelayKey
	}
	gen.setNotify(func(issued uint32) {
		if end := s.regEnd.Load(); end > 0 && uint64(issued)+uint64(s.window/2) > uint64(end) {
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
	})
	return s
}

// start registers once and starts the maintenance loop.
func (s *relaySession) start(ctx context.Context) error {
	if err := s.register(ctx); err != nil {
		return err
	}
	s.wg.Go(s.run)
	return nil
}

// ensureWindow registers now if fewer than half a window of CIDs remain.
func (s *relaySession) ensureWindow(ctx context.Context) error {
	if uint64(s.gen.Issued())+uint64(s.window/2) <= uint64(s.regEnd.Load()) {
		return nil
	}
	return s.register(ctx)
}

func (s *relaySession) registration() Registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reg
}

// recheckAfter are the times, after a call to recheckObserved, at which
// the session registers again while the relay still reports the old
// address. The first request, sent from the peer's new address if its NAT
// rebound, makes the relay validate that path (one round trip) and migrate
// its connection; the request itself may be answered just before, so the
// next ones read the migrated address.
var recheckAfter = []time.Duration{0, 250 * time.Millisecond, time.Second}

// recheckObserved asks the relay for the peer's public address without
// waiting for the next refresh: a refresh now, and up to twice more (see
// recheckAfter) while the answer shows the address known before. It is
// called when the relay validates a new address of this peer (see
// challengeWatch) and when a direct path dies, which is what a rebinding of
// the peer's NAT does. It never blocks.
func (s *relaySession) recheckObserved() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

// challengeWatch is the qlog trace of a peer's connection to its relay. It
// records nothing; it calls onChallenge when a packet from the relay
// carries a PATH_CHALLENGE. Only a QUIC server validates a client's new
// address, so that is the relay seeing this peer arrive from a new address,
// which it moves the registration to as soon as the path is validated.
type challengeWatch struct{ onChallenge func() }

func (w challengeWatch) AddProducer() qlogwriter.Recorder { return w }

// RecordEvent runs on the connection's goroutine: onChallenge must not
// block.
func (w challengeWatch) RecordEvent(e qlogwriter.Event) {
	p, ok := e.(qlog.PacketReceived)
	if !ok {
		return
	}
	for _, f := range p.Frames {
		if _, ok := f.Frame.(*qlog.PathChallengeFrame); ok {
			w.onChallenge()
			return
		}
	}
}

func (challengeWatch) Close() error { return nil }

// setOnObserved sets the function called when a registration's answer
// reports a new observed address. It runs with the registration lock held
// and must not call back into the session.
func (s *relaySession) setOnObserved(f func()) {
	s.mu.Lock()
	s.onObserved = f
	s.mu.Unlock()
}

// run refreshes the registration at a third of its lifetime, when the CID
// counter nears the window's end, when the connection to the relay drops,
// and on recheckObserved.
func (s *relaySession) run() {
	backoff := time.Duration(0)
	var recheckAt time.Time // next recheck; zero: none pending
	var recheckN int        // rechecks done in the current series
	var recheckFrom netip.AddrPort
	for {
		s.waitAwake()
		s.mu.Lock()
		wait := max(s.ttl/3, registerRetryMin)
		s.mu.Unlock()
		if backoff > 0 {
			wait = backoff
		}
		if !recheckAt.IsZero() {
			wait = min(wait, max(time.Until(recheckAt), 0))
		}
		var connDone <-chan struct{}
		s.regMu.Lock()
		if s.qc != nil {
			connDone = s.qc.Context().Done()
		}
		s.regMu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-s.closed:
			t.Stop()
			return
		case <-s.kick:
		case <-s.recheck:
			if !recheckAt.IsZero() {
				t.Stop()
				continue // a series is under way
			}
			recheckFrom = s.registration().Observed
			recheckN = 0
			recheckAt = time.Now()
		case <-connDone:
			s.log.Info("connection to relay lost; reconnecting", "relay", s.addr.String())
		case <-t.C:
		}
		t.Stop()
		if s.asleep() != nil {
			continue // asleep: the connection closed on purpose
		}
		err := s.registerOnce()
		if !recheckAt.IsZero() && !time.Now().Before(recheckAt) {
			recheckN++
			if recheckN < len(recheckAfter) && s.registration().Observed == recheckFrom {
				recheckAt = recheckAt.Add(recheckAfter[recheckN] - recheckAfter[recheckN-1])
			} else {
				recheckAt = time.Time{}
			}
		}
		var full *windowFullError
		if errors.As(err, &full) {
			// Registered, but no room for new connections: say so and
			// carry on at the usual pace.
			s.log.Warn("relay refused a larger registration window; live connections stay registered, new ones cannot be", "relay", s.addr.String(), "err", err)
			err = nil
		}
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			backoff = min(max(2*backoff, registerRetryMin), registerRetryMax)
			s.log.Warn("relay registration failed; retrying", "relay", s.addr.String(), "in", backoff, "err", err)
			continue
		}
		backoff = 0
	}
}

// registerOnce registers once, within twice the relay timeout, or until
// the session closes.
func (s *relaySession) registerOnce() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.timeout)
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	return s.register(ctx)
}

// waitAwake waits while the peer sleeps; once it wakes, it registers at
// once (a new connection to the relay).
func (s *relaySession) waitAwake() {
	ch := s.asleep()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-s.closed:
		return
	}
	s.registerNow()
}

// asleep returns nil while the peer is awake, else a channel closed when
// it wakes.
func (s *relaySession) asleep() <-chan struct{} {
	if g := s.gate.Load(); g != nil {
		return (*g)()
	}
	return nil
}

// registerNow registers at once, retrying as run does, until it succeeds,
// the peer falls asleep again or the session closes.
func (s *relaySession) registerNow() {
	backoff := time.Duration(0)
	for {
		err := s.registerOnce()
		var full *windowFullError
		if err == nil || errors.As(err, &full) {
			return
		}
		select {
		case <-s.closed:
			return
		default:
		}
		backoff = min(max(2*backoff, registerRetryMin), registerRetryMax)
		s.log.Warn("relay registration after waking failed; retrying", "relay", s.addr.String(), "in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-s.closed:
			t.Stop()
			return
		case <-t.C:
		}
		if s.asleep() != nil {
			return
		}
	}
}

// sleepOffered returns the relay's sleep offer, or nil if it made none.
func (s *relaySession) sleepOffered() *sleepOffer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offer
}

// sleep asks the relay to let this peer sleep (POST /v1/sleep) over the
// current connection, and closes that connection once it agreed.
func (s *relaySession) sleep(ctx context.Context, req sleepRequest) (sleepAnswer, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var ans sleepAnswer
	if s.qc == nil || s.qc.Context().Err() != nil {
		return ans, errors.New("quicpipe: no connection to the relay to sleep on")
	}
	body, _ := json.Marshal(req)
	if err := s.doLocked(ctx, http.MethodPost, sleepPath, body, &ans, false); err != nil {
		return ans, err
	}
	if ans.KeepAliveMS <= 0 {
		return ans, fmt.Errorf("quicpipe: relay %s: sleep answer without a keep-alive interval", s.addr)
	}
	s.closeConnLocked()
	return ans, nil
}

// Registration refreshes go every third of the registration's lifetime,
// at most every registerRetryMin; failed ones are retried with a backoff
// from registerRetryMin to registerRetryMax.
const (
	registerRetryMin = 250 * time.Millisecond
	registerRetryMax = 10 * time.Second
)

// relayIdleTimeout is the QUIC idle timeout of the connection to the relay
// (keep-alives, Config.RelayKeepAlive, hold it open).
const relayIdleTimeout = 30 * time.Second

// conn returns the HTTP/3 connection to the relay, dialing it if needed.
// s.regMu must be held.
func (s *relaySession) conn(ctx context.Context) (*http3.ClientConn, error) {
	if s.qc != nil && s.qc.Context().Err() == nil {
		return s.cc, nil
	}
	s.closeConnLocked()
	qconf := &quic.Config{
		HandshakeIdleTimeout: s.timeout,
		MaxIdleTimeout:       relayIdleTimeout,
		// Frequent enough that the relay sees a NAT rebinding (the connection
		// migrates) and a restarted relay resets the connection within
		// seconds; either way the registration follows at once.
		KeepAlivePeriod: s.keepAlive,
		// The relay validates a new address of ours (a NAT rebinding)
		// with a PATH_CHALLENGE: ask it for that address at once.
		Tracer: func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
			return challengeWatch{s.recheckObserved}
		},
	}
	dctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()
	qc, err := s.tr.Dial(dctx, s.addr, s.tlsConf, qconf)
	if err != nil {
		return nil, relayConnError(ctx, s.addr.String(), s.pinned, time.Since(start), err)
	}
	s.qc = qc
	s.cc = s.h3.NewClientConn(qc)
	return s.cc, nil
}

func (s *relaySession) closeConnLocked() {
	if s.qc != nil {
		s.qc.CloseWithError(0, "")
		s.qc, s.cc = nil, nil
	}
}

// register registers (or refreshes) the window [floor, issued+window]: from
// the lowest index a live connection may use (see CIDGenerator.floor) to a
// window beyond the last index issued. The window slides as connections
// close, so its size follows the connections alive at once, not all the
// connections a peer ever made.
func (s *relaySession) register(ctx context.Context) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var resp registerResponse
	post := func(first uint32, end uint64) error {
		body, _ := json.Marshal(registerRequest{Key: s.key, First: first, Num: uint32(end - uint64(first) + 1)})
		return s.doLocked(ctx, http.MethodPost, registerPath, body, &resp, true)
	}
	first := s.gen.floor()
	end := min(uint64(s.gen.Issued())+uint64(s.window), math.MaxUint32)
	err := post(first, end)
	var re *RelayError
	if errors.As(err, &re) && (re.Code == CodeNumRange || re.Code == CodeLimitSourceCIDs) {
		if re.Code == CodeNumRange {
			err = fmt.Errorf("quicpipe: the window of CIDs %d to %d (from the oldest live connection's to %d beyond the last issued) is larger than the relay allows; close long-lived connections or raise the relay's MaxCIDsPerRegistration: %w",
				first, end, s.window, err)
		} else {
			err = fmt.Errorf("quicpipe: the window of CIDs %d to %d does not fit in what the relay allows this peer's source address, shared with other peers behind it; close connections or raise the relay's MaxCIDsPerSource: %w",
				first, end, err)
		}
		// New connections cannot be registered, but the live ones must not
		// lose theirs when the registration expires: refresh the window
		// from the floor to the end the relay last accepted.
		s.mu.Lock()
		prev := s.reg
		s.mu.Unlock()
		prevEnd := uint64(prev.First) + uint64(prev.Num) - 1
		if prev.Num == 0 || prevEnd < uint64(first) {
			return err
		}
		if post(first, prevEnd) != nil {
			return err
		}
		if aerr := s.apply(resp); aerr != nil {
			return aerr
		}
		return &windowFullError{err}
	}
	if err != nil {
		return err
	}
	return s.apply(resp)
}

// windowFullError reports that the relay refused a larger window, while
// the current one was refreshed.
type windowFullError struct{ err error }

func (e *windowFullError) Error() string { return e.err.Error() }
func (e *windowFullError) Unwrap() error { return e.err }

// apply records a registration the relay accepted. s.regMu must be held.
func (s *relaySession) apply(resp registerResponse) error {
	observed, perr := netip.ParseAddrPort(resp.Addr)
	if perr != nil {
		return fmt.Errorf("quicpipe: relay answered a bad address %q: %w", resp.Addr, perr)
	}
	observed = netAddrPort(observed)
	s.regEnd.Store(resp.First + resp.Num - 1)
	s.mu.Lock()
	prev := s.reg.Observed
	s.reg = Registration{Observed: observed, First: resp.First, Num: resp.Num, Expires: resp.Expires}
	if resp.Tunnel != "" {
		if _, err := parseTunnelURL(resp.Tunnel); err == nil {
			s.reg.TunnelURL = resp.Tunnel
		} else {
			s.log.Debug("relay announced a bad tunnel URL; ignored", "relay", s.addr.String(), "err", err)
		}
	}
	s.ttl = max(time.Duration(resp.TTL)*time.Second, time.Second)
	s.offer = resp.Sleep
	onObserved := s.onObserved
	s.mu.Unlock()
	s.log.Debug("registered with relay", "relay", s.addr.String(), "observed", resp.Addr, "cids", resp.Num)
	if prev.IsValid() && prev != observed {
		s.log.Info("relay observes this peer at a new address", "relay", s.addr.String(), "was", prev.String(), "now", observed.String())
		if onObserved != nil {
			onObserved()
		}
	}
	return nil
}

// doLocked sends one API request, retrying once on a fresh connection if the
// current one turns out to be dead and redial allows it. s.regMu must be
// held.
func (s *relaySession) doLocked(ctx context.Context, method, path string, body []byte, out any, redial bool) error {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 && !redial {
			break
		}
		cc, err := s.conn(ctx)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		req, _ := http.NewRequestWithContext(rctx, method, "https://"+ServerName+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		s.authorize(req)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			cancel()
			lastErr = fmt.Errorf("quicpipe: relay %s: %s %s: %w", s.addr, method, path, err)
			s.closeConnLocked()
			if ctx.Err() != nil {
				return lastErr
			}
			continue
		}
		if resp.StatusCode/100 != 2 {
			err := relayErrorOf(resp)
			cancel()
			return err
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
		resp.Body.Close()
		cancel()
		if err != nil {
			return fmt.Errorf("quicpipe: relay %s: reading answer: %w", s.addr, err)
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("quicpipe: relay %s: malformed answer: %w", s.addr, err)
			}
		}
		return nil
	}
	return lastErr
}

// close unregisters (best effort, briefly) and closes the connection.
func (s *relaySession) close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.wg.Wait()
		s.regMu.Lock()
		defer s.regMu.Unlock()
		if s.qc != nil && s.qc.Context().Err() == nil && s.regEnd.Load() > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			body, _ := json.Marshal(registerRequest{Key: s.key})
			if err := s.doLocked(ctx, http.MethodDelete, registerPath, body, nil, false); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				s.log.Debug("unregister failed", "err", err)
			}
			cancel()
		}
		s.closeConnLocked()
		s.h3.Close()
	})
}

// currentConn returns the HTTP/3 connection to the relay and the QUIC
// connection under it, dialing them if needed, for requests other than
// registrations (the mailbox's long-lived GET, mailbox posts). The caller
// sends on it without holding the registration lock; authorize adds the
// relay token, if any, to such a request.
func (s *relaySession) currentConn(ctx context.Context) (*http3.ClientConn, *quic.Conn, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	cc, err := s.conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	return cc, s.qc, nil
}

// authorize adds the relay token, if any, to a request.
func (s *relaySession) authorize(req *http.Request) {
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
}
