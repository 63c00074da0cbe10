package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Sleeping listeners (docs/decisions/0029-idle-peers.md, part 2;
// docs/PROTOCOL.md, "Sleeping listeners"). A listener whose mailbox is open
// and that has no pipe open asks the relay, over its HTTP/3 connection, to
// let it sleep (POST /v1/sleep): the relay then keeps its registration and
// its mailbox with a small record instead of the connection, which the
// listener closes. The sleeper keeps them alive with keep-alive datagrams on
// the relay's port (sleep_wire.go); a post to its mailbox reaches it in wake
// datagrams carrying the flight. Nothing here runs a goroutine per sleeper.

// sleepPath is the endpoint where a listener asks to sleep.
const sleepPath = "/v1/sleep"

// Defaults of the relay's sleep settings.
const (
	defaultSleepKeepAlive = 25 * time.Second
	// sleepMissed is how many keep-alives a sleeper may miss before the
	// relay forgets it; the relay waits half an interval more.
	sleepMissed = 3
	// sleepDefaultRTT is the round trip assumed for a sleeper before its
	// first challenge is answered; wakes are resent after 1.5 of it.
	sleepDefaultRTT = 200 * time.Millisecond
	// sleepMinResend bounds how fast a wake is resent.
	sleepMinResend = 20 * time.Millisecond
	// sleepChallengeEvery bounds how often the relay challenges one
	// sleeper's new address.
	sleepChallengeEvery = time.Second
	// sleepWalkEvery is how often, at most, the janitor looks for
	// sleepers to forget (a quarter of the keep-alive interval if less).
	sleepWalkEvery = time.Second
	// sleepWalkChunk is how many sleepers the janitor's walk looks at
	// before it lets go of the sleep lock for a moment: the sleep
	// datagrams that readers hand to the relay wait for one chunk at
	// most, not for the whole walk.
	sleepWalkChunk = 1024
)

// sleepRequest is the body of POST /v1/sleep.
type sleepRequest struct {
	// Key is the CID key of the registration made over this connection.
	Key []byte `json:"key"`
	// Mailbox is the public key of the mailbox open over this connection.
	Mailbox []byte `json:"mailbox"`
	// First and Num, if Num is not zero, shrink the registration's window
	// to [First, First+Num) while asleep; a window outside the current one
	// leaves it as it is.
	First int64 `json:"first"`
	Num   int64 `json:"num"`
	// Counter is the sleeper's counter now: its datagrams count up from
	// above it.
	Counter uint64 `json:"counter"`
}

// sleepAnswer is the answer to POST /v1/sleep.
type sleepAnswer struct {
	// KeepAliveMS is how often the sleeper must send a keep-alive, in
	// milliseconds: the relay forgets it after three missed.
	KeepAliveMS int64 `json:"keepalive_ms"`
	// Counter is the relay's counter for this sleeper now: its datagrams
	// count up from above it.
	Counter uint64 `json:"counter"`
}

// sleepOffer is what a register answer carries when the relay lets
// listeners sleep ("sleep": {...}).
type sleepOffer struct {
	KeepAliveMS int64 `json:"keepalive_ms"`
}

// SleepStats is a snapshot of a relay's sleeping listeners and their
// datagrams.
type SleepStats struct {
	// Sleeping is the number of sleeping listeners now.
	Sleeping int
	// Slept counts listeners that went to sleep; Expired those forgotten
	// after three missed keep-alives (or whose registration ended); Left
	// those forgotten because they said they were closing.
	Slept, Expired, Left uint64
	// KeepAlives counts valid keep-alives; Challenges the challenges sent
	// to a sleeper's new address; Moved the registrations moved to a new
	// address after an answered challenge.
	KeepAlives, Challenges, Moved uint64
	// Wakes counts flights (or plain wakes) a sleeper acknowledged;
	// WakeResends counts wake datagrams sent again for want of an ack.
	Wakes, WakeResends uint64
	// Dropped counts sleep datagrams ignored, by reason: "short" (too
	// short or too long), "bad_type" (unknown type, a type the relay
	// never receives, or a malformed body), "unknown_key" (no sleeper has
	// this ID), "bad_mac", "replayed" (a counter not above the last) and
	// "unexpected" (a response to no pending challenge, or from another
	// address).
	Dropped map[string]uint64
}

// sleepServer holds a relay's sleepers. Lock order: Relay.regMu, then
// mailboxServer.mu, then sleepServer.mu.
type sleepServer struct {
	r                      *Relay
	every                  time.Duration // keep-alive interval
	maxTotal, maxPerSource int

	mu        sync.Mutex
	byID      map[[sleepIDLen]byte]*sleeper
	perSource map[netip.Prefix]int
	lastWalk  time.Time
	walkChunk int // sleepWalkChunk (BenchmarkSleepWalk changes it)

	slept, expired, left, keepAlives, challenges, moved, wakes, wakeResends atomic.Uint64
	dropShort, dropType, dropUnknown, dropMAC, dropReplay, dropUnexpected   atomic.Uint64
	moveWarned                                                              atomic.Int64
}

// sleeper is the relay's record of one sleeping listener: about 200 bytes
// beside its registration and its mailbox.
type sleeper struct {
	id      [sleepIDLen]byte
	key     [sleepKeyLen]byte
	mailbox string
	mb      *mailbox
	reg     *regEntry
	// Guarded by sleepServer.mu.
	src              netip.Prefix
	addr             netip.AddrPort // where the registration forwards to, and wakes go
	recvCtr, sendCtr uint64
	expires          int64 // unix nano
	left             bool  // the listener said it closes (sleepLeave)
	rtt              time.Duration
	chal             *sleepChal
	wakes            []*sleepWaking
}

// sleepChal is a challenge sent to a sleeper's new address.
type sleepChal struct {
	nonce [sleepNonceLen]byte
	addr  netip.AddrPort
	sent  time.Time
}

// sleepWaking is a wake in progress: the parts sent and acknowledged.
type sleepWaking struct {
	id        [sleepWakeIDLen]byte
	want, got uint8
	done      chan struct{} // closed once got covers want
}

// newSleepServer returns the relay's sleep server, or nil if the relay
// does not offer sleep: turned off, or no mailbox. In a fleet a sleeping
// mailbox keeps its MailboxRouter hold, so that posts at other members
// reach the member whose sleeper they wake.
func newSleepServer(r *Relay, c *RelayConfig) *sleepServer {
	if c.DisableSleep || c.Mailbox == nil {
		return nil
	}
	return &sleepServer{
		r:            r,
		every:        c.SleepKeepAlive,
		maxTotal:     c.MaxSleepers,
		maxPerSource: c.MaxSleepersPerSource,
		byID:         make(map[[sleepIDLen]byte]*sleeper),
		walkChunk:    sleepWalkChunk,
		perSource:    make(map[netip.Prefix]int),
	}
}

// sleepHook creates the relay's sleep server, if it offers sleep, and
// returns its handler of sleep datagrams for the forwarding engine (nil
// without).
func (r *Relay) sleepHook(c *RelayConfig) func([]byte, netip.AddrPort) {
	r.sleep = newSleepServer(r, c)
	if r.sleep == nil {
		return nil
	}
	return r.sleep.handle
}

// offer is what a register answer says of sleep; nil if the relay does not
// offer it.
func (ss *sleepServer) offer() *sleepOffer {
	if ss == nil {
		return nil
	}
	return &sleepOffer{KeepAliveMS: ss.every.Milliseconds()}
}

// lifetime is how long a sleeper lives after a keep-alive.
func (ss *sleepServer) lifetime() time.Duration {
	return sleepMissed*ss.every + ss.every/2
}

// SleepStats returns a snapshot of the relay's sleep counters; all zero if
// the relay does not offer sleep.
func (r *Relay) SleepStats() SleepStats {
	ss := r.sleep
	if ss == nil {
		return SleepStats{Dropped: map[string]uint64{}}
	}
	s := SleepStats{
		Slept:       ss.slept.Load(),
		Expired:     ss.expired.Load(),
		Left:        ss.left.Load(),
		KeepAlives:  ss.keepAlives.Load(),
		Challenges:  ss.challenges.Load(),
		Moved:       ss.moved.Load(),
		Wakes:       ss.wakes.Load(),
		WakeResends: ss.wakeResends.Load(),
		Dropped: map[string]uint64{
			"short":       ss.dropShort.Load(),
			"bad_type":    ss.dropType.Load(),
			"unknown_key": ss.dropUnknown.Load(),
			"bad_mac":     ss.dropMAC.Load(),
			"replayed":    ss.dropReplay.Load(),
			"unexpected":  ss.dropUnexpected.Load(),
		},
	}
	ss.mu.Lock()
	s.Sleeping = len(ss.byID)
	ss.mu.Unlock()
	return s
}

// sendLocked builds a datagram of type typ to s. ss.mu must be held.
func (ss *sleepServer) sendLocked(s *sleeper, typ byte, body ...[]byte) []byte {
	s.sendCtr = nextCounter(s.sendCtr, time.Now().UnixNano())
	return appendSleep(nil, &s.key, typ, s.id, s.sendCtr, body...)
}

// write sends b to addr from the relay's socket.
func (ss *sleepServer) write(b []byte, addr netip.AddrPort) {
	ss.r.conn.WriteToUDPAddrPort(b, addr)
}

// handle processes one sleep datagram from the relay's socket (the
// forwarding engine's Sleep hook, on a reader's goroutine). It never
// blocks for long: one HMAC, a lookup, and at most one datagram sent.
func (ss *sleepServer) handle(b []byte, from netip.AddrPort) {
	m, err := parseSleep(b)
	if err != nil {
		if err == errSleepShort {
			ss.dropShort.Add(1)
		} else {
			ss.dropType.Add(1)
		}
		return
	}
	switch m.typ {
	case sleepKeepAlive, sleepResponse, sleepWakeAck, sleepLeave:
	default:
		ss.dropType.Add(1)
		return
	}
	from = netAddrPort(from)
	now := time.Now()
	var out []byte
	var to netip.AddrPort
	move := false
	ss.mu.Lock()
	s := ss.byID[m.id]
	ss.mu.Unlock()
	switch {
	case s == nil:
		ss.dropUnknown.Add(1)
		return
	case !m.verify(&s.key): // the key never changes: no lock for the HMAC
		ss.dropMAC.Add(1)
		return
	}
	ss.mu.Lock()
	switch {
	case ss.byID[m.id] != s:
		ss.mu.Unlock()
		ss.dropUnknown.Add(1) // forgotten meanwhile
		return
	case m.counter <= s.recvCtr:
		ss.mu.Unlock()
		ss.dropReplay.Add(1)
		return
	}
	s.recvCtr = m.counter
	switch m.typ {
	case sleepKeepAlive:
		if ss.r.draining.Load() {
			// Draining (Shutdown): sleepers are not kept; unanswered,
			// they wake and find the relay closing.
			ss.mu.Unlock()
			return
		}
		ss.keepAlives.Add(1)
		s.expires = now.Add(ss.lifetime()).UnixNano()
		s.reg.SetExpires(max(s.reg.Expires(), s.expires))
		if from == s.addr {
			var ctr [8]byte
			binary.BigEndian.PutUint64(ctr[:], m.counter)
			out, to = ss.sendLocked(s, sleepKeepAliveAck, ctr[:]), from
		} else if s.chal == nil || s.chal.addr != from || now.Sub(s.chal.sent) >= sleepChallengeEvery {
			// A keep-alive from a new address moves nothing: the
			// address must first answer a challenge.
			out, to = ss.challengeLocked(s, from, now), from
		}
	case sleepResponse:
		c := s.chal
		if c == nil || c.addr != from || [sleepNonceLen]byte(m.body) != c.nonce {
			ss.mu.Unlock()
			ss.dropUnexpected.Add(1)
			return
		}
		s.chal = nil
		s.rtt = now.Sub(c.sent)
		move = from != s.addr
	case sleepLeave:
		// The listener closed: its sleeper, mailbox and registration go
		// at the next walk (within a second), as an expired one would.
		if !s.left {
			s.left = true
			s.expires = 0
			ss.left.Add(1)
		}
	case sleepWakeAck:
		id := [sleepWakeIDLen]byte(m.body)
		for _, w := range s.wakes {
			if w.id == id {
				before := w.got
				w.got |= m.body[sleepWakeIDLen] & w.want
				if w.got == w.want && before != w.want {
					close(w.done)
				}
			}
		}
	}
	ss.mu.Unlock()
	if out != nil {
		ss.write(out, to)
	}
	if move {
		ss.r.moveSleeper(s, from)
	}
}

// challengeLocked starts a challenge of s at addr and returns it. ss.mu
// must be held.
func (ss *sleepServer) challengeLocked(s *sleeper, addr netip.AddrPort, now time.Time) []byte {
	c := &sleepChal{addr: addr, sent: now}
	rand.Read(c.nonce[:])
	s.chal = c
	ss.challenges.Add(1)
	return ss.sendLocked(s, sleepChallenge, c.nonce[:])
}

// moveSleeper moves s's registration, and its wakes, to addr, which has
// just answered a challenge.
func (r *Relay) moveSleeper(s *sleeper, addr netip.AddrPort) {
	ss := r.sleep
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.regs.get(s.reg.key) != s.reg {
		return
	}
	d, err := r.newDest(addr, s.reg.local)
	if err != nil {
		now := time.Now().UnixNano()
		if last := ss.moveWarned.Load(); now-last >= int64(refusedMoveLogEvery) && ss.moveWarned.CompareAndSwap(last, now) {
			r.log.Warn("sleeping listener moved to a refused address", "addr", addr.String(), "err", err)
		}
		return
	}
	src := sourceOf(addr.Addr())
	r.regs.move(s.reg, src, d)
	r.replicatePut(s.reg)
	ss.mu.Lock()
	if ss.byID[s.id] == s && s.src != src {
		ss.releaseSourceLocked(s)
		s.src = src
		ss.perSource[src]++
	}
	s.addr = addr
	ss.mu.Unlock()
	ss.moved.Add(1)
}

func (ss *sleepServer) releaseSourceLocked(s *sleeper) {
	if ss.perSource[s.src]--; ss.perSource[s.src] <= 0 {
		delete(ss.perSource, s.src)
	}
}

// handleSleep serves POST /v1/sleep: the listener whose registration and
// mailbox this connection holds goes to sleep.
func (r *Relay) handleSleep(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		r.apiError(w, http.StatusMethodNotAllowed, CodeBadMethod, "method "+req.Method+" not allowed")
		return
	}
	if r.cfg.Authorizer != nil {
		if err := r.cfg.Authorizer.Authorize(req, OpRegister); err != nil {
			r.apiError(w, http.StatusUnauthorized, CodeUnauthorized, err.Error())
			return
		}
	}
	var body sleepRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, r.cfg.MaxBodyBytes))
	if err := dec.Decode(&body); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			r.apiError(w, http.StatusRequestEntityTooLarge, CodeBodyTooLarge, fmt.Sprintf("request body exceeds %d bytes", r.cfg.MaxBodyBytes))
			return
		}
		r.apiError(w, http.StatusBadRequest, CodeBadJSON, "malformed JSON body: "+err.Error())
		return
	}
	if n := len(body.Key); n < MinCIDKeyLen || n > r.cfg.MaxKeyLen {
		r.apiError(w, http.StatusBadRequest, CodeKeyLength,
			fmt.Sprintf("key is %d bytes; it must be %d to %d bytes", n, MinCIDKeyLen, r.cfg.MaxKeyLen))
		return
	}
	if len(body.Mailbox) != ed25519.PublicKeySize {
		r.apiError(w, http.StatusBadRequest, CodeBadKey, fmt.Sprintf("mailbox must be a %d-byte public key", ed25519.PublicKeySize))
		return
	}
	qc, _ := req.Context().Value(quicConnKey{}).(*quic.Conn)
	if qc == nil {
		r.apiError(w, http.StatusInternalServerError, CodeNoAddress, "cannot tell the connection of this request")
		return
	}
	ans, chal, to, status, code, err := r.goToSleep(qc, &body)
	if err != nil {
		r.apiError(w, status, code, err.Error())
		return
	}
	// The first challenge measures the round trip that paces wakes.
	r.sleep.write(chal, to)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ans)
}

// goToSleep turns the registration and the mailbox that qc holds into a
// sleeper.
func (r *Relay) goToSleep(qc *quic.Conn, body *sleepRequest) (ans sleepAnswer, chal []byte, to netip.AddrPort, status int, code string, err error) {
	ss, m := r.sleep, r.mailbox
	key, err := deriveSleepKey(body.Key, body.Mailbox)
	if err != nil {
		return ans, nil, to, http.StatusInternalServerError, CodeKeyLength, err
	}
	now := time.Now()
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.closing {
		return ans, nil, to, http.StatusServiceUnavailable, CodeClosing, errors.New("relay is shutting down")
	}
	reg := r.regs.get(string(body.Key))
	if reg == nil || reg.conn != qc || reg.member != "" {
		return ans, nil, to, http.StatusConflict, CodeSleepRefused, errors.New("this key's registration was not made over this connection")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.boxes[string(body.Mailbox)]
	if mb == nil || mb.conn != qc || mb.sleep != nil {
		return ans, nil, to, http.StatusConflict, CodeSleepRefused, errors.New("this mailbox is not open over this connection")
	}
	if r.cfg.MailboxRouter != nil && !mb.routed {
		// The open request has not taken its fleet hold yet (an accepter
		// sleeps only once its mailbox is confirmed, after the hold).
		return ans, nil, to, http.StatusConflict, CodeSleepRefused, errors.New("this mailbox is not open yet")
	}
	id := sleepIDOf(body.Mailbox)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if old := ss.byID[id]; old != nil {
		return ans, nil, to, http.StatusConflict, CodeSleepRefused, errors.New("another sleeping mailbox has the same ID (the first 8 bytes of its key)")
	}
	if len(ss.byID) >= ss.maxTotal {
		return ans, nil, to, http.StatusServiceUnavailable, CodeLimitSleepers,
			fmt.Errorf("relay holds the maximum of %d sleeping listeners", ss.maxTotal)
	}
	if ss.perSource[reg.src] >= ss.maxPerSource {
		return ans, nil, to, http.StatusTooManyRequests, CodeLimitSource,
			fmt.Errorf("%s holds the maximum of %d sleeping listeners per source", reg.src, ss.maxPerSource)
	}
	s := &sleeper{
		id:      id,
		key:     key,
		mailbox: string(body.Mailbox),
		mb:      mb,
		reg:     reg,
		src:     reg.src,
		addr:    reg.Dest().AP,
		recvCtr: body.Counter,
		sendCtr: nextCounter(0, now.UnixNano()),
		expires: now.Add(ss.lifetime()).UnixNano(),
	}
	// A sleeper needs only a few CIDs ahead: the window shrinks to the one
	// asked, if it lies within the registered one.
	if first, end := uint64(body.First), uint64(body.First)+uint64(body.Num); body.Num > 0 && body.First > 0 &&
		first >= uint64(reg.first) && end <= uint64(reg.first)+uint64(len(reg.cids)) {
		cids := reg.cids[first-uint64(reg.first) : end-uint64(reg.first)]
		before := shapeOf(reg)
		r.regs.put(reg.key, reg, reg.src, reg.Dest(), reg.local, nil, uint32(first), cids, time.Unix(0, s.expires))
		if shapeOf(reg) != before {
			r.replicatePut(reg)
		}
	}
	// The sleeper holds no connection: neither does its registration, nor
	// its mailbox (the closed connection is then garbage).
	reg.conn = nil
	reg.SetExpires(s.expires)
	mb.conn = nil
	mb.sleep = s
	close(mb.asleep)
	ss.byID[id] = s
	ss.perSource[s.src]++
	ss.slept.Add(1)
	floor := s.sendCtr
	chal = ss.challengeLocked(s, s.addr, now)
	return sleepAnswer{KeepAliveMS: ss.every.Milliseconds(), Counter: floor}, chal, s.addr, 0, "", nil
}

// dropLocked forgets s (its mailbox was taken by a new holder, or it
// expired). ss.mu must be held.
func (ss *sleepServer) dropLocked(s *sleeper) {
	if ss.byID[s.id] != s {
		return
	}
	delete(ss.byID, s.id)
	ss.releaseSourceLocked(s)
}

// expireLocked forgets the sleepers that missed their keep-alives or whose
// registration ended, with their mailboxes and (unless the listener
// registered again over a connection) their registrations. It returns the
// keys of the forgotten mailboxes whose MailboxRouter hold the caller must
// release once it has unlocked r.regMu, which must be held.
func (ss *sleepServer) expireLocked(now time.Time) (unroute []string) {
	if now.Sub(ss.lastWalk) < min(sleepWalkEvery, ss.every/4) {
		return nil
	}
	ss.lastWalk = now
	r := ss.r
	nowNS := now.UnixNano()
	var gone []*sleeper
	ss.mu.Lock()
	n := 0
	for _, s := range ss.byID {
		if n++; n%ss.walkChunk == 0 {
			// Let the readers' sleep datagrams in. The map may change
			// meanwhile, which a range over it allows (a sleeper added
			// now may be missed: the next walk sees it).
			ss.mu.Unlock()
			runtime.Gosched()
			ss.mu.Lock()
		}
		if s.expires < nowNS || r.regs.get(s.reg.key) != s.reg {
			gone = append(gone, s)
		}
	}
	dropped := gone[:0]
	for _, s := range gone {
		// Looked at before the lock was let go: a keep-alive may have
		// come since, or a reopen taken the sleeper's place.
		late := s.expires < nowNS
		if ss.byID[s.id] != s || !late && r.regs.get(s.reg.key) == s.reg {
			continue
		}
		if late && !s.left {
			ss.expired.Add(1)
		}
		ss.dropLocked(s)
		dropped = append(dropped, s)
	}
	gone = dropped
	ss.mu.Unlock()
	for _, s := range gone {
		if r.mailbox.forgetSleeping(s) {
			unroute = append(unroute, s.mailbox)
		}
		if r.regs.get(s.reg.key) == s.reg && (s.reg.conn == nil || s.reg.conn.Context().Err() != nil) {
			r.removeLocked(s.reg)
		}
	}
	return unroute
}

// forgetSleeping removes s's mailbox if it still sleeps: posts waiting for
// it fail. It reports whether the mailbox's MailboxRouter hold is to be
// released (by the caller, outside the relay's locks).
func (m *mailboxServer) forgetSleeping(s *sleeper) (unroute bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mb := m.boxes[s.mailbox]; mb == s.mb {
		delete(m.boxes, s.mailbox)
		m.releaseLocked(mb)
		mb.end()
		return m.unrouteLocked(mb)
	}
	return false
}

// releaseSleeping releases the MailboxRouter holds of the sleeping
// mailboxes the relay still holds, once it has closed: no request and no
// janitor will end them.
func (m *mailboxServer) releaseSleeping() {
	rt := m.r.cfg.MailboxRouter
	if rt == nil {
		return
	}
	var keys []string
	m.mu.Lock()
	for key, mb := range m.boxes {
		if mb.sleep != nil && m.unrouteLocked(mb) {
			keys = append(keys, key)
		}
	}
	m.mu.Unlock()
	for _, key := range keys {
		rt.Release(ed25519.PublicKey(key))
	}
}

// errWakeNoFlight says that a sleeper woke without the flight, which then
// goes to its next holder.
var errWakeNoFlight = errors.New("woke without the flight")

// wake sends the first flight body (binary form) to the sleeper s of mb in
// wake datagrams, resending the parts not acknowledged every 1.5 round
// trips, until all are acknowledged (nil), or deadline, ctx, the relay's
// close or the mailbox's end. A flight with a datagram too large for a
// wake, or of too many datagrams, is sent as a plain wake:
// errWakeNoFlight once acknowledged.
func (ss *sleepServer) wake(ctx context.Context, mb *mailbox, s *sleeper, body []byte, deadline time.Time) error {
	var f FirstFlight
	if err := f.UnmarshalBinary(body); err != nil {
		return err
	}
	parts := f.Datagrams
	if len(parts) > sleepMaxParts {
		parts = nil
	}
	for _, p := range parts {
		if len(p) > sleepMaxPart {
			parts = nil
			break
		}
	}
	w := &sleepWaking{want: 1, done: make(chan struct{})}
	if len(parts) > 0 {
		w.want = uint8(1<<len(parts) - 1)
	}
	rand.Read(w.id[:])
	ss.mu.Lock()
	if len(s.wakes) >= ss.r.cfg.Mailbox.QueueLen {
		ss.mu.Unlock()
		return &RelayError{Status: http.StatusServiceUnavailable, Code: CodeMailboxBusy, Message: "the mailbox has too many flights waiting"}
	}
	s.wakes = append(s.wakes, w)
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		for i, x := range s.wakes {
			if x == w {
				s.wakes = append(s.wakes[:i], s.wakes[i+1:]...)
				break
			}
		}
		ss.mu.Unlock()
	}()
	end := time.NewTimer(time.Until(deadline))
	defer end.Stop()
	for round := 0; ; round++ {
		ss.mu.Lock()
		var out [][]byte
		hdr := [sleepWakeHdrLen]byte{}
		copy(hdr[:], w.id[:])
		if len(parts) == 0 {
			if w.got == 0 {
				out = append(out, ss.sendLocked(s, sleepWake, hdr[:]))
			}
		} else {
			for i, p := range parts {
				if w.got&(1<<i) == 0 {
					hdr[sleepWakeIDLen], hdr[sleepWakeIDLen+1] = byte(i), byte(len(parts))
					out = append(out, ss.sendLocked(s, sleepWake, hdr[:], p))
				}
			}
		}
		to, rtt := s.addr, s.rtt
		ss.mu.Unlock()
		if round > 0 {
			ss.wakeResends.Add(uint64(len(out)))
		}
		for _, b := range out {
			ss.write(b, to)
		}
		if rtt == 0 {
			rtt = sleepDefaultRTT
		}
		resend := time.NewTimer(max(rtt*3/2, sleepMinResend))
		select {
		case <-w.done:
			resend.Stop()
			ss.wakes.Add(1)
			if len(parts) == 0 {
				return errWakeNoFlight
			}
			return nil
		case <-resend.C:
			continue
		case <-mb.gone:
			// Replaced (the listener woke and reopened its mailbox:
			// the flight goes to the new holder) or forgotten.
			resend.Stop()
			return errWakeNoFlight
		case <-end.C:
		case <-ctx.Done():
		case <-ss.r.closed:
		}
		resend.Stop()
		return &RelayError{Status: http.StatusServiceUnavailable, Code: CodeMailboxBusy, Message: "the sleeping accepter did not take the flight in time"}
	}
}
