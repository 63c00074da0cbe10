package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"sync"
	"time"
)

// The listener's side of sleep (relay_sleep.go has the relay's; decision
// 0029). An Accepter with its mailbox open and no connection open or being
// accepted for Config.SleepAfter asks its relay to let it sleep, closes its
// connection to the relay and keeps its registration and mailbox alive
// with keep-alive datagrams from its socket. A wake carries a dialer's first
// flight: the Accepter accepts it at once, as a mailbox delivery, and
// reconnects to the relay in the background.

const (
	// sleepWindow is how many CIDs ahead of the last issued a sleeper keeps
	// registered: enough for a few connections accepted before it has
	// reconnected and registered its full window.
	sleepWindow = 16
	// sleepInLen bounds the sleep datagrams waiting for the Accepter.
	sleepInLen = 64
	// sleepWakesKept bounds the wakes an Accepter remembers, so that parts
	// and resends of one wake are taken once.
	sleepWakesKept = 8
	// sleepRecheck bounds how long an awake Accepter waits before it looks
	// again whether it may sleep.
	sleepRecheck = 5 * time.Second
	// sleepRetry is how long an Accepter stays awake after the relay
	// refused to let it sleep.
	sleepRetry = time.Minute
)

// sleepState is an Accepter's sleep; the zero value is awake.
type sleepState struct {
	after time.Duration // Config.SleepAfter; negative: never
	in    chan []byte   // sleep datagrams from the socket
	kick  chan struct{} // something changed: look again

	mu        sync.Mutex
	active    int       // connections open and Accepts in progress
	idleSince time.Time // when active last dropped to zero
	woke      chan struct{}
	asleep    bool
	notBefore time.Time // no sleep before (after a refusal)
	sendCtr   uint64
	recvCtr   uint64

	// The sleep loop's own (set before the first sleep, read after).
	id     [sleepIDLen]byte
	key    [sleepKeyLen]byte
	hasKey bool
	wakes  []*peerWake // the last wakes received, oldest first
}

// peerWake is a wake the Accepter received: the parts of its flight.
type peerWake struct {
	id        [sleepWakeIDLen]byte
	parts     [][]byte
	got       uint8
	delivered bool
}

// initSleep prepares a's sleep; it starts the sleep loop unless a never
// sleeps.
func (a *Accepter) initSleep(after time.Duration) {
	s := &a.sl
	s.after = after
	s.in = make(chan []byte, sleepInLen)
	s.kick = make(chan struct{}, 1)
	s.idleSince = time.Now()
	gate := a.sleepGate
	a.p.sess.gate.Store(&gate)
	if after < 0 {
		return
	}
	in := func(b []byte) {
		select {
		case s.in <- bytes.Clone(b):
		default:
		}
	}
	a.p.pconn.sleepIn.Store(&in)
	a.wg.Go(a.sleepLoop)
}

// sleepGate returns nil while a is awake, else a channel closed when it
// wakes.
func (a *Accepter) sleepGate() <-chan struct{} {
	a.sl.mu.Lock()
	defer a.sl.mu.Unlock()
	if !a.sl.asleep {
		return nil
	}
	return a.sl.woke
}

// Asleep reports whether the Accepter sleeps now: its connection to the
// relay is closed, and its registration and mailbox live on keep-alive
// datagrams (see Config.SleepAfter).
func (a *Accepter) Asleep() bool { return a.sleepGate() != nil }

// busy counts a connection or an Accept starting (+1) or ending (-1); an
// Accept wakes a sleeping Accepter.
func (a *Accepter) busy(delta int) {
	s := &a.sl
	s.mu.Lock()
	s.active += delta
	if s.active == 0 {
		s.idleSince = time.Now()
	}
	s.mu.Unlock()
	if delta > 0 {
		a.wakeUp("accept")
	}
	a.kickSleep()
}

// leave tells the relay, if a sleeps, that it is closing: the relay then
// forgets its mailbox and registration within a second, instead of after
// three missed keep-alives, so that dials get "nobody listens" at once.
// Sent twice, as one may be lost; nothing waits for an answer.
func (a *Accepter) leave() {
	s := &a.sl
	s.mu.Lock()
	asleep := s.asleep // the key and ID are set before the first sleep
	s.mu.Unlock()
	if asleep {
		a.sendSleep(sleepLeave)
		a.sendSleep(sleepLeave)
	}
}

func (a *Accepter) kickSleep() {
	select {
	case a.sl.kick <- struct{}{}:
	default:
	}
}

// wakeUp ends a's sleep, if it sleeps: its relay session reconnects and
// registers, and its mailbox reopens.
func (a *Accepter) wakeUp(why string) {
	s := &a.sl
	s.mu.Lock()
	if !s.asleep {
		s.mu.Unlock()
		return
	}
	s.asleep = false
	s.idleSince = time.Now()
	close(s.woke)
	s.mu.Unlock()
	a.p.cfg.Logger.Debug("waking up", "why", why)
	a.kickSleep()
}

// sleepLoop puts a to sleep whenever it has been idle for long enough, and
// keeps it asleep, until a closes.
func (a *Accepter) sleepLoop() {
	for {
		if !a.waitIdle() {
			return
		}
		every, ok := a.goToSleep()
		if !ok {
			continue
		}
		if !a.stayAsleep(every) {
			return
		}
	}
}

// waitIdle waits until a may sleep, handling sleep datagrams meanwhile;
// false once a closes.
func (a *Accepter) waitIdle() bool {
	s := &a.sl
	for {
		wait := sleepRecheck
		if offer := a.p.sess.sleepOffered(); offer != nil && offer.KeepAliveMS > 0 && a.mailboxReading() &&
			!a.p.pconn.only.Load() && a.p.pconn.tun.Load() == nil && !a.p.pconn.pinned.Load() {
			s.mu.Lock()
			if s.active == 0 {
				at := s.idleSince.Add(s.after)
				if s.notBefore.After(at) {
					at = s.notBefore
				}
				wait = time.Until(at)
			}
			s.mu.Unlock()
			if wait <= 0 {
				return true
			}
			wait = min(wait, sleepRecheck)
		}
		t := time.NewTimer(wait)
		select {
		case <-a.done:
			t.Stop()
			return false
		case <-s.kick:
		case b := <-s.in:
			a.sleepDatagram(b, nil)
		case <-t.C:
		}
		t.Stop()
	}
}

// mailboxReading reports whether a's mailbox is open at the relay now.
func (a *Accepter) mailboxReading() bool {
	a.mbox.mu.Lock()
	c := a.mbox.client
	a.mbox.mu.Unlock()
	return c != nil && c.reading.Load()
}

// goToSleep asks the relay to let a sleep, and reports whether it sleeps,
// with the keep-alive interval the relay asked for.
func (a *Accepter) goToSleep() (time.Duration, bool) {
	s := &a.sl
	cfg := a.p.cfg
	pub := cfg.Identity.Public().(ed25519.PublicKey)
	if !s.hasKey {
		k, err := deriveSleepKey(cfg.CIDKey, pub)
		if err != nil {
			s.mu.Lock()
			s.notBefore = time.Now().Add(sleepRetry)
			s.mu.Unlock()
			return 0, false
		}
		s.key, s.id, s.hasKey = k, sleepIDOf(pub), true
	}
	s.mu.Lock()
	if s.active > 0 {
		s.mu.Unlock()
		return 0, false
	}
	s.asleep = true
	s.woke = make(chan struct{})
	s.sendCtr = nextCounter(s.sendCtr, time.Now().UnixNano())
	req := sleepRequest{Key: cfg.CIDKey, Mailbox: pub, Counter: s.sendCtr}
	s.mu.Unlock()
	first := a.p.gen.floor()
	end := min(uint64(a.p.gen.Issued())+sleepWindow, uint64(a.p.sess.regEnd.Load()))
	if uint64(first) <= end {
		req.First, req.Num = int64(first), int64(end-uint64(first)+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.RelayTimeout)
	go func() {
		select {
		case <-a.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	ans, err := a.p.sess.sleep(ctx, req)
	cancel()
	if err != nil {
		cfg.Logger.Info("the relay did not let this listener sleep; staying awake", "err", err)
		s.mu.Lock()
		s.notBefore = time.Now().Add(sleepRetry)
		s.mu.Unlock()
		a.wakeUp("sleep refused")
		return 0, false
	}
	s.mu.Lock()
	s.recvCtr = ans.Counter
	s.mu.Unlock()
	every := time.Duration(ans.KeepAliveMS) * time.Millisecond
	cfg.Logger.Debug("asleep", "keepalive", every)
	return every, true
}

// stayAsleep sends keep-alives and answers the relay until a wakes; false
// once a closes.
func (a *Accepter) stayAsleep(every time.Duration) bool {
	s := &a.sl
	s.mu.Lock()
	woke := s.woke
	s.mu.Unlock()
	t := time.NewTicker(every)
	defer t.Stop()
	// A keep-alive goes out every interval, and while keep-alives go
	// unacknowledged, also every sleepRetryAfter. A retry that finds more
	// than sleepRetries of them unacknowledged wakes the sleeper: the
	// relay forgot it (it restarted, or the fleet member that held it died
	// and another now receives its packets) or the path died. Reconnecting
	// registers again, within an interval and a few seconds of the silence
	// instead of three intervals.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	armed := false
	unacked := 0 // keep-alives sent since the last ack
	send := func() {
		unacked++
		a.sendSleep(sleepKeepAlive)
		if !armed {
			retry.Reset(sleepRetryAfter)
			armed = true
		}
	}
	for {
		select {
		case <-a.done:
			return false
		case <-woke:
			return true
		case b := <-s.in:
			a.sleepDatagram(b, &unacked)
			if unacked == 0 && armed {
				retry.Stop()
				armed = false
			}
		case <-t.C:
			send()
		case <-retry.C:
			armed = false
			if unacked > sleepRetries {
				a.wakeUp("relay silent")
				return true
			}
			send()
		}
	}
}

const (
	// sleepRetryAfter is how long a sleeper waits for a keep-alive's ack
	// before it sends another.
	sleepRetryAfter = time.Second
	// sleepRetries is how many keep-alives a sleeper sends without an ack
	// (its interval's and the retries) before the next retry wakes it.
	sleepRetries = 3
)

// sendSleep sends a sleep datagram of type typ to the relay.
func (a *Accepter) sendSleep(typ byte, body ...[]byte) {
	s := &a.sl
	s.mu.Lock()
	s.sendCtr = nextCounter(s.sendCtr, time.Now().UnixNano())
	b := appendSleep(nil, &s.key, typ, s.id, s.sendCtr, body...)
	s.mu.Unlock()
	a.p.conn.WriteToUDPAddrPort(b, a.p.pconn.relay)
}

// sleepDatagram handles one sleep datagram from the relay. missed, while
// asleep, counts keep-alives without an ack: an ack sets it to zero.
func (a *Accepter) sleepDatagram(b []byte, missed *int) {
	s := &a.sl
	if !s.hasKey {
		return
	}
	m, err := parseSleep(b)
	if err != nil || m.id != s.id || !m.verify(&s.key) {
		return
	}
	s.mu.Lock()
	if m.counter <= s.recvCtr {
		s.mu.Unlock()
		return
	}
	s.recvCtr = m.counter
	s.mu.Unlock()
	switch m.typ {
	case sleepKeepAliveAck:
		if missed != nil {
			*missed = 0
		}
	case sleepChallenge:
		a.sendSleep(sleepResponse, m.body)
	case sleepWake:
		a.takeWake(m.body)
	}
}

// takeWake acknowledges a wake's part and, once the flight is whole,
// delivers it to the mailbox and wakes a.
func (a *Accepter) takeWake(body []byte) {
	s := &a.sl
	id, idx, count, part := wakeBody(body)
	a.mbox.mu.Lock()
	c := a.mbox.client
	a.mbox.mu.Unlock()
	if c == nil && count > 0 {
		return // no mailbox to deliver to: let the post time out
	}
	var w *peerWake
	for _, x := range s.wakes {
		if x.id == id {
			w = x
		}
	}
	if w == nil {
		w = &peerWake{id: id, parts: make([][]byte, count)}
		if len(s.wakes) >= sleepWakesKept {
			s.wakes = s.wakes[1:]
		}
		s.wakes = append(s.wakes, w)
	}
	var full uint8 = 1
	if count > 0 {
		if len(w.parts) != count {
			return // not the count of its first part
		}
		full = uint8(1<<count - 1)
		if w.got&(1<<idx) == 0 {
			w.parts[idx] = bytes.Clone(part)
		}
		w.got |= 1 << idx
	} else {
		w.got = 1
	}
	ack := make([]byte, sleepWakeAckLen)
	copy(ack, id[:])
	ack[sleepWakeIDLen] = w.got
	a.sendSleep(sleepWakeAck, ack)
	if w.got != full || w.delivered {
		return
	}
	w.delivered = true
	if count > 0 {
		c.take(&FirstFlight{Datagrams: w.parts})
	}
	a.wakeUp("wake")
}
