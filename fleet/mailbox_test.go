package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/fleet/natsnode"
	"github.com/quicpipe/quicpipe/internal/pipetest"
)

// mailboxMember is a relay on loopback with its mailbox on, and its fleet
// Member as both its Replicator and its MailboxRouter.
type mailboxMember struct {
	relay *quicpipe.Relay
	m     *Member
	nc    *nats.Conn
	id    ed25519.PrivateKey
}

// newMailboxMember starts a member of the fleet at url; mcfg configures the
// relay's mailbox (nil: defaults), identity the relay's key (nil: a new
// one).
func newMailboxMember(t *testing.T, url, member string, mcfg *quicpipe.MailboxConfig, identity ed25519.PrivateKey) *mailboxMember {
	t.Helper()
	return newMailboxMemberR(t, url, member, mcfg, identity, 1)
}

// newMailboxMemberR is newMailboxMember with a bucket of replicas copies.
func newMailboxMemberR(t *testing.T, url, member string, mcfg *quicpipe.MailboxConfig, identity ed25519.PrivateKey, replicas int) *mailboxMember {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var m *Member
	for {
		// A new cluster elects its JetStream leader first.
		m, err = New(ctx, Config{Conn: nc, Bucket: testBucket, Member: member, LivenessTTL: 2 * time.Second,
			Timeout: 2 * time.Second, HandoverTimeout: 3 * time.Second, Replicas: replicas, Logger: testLogger(t)})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { m.Close() })
	if mcfg == nil {
		mcfg = &quicpipe.MailboxConfig{}
	}
	if identity == nil {
		identity = quicpipe.GenerateIdentity()
	}
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{Identity: identity, Replicator: m,
		Mailbox: mcfg, MailboxRouter: m, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	go r.Serve(context.Background())
	if err := m.Start(ctx, r); err != nil {
		t.Fatal(err)
	}
	return &mailboxMember{relay: r, m: m, nc: nc, id: identity}
}

// peerConfig is the Config of a peer of identity id at member tm, relayed
// only, trusting the keys of trusted.
func (tm *mailboxMember) peerConfig(id ed25519.PrivateKey, trusted ...ed25519.PrivateKey) *quicpipe.Config {
	c := &quicpipe.Config{
		RelayAddr:     tm.relay.LocalAddr().String(),
		RelayKey:      tm.id.Public().(ed25519.PublicKey),
		Identity:      id,
		DisableDirect: true,
	}
	for _, k := range trusted {
		c.TrustedPeers = append(c.TrustedPeers, k.Public().(ed25519.PublicKey))
	}
	return c
}

// listen opens the mailbox of an Accepter of identity id at tm and serves
// every connection it accepts with an echo of each stream.
func listen(t *testing.T, ctx context.Context, tm *mailboxMember, id ed25519.PrivateKey, trusted ...ed25519.PrivateKey) *quicpipe.Accepter {
	t.Helper()
	a, err := quicpipe.NewAccepter(ctx, tm.peerConfig(id, trusted...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// dialer returns a Dialer of identity id at tm, closed at the end of the
// test.
func dialer(t *testing.T, ctx context.Context, tm *mailboxMember, id ed25519.PrivateKey) *quicpipe.Dialer {
	t.Helper()
	d, err := quicpipe.NewDialer(ctx, tm.peerConfig(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// acceptOne returns the next connection a's mailbox accepts.
func acceptOne(ctx context.Context, a *quicpipe.Accepter) <-chan *quic.Conn {
	ch := make(chan *quic.Conn, 1)
	go func() {
		c, err := a.AcceptMailbox(ctx)
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// relayCode returns the code of a *quicpipe.RelayError in err's chain, or
// "".
func relayCode(err error) string {
	if re, ok := errors.AsType[*quicpipe.RelayError](err); ok {
		return re.Code
	}
	return ""
}

// TestFleetMailboxAcrossMembers has a listener hold its mailbox at member
// b and a dialer dial it through member a: the post travels from a to b
// over NATS, the pipe connects (crossing members) and carries 1 MB each way
// intact. A post for a key nobody holds anywhere gets ErrNoMailbox.
func TestFleetMailboxAcrossMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newMailboxMember(t, url, "a", nil, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc := listen(t, ctx, b, listenerID, dialerID)
	if got := b.m.Stats().MailboxesHeld; got != 1 {
		t.Fatalf("b routes %d mailboxes, want 1", got)
	}
	accepted := acceptOne(ctx, acc)
	d := dialer(t, ctx, a, dialerID)
	dc, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatalf("dial through a to the mailbox held at b: %v", err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.Fatal("the listener accepted nothing")
	}
	defer ac.CloseWithError(0, "")
	pipetest.Echo(t, ctx, dc, ac, 1<<20)

	sa, sb := a.relay.MailboxStats(), b.relay.MailboxStats()
	t.Logf("a: %+v; b: %+v", sa, sb)
	t.Logf("member a: %+v; member b: %+v", a.m.Stats(), b.m.Stats())
	if sa.HandedOut != 1 || sa.Delivered != 0 || sb.HandedIn != 1 || sb.Delivered != 1 {
		t.Fatalf("the flight did not go from a to b: a handed out %d, delivered %d; b handed in %d, delivered %d",
			sa.HandedOut, sa.Delivered, sb.HandedIn, sb.Delivered)
	}
	if ma, mb := a.m.Stats(), b.m.Stats(); ma.HandoversOut != 1 || mb.HandoversIn != 1 || ma.HandoverFailures != 0 {
		t.Fatalf("members' hand-over counters: a %+v, b %+v", ma, mb)
	}

	if got := gauge(t, a.m, "quicpipe_fleet_mailbox_handovers_total", "out"); got != 1 {
		t.Fatalf("a's metrics: %v posts handed out, want 1", got)
	}
	if got := gauge(t, b.m, "quicpipe_fleet_mailbox_handovers_total", "in"); got != 1 {
		t.Fatalf("b's metrics: %v posts handed in, want 1", got)
	}
	if got := gauge(t, b.m, "quicpipe_fleet_mailboxes_held", ""); got != 1 {
		t.Fatalf("b's metrics: %v mailboxes held, want 1", got)
	}

	// Nobody holds this key, at a or at b.
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	start := time.Now()
	_, err = d.DialMailbox(pctx, quicpipe.GenerateIdentity().Public().(ed25519.PublicKey))
	if !errors.Is(err, quicpipe.ErrNoMailbox) {
		t.Fatalf("dial to a mailbox nobody holds: %v, want ErrNoMailbox", err)
	}
	t.Logf("no mailbox anywhere: answered in %v", time.Since(start))

	// The listener closes its mailbox: the subscription goes with it.
	acc.CloseMailbox()
	waitFor(t, 5*time.Second, "b drops the mailbox's subscription", func() bool { return b.m.Stats().MailboxesHeld == 0 })
}

// TestFleetMailboxLimits: the posting member applies its own post rate,
// whoever holds the mailbox; a post refused there never reaches the
// holder.
func TestFleetMailboxLimits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newMailboxMember(t, url, "a", &quicpipe.MailboxConfig{PostRate: 0.01, PostBurst: 1}, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc := listen(t, ctx, b, listenerID, dialerID)
	accepted := acceptOne(ctx, acc)
	d := dialer(t, ctx, a, dialerID)
	peer := listenerID.Public().(ed25519.PublicKey)
	dc, err := d.DialMailbox(ctx, peer)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.CloseWithError(0, "")
	if ac := <-accepted; ac != nil {
		defer ac.CloseWithError(0, "")
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	_, err = d.DialMailbox(pctx, peer)
	if !errors.Is(err, quicpipe.ErrRelayLimit) || relayCode(err) != quicpipe.CodeRateLimited {
		t.Fatalf("second post over a's rate: %v, want rate_limited", err)
	}
	if got := b.relay.MailboxStats().HandedIn; got != 1 {
		t.Fatalf("b was handed %d posts, want 1: the refused one must stay at a", got)
	}
	if got := a.relay.MailboxStats().Rejected[quicpipe.CodeRateLimited]; got != 1 {
		t.Fatalf("a counts %d rate-limited posts, want 1", got)
	}
}

// TestFleetMailboxTakeover: the accepter's mailbox held at a is opened
// again at b by another connection with the same key (the listener moved):
// a lets its mailbox go (the older holder is told, as at one relay), and a
// dial through a reaches the new holder at b.
func TestFleetMailboxTakeover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newMailboxMember(t, url, "a", nil, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	old := listen(t, ctx, a, listenerID, dialerID)
	oldDone := make(chan error, 1)
	go func() {
		_, err := old.AcceptMailbox(ctx)
		oldDone <- err
	}()
	moved := listen(t, ctx, b, listenerID, dialerID)
	select {
	case err := <-oldDone:
		if !errors.Is(err, quicpipe.ErrMailboxTaken) {
			t.Fatalf("the older holder ended with %v, want ErrMailboxTaken", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the older holder at a was not told within 5s")
	}
	if got := a.relay.MailboxStats().Yielded; got != 1 {
		t.Fatalf("a yielded %d mailboxes, want 1", got)
	}
	waitFor(t, 5*time.Second, "a drops the mailbox's subscription", func() bool { return a.m.Stats().MailboxesHeld == 0 })
	accepted := acceptOne(ctx, moved)
	d := dialer(t, ctx, a, dialerID)
	dc, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatalf("dial through a after the move: %v", err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.Fatal("the moved listener accepted nothing")
	}
	defer ac.CloseWithError(0, "")
	pipetest.Echo(t, ctx, dc, ac, 64<<10)
}

// TestFleetMailboxFaults: a post at a member cut from NATS fails at once
// with mailbox_unreachable; a post for a mailbox whose member left the
// fleet gets no_mailbox. Neither waits for the hand-over timeout.
func TestFleetMailboxFaults(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	url, srv := startNATSServer(t, true)
	a := newMailboxMember(t, url, "a", nil, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	listen(t, ctx, b, listenerID, dialerID)
	d := dialer(t, ctx, a, dialerID)
	peer := listenerID.Public().(ed25519.PublicKey)

	// b leaves the fleet: its subscriptions go; its relay still holds
	// the mailbox, for posts made at b.
	b.m.Close()
	start := time.Now()
	_, err := d.DialMailbox(ctx, peer)
	if !errors.Is(err, quicpipe.ErrNoMailbox) {
		t.Fatalf("post for a mailbox whose member left: %v, want ErrNoMailbox", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("no_mailbox took %v", el)
	}

	// NATS goes down: a's post fails at once, saying why.
	srv.Shutdown()
	srv.WaitForShutdown()
	waitFor(t, 5*time.Second, "a notices NATS is down", func() bool { return !a.nc.IsConnected() })
	start = time.Now()
	_, err = d.DialMailbox(ctx, peer)
	if relayCode(err) != quicpipe.CodeMailboxUnreachable {
		t.Fatalf("post with NATS down: %v, want mailbox_unreachable", err)
	}
	t.Logf("NATS down: %v after %v", err, time.Since(start))
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("mailbox_unreachable took %v", el)
	}
	if s := a.relay.MailboxStats(); s.HandOverFailed != 1 || s.Rejected[quicpipe.CodeMailboxUnreachable] != 1 {
		t.Fatalf("a's mailbox stats: %+v", s)
	}
	if s := a.m.Stats(); s.HandoverFailures != 1 {
		t.Fatalf("a's member stats: %+v", s)
	}
}

// gauge returns the value of m's metric name (a counter or a gauge), of
// the series whose only label has value label ("" for none).
func gauge(t *testing.T, m *Member, name, label string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(m))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			if ls := mt.GetLabel(); (label == "" && len(ls) == 0) || (len(ls) == 1 && ls[0].GetValue() == label) {
				if c := mt.GetCounter(); c != nil {
					return c.GetValue()
				}
				return mt.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

// TestFleetMailboxCluster: members a and b on different nodes of a
// three-node NATS cluster: a dial through a reaches the listener held at
// b (the mailbox's interest crosses the route), and still does with the
// third node down.
func TestFleetMailboxCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ports := freePorts(t, 3)
	var nodes []*natsnode.Node
	for i := range 3 {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
			}
		}
		n, err := natsnode.Start(natsnode.Config{Name: fmt.Sprintf("n%d", i), StoreDir: t.TempDir(),
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), Routes: routes})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		nodes = append(nodes, n)
	}
	a := newMailboxMemberR(t, nodes[0].ClientURL(), "a", nil, nil, 3)
	b := newMailboxMemberR(t, nodes[1].ClientURL(), "b", nil, nil, 3)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc := listen(t, ctx, b, listenerID, dialerID)
	d := dialer(t, ctx, a, dialerID)
	for round := range 2 {
		if round == 1 {
			nodes[2].Close()
		}
		accepted := acceptOne(ctx, acc)
		start := time.Now()
		dc, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatalf("round %d: dial through a (node n0) to the mailbox held at b (node n1): %v", round, err)
		}
		ac := <-accepted
		if ac == nil {
			t.Fatalf("round %d: the listener accepted nothing", round)
		}
		t.Logf("round %d: connected in %v", round, time.Since(start))
		pipetest.Echo(t, ctx, dc, ac, 64<<10)
		dc.CloseWithError(0, "")
		ac.CloseWithError(0, "")
	}
	if got := b.relay.MailboxStats().HandedIn; got != 2 {
		t.Fatalf("b was handed %d posts, want 2", got)
	}
}

// TestFleetMailboxBadMessages: messages on a held mailbox's subject that
// are not a member's are answered or ignored and counted, never delivered
// as flights, and the mailbox keeps working.
func TestFleetMailboxBadMessages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newMailboxMember(t, url, "a", nil, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc := listen(t, ctx, b, listenerID, dialerID)
	subj := b.m.mailboxSubject(listenerID.Public().(ed25519.PublicKey))
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	request := func(op string, body []byte) mailboxReply {
		t.Helper()
		msg := nats.NewMsg(subj)
		if op != "" {
			msg.Header.Set(hdrOp, op)
		}
		msg.Header.Set(hdrMember, "intruder")
		msg.Data = body
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		resp, err := nc.RequestMsgWithContext(rctx, msg)
		if err != nil {
			t.Fatalf("request %q: %v", op, err)
		}
		var r mailboxReply
		if err := json.Unmarshal(resp.Data, &r); err != nil {
			t.Fatalf("reply %q: %v", resp.Data, err)
		}
		return r
	}
	if r := request(opPost, []byte("not a flight")); r.Status != 400 || r.Code != quicpipe.CodeBadFlight {
		t.Errorf("post of a bad flight: %+v, want 400 bad_flight", r)
	}
	if r := request(opPost, make([]byte, maxHandoverBytes+1)); r.Status != 413 || r.Code != quicpipe.CodeBodyTooLarge {
		t.Errorf("post of %d bytes: %+v, want 413 body_too_large", maxHandoverBytes+1, r)
	}
	// Ignored and counted: an unknown operation, none, a post with no
	// reply subject.
	for _, op := range []string{"steal", ""} {
		msg := nats.NewMsg(subj)
		if op != "" {
			msg.Header.Set(hdrOp, op)
		}
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	post := nats.NewMsg(subj)
	post.Header.Set(hdrOp, opPost)
	post.Data = []byte("x")
	if err := nc.PublishMsg(post); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	waitFor(t, 5*time.Second, "b counts three malformed messages", func() bool { return b.m.Stats().MailboxMalformed == 3 })
	if s := b.relay.MailboxStats(); s.Delivered != 0 || s.Open != 1 {
		t.Fatalf("b's mailbox after bad messages: %+v", s)
	}

	// The mailbox still works.
	accepted := acceptOne(ctx, acc)
	dc, err := dialer(t, ctx, a, dialerID).DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.CloseWithError(0, "")
	if ac := <-accepted; ac == nil {
		t.Fatal("the listener accepted nothing")
	} else {
		ac.CloseWithError(0, "")
	}
}

// TestFleetMailboxNATSRestart: while NATS is down a post handed over fails
// at once (mailbox_unreachable); once NATS is back (same port), the
// members' connections renew the mailbox's subscription by themselves and
// a dial through a reaches the listener held at b again.
func TestFleetMailboxNATSRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := &server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	s := runNATS(t, opts)
	a := newMailboxMember(t, s.ClientURL(), "a", nil, nil)
	b := newMailboxMember(t, s.ClientURL(), "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acc := listen(t, ctx, b, listenerID, dialerID)
	d := dialer(t, ctx, a, dialerID)
	peer := listenerID.Public().(ed25519.PublicKey)

	s.Shutdown()
	s.WaitForShutdown()
	waitFor(t, 5*time.Second, "a notices NATS is down", func() bool { return !a.nc.IsConnected() })
	if _, err := d.DialMailbox(ctx, peer); relayCode(err) != quicpipe.CodeMailboxUnreachable {
		t.Fatalf("post with NATS down: %v, want mailbox_unreachable", err)
	}

	runNATS(t, opts)
	waitFor(t, 15*time.Second, "members reconnect", func() bool { return a.nc.IsConnected() && b.nc.IsConnected() })
	b.nc.Flush() // b's subscriptions, renewed on reconnect, are in place
	accepted := acceptOne(ctx, acc)
	dc, err := d.DialMailbox(ctx, peer)
	if err != nil {
		t.Fatalf("dial after NATS came back: %v", err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.Fatal("the listener accepted nothing")
	}
	defer ac.CloseWithError(0, "")
	pipetest.Echo(t, ctx, dc, ac, 64<<10)
}

// TestFleetSleepingListener: a listener sleeps at member b (decision 0029,
// its mailbox keeps b's hold), a dialer at member a dials it twice: each
// post travels from a to b over NATS, b wakes the sleeper with the flight,
// the pipe connects and carries 256 KB each way, and the listener sleeps
// again. When it closes, b forgets it and drops the mailbox's subscription.
func TestFleetSleepingListener(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := startNATS(t, true)
	a := newMailboxMember(t, url, "a", nil, nil)
	b := newMailboxMember(t, url, "b", nil, nil)
	dialerID, listenerID := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	cfg := b.peerConfig(listenerID, dialerID)
	cfg.SleepAfter = 200 * time.Millisecond
	acc, err := quicpipe.NewAccepter(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	d := dialer(t, ctx, a, dialerID)
	for round := 1; round <= 2; round++ {
		waitFor(t, 10*time.Second, "the listener sleeps at b", func() bool {
			return acc.Asleep() && b.relay.SleepStats().Sleeping == 1
		})
		if got := b.m.Stats().MailboxesHeld; got != 1 {
			t.Fatalf("round %d: b routes %d mailboxes while the listener sleeps, want 1", round, got)
		}
		accepted := acceptOne(ctx, acc)
		dc, err := d.DialMailbox(ctx, listenerID.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatalf("round %d: dial through a to the listener sleeping at b: %v", round, err)
		}
		ac := <-accepted
		if ac == nil {
			t.Fatalf("round %d: the listener accepted nothing", round)
		}
		pipetest.Echo(t, ctx, dc, ac, 256<<10)
		dc.CloseWithError(0, "")
		ac.CloseWithError(0, "")
		sa, sb, ss := a.relay.MailboxStats(), b.relay.MailboxStats(), b.relay.SleepStats()
		t.Logf("round %d: a %+v; b %+v; b's sleepers %+v", round, sa, sb, ss)
		if sa.HandedOut != uint64(round) || sb.HandedIn != uint64(round) || ss.Wakes != uint64(round) {
			t.Fatalf("round %d: a handed out %d posts, b handed in %d and sent %d wakes, want %d each",
				round, sa.HandedOut, sb.HandedIn, ss.Wakes, round)
		}
	}
	waitFor(t, 10*time.Second, "the listener sleeps again", func() bool {
		return acc.Asleep() && b.relay.SleepStats().Sleeping == 1
	})
	acc.Close()
	waitFor(t, 5*time.Second, "b forgets the sleeper and drops the mailbox's subscription", func() bool {
		return b.relay.SleepStats().Sleeping == 0 && b.m.Stats().MailboxesHeld == 0
	})
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if _, err := d.DialMailbox(pctx, listenerID.Public().(ed25519.PublicKey)); !errors.Is(err, quicpipe.ErrNoMailbox) {
		t.Fatalf("dial after the sleeper left: %v, want ErrNoMailbox", err)
	}
}
