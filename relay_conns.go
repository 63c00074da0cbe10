package quicpipe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// The relay bounds its HTTP/3 connections before they cost anything:
//
//   - quic-go calls Transport.ConnContext on the first Initial of a new
//     connection, before it keeps any state for it. There the relay counts
//     connections per source (sourceOf) and in total, and handshakes in
//     progress, and refuses a connection over a limit: quic-go answers
//     CONNECTION_REFUSED statelessly. The count is released when the
//     connection's context ends (closed, or the handshake failed).
//   - Transport.VerifySourceAddress asks for a Retry (RFC 9000 section
//     8.1.2) when many handshakes are in progress, or a quarter of a
//     source's quota from that source: a spoofed source cannot answer it,
//     so half-open handshakes from spoofed addresses stop costing state,
//     and cannot fill the quota of the source they pretend to be.
//   - The relay serves each connection's streams itself (http3's
//     RawServerConn) so that it can put a deadline on each request's
//     headers and close connections that hold nothing.
//
// docs/decisions/0013-connection-limits.md explains the choices.

// minRetryPerSource is the least number of handshakes in progress from one
// source that make the relay ask that source's next connections for a
// Retry; the threshold is a quarter of MaxConnsPerSource if that is more.
const minRetryPerSource = 4

// Reasons for refusing a connection, as counted in RelayStats.ConnsRefused.
var connRefuseCodes = []string{"limit_source", "limit_total", "limit_handshakes"}

// connState is what the relay knows of one HTTP/3 connection. It travels in
// the connection's context (connStateKey).
type connState struct {
	src netip.Prefix

	// Guarded by connLimits.mu.
	handshaking, released bool

	streams    atomic.Int64 // request streams being served
	lastActive atomic.Int64 // unix nano: accepted, or the end of its last request
	heldUntil  atomic.Int64 // unix nano: expiry of the last registration made over it

	mu    sync.Mutex
	timer *time.Timer // the idle check
}

type connStateKey struct{}

// connStateOf returns the state of the connection that ctx belongs to (a
// connection's or a request's context), or nil.
func connStateOf(ctx context.Context) *connState {
	st, _ := ctx.Value(connStateKey{}).(*connState)
	return st
}

// holdUntil notes that a registration made over the connection lives until
// expires: the connection is not idle before then.
func (st *connState) holdUntil(expires time.Time) {
	if st == nil {
		return
	}
	e := expires.UnixNano()
	for {
		old := st.heldUntil.Load()
		if old >= e || st.heldUntil.CompareAndSwap(old, e) {
			return
		}
	}
}

// connLimits counts the relay's connections per source and in total.
type connLimits struct {
	perSource, total, handshakes, retryAt, retryPerSource int

	mu          sync.Mutex
	bySource    map[netip.Prefix]*sourceConns
	conns       int
	handshaking int

	refused                             rejectCounters
	retries, idleClosed, headerTimeouts atomic.Uint64
}

type sourceConns struct{ conns, handshaking int }

func newConnLimits(c *RelayConfig) *connLimits {
	return &connLimits{
		perSource:  c.MaxConnsPerSource,
		total:      c.MaxConns,
		handshakes: c.MaxHandshakes,
		retryAt:    c.RetryHandshakes,
		// A spoofer can hold at most this many of a victim's places, for
		// at most a handshake timeout.
		retryPerSource: max(minRetryPerSource, c.MaxConnsPerSource/4),
		bySource:       make(map[netip.Prefix]*sourceConns),
		refused:        newRejectCounters(connRefuseCodes),
	}
}

func addrSource(a net.Addr) (netip.Prefix, bool) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	return sourceOf(ip), true
}

// needRetry decides whether a connection attempt from addr must first
// prove its address with a Retry.
func (l *connLimits) needRetry(addr net.Addr) bool {
	src, ok := addrSource(addr)
	l.mu.Lock()
	retry := l.retryAt < 0 || l.handshaking >= l.retryAt
	if s := l.bySource[src]; ok && !retry && s != nil {
		retry = s.handshaking >= l.retryPerSource
	}
	l.mu.Unlock()
	if retry {
		l.retries.Add(1)
	}
	return retry
}

// admit counts a new connection from addr, or returns the code of the limit
// it is over.
func (l *connLimits) admit(addr net.Addr) (*connState, string) {
	src, ok := addrSource(addr)
	if !ok {
		return nil, "limit_source"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.bySource[src]
	switch {
	case l.conns >= l.total:
		return nil, "limit_total"
	case s != nil && s.conns >= l.perSource:
		return nil, "limit_source"
	case l.handshaking >= l.handshakes:
		return nil, "limit_handshakes"
	}
	if s == nil {
		s = &sourceConns{}
		l.bySource[src] = s
	}
	s.conns++
	s.handshaking++
	l.conns++
	l.handshaking++
	return &connState{src: src, handshaking: true}, ""
}

// handshakeDone notes that st's handshake completed.
func (l *connLimits) handshakeDone(st *connState) {
	l.mu.Lock()
	l.handshakeDoneLocked(st)
	l.mu.Unlock()
}

func (l *connLimits) handshakeDoneLocked(st *connState) {
	if !st.handshaking {
		return
	}
	st.handshaking = false
	l.handshaking--
	if s := l.bySource[st.src]; s != nil {
		s.handshaking--
	}
}

// release forgets a connection that ended.
func (l *connLimits) release(st *connState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st.released {
		return
	}
	l.handshakeDoneLocked(st)
	st.released = true
	l.conns--
	if s := l.bySource[st.src]; s != nil {
		if s.conns--; s.conns <= 0 {
			delete(l.bySource, st.src)
		}
	}
}

func (l *connLimits) counts() (conns, handshaking int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns, l.handshaking
}

// connContext is the relay Transport's ConnContext: it admits or refuses a
// new connection at its first Initial.
func (r *Relay) connContext(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
	st, code := r.conns.admit(ci.RemoteAddr)
	if st == nil {
		r.conns.refused[code].Add(1)
		return nil, fmt.Errorf("quicpipe: relay refused a connection from %s: %s", ci.RemoteAddr, code)
	}
	ctx = context.WithValue(ctx, connStateKey{}, st)
	context.AfterFunc(ctx, func() { r.conns.release(st) })
	return ctx, nil
}

// acceptConns accepts HTTP/3 connections until the listener closes.
func (r *Relay) acceptConns(ln *quic.Listener) error {
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		st := connStateOf(qc.Context())
		if st == nil { // cannot happen: connContext admitted it
			qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
			continue
		}
		r.conns.handshakeDone(st)
		r.connMu.Lock()
		if r.closeCtx.Err() != nil {
			r.connMu.Unlock()
			qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "relay closing")
			continue
		}
		r.connWG.Go(func() { r.serveConn(qc, st) })
		r.connMu.Unlock()
	}
}

// serveConn serves the HTTP/3 requests of one connection until it closes,
// as http3.Server does, with two additions: each request stream must
// deliver its headers within RequestHeaderTimeout, and the connection is
// closed once it has held no registration, mailbox or request for
// IdleConnTimeout.
func (r *Relay) serveConn(qc *quic.Conn, st *connState) {
	hconn, err := r.h3.NewRawServerConn(qc)
	if err != nil {
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return
	}
	stop := context.AfterFunc(r.closeCtx, func() {
		hconn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "relay closing")
	})
	defer stop()
	st.lastActive.Store(time.Now().UnixNano())
	idle := r.cfg.IdleConnTimeout
	st.mu.Lock()
	st.timer = time.AfterFunc(idle, func() {
		next := r.checkIdle(hconn, st)
		st.mu.Lock()
		if next > 0 {
			st.timer.Reset(next)
		}
		st.mu.Unlock()
	})
	st.mu.Unlock()
	defer func() {
		st.mu.Lock()
		st.timer.Stop()
		st.mu.Unlock()
	}()

	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			str, err := qc.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			go hconn.HandleUnidirectionalStream(str)
		}
	})
	timeout := r.cfg.RequestHeaderTimeout
	for {
		str, err := qc.AcceptStream(context.Background())
		if err != nil {
			break
		}
		st.streams.Add(1)
		start := time.Now()
		str.SetReadDeadline(start.Add(timeout))
		wg.Go(func() {
			hconn.HandleRequestStream(str)
			if time.Since(start) >= timeout && requestIncomplete(str) {
				r.conns.headerTimeouts.Add(1)
			}
			st.lastActive.Store(time.Now().UnixNano())
			st.streams.Add(-1)
		})
	}
	wg.Wait()
}

// requestIncomplete reports whether http3 reset a request stream because
// the request was incomplete (here: its read deadline passed first).
func requestIncomplete(str *quic.Stream) bool {
	var b [1]byte
	_, err := str.Read(b[:])
	se, ok := errors.AsType[*quic.StreamError](err)
	return ok && !se.Remote && se.ErrorCode == quic.StreamErrorCode(http3.ErrCodeRequestIncomplete)
}

// checkIdle closes the connection if it has served no request for
// IdleConnTimeout and holds no live registration; otherwise it returns when
// to look again. Keep-alive PINGs do not count: only requests and
// registrations do.
func (r *Relay) checkIdle(hconn *http3.RawServerConn, st *connState) time.Duration {
	idle := r.cfg.IdleConnTimeout
	if st.streams.Load() > 0 {
		return idle
	}
	now := time.Now().UnixNano()
	until := max(st.lastActive.Load()+int64(idle), st.heldUntil.Load())
	if now < until {
		return time.Duration(until - now)
	}
	r.conns.idleClosed.Add(1)
	hconn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle: no registration, mailbox or request")
	return 0
}

// bodyDeadline wraps the relay's handler: the header deadline set on each
// request stream becomes a fresh one, as long, for the body of a request to
// the relay's API (/v1/), and none for the embedding service's routes.
func (r *Relay) bodyDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var d time.Time
		if strings.HasPrefix(req.URL.Path, "/v1/") {
			d = time.Now().Add(r.cfg.RequestHeaderTimeout)
		}
		http.NewResponseController(w).SetReadDeadline(d)
		h.ServeHTTP(w, req)
	})
}
