package quicpipe

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Sleeping listeners (decision 0029, part 2): real relays, real accepters
// and dialers, over loopback UDP.

// sleepEnv is a relay offering sleep with short timers.
type sleepEnv struct {
	*mailboxEnv
}

func newSleepEnv(t *testing.T, rcfg RelayConfig) *sleepEnv {
	t.Helper()
	e := &mailboxEnv{relayID: GenerateIdentity()}
	rcfg.Identity = e.relayID
	if rcfg.Mailbox == nil {
		rcfg.Mailbox = &MailboxConfig{}
	}
	if rcfg.SleepKeepAlive == 0 {
		rcfg.SleepKeepAlive = 300 * time.Millisecond
	}
	rcfg.Logger = testLogger(t)
	r, err := ListenRelay("127.0.0.1:0", &rcfg)
	if err != nil {
		t.Fatal(err)
	}
	e.relay = r
	serveRelay(t, r, nil)
	return &sleepEnv{e}
}

// sleeper returns an accepter with its mailbox open that sleeps after
// after, and waits until it sleeps.
func (e *sleepEnv) sleeper(t *testing.T, ctx context.Context, id ed25519.PrivateKey, after time.Duration, trusted ...ed25519.PublicKey) *Accepter {
	t.Helper()
	return e.sleeperWith(t, ctx, id, after, false, trusted...)
}

// sleeperWith is sleeper with direct paths off if noDirect.
func (e *sleepEnv) sleeperWith(t *testing.T, ctx context.Context, id ed25519.PrivateKey, after time.Duration, noDirect bool, trusted ...ed25519.PublicKey) *Accepter {
	t.Helper()
	a := e.listener(t, ctx, id, after, noDirect, trusted...)
	waitAsleep(t, e.relay, a, 1)
	return a
}

// listener returns an accepter with its mailbox open, Config.SleepAfter
// after, and direct paths off if noDirect; it is closed with the test.
func (e *sleepEnv) listener(t *testing.T, ctx context.Context, id ed25519.PrivateKey, after time.Duration, noDirect bool, trusted ...ed25519.PublicKey) *Accepter {
	t.Helper()
	cfg := e.config(id, trusted...)
	cfg.SleepAfter = after
	cfg.DisableDirect = noDirect
	a, err := NewAccepter(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// waitAsleep waits until a sleeps and the relay holds n sleepers.
func waitAsleep(t *testing.T, r *Relay, a *Accepter, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !a.Asleep() || r.SleepStats().Sleeping != n {
		if time.Now().After(deadline) {
			t.Fatalf("not asleep after 10s: accepter asleep %v, relay holds %d sleepers (want %d)", a.Asleep(), r.SleepStats().Sleeping, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConns waits until the relay holds n HTTP/3 connections.
func waitConns(t *testing.T, r *Relay, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _ := r.conns.counts()
		if c == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay holds %d connections, want %d", c, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialEcho dials a's mailbox from d and checks an echo through the pipe.
func dialEcho(t *testing.T, ctx context.Context, d *Dialer, a *Accepter, peer ed25519.PublicKey) {
	t.Helper()
	go echoMailbox(ctx, a)
	qc, err := d.DialMailbox(ctx, peer)
	if err != nil {
		t.Fatalf("dialing the mailbox: %v", err)
	}
	defer qc.CloseWithError(0, "")
	if err := echo(ctx, qc, 100_000, 7); err != nil {
		t.Fatalf("echo: %v", err)
	}
}

// TestSleepingListenerDial: a sleeping listener is dialed through its
// mailbox, the pipe works, and it sleeps again; with direct paths on (the
// socket layer sorts sleep datagrams with path control ones) and off.
func TestSleepingListenerDial(t *testing.T) {
	for _, noDirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableDirect=%v", noDirect), func(t *testing.T) { testSleepingListenerDial(t, noDirect) })
	}
}

func testSleepingListenerDial(t *testing.T, noDirect bool) {
	e := newSleepEnv(t, RelayConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID, dID := GenerateIdentity(), GenerateIdentity()
	a := e.sleeperWith(t, ctx, aID, 200*time.Millisecond, noDirect, pub(dID))
	// The sleeper holds no connection at the relay.
	waitConns(t, e.relay, 0)
	d := e.dialer(t, ctx, dID)
	for round := range 2 {
		dialEcho(t, ctx, d, a, pub(aID))
		if s := e.relay.SleepStats(); s.Wakes != uint64(round+1) {
			t.Fatalf("round %d: relay counts %d wakes, want %d", round, s.Wakes, round+1)
		}
		// The pipe closed: it falls asleep again.
		waitAsleep(t, e.relay, a, 1)
	}
	s := e.relay.SleepStats()
	if s.Slept < 3 {
		t.Errorf("relay counts %d sleeps, want at least 3", s.Slept)
	}
	for reason, n := range s.Dropped {
		if n > 0 {
			t.Errorf("relay dropped %d sleep datagrams (%s)", n, reason)
		}
	}
}

// TestSleepKeepAlivesOutliveTTL: a sleeper's keep-alives keep its
// registration and mailbox past the registration's TTL.
func TestSleepKeepAlivesOutliveTTL(t *testing.T) {
	e := newSleepEnv(t, RelayConfig{RegistrationTTL: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID, dID := GenerateIdentity(), GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(dID))
	time.Sleep(3 * time.Second)
	s := e.relay.SleepStats()
	if !a.Asleep() || s.Sleeping != 1 || e.relay.localRegistrations() != 1 {
		t.Fatalf("after 3 TTLs: asleep %v, relay holds %d sleepers and %d registrations, want 1 and 1", a.Asleep(), s.Sleeping, e.relay.localRegistrations())
	}
	if s.KeepAlives < 5 || s.Expired != 0 || e.relay.Stats().Expired != 0 {
		t.Fatalf("relay counts %d keep-alives (want at least 5), %d sleepers and %d registrations expired (want 0)", s.KeepAlives, s.Expired, e.relay.Stats().Expired)
	}
	d := e.dialer(t, ctx, dID)
	dialEcho(t, ctx, d, a, pub(aID))
}

// TestSleepMissedKeepAlives: a sleeper that stops sending keep-alives is
// forgotten, with its mailbox and registration, after three missed, not
// before.
func TestSleepMissedKeepAlives(t *testing.T) {
	const every = 400 * time.Millisecond
	e := newSleepEnv(t, RelayConfig{SleepKeepAlive: every})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID := GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(GenerateIdentity()))
	// The accepter's socket closes under it (a crash, a machine gone): it
	// falls silent without saying it leaves.
	a.p.conn.Close()
	defer a.Close()
	silent := time.Now()
	time.Sleep(2 * every)
	if n := e.relay.SleepStats().Sleeping; n != 1 {
		t.Fatalf("two keep-alives missed: relay holds %d sleepers, want 1", n)
	}
	for e.relay.SleepStats().Sleeping != 0 {
		if time.Since(silent) > 10*every {
			t.Fatal("sleeper not forgotten after 10 keep-alive intervals")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(silent); took < 3*every {
		t.Fatalf("sleeper forgotten after %v, before three keep-alives were missed", took)
	}
	if s := e.relay.SleepStats(); s.Expired != 1 {
		t.Fatalf("relay counts %d expired sleepers, want 1", s.Expired)
	}
	if n := e.relay.localRegistrations(); n != 0 {
		t.Fatalf("relay still holds %d registrations", n)
	}
	if n := e.relay.MailboxStats().Open; n != 0 {
		t.Fatalf("relay still holds %d mailboxes", n)
	}
	d := e.dialer(t, ctx, GenerateIdentity())
	var re *RelayError
	var f FirstFlight
	if err := f.UnmarshalBinary(testFlightBinary(t)); err != nil {
		t.Fatal(err)
	}
	if err := d.PostToMailbox(ctx, pub(aID), &f); !errors.As(err, &re) || re.Code != CodeNoMailbox {
		t.Fatalf("posting to the forgotten mailbox: %v, want %s", err, CodeNoMailbox)
	}
}

// sleepProbe speaks a sleeper's datagrams from a socket of its own, with
// the key of an accepter that fell silent.
type sleepProbe struct {
	t     *testing.T
	conn  *net.UDPConn
	relay netip.AddrPort
	key   [sleepKeyLen]byte
	id    [sleepIDLen]byte
	ctr   uint64
}

func newSleepProbe(t *testing.T, r *Relay, a *Accepter, id ed25519.PrivateKey) *sleepProbe {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	k, err := deriveSleepKey(a.p.cfg.CIDKey, pub(id))
	if err != nil {
		t.Fatal(err)
	}
	return &sleepProbe{t: t, conn: c, relay: r.udpAddr().AddrPort(), key: k, id: sleepIDOf(pub(id)), ctr: nextCounter(0, time.Now().UnixNano())}
}

func (p *sleepProbe) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// build returns a datagram of type typ with the next counter.
func (p *sleepProbe) build(typ byte, body ...[]byte) []byte {
	p.ctr++
	return appendSleep(nil, &p.key, typ, p.id, p.ctr, body...)
}

func (p *sleepProbe) send(b []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, p.relay); err != nil {
		p.t.Fatal(err)
	}
}

// read returns the next sleep datagram for p, checked, or false after a
// while.
func (p *sleepProbe) read(wait time.Duration) (sleepMsg, bool) {
	buf := make([]byte, 2048)
	p.conn.SetReadDeadline(time.Now().Add(wait))
	for {
		n, err := p.conn.Read(buf)
		if err != nil {
			return sleepMsg{}, false
		}
		m, err := parseSleep(buf[:n])
		if err == nil && m.id == p.id && m.verify(&p.key) {
			m.body = append([]byte(nil), m.body...)
			return m, true
		}
	}
}

// sleeperTarget returns where the relay forwards the registration of key.
func sleeperTarget(r *Relay, key []byte) netip.AddrPort {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if reg := r.regs.get(string(key)); reg != nil {
		return reg.Dest().AP
	}
	return netip.AddrPort{}
}

// waitDropped waits until the relay counts n sleep datagrams dropped for
// reason.
func waitDropped(t *testing.T, r *Relay, reason string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.SleepStats().Dropped[reason] != n {
		if time.Now().After(deadline) {
			t.Fatalf("relay counts %d sleep datagrams dropped as %q, want %d", r.SleepStats().Dropped[reason], reason, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSleepAddressChange: a valid keep-alive from a new address moves
// nothing until that address answers the relay's challenge; forged,
// replayed and misdirected datagrams are counted and ignored.
func TestSleepAddressChange(t *testing.T) {
	e := newSleepEnv(t, RelayConfig{SleepKeepAlive: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID := GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(GenerateIdentity()))
	key := a.p.cfg.CIDKey
	old := sleeperTarget(e.relay, key)
	a.Close() // silent from now on; the relay holds it for 10.5 s
	p := newSleepProbe(t, e.relay, a, aID)
	third := newSleepProbe(t, e.relay, a, aID)

	// Garbage and forgeries.
	p.send([]byte{sleepMarker, sleepKeepAlive, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	waitDropped(t, e.relay, "short", 1)
	other := appendSleep(nil, &p.key, sleepKeepAlive, sleepIDOf(pub(GenerateIdentity())), p.ctr+100)
	p.send(other)
	waitDropped(t, e.relay, "unknown_key", 1)
	forged := p.build(sleepKeepAlive)
	forged[len(forged)-1] ^= 1
	p.send(forged)
	waitDropped(t, e.relay, "bad_mac", 1)
	p.send(p.build(sleepChallenge, make([]byte, sleepNonceLen))) // a type only the relay sends
	waitDropped(t, e.relay, "bad_type", 1)

	// A valid keep-alive from a new address: a challenge, no move.
	ka := p.build(sleepKeepAlive)
	p.send(ka)
	ch, ok := p.read(5 * time.Second)
	if !ok || ch.typ != sleepChallenge {
		t.Fatalf("no challenge after a keep-alive from a new address (got type %#x)", ch.typ)
	}
	if got := sleeperTarget(e.relay, key); got != old {
		t.Fatalf("registration moved to %v before the challenge was answered", got)
	}
	p.send(ka) // replayed
	waitDropped(t, e.relay, "replayed", 1)
	// The answer from a third address does not count.
	third.ctr = p.ctr + 10
	third.send(third.build(sleepResponse, ch.body))
	waitDropped(t, e.relay, "unexpected", 1)
	// Nor does a wrong nonce from the new address.
	p.ctr = third.ctr
	p.send(p.build(sleepResponse, make([]byte, sleepNonceLen)))
	waitDropped(t, e.relay, "unexpected", 2)
	if got := sleeperTarget(e.relay, key); got != old {
		t.Fatalf("registration moved to %v on a wrong answer", got)
	}
	// The new keep-alive challenged again after a second; answer that one.
	time.Sleep(sleepChallengeEvery)
	p.send(p.build(sleepKeepAlive))
	ch, ok = p.read(5 * time.Second)
	if !ok || ch.typ != sleepChallenge {
		t.Fatal("no second challenge")
	}
	p.send(p.build(sleepResponse, ch.body))
	deadline := time.Now().Add(5 * time.Second)
	for sleeperTarget(e.relay, key) != p.addr() {
		if time.Now().After(deadline) {
			t.Fatalf("registration at %v after the answered challenge, want %v", sleeperTarget(e.relay, key), p.addr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := e.relay.SleepStats(); s.Moved != 1 {
		t.Fatalf("relay counts %d moves, want 1", s.Moved)
	}
	// From its new address, a keep-alive is acknowledged.
	p.send(p.build(sleepKeepAlive))
	if m, ok := p.read(5 * time.Second); !ok || m.typ != sleepKeepAliveAck {
		t.Fatalf("no keep-alive ack at the new address (got type %#x)", m.typ)
	}
}

// TestSleepOldPeers: a peer that never sleeps works with a relay that
// offers sleep, and a new peer stays awake with a relay that does not.
func TestSleepOldPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Run("peer never sleeps", func(t *testing.T) {
		e := newSleepEnv(t, RelayConfig{})
		aID, dID := GenerateIdentity(), GenerateIdentity()
		a := e.listener(t, ctx, aID, -1, false, pub(dID))
		time.Sleep(time.Second)
		if a.Asleep() || e.relay.SleepStats().Sleeping != 0 {
			t.Fatal("an accepter with SleepAfter -1 slept")
		}
		dialEcho(t, ctx, e.dialer(t, ctx, dID), a, pub(aID))
	})
	t.Run("relay without sleep", func(t *testing.T) {
		e := newSleepEnv(t, RelayConfig{DisableSleep: true})
		aID, dID := GenerateIdentity(), GenerateIdentity()
		a := stayAwake(t, ctx, e, aID, pub(dID), "a relay with DisableSleep")
		dialEcho(t, ctx, e.dialer(t, ctx, dID), a, pub(aID))
		// Its sleep datagrams are dropped like unknown CIDs.
		p := newSleepProbe(t, e.relay, a, aID)
		before := e.relay.Stats().Dropped["unknown_cid"]
		p.send(p.build(sleepKeepAlive))
		deadline := time.Now().Add(5 * time.Second)
		for e.relay.Stats().Dropped["unknown_cid"] == before {
			if time.Now().After(deadline) {
				t.Fatal("the sleep datagram was not dropped as an unknown CID")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestSleepRelayForgets: the relay forgets a sleeper that does not know it
// (as a restarted relay, or the fleet member that takes over from a dead
// one, does): its keep-alives go unanswered, it sends them again every
// second, and after sleepRetries it wakes and reconnects, within an interval
// and a few seconds, not three intervals; then it is dialed.
func TestSleepRelayForgets(t *testing.T) {
	const every = 3 * time.Second
	e := newSleepEnv(t, RelayConfig{SleepKeepAlive: every})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dID, aID := GenerateIdentity(), GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(dID))
	opened := e.relay.MailboxStats().Opened
	forgot := time.Now()
	if !e.relay.YieldMailbox(pub(aID)) {
		t.Fatal("the relay did not hold the sleeping mailbox")
	}
	if n := e.relay.SleepStats().Sleeping; n != 0 {
		t.Fatalf("the relay holds %d sleepers after forgetting the only one", n)
	}
	// An interval until the next keep-alive, four a second apart without
	// an ack, and the reconnect: well under the three intervals (9 s) a
	// sleeper waited before.
	bound := every + 5500*time.Millisecond
	for e.relay.MailboxStats().Opened == opened {
		if time.Since(forgot) > bound {
			t.Fatalf("the sleeper did not reconnect within %v (three intervals would be %v)", bound, 3*every)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("reconnected %v after the relay forgot it (keep-alive every %v)", time.Since(forgot).Round(time.Millisecond), every)
	waitAsleep(t, e.relay, a, 1)
	d := e.dialer(t, ctx, dID)
	dialEcho(t, ctx, d, a, pub(aID))
}

// countRouter is a MailboxRouter that counts the holds of each key and
// routes no post.
type countRouter struct {
	mu    sync.Mutex
	holds map[string]int
	under int // releases without a hold
}

func (c *countRouter) Hold(_ context.Context, key ed25519.PublicKey) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holds[string(key)]++
	return nil
}

func (c *countRouter) Release(key ed25519.PublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holds[string(key)] == 0 {
		c.under++
		return
	}
	c.holds[string(key)]--
}

func (c *countRouter) Post(context.Context, ed25519.PublicKey, []byte) error {
	return &RelayError{Status: 404, Code: CodeNoMailbox}
}

// held returns the holds of key and the releases that had none.
func (c *countRouter) held(key ed25519.PublicKey) (n, under int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holds[string(key)], c.under
}

// TestSleepHoldsInFleet: at a fleet member (MailboxRouter set) a sleeping
// mailbox keeps its router hold, so that posts at other members still
// reach it; the hold is released exactly once when the sleeper wakes into a
// reopened mailbox (which holds it again), leaves, or its mailbox is
// yielded to another member.
func TestSleepHoldsInFleet(t *testing.T) {
	rt := &countRouter{holds: map[string]int{}}
	e := newSleepEnv(t, RelayConfig{MailboxRouter: rt})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dID, aID, bID := GenerateIdentity(), GenerateIdentity(), GenerateIdentity()
	check := func(what string, key ed25519.PublicKey, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, under := rt.held(key)
			if under != 0 {
				t.Fatalf("%s: %d releases without a hold", what, under)
			}
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the mailbox has %d router holds, want %d", what, n, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(dID))
	check("asleep", pub(aID), 1)
	d := e.dialer(t, ctx, dID)
	dialEcho(t, ctx, d, a, pub(aID))
	waitAsleep(t, e.relay, a, 1)
	check("woken by a dial, asleep again", pub(aID), 1)

	b := e.listener(t, ctx, bID, 100*time.Millisecond, false, pub(dID))
	waitAsleep(t, e.relay, b, 2)
	check("a second sleeper", pub(bID), 1)
	if !e.relay.YieldMailbox(pub(bID)) {
		t.Fatal("YieldMailbox: the relay did not hold the sleeping mailbox")
	}
	check("yielded to another member", pub(bID), 0)
	if n := e.relay.SleepStats().Sleeping; n != 1 {
		t.Fatalf("after the yield the relay holds %d sleepers, want 1", n)
	}
	b.Close()

	a.Close() // asleep: it says it leaves
	check("left", pub(aID), 0)
	if n := e.relay.SleepStats().Sleeping; n != 0 {
		t.Fatalf("the relay still holds %d sleepers", n)
	}

	// The relay closes with a listener asleep: the hold goes with it.
	cID := GenerateIdentity()
	c := e.sleeper(t, ctx, cID, 100*time.Millisecond, pub(dID))
	defer c.Close()
	check("a third sleeper", pub(cID), 1)
	e.relay.Close()
	check("the relay closed", pub(cID), 0)
}

// stayAwake opens a listener ready to sleep after 50 ms at e's relay, which
// (described by what) must not offer sleep, and checks that it is not
// offered and that the listener stays awake with its mailbox open.
func stayAwake(t *testing.T, ctx context.Context, e *sleepEnv, id ed25519.PrivateKey, trusted ed25519.PublicKey, what string) *Accepter {
	t.Helper()
	cfg := e.config(id, trusted)
	cfg.SleepAfter = 50 * time.Millisecond
	a, err := NewAccepter(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if a.p.sess.sleepOffered() != nil {
		t.Fatalf("%s offered sleep", what)
	}
	if err := a.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if a.Asleep() || e.relay.SleepStats().Sleeping != 0 {
		t.Fatalf("a listener slept at %s", what)
	}
	return a
}

// TestSleepPlainWake: a flight too large for wake datagrams wakes the
// sleeper without it, and is delivered through the mailbox it reopens.
func TestSleepPlainWake(t *testing.T) {
	e := newSleepEnv(t, RelayConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID := GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(GenerateIdentity()))
	var f FirstFlight
	if err := f.UnmarshalBinary(testFlightBinary(t)); err != nil {
		t.Fatal(err)
	}
	for i, d := range f.Datagrams {
		f.Datagrams[i] = append(d, make([]byte, 1452-len(d))...) // over sleepMaxPart
	}
	d := e.dialer(t, ctx, GenerateIdentity())
	before := e.relay.MailboxStats().Delivered
	if err := d.PostToMailbox(ctx, pub(aID), &f); err != nil {
		t.Fatalf("posting a large flight to a sleeping mailbox: %v", err)
	}
	if got := e.relay.MailboxStats().Delivered - before; got != 1 {
		t.Fatalf("relay counts %d flights delivered, want 1", got)
	}
	if s := e.relay.SleepStats(); s.Wakes != 1 {
		t.Fatalf("relay counts %d wakes, want 1", s.Wakes)
	}
	// The flight went to the reconnected mailbox: the listener is awake
	// (accepting it, which fails: it is no dialer's) and holds it again.
	if a.Asleep() || e.relay.SleepStats().Sleeping != 0 || e.relay.MailboxStats().Open != 1 {
		t.Fatalf("after the plain wake: asleep %v, %d sleepers, %d mailboxes; want awake, 0, 1",
			a.Asleep(), e.relay.SleepStats().Sleeping, e.relay.MailboxStats().Open)
	}
}

// TestSleepLeave: a sleeping accepter that closes says so; the relay
// forgets its sleeper, mailbox and registration within about a second
// (not after three missed keep-alives), and a dial gets "nobody listens".
func TestSleepLeave(t *testing.T) {
	const every = 5 * time.Second
	e := newSleepEnv(t, RelayConfig{SleepKeepAlive: every})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aID, dID := GenerateIdentity(), GenerateIdentity()
	a := e.sleeper(t, ctx, aID, 100*time.Millisecond, pub(dID))
	a.Close()
	closed := time.Now()
	for e.relay.SleepStats().Sleeping != 0 || e.relay.MailboxStats().Open != 0 {
		if time.Since(closed) > 3*time.Second {
			t.Fatalf("3 s after the sleeper closed: relay holds %d sleepers, %d mailboxes", e.relay.SleepStats().Sleeping, e.relay.MailboxStats().Open)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("forgotten %v after Close", time.Since(closed).Round(time.Millisecond))
	if s := e.relay.SleepStats(); s.Left != 1 || s.Expired != 0 {
		t.Errorf("relay counts %d left, %d expired; want 1 and 0", s.Left, s.Expired)
	}
	if n := e.relay.localRegistrations(); n != 0 {
		t.Errorf("relay still holds %d registrations", n)
	}
	d, err := NewDialer(ctx, e.config(dID))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	if _, err := d.DialMailbox(dctx, pub(aID)); !errors.Is(err, ErrNoMailbox) {
		t.Errorf("dialing the closed sleeper: %v, want ErrNoMailbox", err)
	}
}
