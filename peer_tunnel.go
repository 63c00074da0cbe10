package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/quicpipe/quicpipe/internal/forward"
	"golang.org/x/net/ipv4"
)

// TunnelMode says how a peer reaches its relay: over UDP, through the
// relay's TLS/WebSocket tunnel, or whichever answers first.
type TunnelMode int

const (
	// TunnelAuto, the default, sends to the relay over UDP first; if the
	// relay has not answered within Config.TunnelDelay, it opens the tunnel
	// too and keeps whichever path answers first.
	TunnelAuto TunnelMode = iota
	// TunnelOff never opens the tunnel.
	TunnelOff
	// TunnelOnly reaches the relay through the tunnel only, from the start.
	TunnelOnly
)

// String returns "auto", "off" or "only".
func (m TunnelMode) String() string {
	switch m {
	case TunnelAuto:
		return "auto"
	case TunnelOff:
		return "off"
	case TunnelOnly:
		return "only"
	}
	return fmt.Sprintf("TunnelMode(%d)", int(m))
}

// Transport names the path over which a peer reaches its relay.
type Transport string

// The transports a peer reaches its relay over (Dialer.Transport,
// Accepter.Transport).
const (
	TransportUDP    Transport = "udp"
	TransportTunnel Transport = "tunnel"
)

// Defaults of the tunnel's Config fields.
const (
	defaultTunnelDelay = 300 * time.Millisecond
	defaultTunnelPort  = "443"
	// peerTunnelQueue bounds the datagrams waiting to be written into the
	// tunnel; more are dropped, as a full socket buffer drops them.
	peerTunnelQueue = 512
	// peerTunnelInjectMax bounds the datagrams from the tunnel that quic-go
	// has not read yet.
	peerTunnelInjectMax = 1024
	// tunnelWriteTimeout closes a tunnel that takes no datagram for that
	// long (a stalled TCP connection).
	tunnelWriteTimeout = 10 * time.Second
	// tunnelRecent is how many datagrams to the relay the peer keeps while
	// the race is on, to send them into the tunnel once it is up.
	tunnelRecent = 8
	// tunnelProbeEvery is how often a peer that reaches its relay through
	// the tunnel (TunnelAuto) checks whether UDP works again.
	tunnelProbeEvery = 5 * time.Second
	// tunnelProbeLen is the length of a UDP probe: more than the shortest
	// datagram a QUIC stack answers with a stateless reset (quic-go: 43).
	tunnelProbeLen = 60
)

// maxTunnelURL bounds the length of a tunnel URL (a ticket carries it).
const maxTunnelURL = 255

// parseTunnelURL parses a tunnel URL, "wss://host:port/path", where host,
// port and path may each be left out (see resolveTunnelURL).
func parseTunnelURL(s string) (*url.URL, error) {
	if len(s) > maxTunnelURL {
		return nil, fmt.Errorf("tunnel URL is %d bytes, at most %d", len(s), maxTunnelURL)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return nil, fmt.Errorf("tunnel URL %q has a byte %#02x outside printable ASCII", s, s[i])
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("tunnel URL %q: %w", s, err)
	}
	switch {
	case u.Scheme != "wss" && u.Scheme != "https":
		return nil, fmt.Errorf("tunnel URL %q: scheme must be wss", s)
	case u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("tunnel URL %q: only host, port and path are allowed", s)
	case u.Path != "" && u.Path[0] != '/':
		return nil, fmt.Errorf("tunnel URL %q: bad path", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("tunnel URL %q: port must be 1 to 65535", s)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, fmt.Errorf("tunnel URL %q: empty port", s)
	}
	return u, nil
}

// resolveTunnelURL completes u for a relay at relayAddr: no host means the
// relay's host, no port 443, no path TunnelPath.
func resolveTunnelURL(u *url.URL, relayAddr string) (*url.URL, error) {
	r := *u
	host, port := u.Hostname(), u.Port()
	if host == "" {
		h, _, err := net.SplitHostPort(relayAddr)
		if err != nil {
			return nil, fmt.Errorf("quicpipe: relay address %q: %w", relayAddr, err)
		}
		host = h
	}
	if port == "" {
		port = defaultTunnelPort
	}
	r.Host = net.JoinHostPort(host, port)
	if r.Path == "" {
		r.Path = TunnelPath
	}
	return &r, nil
}

// tunnelURL returns the URL of the relay's tunnel for cfg: Config.TunnelURL
// completed by resolveTunnelURL (port 443 of the relay's host if empty).
func tunnelURL(cfg *Config) (*url.URL, error) {
	u := &url.URL{Scheme: "wss"}
	if cfg.TunnelURL != "" {
		var err error
		if u, err = parseTunnelURL(cfg.TunnelURL); err != nil {
			return nil, fmt.Errorf("quicpipe: %w", err)
		}
	}
	return resolveTunnelURL(u, cfg.RelayAddr)
}

// tunnelTLSConfig returns the outer TLS configuration of the tunnel to a
// relay: its certificate is accepted if it holds the relay's pinned key (the
// relay's own certificate), or else if it verifies against roots (nil: the
// system's) for the URL's host (a CA-issued certificate, or that of a
// TLS-inspecting proxy the host trusts). Either way the relay is
// authenticated again, by its pinned key, on the HTTP/3 connection inside.
func tunnelTLSConfig(relayKey ed25519.PublicKey, roots *x509.CertPool, host string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		ServerName: host,
		// Verified by VerifyConnection: the pinned key, or the roots.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("quicpipe: tunnel: no certificate")
			}
			leaf := cs.PeerCertificates[0]
			if pk, ok := leaf.PublicKey.(ed25519.PublicKey); ok && relayKey != nil && pk.Equal(relayKey) {
				return nil
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, Intermediates: inter}); err != nil {
				return fmt.Errorf("quicpipe: tunnel certificate is neither the relay's pinned key nor trusted: %w", err)
			}
			return nil
		},
	}
}

// peerTunnel is a peer's tunnel to its relay: datagrams to the relay are
// written into it, datagrams out of it are handed to quic-go as from the
// relay.
type peerTunnel struct {
	ws     *websocket.Conn
	out    chan *forward.Packet
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when both goroutines have ended
	drops  atomic.Uint64
}

// dialTunnel opens the tunnel to u and starts carrying datagrams: what
// comes out of it goes to deliver, in order, from one goroutine.
func dialTunnel(ctx context.Context, u *url.URL, tlsConf *tls.Config, proxy func(*http.Request) (*url.URL, error),
	dial func(context.Context, string, string) (net.Conn, error), timeout time.Duration,
	deliver func([]byte, *peerTunnel)) (*peerTunnel, error) {
	tr := &http.Transport{
		Proxy:               proxy,
		DialContext:         dial,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: timeout,
		DisableKeepAlives:   true,
		ForceAttemptHTTP2:   false,
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, u.String(), &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr, Timeout: timeout},
		Subprotocols:    []string{tunnelSubprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil && ws == nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("quicpipe: tunnel to %s: %w", u.Redacted(), err)
	}
	if ws.Subprotocol() != tunnelSubprotocol {
		ws.CloseNow()
		return nil, fmt.Errorf("quicpipe: tunnel to %s: the server does not speak %s", u.Redacted(), tunnelSubprotocol)
	}
	ws.SetReadLimit(forward.MaxTunnelDatagram)
	t := &peerTunnel{ws: ws, out: make(chan *forward.Packet, peerTunnelQueue), done: make(chan struct{})}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(t.write)
	wg.Go(func() { t.read(deliver) })
	go func() {
		wg.Wait()
		ws.CloseNow()
		close(t.done)
	}()
	return t, nil
}

// send queues b, a datagram or a GSO batch of segments of oob's segment
// size, for the relay. It never blocks: what does not fit is dropped.
func (t *peerTunnel) send(b, oob []byte) {
	seg := len(b)
	if s := gsoSegmentSize(oob); s > 0 {
		seg = s
	}
	for len(b) > 0 {
		n := min(seg, len(b))
		p := forward.NewPacket(b[:n])
		b = b[n:]
		if p == nil {
			t.drops.Add(1)
			continue
		}
		select {
		case t.out <- p:
		default:
			p.Release()
			t.drops.Add(1)
		}
	}
}

func (t *peerTunnel) write() {
	defer t.cancel()
	for {
		select {
		case <-t.ctx.Done():
			return
		case p := <-t.out:
			ctx, cancel := context.WithTimeout(t.ctx, tunnelWriteTimeout)
			err := t.ws.Write(ctx, websocket.MessageBinary, p.Bytes())
			cancel()
			p.Release()
			if err != nil {
				return
			}
		}
	}
}

func (t *peerTunnel) read(deliver func([]byte, *peerTunnel)) {
	defer t.cancel()
	// One byte more than a datagram: a message that fills it is too long.
	buf := make([]byte, forward.MaxTunnelDatagram+1)
	for {
		typ, rd, err := t.ws.Reader(t.ctx)
		if err != nil {
			return
		}
		n, err := io.ReadFull(rd, buf)
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return // failed, or too long (a full buffer)
		}
		if typ != websocket.MessageBinary {
			return
		}
		deliver(buf[:n], t)
	}
}

// close ends the tunnel and waits for its goroutines.
func (t *peerTunnel) close() {
	t.cancel()
	<-t.done
}

// relayPath is the state of a peer's socket that decides how datagrams to
// the relay travel: over UDP, into the tunnel, or both while the race is on.
type relayPath struct {
	tun       atomic.Pointer[peerTunnel] // the tunnel, while it carries (or races for) the relay's datagrams
	only      atomic.Bool                // decided for the tunnel: nothing to the relay over UDP
	undecided atomic.Bool                // the race is on: UDP from the relay decides it
	probeAt   atomic.Int64               // while only: when to probe UDP next (unix nano); 0: never
	movedBack atomic.Bool                // a probe answered: the relay is reached over UDP again
	pinned    atomic.Bool                // TunnelOnly: never UDP to the relay, even while the tunnel is down

	raceMu   sync.Mutex
	heardUDP chan struct{}     // closed when the relay answered over UDP
	recent   []*forward.Packet // the last datagrams to the relay while undecided, for the tunnel
	relayNet *net.UDPAddr      // the source quic-go gets for datagrams out of the tunnel
	onChange func(Transport)
	reported Transport // the last transport given to onChange; guarded by raceMu
}

// notify tells onChange about tr if it is news. c.raceMu must be held.
func (c *peerConn) notify(tr Transport) {
	if c.onChange == nil || c.reported == tr {
		return
	}
	c.reported = tr
	go c.onChange(tr)
}

// transport returns how the relay is reached now.
func (c *peerConn) transport() Transport {
	if c.only.Load() {
		return TransportTunnel
	}
	return TransportUDP
}

// startRace makes the path undecided: UDP from the relay decides for UDP.
func (c *peerConn) startRace() <-chan struct{} {
	c.raceMu.Lock()
	defer c.raceMu.Unlock()
	c.heardUDP = make(chan struct{})
	c.undecided.Store(true)
	return c.heardUDP
}

// relayWrite handles a datagram to the relay: into the tunnel if it is up,
// and reports whether it must go over UDP too.
func (c *peerConn) relayWrite(b, oob []byte) (udp bool) {
	if t := c.tun.Load(); t != nil {
		t.send(b, oob)
		if !c.only.Load() {
			return true
		}
		if p := c.probeAt.Load(); p != 0 {
			c.maybeProbe(b, p)
		}
		return false
	}
	if c.pinned.Load() {
		return false // between two tunnels: dropped, as a lost datagram
	}
	if c.undecided.Load() {
		c.raceMu.Lock()
		if c.undecided.Load() && c.tun.Load() == nil {
			c.remember(b, oob)
		}
		c.raceMu.Unlock()
	}
	return true
}

// maybeProbe checks, at most once per tunnelProbeEvery, whether UDP to the
// relay works again: it sends over UDP a datagram with the destination CID
// of b, a datagram of the peer's HTTP/3 connection to the relay (a relay
// CID), and random bytes after. That connection lives on the relay's tunnel
// transport, so the relay's UDP transport does not know the CID and
// answers with a stateless reset; any datagram from the relay over UDP
// brings the peer back to UDP (heardRelayUDP), and the reset makes its
// session register again from its UDP address.
func (c *peerConn) maybeProbe(b []byte, due int64) {
	if len(b) < 1+CIDLen || b[0]&0x80 != 0 || !forward.IsRelayCID(b[1:1+CIDLen]) {
		return
	}
	now := time.Now().UnixNano()
	if now < due || !c.probeAt.CompareAndSwap(due, now+int64(tunnelProbeEvery)) {
		return
	}
	var p [tunnelProbeLen]byte
	rand.Read(p[1+CIDLen:])
	p[0] = b[0]
	copy(p[1:], b[1:1+CIDLen])
	c.UDPConn().WriteToUDPAddrPort(p[:], c.relay)
}

// remember keeps b for the tunnel. c.raceMu must be held.
func (c *peerConn) remember(b, oob []byte) {
	seg := len(b)
	if s := gsoSegmentSize(oob); s > 0 {
		seg = s
	}
	for len(b) > 0 {
		n := min(seg, len(b))
		if p := forward.NewPacket(b[:n]); p != nil {
			if len(c.recent) == tunnelRecent {
				c.recent[0].Release()
				c.recent = append(c.recent[:0], c.recent[1:]...)
			}
			c.recent = append(c.recent, p)
		}
		b = b[n:]
	}
}

// heardRelayUDP notes that a datagram from the relay came in over UDP: the
// race is decided for UDP, and the tunnel, if any, is closed.
func (c *peerConn) heardRelayUDP() {
	c.raceMu.Lock()
	if !c.undecided.Load() {
		if c.only.Load() && c.probeAt.Load() != 0 {
			c.moveBack()
		}
		c.raceMu.Unlock()
		return
	}
	c.undecided.Store(false)
	close(c.heardUDP)
	c.dropRecent()
	t := c.tun.Swap(nil)
	c.notify(TransportUDP)
	c.raceMu.Unlock()
	if t != nil {
		go t.close()
	}
}

// moveBack leaves the tunnel for UDP, which answered a probe: datagrams to
// the relay go over UDP from now on, and the runner watches the race again.
// c.raceMu must be held.
func (c *peerConn) moveBack() {
	c.probeAt.Store(0)
	c.only.Store(false)
	c.movedBack.Store(true)
	if t := c.tun.Swap(nil); t != nil {
		go t.close()
	}
	c.notify(TransportUDP)
}

// dropRecent forgets the datagrams kept for the tunnel. c.raceMu must be held.
func (c *peerConn) dropRecent() {
	for _, p := range c.recent {
		p.Release()
	}
	c.recent = nil
}

// useTunnel makes t carry the relay's datagrams (beside UDP while the race
// is on, alone if only) and sends it the datagrams kept meanwhile. It
// reports false if the race was decided for UDP already.
func (c *peerConn) useTunnel(t *peerTunnel, only bool) bool {
	c.raceMu.Lock()
	defer c.raceMu.Unlock()
	if !only && !c.undecided.Load() {
		return false
	}
	for _, p := range c.recent {
		t.send(p.Bytes(), nil)
	}
	c.dropRecent()
	if only {
		c.undecided.Store(false)
		c.only.Store(true)
		c.pinned.Store(true)
	}
	c.tun.Store(t)
	return true
}

// fromTunnel hands datagram b out of tunnel t to quic-go, as from the relay;
// the first one decides the race for the tunnel.
func (c *peerConn) fromTunnel(b []byte, t *peerTunnel) {
	if c.undecided.Load() {
		c.raceMu.Lock()
		if c.undecided.Load() && c.tun.Load() == t {
			c.undecided.Store(false)
			c.only.Store(true)
			c.probeAt.Store(time.Now().Add(tunnelProbeEvery).UnixNano())
			c.dropRecent()
			c.notify(TransportTunnel)
		}
		c.raceMu.Unlock()
	}
	c.injMu.Lock()
	defer c.injMu.Unlock()
	if len(c.injected) >= peerTunnelInjectMax {
		t.drops.Add(1)
		return
	}
	c.injected = append(c.injected, injectedPacket{b: bytes.Clone(b), from: c.relayNet})
	if !c.userDeadline && !c.woken {
		c.woken = true
		c.UDPConn().SetReadDeadline(time.Unix(1, 0))
	}
}

// tunnelEnded notes that t stopped carrying: datagrams to the relay go
// over UDP again.
func (c *peerConn) tunnelEnded(t *peerTunnel) {
	c.raceMu.Lock()
	defer c.raceMu.Unlock()
	if c.tun.CompareAndSwap(t, nil) && !c.pinned.Load() {
		c.only.Store(false)
		c.probeAt.Store(0)
	}
}

// relayFromUDP reports whether any datagram of ms came from the relay.
func (c *peerConn) relayFromUDP(ms []ipv4.Message) bool {
	for i := range ms {
		if ua, ok := ms[i].Addr.(*net.UDPAddr); ok && netAddrPort(ua.AddrPort()) == c.relay {
			return true
		}
	}
	return false
}

// tunnelRunner keeps a peer's path to its relay: the race between UDP and
// the tunnel, and a new tunnel when one ends while the relay is reached only
// through it.
type tunnelRunner struct {
	c       *peerConn
	mode    TunnelMode
	url     *url.URL
	tls     *tls.Config
	proxy   func(*http.Request) (*url.URL, error)
	dialTCP func(context.Context, string, string) (net.Conn, error) // nil: net.Dialer's
	delay   time.Duration
	timeout time.Duration
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	lastErr atomic.Pointer[error] // the last failed dial of the tunnel
}

// err returns the last error of the tunnel's dials, or nil.
func (r *tunnelRunner) err() error {
	if e := r.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// newTunnelRunner returns the runner of c's path to the relay for cfg (a
// populated Config whose Tunnel is not TunnelOff).
func newTunnelRunner(c *peerConn, cfg *Config) (*tunnelRunner, error) {
	u, err := tunnelURL(cfg)
	if err != nil {
		return nil, err
	}
	c.onChange = cfg.OnRelayTransport
	return &tunnelRunner{
		c:       c,
		mode:    cfg.Tunnel,
		url:     u,
		tls:     tunnelTLSConfig(cfg.RelayKey, cfg.TunnelRootCAs, tunnelHost(u)),
		proxy:   cfg.TunnelProxy,
		dialTCP: cfg.TunnelDialContext,
		delay:   cfg.TunnelDelay,
		timeout: cfg.RelayTimeout,
		log:     cfg.Logger,
	}, nil
}

// start opens the tunnel first (TunnelOnly), or starts the race in the
// background (TunnelAuto).
func (r *tunnelRunner) start(ctx context.Context) error {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.mode == TunnelOnly {
		t, err := r.dial(ctx)
		if err != nil {
			r.cancel()
			return &RelayConnError{Addr: r.url.Host, Err: err}
		}
		r.c.useTunnel(t, true)
		r.log.Info("relay reached through the tunnel", "url", r.url.Redacted())
		if r.c.onChange != nil {
			r.c.raceMu.Lock()
			r.c.reported = TransportTunnel
			r.c.raceMu.Unlock()
			r.c.onChange(TransportTunnel)
		}
		r.wg.Go(func() { r.run(t) })
		return nil
	}
	heard := r.c.startRace()
	r.wg.Go(func() { r.race(heard) })
	return nil
}

func (r *tunnelRunner) dial(ctx context.Context) (*peerTunnel, error) {
	return dialTunnel(ctx, r.url, r.tls, r.proxy, r.dialTCP, r.timeout, r.c.fromTunnel)
}

// race waits for UDP to answer for r.delay, then opens the tunnel and lets
// the first answer decide; it retries the tunnel while nothing answered, and
// races again whenever the tunnel that carried the relay's datagrams ends
// or UDP answers a probe.
func (r *tunnelRunner) race(heard <-chan struct{}) {
	wait := r.delay
	for {
		select {
		case <-heard:
			r.log.Debug("relay reached over UDP")
			return
		case <-r.ctx.Done():
			return
		case <-time.After(wait):
		}
		t, err := r.dial(r.ctx)
		if err != nil {
			r.lastErr.Store(&err)
			r.log.Debug("relay tunnel failed", "url", r.url.Redacted(), "err", err)
			wait = min(max(2*wait, time.Second), 30*time.Second)
			continue
		}
		if !r.c.useTunnel(t, false) {
			t.close()
			return
		}
		r.log.Debug("relay tunnel open; racing UDP", "url", r.url.Redacted())
		if !r.run(t) {
			return
		}
		heard, wait = r.c.startRace(), r.delay
	}
}

// run waits until t, and with TunnelOnly every tunnel after it, ends. It
// reports whether the race must start again: the tunnel carried the
// relay's datagrams when it ended, or UDP answered a probe.
func (r *tunnelRunner) run(t *peerTunnel) bool {
	for {
		select {
		case <-t.done:
		case <-r.ctx.Done():
			t.close()
			return false
		}
		wasOnly := r.c.only.Load()
		r.c.tunnelEnded(t)
		if r.c.movedBack.Swap(false) {
			r.log.Info("relay reached over UDP again", "url", r.url.Redacted())
			return true
		}
		if !wasOnly && r.mode != TunnelOnly {
			return false // the race was decided for UDP
		}
		r.log.Info("relay tunnel closed; reaching the relay again", "url", r.url.Redacted())
		if r.mode != TunnelOnly {
			return true
		}
		var err error
		for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
			if t, err = r.dial(r.ctx); err == nil {
				break
			}
			select {
			case <-r.ctx.Done():
				return false
			case <-time.After(wait):
			}
		}
		r.c.useTunnel(t, true)
	}
}

// close ends the tunnel and the race.
func (r *tunnelRunner) close() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.wg.Wait()
	if t := r.c.tun.Swap(nil); t != nil {
		t.close()
	}
}

// tunnelHost returns the host of u without its port, for TLS.
func tunnelHost(u *url.URL) string {
	h := u.Hostname()
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String()
	}
	return h
}
