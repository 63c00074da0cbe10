package quicpipe

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// pathConn runs the direct path of one connection. mu guards info, which
// Path reads; everything after info is owned by the connection's goroutine
// (run). The socket's write path reads only route.
//
// The protocol (docs/PROTOCOL.md, "Direct paths"): each side announces its
// candidates through the relay, encrypted with keys exported from the
// connection's TLS session. Announcing starts a punch round on both sides:
// each probes every candidate of the other from its one socket. The first
// probe to a candidate has a low TTL: it opens the local NAT mapping
// without reaching the remote NAT, where an unsolicited packet could create
// a conntrack entry that collides with the mapping the remote peer is about
// to make. Normal probes follow at a paced interval once the peer has
// acknowledged our candidates: a side sends its low-TTL probes before it
// acknowledges, so by then both mappings are open. A pong from the address
// a ping went to proves that path in both directions; the connection moves
// onto the best such path.
// While direct, a probe every second keeps the NAT mappings open and the
// path watched. A probe unanswered after a few round trips makes the path
// suspect: probes then go every few round trips, and when none is answered
// for deadAfter the connection goes back to the relay (within about a
// second of a NAT rebinding or a cut), asks the relay for its public
// address again (it may have changed), and retries punching with backoff.
type pathConn struct {
	m      *directManager
	qc     *quic.Conn
	remote *net.UDPAddr
	route  *connRoute
	keys   *pathKeys
	in     chan ctrlPacket
	wake   chan struct{} // own candidates may have changed: check now

	mu   sync.Mutex
	info PathInfo

	// Candidates.
	local     []candidate // last announced
	remoteC   []candidate // the other peer's, as announced (plus reflexive)
	round     uint32      // rounds this side started
	peerRound uint32      // highest round of the peer seen
	peerAck   uint32      // highest of our rounds the peer acknowledged
	candSent  int         // announcements sent this round
	nextCands time.Time   // next announcement; zero: none due
	lastReply time.Time   // last announcement sent in reply
	nextCheck time.Time   // next check of own candidates

	// Punching.
	punching  bool
	roundEnd  time.Time
	succeeded bool // this round moved the connection onto a direct path
	targets   []*target
	pings     map[[8]byte]pingRec // ours, unanswered
	seen      [64][8]byte         // txids of the last pings answered
	seenN     int
	nextRetry time.Time
	backoff   time.Duration

	// The direct path, when Kind is PathDirect.
	direct        *target
	nextKeepalive time.Time
	recordUntil   time.Time     // relayed after a fallback: the send path records until then
	lastPing      time.Time     // when the last probe of the direct path went
	sendsSeen     uint64        // route.sends at the last busy check
	busyCheck     time.Time     // next look at route.sends
	unanswered    time.Time     // when the first probe after the last pong went; zero: none
	srtt          time.Duration // smoothed RTT of the direct path's probes
}

// target is a candidate being probed.
type target struct {
	addr    netip.AddrPort
	next    time.Time // next probe
	lowSent bool
	lowAt   time.Time // when the low-TTL probe went
	sent    int
	ok      bool // answered this round (or since it became the path)
	rtt     time.Duration
}

type pingRec struct {
	to   netip.AddrPort
	sent time.Time
}

// candReflexive marks a candidate learned from where a probe came from.
const candReflexive = 3

func (c *pathConn) run() {
	defer c.stop()
	t := &c.m.timing
	now := time.Now()
	c.pings = make(map[[8]byte]pingRec)
	c.backoff = t.retryMin
	c.nextCheck = now.Add(t.refresh)
	c.startRound(now, true)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-c.qc.Context().Done():
			return
		case <-c.m.done:
			return
		case p := <-c.in:
			c.handle(p, time.Now())
		case <-c.wake:
			c.nextCheck = time.Time{}
		case <-timer.C:
		}
		now := time.Now()
		next := c.step(now)
		timer.Reset(max(next.Sub(now), time.Millisecond))
	}
}

// stop removes the connection's route and registrations.
func (c *pathConn) stop() {
	c.route.direct.Store(nil)
	c.m.remove(c)
}

// startRound starts a punch round. ours says whether this side starts it
// (then the peer is asked to join) rather than joining the peer's.
func (c *pathConn) startRound(now time.Time, ours bool) {
	t := &c.m.timing
	c.m.attempts.Add(1)
	c.punching = true
	c.succeeded = false
	c.roundEnd = now.Add(t.pingInterval*time.Duration(t.pingsPerCand) + t.ackWait)
	c.local = c.m.cands.get(now)
	c.targets = c.targets[:0]
	for _, rc := range c.remoteC {
		c.addTarget(now, rc)
	}
	if ours {
		c.round++
		c.candSent = 0
		c.nextCands = now
	}
	c.nextRetry = time.Time{}
}

func (c *pathConn) addTarget(now time.Time, rc candidate) {
	if !c.usable(rc.addr) {
		return
	}
	for _, tg := range c.targets {
		if tg.addr == rc.addr {
			return
		}
	}
	tg := &target{addr: rc.addr, next: now}
	if c.direct != nil && c.direct.addr == rc.addr {
		tg = c.direct
		tg.sent, tg.lowSent, tg.lowAt = 0, true, now
	}
	c.targets = append(c.targets, tg)
}

// usable reports whether this socket can probe a as a direct path: of the
// relay's family and, unless Config.DirectAnyScope, within its scope.
func (c *pathConn) usable(a netip.AddrPort) bool {
	a = netAddrPort(a)
	return a.IsValid() && a.Port() != 0 && a != c.m.relay && usableCandidate(a.Addr()) &&
		a.Addr().Is4() == c.m.relay.Addr().Is4() &&
		(c.m.cands.anyScope || inScope(c.m.relay.Addr(), a.Addr()))
}

// step does what is due at now and returns when it next has work.
func (c *pathConn) step(now time.Time) time.Time {
	next := wakeAt{t: now.Add(idleStep)}
	if c.route.failed.Swap(false) && c.direct != nil {
		c.fallback(now, "send failed")
	}
	c.stepCandidates(now, &next)
	// Probes of the round come before announcements: a side sends its
	// low-TTL probes before it acknowledges the other's candidates.
	if c.punching {
		c.stepPunch(now, &next)
	}
	c.stepAnnounce(now, &next)
	if c.direct != nil {
		c.stepDirect(now, &next)
	}
	c.stepRecord(now, &next)
	// Retry while relayed.
	if c.direct == nil && !c.punching && !c.nextRetry.IsZero() {
		if !now.Before(c.nextRetry) {
			c.startRound(now, true)
			return now // announce and probe at once
		}
		next.soon(c.nextRetry)
	}
	c.forgetPings(now)
	return next.t
}

// wakeAt is the earliest time a step has more work.
type wakeAt struct{ t time.Time }

// soon moves the wake-up to at, if at is set and earlier.
func (w *wakeAt) soon(at time.Time) {
	if !at.IsZero() && at.Before(w.t) {
		w.t = at
	}
}

// Timers of the path state machine that are no directTiming field.
const (
	idleStep     = time.Hour              // a step's wake-up with nothing due
	noDCIDRetry  = 20 * time.Millisecond  // announce again when no CID of the peer was known
	replyPacing  = 100 * time.Millisecond // at most one announcement in reply per this
	pingLifetime = 10 * time.Second       // an unanswered ping is forgotten after this
)

// stepCandidates starts a new round when own candidates changed (an
// interface, or the relay-observed address), to announce them.
func (c *pathConn) stepCandidates(now time.Time, next *wakeAt) {
	if !now.Before(c.nextCheck) {
		c.nextCheck = now.Add(c.m.timing.refresh)
		if !slices.Equal(c.m.cands.get(now), c.local) {
			c.startRound(now, true)
		}
	}
	next.soon(c.nextCheck)
}

// stepPunch sends the probes of the round due at now, and ends the round
// at its end.
func (c *pathConn) stepPunch(now time.Time, next *wakeAt) {
	t := &c.m.timing
	// Normal probes wait until the peer has our current candidates (and
	// so has opened its NAT's mapping towards us), or ackWait.
	ready := c.peerAck >= c.round
	for _, tg := range c.targets {
		if tg.ok || tg.sent >= t.pingsPerCand {
			continue
		}
		if !tg.lowSent {
			tg.lowSent, tg.lowAt = true, now
			c.sendPing(now, tg.addr, true)
		}
		if !ready && now.Sub(tg.lowAt) < t.ackWait {
			next.soon(tg.lowAt.Add(t.ackWait))
			continue
		}
		if !now.Before(tg.next) {
			c.sendPing(now, tg.addr, false)
			tg.sent++
			tg.next = now.Add(t.pingInterval)
		}
		next.soon(tg.next)
	}
	if now.Before(c.roundEnd) {
		next.soon(c.roundEnd)
		return
	}
	c.punching = false
	if c.direct == nil {
		c.nextRetry = now.Add(c.backoff)
		c.backoff = min(2*c.backoff, t.retryMax)
		c.relayedBecause(c.failReason())
	}
}

// stepAnnounce sends our candidates until the peer acknowledges our
// round.
func (c *pathConn) stepAnnounce(now time.Time, next *wakeAt) {
	t := &c.m.timing
	if !c.nextCands.IsZero() && !now.Before(c.nextCands) {
		c.nextCands = time.Time{}
		if !c.sendCandidates(now) {
			c.nextCands = now.Add(noDCIDRetry)
		} else if c.peerAck < c.round {
			c.candSent++
			if c.candSent < t.candSends {
				c.nextCands = now.Add(t.candResend)
			}
		}
	}
	next.soon(c.nextCands)
}

// stepDirect watches the direct path: keepalive probes, and fallback when
// they stop being answered. A probe unanswered after pongWait is lost: the
// path is suspect, probes go every pongWait, and the send path keeps a copy
// of the connection's last datagram (see fallback). No pong deadAfter
// after the first unanswered probe: the path is dead.
func (c *pathConn) stepDirect(now time.Time, next *wakeAt) {
	t := &c.m.timing
	wait := c.pongWait()
	dead := max(t.deadAfter, 2*wait)
	if !c.unanswered.IsZero() && !now.Before(c.unanswered.Add(dead)) {
		c.fallback(now, "no answer")
		return
	}
	if c.suspect(now) {
		c.route.keepLast.Store(true)
		if again := c.lastPing.Add(wait); again.Before(c.nextKeepalive) {
			c.nextKeepalive = again
		}
	} else if !c.unanswered.IsZero() {
		next.soon(c.unanswered.Add(wait))
	}
	// While the connection sends on the path, probes go every busyProbe:
	// a dead path then swallows less data.
	if !now.Before(c.busyCheck) {
		c.busyCheck = now.Add(t.busyProbe)
		if sends := c.route.sends.Load(); sends != c.sendsSeen {
			c.sendsSeen = sends
			if busy := c.lastPing.Add(t.busyProbe); busy.Before(c.nextKeepalive) {
				c.nextKeepalive = busy
			}
		}
	}
	next.soon(c.busyCheck)
	if !now.Before(c.nextKeepalive) {
		c.sendPing(now, c.direct.addr, false)
		c.nextKeepalive = now.Add(t.keepalive)
	}
	next.soon(c.nextKeepalive)
	if !c.unanswered.IsZero() {
		next.soon(c.unanswered.Add(dead))
	}
}

// stepRecord stops the send path's recording recordAfterFallback after a
// fallback (see fallback).
func (c *pathConn) stepRecord(now time.Time, next *wakeAt) {
	if c.recordUntil.IsZero() {
		return
	}
	if !now.Before(c.recordUntil) {
		c.recordUntil = time.Time{}
		c.route.takeLast()
		return
	}
	next.soon(c.recordUntil)
}

// forgetPings forgets pings unanswered for pingLifetime.
func (c *pathConn) forgetPings(now time.Time) {
	for id, p := range c.pings {
		if now.Sub(p.sent) > pingLifetime {
			delete(c.pings, id)
		}
	}
}

// fallback moves the connection back to the relay.
//
// quic-go does not know that the path changed: packets it sent on the dead
// path are lost, and it notices only when its probe timeout fires, which
// has backed off exponentially during the outage (seconds). So the last
// datagram sent on the dead path is sent again through the relay at once:
// the other side acknowledges it (or, if it carried an acknowledgment,
// learns from it), and quic-go's loss recovery resumes within a round trip.
// QUIC discards a duplicate if the original did arrive.
//
// The relayed path may not work at once either: when this peer's NAT
// rebound, the relay forwards to its old address until it sees the new one.
// So the send path keeps recording while relayed, for recordAfterFallback,
// and use sends the last datagram again on the next direct path.
func (c *pathConn) fallback(now time.Time, why string) {
	c.m.fallbacks.Add(1)
	lost := c.direct.addr
	c.direct.ok = false
	c.direct = nil
	c.route.direct.Store(nil)
	last := c.route.takeLast()
	if last != nil {
		c.m.pc.writeCtrl(last, nil, c.m.relay)
	}
	c.route.keepLast.Store(true)
	c.recordUntil = now.Add(recordAfterFallback)
	c.m.log.Info("direct path lost; back to the relay", "peer", lost.String(), "why", why, "resent", len(last))
	c.setInfo(PathInfo{Kind: PathRelayed, Remote: c.m.relay, Relay: c.m.relay, Since: now,
		Reason: "the direct path to " + lost.String() + " was lost: " + why})
	c.backoff = c.m.timing.retryMin
	c.nextRetry = now.Add(c.backoff)
	c.unanswered = time.Time{}
	// The path may have died because this peer's NAT mapping changed: the
	// relay sees the new address (its connection migrates), and announcing
	// it starts a new round at once (see directManager.observedChanged).
	c.m.recheckObserved()
	// A path validated in the current round (the other peer's new address,
	// if its NAT rebound) takes over at once.
	c.choose(now)
}

// pongWait is how long a probe of the direct path waits for its pong
// before it counts as lost: pongWait, or three round trips of the path.
func (c *pathConn) pongWait() time.Duration {
	return max(c.m.timing.pongWait, 3*c.srtt)
}

// recordAfterFallback is how long after a fallback the send path keeps a
// copy of the connection's last datagram, for use to send again on the
// next direct path.
const recordAfterFallback = 10 * time.Second

// use moves the connection onto tg. Coming from the relay, it sends the
// datagram recorded since a fallback again on the new path (see fallback).
func (c *pathConn) use(now time.Time, tg *target) {
	if c.direct == nil && c.punching && !c.succeeded {
		c.succeeded = true
		c.m.successes.Add(1)
	}
	c.direct = tg
	c.unanswered = time.Time{}
	c.srtt = tg.rtt
	c.nextKeepalive = now.Add(c.m.timing.keepalive)
	c.backoff = c.m.timing.retryMin
	c.nextRetry = time.Time{}
	c.recordUntil = time.Time{}
	a := tg.addr
	c.route.direct.Store(&a)
	if last := c.route.takeLast(); last != nil {
		c.m.pc.writeCtrl(last, nil, a)
	}
	via := ""
	if i := slices.IndexFunc(c.remoteC, func(rc candidate) bool { return rc.addr == a }); i >= 0 {
		via = candidateVia(c.remoteC[i].kind)
	}
	c.m.log.Info("direct path", "peer", a.String(), "rtt", tg.rtt, "via", via)
	c.setInfo(PathInfo{Kind: PathDirect, Remote: a, Relay: c.m.relay, RTT: tg.rtt, Since: now, Via: via})
}

// failReason says why the punch round that just ended found no path.
func (c *pathConn) failReason() string {
	switch {
	case c.peerRound == 0 && c.peerAck == 0:
		return "the other side did not take part (direct paths off there, or its announcements lost)"
	case len(c.targets) == 0:
		return "the other side offered no address this side can use (other family, or outside the relay's scope)"
	case len(c.targets) == 1:
		return "no answer from the other side's address " + c.targets[0].addr.String()
	}
	return fmt.Sprintf("no answer from any of the other side's %d addresses", len(c.targets))
}

// relayedBecause reports, while relayed, why: only when the reason
// changes, so that retries failing alike stay quiet.
func (c *pathConn) relayedBecause(reason string) {
	c.mu.Lock()
	info := c.info
	c.mu.Unlock()
	if info.Kind != PathRelayed || info.Reason == reason {
		return
	}
	info.Reason = reason
	c.setInfo(info)
}

func (c *pathConn) setInfo(info PathInfo) {
	c.mu.Lock()
	c.info = info
	c.mu.Unlock()
	c.m.notify(c.qc, info)
}

// choose moves the connection onto the best answered target: the first
// one found, one clearly faster than the current path, or any other when
// the current path is suspect (after a rebinding, the other peer's new
// address answers while the old one is still being given up).
func (c *pathConn) choose(now time.Time) {
	if c.suspect(now) {
		c.direct.ok = false // until it answers again
	}
	var best *target
	for _, tg := range c.targets {
		if tg.ok && (best == nil || tg.rtt < best.rtt) {
			best = tg
		}
	}
	if c.direct != nil && c.direct.ok {
		if best == nil || best == c.direct || !clearlyFaster(best.rtt, c.direct.rtt) {
			return
		}
	}
	if best != nil && best != c.direct {
		c.use(now, best)
	}
}

// A path replaces the current direct path only if its RTT is below
// fasterNum/fasterDen of the current one's: close RTTs must not make the
// connection flap between paths.
const fasterNum, fasterDen = 7, 10

// clearlyFaster reports whether a path with RTT rtt should replace one with
// RTT cur.
func clearlyFaster(rtt, cur time.Duration) bool { return rtt*fasterDen < cur*fasterNum }

// suspect reports whether the direct path has a probe unanswered for
// longer than pongWait.
func (c *pathConn) suspect(now time.Time) bool {
	return c.direct != nil && !c.unanswered.IsZero() && !now.Before(c.unanswered.Add(c.pongWait()))
}

// handle processes one control datagram.
func (c *pathConn) handle(p ctrlPacket, now time.Time) {
	body, err := c.keys.open(p.b)
	if err != nil {
		c.m.dropped.Add(1)
		return
	}
	msg, err := parseBody(body)
	if err != nil {
		c.m.dropped.Add(1)
		return
	}
	switch msg := msg.(type) {
	case *probeMsg:
		c.m.recv.Add(1)
		if msg.typ == msgPing {
			c.onPing(now, p.from, msg)
		} else {
			c.onPong(now, p.from, msg)
		}
	case *candidatesMsg:
		c.onCandidates(now, msg)
	}
}

func (c *pathConn) onPing(now time.Time, from netip.AddrPort, m *probeMsg) {
	if from == c.m.relay {
		return // probes never travel through the relay
	}
	// Every ping has a fresh txid: a repeated one is a replay (by someone
	// who saw it on a direct path), not worth an answer.
	if slices.Contains(c.seen[:min(c.seenN, len(c.seen))], m.txid) {
		return
	}
	c.seen[c.seenN%len(c.seen)] = m.txid
	c.seenN++
	pong := probeMsg{typ: msgPong, txid: m.txid, addr: from}
	if c.m.pc.writeCtrl(c.keys.seal(nil, pong.marshal()), nil, from) == nil {
		c.m.sent.Add(1)
	}
	// A ping from an address we do not know is a path the other side
	// found (a peer-reflexive candidate): probe it too.
	if !c.usable(from) || slices.ContainsFunc(c.remoteC, func(rc candidate) bool { return rc.addr == from }) {
		return
	}
	if len(c.remoteC) < 2*maxCandidates {
		c.remoteC = append(c.remoteC, candidate{candReflexive, from})
	}
	if c.punching {
		c.addTarget(now, candidate{candReflexive, from})
	} else if c.direct == nil {
		c.startRound(now, false)
	}
}

func (c *pathConn) onPong(now time.Time, from netip.AddrPort, m *probeMsg) {
	rec, ok := c.pings[m.txid]
	if !ok || rec.to != from {
		return // not our probe, or not from where it went
	}
	delete(c.pings, m.txid)
	rtt := now.Sub(rec.sent)
	for _, tg := range c.targets {
		if tg.addr == from {
			tg.ok, tg.rtt = true, rtt
		}
	}
	if c.direct != nil && c.direct.addr == from {
		c.direct.ok, c.direct.rtt = true, rtt
		c.unanswered = time.Time{}
		c.srtt = (7*c.srtt + rtt) / 8
		if c.route.keepLast.Load() {
			c.route.takeLast() // the path answers again
		}
		c.mu.Lock()
		c.info.RTT = rtt
		c.mu.Unlock()
	}
	c.choose(now)
}

func (c *pathConn) onCandidates(now time.Time, m *candidatesMsg) {
	newRound := m.round > c.peerRound
	if newRound {
		c.peerRound = m.round
	}
	if m.ack > c.peerAck && m.ack <= c.round {
		c.peerAck = m.ack
	}
	// Keep reflexive candidates learned from pings beside the announced.
	var cands []candidate
	for _, rc := range m.cands {
		if c.usable(rc.addr) {
			cands = append(cands, candidate{rc.kind, netAddrPort(rc.addr)})
		}
	}
	for _, rc := range c.remoteC {
		if rc.kind == candReflexive && !slices.ContainsFunc(cands, func(x candidate) bool { return x.addr == rc.addr }) {
			cands = append(cands, rc)
		}
	}
	c.remoteC = cands
	switch {
	case newRound && !c.punching:
		c.startRound(now, false)
	case c.punching:
		for _, rc := range cands {
			c.addTarget(now, rc)
		}
	}
	// The peer waits for our acknowledgment (and learns our candidates
	// from it). Its retransmissions are paced; so are our answers.
	if m.needAck && now.Sub(c.lastReply) > replyPacing {
		c.lastReply = now
		c.nextCands = now
	}
}

// sendCandidates announces our candidates through the relay. It returns
// false if no CID of the peer is known yet.
func (c *pathConn) sendCandidates(now time.Time) bool {
	dcid, ok := c.route.peerDCID()
	if !ok {
		return false
	}
	if c.local == nil {
		c.local = c.m.cands.get(now)
	}
	msg := candidatesMsg{round: c.round, ack: c.peerRound, needAck: c.peerAck < c.round, cands: c.local}
	c.m.pc.writeCtrl(c.keys.seal(dcid[:], msg.marshal()), nil, c.m.relay)
	return true
}

// sendPing probes to. low asks for the low TTL; then nothing is sent if the
// socket cannot set it.
func (c *pathConn) sendPing(now time.Time, to netip.AddrPort, low bool) {
	var oob []byte
	if low {
		oob = c.m.lowTTL4
		if !to.Addr().Unmap().Is4() {
			oob = c.m.lowTTL6
		}
		if oob == nil {
			return
		}
	}
	var id [8]byte
	rand.Read(id[:])
	if !low && c.direct != nil && to == c.direct.addr {
		// The direct path is watched by its probes, sent or not.
		c.lastPing = now
		if c.unanswered.IsZero() {
			c.unanswered = now
		}
	}
	m := probeMsg{typ: msgPing, txid: id, addr: to}
	if err := c.m.pc.writeCtrl(c.keys.seal(nil, m.marshal()), oob, to); err != nil {
		return
	}
	c.m.sent.Add(1)
	if !low { // a low-TTL probe is never answered
		c.pings[id] = pingRec{to: to, sent: now}
	}
}
