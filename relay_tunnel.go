package quicpipe

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// TunnelPath is the default HTTP path of the relay's tunnel.
const TunnelPath = "/v1/tunnel"

// tunnelSubprotocol is the WebSocket subprotocol of a tunnel: one QUIC
// datagram per binary message (docs/PROTOCOL.md, "Tunnel").
const tunnelSubprotocol = "quicpipe-tunnel.v1"

// TunnelConfig configures the relay's tunnel: a TCP listener with TLS that
// accepts a WebSocket upgrade at Path, through which peers whose UDP is
// blocked send and receive the datagrams they would exchange with the
// relay's UDP socket (docs/decisions/0025-tunnel.md). The outer TLS is only
// transport: the relay's identity is proven by its pinned key on the HTTP/3
// connection inside the tunnel.
type TunnelConfig struct {
	// Addr is the TCP address to listen on. If empty and Listener is nil,
	// ":443" is used.
	Addr string
	// Listener, if not nil, is the TCP listener to serve on instead of
	// Addr; the relay closes it.
	Listener net.Listener
	// Path is the HTTP path of the WebSocket upgrade. If empty, TunnelPath.
	Path string
	// URL is where peers reach the tunnel, "wss://host:port/path",
	// announced in every registration answer so that a listener's tickets
	// carry it (peers that have only a ticket then find the tunnel). The
	// host may be left out, "wss://:8443/v1/tunnel": peers then use the
	// host of the relay's UDP address. If empty, the listener's port and
	// Path are announced that way: set URL when a load balancer or proxy in
	// front of the relay serves the tunnel on another port or host.
	URL string
	// Certificate is the outer TLS certificate, for example a CA-issued one
	// that TLS-inspecting proxies accept. If nil, the relay's own
	// certificate for its Identity is used (peers check it against the
	// relay's pinned key), or, without an Identity, the certificates of
	// RelayConfig.TLSConfig.
	Certificate *tls.Certificate
	// MaxTunnels bounds the TCP connections to the tunnel listener (in
	// their handshake or carrying a tunnel) in total, and
	// MaxTunnelsPerSource those from one source (an IPv4 address or an
	// IPv6 /64); connections over either are closed at once. If zero, 10000
	// and 16 are used.
	MaxTunnels, MaxTunnelsPerSource int
	// QueueLen bounds the datagrams waiting to be written into one tunnel;
	// more are dropped and counted, never waited for. If zero, 512 is used.
	QueueLen int
	// HandshakeTimeout bounds the TLS handshake and the WebSocket upgrade.
	// If zero, 10s is used.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a tunnel that carried no datagram either way for
	// that long (a half-open TCP connection among them). If zero, 75s is
	// used: more than a peer's registration refresh interval.
	IdleTimeout time.Duration
	// WriteTimeout closes a tunnel whose peer does not take a datagram
	// within it (a slow reader). If zero, 10s is used.
	WriteTimeout time.Duration
}

func populateTunnelConfig(c *TunnelConfig) (*TunnelConfig, error) {
	cfg := *c
	if cfg.Addr == "" && cfg.Listener == nil {
		cfg.Addr = ":443"
	}
	if cfg.Path == "" {
		cfg.Path = TunnelPath
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = 10000
	}
	if cfg.MaxTunnelsPerSource == 0 {
		cfg.MaxTunnelsPerSource = 16
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 512
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 75 * time.Second
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.URL != "" {
		if _, err := parseTunnelURL(cfg.URL); err != nil {
			return nil, fmt.Errorf("quicpipe: TunnelConfig.URL: %w", err)
		}
	}
	if cfg.MaxTunnels < 1 || cfg.MaxTunnelsPerSource < 1 || cfg.QueueLen < 1 ||
		cfg.HandshakeTimeout < 0 || cfg.IdleTimeout < 0 || cfg.WriteTimeout < 0 {
		return nil, errors.New("quicpipe: TunnelConfig limits and timeouts must be positive")
	}
	return &cfg, nil
}

// TunnelStats counts what the relay's tunnel listener did.
type TunnelStats struct {
	// Open is the number of tunnels open now, Opened the number ever opened.
	Open, Opened uint64
	// Refused counts TCP connections closed at once for a tunnel limit
	// (MaxTunnels, MaxTunnelsPerSource).
	Refused uint64
	// BadUpgrades counts requests that were no valid tunnel upgrade (wrong
	// path or subprotocol, not a WebSocket handshake).
	BadUpgrades uint64
	// Malformed counts tunnels closed for a text message; Oversized those
	// closed for a message longer than a datagram (1500 bytes); ReadErrors
	// those whose connection failed otherwise than by a close (a broken
	// WebSocket frame, a reset connection).
	Malformed, Oversized, ReadErrors uint64
	// Idle counts tunnels closed by IdleTimeout, SlowReaders those closed
	// by WriteTimeout.
	Idle, SlowReaders uint64
	// Dropped counts datagrams for tunnels dropped because a tunnel's
	// queue, or the relay server's queue of datagrams from tunnels, was
	// full, or the tunnel gone.
	Dropped uint64
}

// tunnelServer is the relay's tunnel listener and the second quic.Transport
// through which the relay's HTTP/3 server talks to tunnelled peers.
type tunnelServer struct {
	r    *Relay
	cfg  *TunnelConfig
	tcp  net.Listener // the limiting listener, under TLS
	http *http.Server
	tr   *quic.Transport
	ln   *quic.Listener

	seed maphash.Seed    // keys the virtual addresses' source part
	next atomic.Uint32   // the virtual addresses' counter part
	ctx  context.Context // cancelled by close: every tunnel ends
	stop context.CancelFunc
	wg   sync.WaitGroup // tunnels and the serving goroutines

	mu       sync.Mutex
	bySource map[netip.Prefix]int
	total    int
	closed   bool // no new tunnel is carried; guarded by mu

	open                                               atomic.Int64
	opened, refused, badUpgrades, malformed, oversized atomic.Uint64
	readErrors, idle, slowReaders                      atomic.Uint64
}

// newTunnelServer opens the tunnel's TCP listener and its QUIC transport;
// base is the relay's TLS configuration before HTTP/3's settings, qconf its
// QUIC configuration.
func newTunnelServer(r *Relay, c *TunnelConfig, base *tls.Config, qconf *quic.Config) (*tunnelServer, error) {
	cfg, err := populateTunnelConfig(c)
	if err != nil {
		return nil, err
	}
	outer := base.Clone()
	outer.NextProtos = []string{"http/1.1"}
	if cfg.Certificate != nil {
		outer.Certificates = []tls.Certificate{*cfg.Certificate}
		outer.GetCertificate = nil
	}
	outer.MinVersion = tls.VersionTLS12 // what proxies and load balancers speak
	s := &tunnelServer{r: r, cfg: cfg, seed: maphash.MakeSeed(), bySource: make(map[netip.Prefix]int)}
	s.ctx, s.stop = context.WithCancel(context.Background())
	tcp := cfg.Listener
	if tcp == nil {
		if tcp, err = net.Listen("tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("quicpipe: tunnel listen: %w", err)
		}
	}
	s.tcp = &tunnelListener{Listener: tcp, s: s}
	mux := http.NewServeMux()
	mux.HandleFunc(cfg.Path, s.handle)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		s.badUpgrades.Add(1)
		http.Error(w, "no such endpoint", http.StatusNotFound)
	})
	s.http = &http.Server{
		Handler:           mux,
		TLSConfig:         outer,
		ReadHeaderTimeout: cfg.HandshakeTimeout, // bounds the TLS handshake too
		IdleTimeout:       cfg.HandshakeTimeout,
		MaxHeaderBytes:    8 << 10,
		// HTTP/1.1 only: the upgrade is a WebSocket handshake (RFC 6455).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	s.tr = &quic.Transport{
		Conn:                  r.rconn.TunnelConn(),
		ConnectionIDGenerator: r.rconn.CIDGenerator(),
		StatelessResetKey:     r.cfg.StatelessResetKey,
		ConnContext:           r.connContext,
		VerifySourceAddress:   r.conns.needRetry,
	}
	if s.ln, err = s.tr.Listen(http3.ConfigureTLSConfig(base.Clone()), qconf); err != nil {
		tcp.Close()
		return nil, fmt.Errorf("quicpipe: tunnel transport: %w", err)
	}
	return s, nil
}

// addr returns the TCP address the tunnel listens on.
func (s *tunnelServer) addr() net.Addr { return s.tcp.Addr() }

// announce returns the tunnel's URL as registration answers announce it:
// TunnelConfig.URL, else the listener's port and path on the relay's host.
func (s *tunnelServer) announce() string {
	if s.cfg.URL != "" {
		return s.cfg.URL
	}
	ta, ok := s.addr().(*net.TCPAddr)
	if !ok {
		return ""
	}
	return (&url.URL{Scheme: "wss", Host: ":" + strconv.Itoa(ta.Port), Path: s.cfg.Path}).String()
}

// start serves the listener and the HTTP/3 connections made in tunnels.
func (s *tunnelServer) start() {
	s.wg.Go(func() {
		err := s.http.ServeTLS(s.tcp, "", "")
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.r.log.Warn("tunnel listener stopped", "err", err)
		}
	})
	s.wg.Go(func() {
		if err := s.r.acceptConns(s.ln); err != nil {
			s.r.log.Warn("tunnel transport stopped", "err", err)
		}
	})
	s.r.log.Info("relay tunnel serving", "addr", s.addr().String(), "path", s.cfg.Path)
}

// closeListeners stops accepting and ends every tunnel, and waits for them.
func (s *tunnelServer) closeListeners() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.stop()
	errs := []error{s.http.Close(), s.ln.Close()}
	if err := s.tcp.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, err)
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// closeTransport closes the tunnel's QUIC transport, after the relay's
// connections have closed.
func (s *tunnelServer) closeTransport() error {
	err := s.tr.Close()
	s.r.rconn.TunnelConn().Close()
	return err
}

// virtualAddr returns a new virtual address for a tunnel from src: the
// tunnel prefix, 32 bits keyed by src, and a counter. The relay's
// per-source limits count every tunnel of one source as one source
// (sourceOf takes the /96 of a virtual address).
func (s *tunnelServer) virtualAddr(src netip.Prefix) netip.Addr {
	var b [16]byte
	p := forward.TunnelPrefix.Addr().As16()
	copy(b[:8], p[:8])
	h := maphash.Comparable(s.seed, src)
	binary.BigEndian.PutUint32(b[8:12], uint32(h>>32))
	binary.BigEndian.PutUint32(b[12:16], s.next.Add(1))
	return netip.AddrFrom16(b)
}

// handle upgrades a request to a tunnel and carries it until it ends.
func (s *tunnelServer) handle(w http.ResponseWriter, req *http.Request) {
	// Hijacked connections are not the http.Server's to wait for: the
	// tunnel server waits for them itself (closeListeners).
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "relay closing", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	ws, err := websocket.Accept(w, req, &websocket.AcceptOptions{
		Subprotocols:    []string{tunnelSubprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.badUpgrades.Add(1) // Accept wrote the error response
		return
	}
	if ws.Subprotocol() != tunnelSubprotocol {
		s.badUpgrades.Add(1)
		ws.Close(websocket.StatusPolicyViolation, "subprotocol "+tunnelSubprotocol+" required")
		return
	}
	ws.SetReadLimit(forward.MaxTunnelDatagram)
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil { // cannot happen on a TCP listener
		ws.Close(websocket.StatusInternalError, "")
		return
	}
	var t *forward.Tunnel
	for range 3 { // a counter collision needs 2^32 tunnels from one source
		if t, err = s.r.rconn.OpenTunnel(s.virtualAddr(sourceOf(ap.Addr())), s.cfg.QueueLen); err == nil {
			break
		}
	}
	if err != nil {
		ws.Close(websocket.StatusInternalError, "")
		return
	}
	s.opened.Add(1)
	s.open.Add(1)
	s.r.log.Debug("tunnel opened", "from", ap.String(), "addr", t.Addr().String())
	s.carry(ws, t)
	s.open.Add(-1)
	s.r.log.Debug("tunnel closed", "from", ap.String(), "addr", t.Addr().String(), "dropped", t.Dropped())
}

// carry moves datagrams between ws and t until either ends, the tunnel
// idles, its peer reads too slowly, or the relay closes.
func (s *tunnelServer) carry(ws *websocket.Conn, t *forward.Tunnel) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	defer t.Close()
	var last atomic.Int64 // unix nanoseconds of the last datagram either way
	last.Store(time.Now().UnixNano())
	var why atomic.Pointer[atomic.Uint64] // the counter of the reason the tunnel ended, if the relay ended it
	end := func(c *atomic.Uint64) {
		why.CompareAndSwap(nil, c)
		cancel()
	}
	var wg sync.WaitGroup
	wg.Go(func() { // writer
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-t.Out():
				wctx, wcancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
				err := ws.Write(wctx, websocket.MessageBinary, p.Bytes())
				timedOut := wctx.Err() == context.DeadlineExceeded
				wcancel()
				p.Release()
				if err != nil {
					if timedOut {
						end(&s.slowReaders)
					} else {
						cancel()
					}
					return
				}
				last.Store(time.Now().UnixNano())
			}
		}
	})
	// The idle check is a timer, not a goroutine: an idle tunnel costs
	// less. It runs every quarter of IdleTimeout until the tunnel ends.
	every := max(s.cfg.IdleTimeout/4, time.Millisecond)
	var idle *time.Timer
	var idleMu sync.Mutex // orders the timer's Reset after its creation
	idleMu.Lock()
	idle = time.AfterFunc(every, func() {
		if time.Now().UnixNano()-last.Load() > int64(s.cfg.IdleTimeout) {
			end(&s.idle)
			return
		}
		if ctx.Err() == nil {
			idleMu.Lock()
			idle.Reset(every)
			idleMu.Unlock()
		}
	})
	idleMu.Unlock()
	defer idle.Stop()
	// One byte more than a datagram: a message that fills it is too long.
	buf := make([]byte, forward.MaxTunnelDatagram+1)
	for {
		typ, rd, err := ws.Reader(ctx)
		if err == nil {
			var n int
			n, err = io.ReadFull(rd, buf)
			switch {
			case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
				err = nil
			case err == nil:
				err = websocket.ErrMessageTooBig
			}
			if err == nil && typ != websocket.MessageBinary {
				s.malformed.Add(1)
				cancel()
				ws.Close(websocket.StatusUnsupportedData, "binary messages only")
				break
			}
			if err == nil {
				last.Store(time.Now().UnixNano())
				t.Input(buf[:n])
				continue
			}
		}
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, websocket.ErrMessageTooBig):
			s.oversized.Add(1)
			cancel()
			ws.Close(websocket.StatusMessageTooBig, "a message holds one datagram")
		case websocket.CloseStatus(err) == -1 && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
			s.readErrors.Add(1)
		}
		break
	}
	cancel()
	ws.CloseNow()
	// The writer may be the one that ended the tunnel (a slow reader):
	// its reason is known once it has returned.
	wg.Wait()
	if c := why.Load(); c != nil {
		c.Add(1)
	}
}

// stats returns the tunnel's counters; dropped comes from the engine.
func (s *tunnelServer) stats(dropped uint64) TunnelStats {
	return TunnelStats{
		Open:        uint64(max(s.open.Load(), 0)),
		Opened:      s.opened.Load(),
		Refused:     s.refused.Load(),
		BadUpgrades: s.badUpgrades.Load(),
		Malformed:   s.malformed.Load(),
		Oversized:   s.oversized.Load(),
		ReadErrors:  s.readErrors.Load(),
		Idle:        s.idle.Load(),
		SlowReaders: s.slowReaders.Load(),
		Dropped:     dropped,
	}
}

// tunnelListener closes at once the TCP connections over the tunnel's
// limits, before their TLS handshake.
type tunnelListener struct {
	net.Listener
	s *tunnelServer
}

func (l *tunnelListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := netip.Prefix{}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			src = sourceOf(ap.Addr())
		}
		s := l.s
		s.mu.Lock()
		ok := s.total < s.cfg.MaxTunnels && s.bySource[src] < s.cfg.MaxTunnelsPerSource
		if ok {
			s.total++
			s.bySource[src]++
		}
		s.mu.Unlock()
		if !ok {
			s.refused.Add(1)
			c.Close()
			continue
		}
		return &tunnelTCPConn{Conn: c, s: s, src: src}, nil
	}
}

// tunnelTCPConn gives its place back when it closes.
type tunnelTCPConn struct {
	net.Conn
	s    *tunnelServer
	src  netip.Prefix
	once sync.Once
}

func (c *tunnelTCPConn) Close() error {
	c.once.Do(func() {
		s := c.s
		s.mu.Lock()
		s.total--
		if s.bySource[c.src]--; s.bySource[c.src] <= 0 {
			delete(s.bySource, c.src)
		}
		s.mu.Unlock()
	})
	return c.Conn.Close()
}

// TunnelAddr returns the TCP address of the relay's tunnel, or nil if
// RelayConfig.Tunnel is nil.
func (r *Relay) TunnelAddr() net.Addr {
	if r.tunnel == nil {
		return nil
	}
	return r.tunnel.addr()
}

// TunnelURL returns the tunnel's URL as registration answers announce it
// to peers (TunnelConfig.URL), or "" if RelayConfig.Tunnel is nil.
func (r *Relay) TunnelURL() string { return r.tunnelURL }

// TunnelStats returns the tunnel's counters (zero if the tunnel is off).
func (r *Relay) TunnelStats() TunnelStats {
	if r.tunnel == nil {
		return TunnelStats{}
	}
	return r.tunnel.stats(r.rconn.Counters().TunnelFull)
}
