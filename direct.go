package quicpipe

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// PathKind says how the packets of a peer connection travel.
type PathKind uint8

const (
	// PathRelayed: through the relay, which forwards by connection ID.
	PathRelayed PathKind = iota
	// PathDirect: straight to the other peer's address.
	PathDirect
)

func (k PathKind) String() string {
	if k == PathDirect {
		return "direct"
	}
	return "relayed"
}

// PathInfo describes the path a peer connection uses. Whatever the path,
// quic-go sees the relay's address as the connection's remote address
// (Conn.RemoteAddr); this is where the packets actually go.
type PathInfo struct {
	// Kind is PathRelayed or PathDirect.
	Kind PathKind
	// Remote is where this peer sends the connection's packets: the
	// relay's address when relayed, the other peer's address when direct.
	Remote netip.AddrPort
	// Relay is the relay's address, the fallback of a direct path.
	Relay netip.AddrPort
	// RTT is the round-trip time of the last probe on the direct path.
	// It is zero when relayed.
	RTT time.Duration
	// Since is when the connection moved onto this path (or was
	// established, for the first path).
	Since time.Time
	// Reason says, for a relayed path, why the connection is not direct:
	// why the last search for a direct path ended without one (for
	// example "no answer from the other side's 2 addresses"), or why the
	// direct path was given up. It is empty while the first search runs,
	// and for a direct path.
	Reason string
	// Via says, for a direct path, how Remote was learned when it is
	// worth telling: "port mapping (PCP)" (or NAT-PMP, UPnP) when the
	// other peer's gateway forwards it. Empty otherwise.
	Via string
}

// DirectStats counts the direct-path work of a Dialer or an Accepter over
// all its connections.
type DirectStats struct {
	// PunchAttempts counts punch rounds: bursts of probes to the other
	// peer's candidates, started when a connection is established, when
	// candidates change, and as retries while relayed.
	PunchAttempts uint64
	// PunchSuccesses counts rounds that moved a connection onto a direct
	// path.
	PunchSuccesses uint64
	// Fallbacks counts direct paths that stopped answering (or failed to
	// send), whose connections went back to the relay.
	Fallbacks uint64
	// ProbesSent and ProbesReceived count probes (pings and pongs).
	ProbesSent, ProbesReceived uint64
	// ControlDropped counts control datagrams dropped: for no known
	// connection, failing authentication, malformed, or arriving faster
	// than they are handled.
	ControlDropped uint64
	// PortMapping describes the port mapping and counts its work (see
	// Config.PortMapping).
	PortMapping PortMappingStats
}

// directTiming holds the direct-path timers. Tests shorten them (see
// peerOptions).
type directTiming struct {
	candResend   time.Duration // candidates retransmission while not acknowledged
	candSends    int           // candidates transmissions per round
	pingInterval time.Duration // probes to one candidate during a round
	pingsPerCand int           // probes to one candidate per round
	lowTTL       int           // TTL of the first probe to a candidate (0: none)
	ackWait      time.Duration // normal probes start without the peer's ack after this
	keepalive    time.Duration // probes on the direct path
	busyProbe    time.Duration // probes on the direct path while the connection sends on it
	pongWait     time.Duration // a probe unanswered this long (or 3 RTTs) is lost
	deadAfter    time.Duration // no pong this long after an unanswered probe went: back to the relay
	retryMin     time.Duration // first retry after a failed round or a fallback
	retryMax     time.Duration // retries back off up to this
	refresh      time.Duration // how often own candidates are checked
}

var defaultDirectTiming = directTiming{
	candResend:   time.Second,
	candSends:    6,
	pingInterval: 250 * time.Millisecond,
	pingsPerCand: 16,
	lowTTL:       2,
	ackWait:      time.Second,
	keepalive:    time.Second,
	busyProbe:    250 * time.Millisecond,
	pongWait:     250 * time.Millisecond,
	deadAfter:    750 * time.Millisecond,
	retryMin:     2 * time.Second,
	retryMax:     30 * time.Second,
	refresh:      candidateRefresh,
}

// directManager runs the direct paths of one peer (Dialer or Accepter):
// one goroutine dispatching control datagrams by connection tag, one per
// connection running its path state machine (direct_path.go), and one delivering
// path-change callbacks.
type directManager struct {
	pc       *peerConn
	relay    netip.AddrPort
	cands    *candidateCache
	recheck  func() // asks the relay for this peer's public address again
	log      *slog.Logger
	onChange func(*quic.Conn, PathInfo)
	timing   directTiming
	lowTTL4  []byte // control message for low-TTL probes; nil if unsupported
	lowTTL6  []byte

	mu     sync.Mutex
	byTag  map[[8]byte]*pathConn
	byConn map[*quic.Conn]*pathConn
	closed bool

	// Control datagrams for a connection not yet known: the other side
	// may finish the handshake (and announce) first. Owned by dispatch.
	pending []pendingCtrl
	added   chan struct{} // a connection was added: look at pending again

	attempts, successes, fallbacks atomic.Uint64
	sent, recv, dropped            atomic.Uint64

	evMu     sync.Mutex
	events   []pathEvent
	evSignal chan struct{}

	done chan struct{}
	wg   sync.WaitGroup
}

type pendingCtrl struct {
	p  ctrlPacket
	at time.Time
}

// pathQueueLen is how many control datagrams wait for one connection's
// goroutine before more are dropped.
const pathQueueLen = 32

// Limits of the pending control datagrams.
const (
	maxPending = 16
	pendingTTL = 3 * time.Second
)

type pathEvent struct {
	qc   *quic.Conn
	info PathInfo
}

// newDirectManager starts the manager of a peer whose socket wrapper has
// direct paths on. obs returns the peer's relay-observed address; recheck
// asks the relay for it again without waiting (it may have changed when a
// direct path dies), and the peer calls observedChanged when it has.
func newDirectManager(pc *peerConn, relay netip.AddrPort, obs func() netip.AddrPort, recheck func(), cfg *Config, timing *directTiming) *directManager {
	m := &directManager{
		pc:       pc,
		relay:    netAddrPort(relay),
		cands:    &candidateCache{conn: pc.UDPConn(), relay: netAddrPort(relay), obs: obs, anyScope: cfg.DirectAnyScope, addrs: cfg.InterfaceAddrs},
		recheck:  recheck,
		log:      cfg.Logger,
		onChange: cfg.OnPathChange,
		timing:   defaultDirectTiming,
		byTag:    make(map[[8]byte]*pathConn),
		byConn:   make(map[*quic.Conn]*pathConn),
		evSignal: make(chan struct{}, 1),
		added:    make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if timing != nil {
		m.timing = *timing
	}
	m.cands.ttl = m.timing.refresh
	m.cands.pm, m.cands.pmStart = startPortMapping(pc.UDPConn(), m.relay, cfg, m.log, m.observedChanged), time.Now()
	if m.timing.lowTTL > 0 {
		m.lowTTL4 = ttlOOB(pc.UDPConn(), false, m.timing.lowTTL)
		m.lowTTL6 = ttlOOB(pc.UDPConn(), true, m.timing.lowTTL)
	}
	m.wg.Go(m.dispatch)
	m.wg.Go(m.deliverEvents)
	return m
}

// newRemote returns a fresh copy of the relay's address: the remote address
// of one new peer connection, and the key of its route.
func (p *peer) newRemote() *net.UDPAddr {
	return net.UDPAddrFromAddrPort(p.relayAddr.AddrPort())
}

// prepare registers the route of a connection about to be dialed or
// accepted with remote as its remote address, so that the other peer's CID
// is recorded from its first packets. It returns nil if direct paths are
// off.
func (m *directManager) prepare(remote *net.UDPAddr) *connRoute {
	if m == nil {
		return nil
	}
	r := &connRoute{}
	r.wantDCID.Store(true)
	m.pc.addRoute(remote, r)
	return r
}

// abandon removes the route of a connection that was not established.
func (m *directManager) abandon(remote *net.UDPAddr) {
	if m != nil {
		m.pc.removeRoute(remote)
	}
}

// start runs the direct path of an established connection. client says
// whether this peer is the TLS client (the dialer).
func (m *directManager) start(qc *quic.Conn, remote *net.UDPAddr, r *connRoute, client bool) {
	if m == nil || r == nil {
		return
	}
	if ra, ok := qc.RemoteAddr().(*net.UDPAddr); !ok || ra != remote {
		// The route is keyed by the address quic-go sends with; this
		// connection does not use ours (a quic-go change?). Stay relayed.
		m.log.Warn("direct paths unavailable: quic-go does not send with the connection's own address")
		m.pc.removeRoute(remote)
		return
	}
	keys, err := newPathKeys(qc, client)
	if err != nil {
		m.log.Warn("direct paths unavailable", "err", err)
		m.pc.removeRoute(remote)
		return
	}
	c := &pathConn{
		m:      m,
		qc:     qc,
		remote: remote,
		route:  r,
		keys:   keys,
		in:     make(chan ctrlPacket, pathQueueLen),
		wake:   make(chan struct{}, 1),
	}
	c.info = PathInfo{Kind: PathRelayed, Remote: m.relay, Relay: m.relay, Since: time.Now()}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.pc.removeRoute(remote)
		return
	}
	m.byTag[keys.tag] = c
	m.byConn[qc] = c
	m.wg.Go(c.run)
	m.mu.Unlock()
	select {
	case m.added <- struct{}{}:
	default:
	}
}

// remove forgets a connection (its goroutine ends).
func (m *directManager) remove(c *pathConn) {
	m.pc.removeRoute(c.remote)
	m.mu.Lock()
	delete(m.byTag, c.keys.tag)
	delete(m.byConn, c.qc)
	m.mu.Unlock()
}

// dispatch hands each control datagram to its connection by tag. One for
// a connection not known yet waits a little: the other side may have
// finished the handshake and announced its candidates first.
func (m *directManager) dispatch() {
	for {
		select {
		case <-m.done:
			return
		case <-m.added:
			now := time.Now()
			kept := m.pending[:0]
			for _, pc := range m.pending {
				switch {
				case m.deliver(pc.p):
				case now.Sub(pc.at) < pendingTTL:
					kept = append(kept, pc)
				default:
					m.dropped.Add(1)
				}
			}
			clear(m.pending[len(kept):])
			m.pending = kept
		case p := <-m.pc.ctrl:
			if m.deliver(p) {
				continue
			}
			if len(m.pending) == maxPending {
				m.dropped.Add(1)
				m.pending = append(m.pending[:0], m.pending[1:]...)
			}
			m.pending = append(m.pending, pendingCtrl{p, time.Now()})
		}
	}
}

// deliver hands p to the connection with its tag, if there is one.
func (m *directManager) deliver(p ctrlPacket) bool {
	m.mu.Lock()
	c := m.byTag[p.tag]
	m.mu.Unlock()
	if c == nil {
		return false
	}
	select {
	case c.in <- p:
	default:
		m.dropped.Add(1)
	}
	return true
}

// notify queues a path change for the application's callback.
func (m *directManager) notify(qc *quic.Conn, info PathInfo) {
	if m.onChange == nil {
		return
	}
	m.evMu.Lock()
	m.events = append(m.events, pathEvent{qc, info})
	m.evMu.Unlock()
	select {
	case m.evSignal <- struct{}{}:
	default:
	}
}

// deliverEvents calls Config.OnPathChange, one call at a time, so that a
// slow callback never delays probes.
func (m *directManager) deliverEvents() {
	for {
		select {
		case <-m.done:
			return
		case <-m.evSignal:
		}
		m.evMu.Lock()
		evs := m.events
		m.events = nil
		m.evMu.Unlock()
		for _, e := range evs {
			m.onChange(e.qc, e.info)
		}
	}
}

// recheckObserved asks the relay for this peer's public address again.
func (m *directManager) recheckObserved() {
	if m.recheck != nil {
		m.recheck()
	}
}

// observedChanged tells every connection that the relay observed this peer
// at a new address (a NAT rebinding): each checks its own candidates at
// once and announces them in a new punch round, instead of at its next
// periodic check.
func (m *directManager) observedChanged() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.byConn {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// path returns the path of a connection of this peer.
func (m *directManager) path(qc *quic.Conn) (PathInfo, bool) {
	if m == nil {
		return PathInfo{}, false
	}
	m.mu.Lock()
	c := m.byConn[qc]
	m.mu.Unlock()
	if c == nil {
		return PathInfo{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info, true
}

func (m *directManager) stats() DirectStats {
	if m == nil {
		return DirectStats{}
	}
	return DirectStats{
		PunchAttempts:  m.attempts.Load(),
		PunchSuccesses: m.successes.Load(),
		Fallbacks:      m.fallbacks.Load(),
		ProbesSent:     m.sent.Load(),
		ProbesReceived: m.recv.Load(),
		ControlDropped: m.dropped.Load() + m.pc.ctrlDrop.Load(),
		PortMapping:    portMappingStats(m.cands.pm),
	}
}

// close stops every goroutine of the manager and waits for them. Routes
// are removed, so connections still open go back to the relay.
func (m *directManager) close() {
	if m == nil {
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	close(m.done)
	m.mu.Unlock()
	m.wg.Wait()
	if pm := m.cands.pm; pm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), portMapRemoveWait)
		err := pm.CloseContext(ctx)
		cancel()
		if err != nil {
			m.log.Warn("port mapping not removed", "err", err)
		}
	}
}
