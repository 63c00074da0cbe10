package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// mailboxEnv is a relay with its mailbox on, on IPv4 loopback.
type mailboxEnv struct {
	relay   *Relay
	relayID ed25519.PrivateKey
}

func newMailboxEnv(t *testing.T, mcfg *MailboxConfig) *mailboxEnv {
	t.Helper()
	if mcfg == nil {
		mcfg = &MailboxConfig{}
	}
	e := &mailboxEnv{relayID: GenerateIdentity()}
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: e.relayID, Mailbox: mcfg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e.relay = r
	serveRelay(t, r, nil)
	return e
}

func (e *mailboxEnv) config(id ed25519.PrivateKey, trusted ...ed25519.PublicKey) *Config {
	return &Config{
		RelayAddr:    e.relay.LocalAddr().String(),
		RelayKey:     e.relayID.Public().(ed25519.PublicKey),
		Identity:     id,
		TrustedPeers: trusted,
		Logger:       testLogger(nil),
	}
}

func (e *mailboxEnv) accepter(t *testing.T, ctx context.Context, id ed25519.PrivateKey, trusted ...ed25519.PublicKey) *Accepter {
	t.Helper()
	a, err := NewAccepter(ctx, e.config(id, trusted...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func (e *mailboxEnv) dialer(t *testing.T, ctx context.Context, id ed25519.PrivateKey) *Dialer {
	t.Helper()
	d, err := NewDialer(ctx, e.config(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// mailboxAccepter is an accepter with its mailbox open.
func (e *mailboxEnv) mailboxAccepter(t *testing.T, ctx context.Context, id ed25519.PrivateKey, trusted ...ed25519.PublicKey) *Accepter {
	t.Helper()
	a := e.accepter(t, ctx, id, trusted...)
	if err := a.OpenMailbox(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// echoMailbox accepts one connection from a's mailbox and echoes its
// streams.
func echoMailbox(ctx context.Context, a *Accepter) {
	if qc, err := a.AcceptMailbox(ctx); err == nil {
		serveEcho(ctx, qc)
	}
}

// rawClient opens a bare HTTP/3 connection to the relay, as any client
// could.
func (e *mailboxEnv) rawClient(t *testing.T, ctx context.Context) (*http3.ClientConn, *quic.Conn) {
	t.Helper()
	tlsConf, err := ClientTLSConfig(nil, e.relayID.Public().(ed25519.PublicKey), http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	qc, err := quic.DialAddr(ctx, e.relay.LocalAddr().String(), tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	return (&http3.Transport{}).NewClientConn(qc), qc
}

// do sends one request on cc and returns the status and error code.
func do(t *testing.T, cc *http3.ClientConn, method string, key ed25519.PublicKey, sig []byte, body []byte) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, "https://"+ServerName+mailboxPath+EncodeKey(key), bytes.NewReader(body))
	if sig != nil {
		req.Header.Set(mailboxSignatureHeader, base64.RawURLEncoding.EncodeToString(sig))
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode/100 == 2 {
		if method == http.MethodGet {
			resp.Body.Close() // leave the mailbox
		}
		return resp.StatusCode, ""
	}
	var re *RelayError
	if !errors.As(relayErrorOf(resp), &re) {
		t.Fatal("no RelayError")
	}
	return re.Status, re.Code
}

func testFlightBinary(t *testing.T) []byte {
	t.Helper()
	js, err := os.ReadFile(flightTestdata)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFirstFlight(js)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// TestMailboxDial: a dialer reaches an accepter through its mailbox, twice
// (the mailbox stays open), and the relay keeps nothing afterwards.
func TestMailboxDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	aID, bID := GenerateIdentity(), GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, bID, pub(aID))
	if err := a.OpenMailbox(ctx); err != nil { // already open: no-op
		t.Fatal(err)
	}
	d := e.dialer(t, ctx, aID)
	for i := range 2 {
		accepted := make(chan *quic.Conn, 1)
		go func() {
			qc, err := a.AcceptMailbox(ctx)
			if err != nil {
				t.Error(err)
				close(accepted)
				return
			}
			accepted <- qc
			serveEcho(ctx, qc)
		}()
		qc, err := d.DialMailbox(ctx, pub(bID))
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if got := PeerKey(qc.ConnectionState().TLS); !bytes.Equal(got, pub(bID)) {
			t.Fatalf("dialed key %x, want the accepter's", got)
		}
		if err := echo(ctx, qc, 1000, 0); err != nil {
			t.Fatalf("hello through the mailbox: %v", err)
		}
		if ac := <-accepted; ac == nil || !bytes.Equal(PeerKey(ac.ConnectionState().TLS), pub(aID)) {
			t.Fatal("accepted connection does not carry the dialer's key")
		}
		qc.CloseWithError(0, "")
	}
	s := e.relay.MailboxStats()
	if s.Open != 1 || s.Opened != 1 || s.Delivered != 2 || s.DeliveredBytes < 2*2*MinFlightDatagramSize {
		t.Errorf("stats %+v, want 1 open, 1 opened, 2 delivered", s)
	}
	if err := a.CloseMailbox(); err != nil {
		t.Fatalf("CloseMailbox: %v", err)
	}
	waitFor(t, func() bool { return e.relay.MailboxStats().Open == 0 }, "the relay forgets the closed mailbox")
	_, err := d.DialMailbox(ctx, pub(bID))
	var re *RelayError
	if !errors.As(err, &re) || re.Code != CodeNoMailbox || re.Status != http.StatusNotFound || !errors.Is(err, ErrNoMailbox) {
		t.Fatalf("dial after CloseMailbox: %v, want 404 no_mailbox", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMailboxAuthentication: only the holder of a key can open its mailbox,
// and only on the connection its signature names.
func TestMailboxAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	victim, attacker := GenerateIdentity(), GenerateIdentity()
	cc1, qc1 := e.rawClient(t, ctx)
	cc2, _ := e.rawClient(t, ctx)
	sign := func(id ed25519.PrivateKey, qc *quic.Conn, key ed25519.PublicKey) []byte {
		ekm, err := mailboxExporter(qc, key)
		if err != nil {
			t.Fatal(err)
		}
		return ed25519.Sign(id, mailboxMessage(key, ekm))
	}
	victimSig := sign(victim, qc1, pub(victim))
	for _, tc := range []struct {
		name string
		cc   *http3.ClientConn
		sig  []byte
	}{
		{"no-signature", cc1, nil},
		{"garbage", cc1, []byte("not a signature")},
		{"attacker-key", cc1, sign(attacker, qc1, pub(victim))},
		{"replayed-on-another-connection", cc2, victimSig},
		{"wrong-mailbox", cc1, sign(victim, qc1, pub(attacker))},
	} {
		if status, code := do(t, tc.cc, http.MethodGet, pub(victim), tc.sig, nil); status != http.StatusForbidden || code != "bad_signature" {
			t.Errorf("%s: %d %s, want 403 bad_signature", tc.name, status, code)
		}
	}
	if n := e.relay.MailboxStats().Rejected["bad_signature"]; n != 5 {
		t.Errorf("bad_signature counted %d times, want 5", n)
	}
	if s := e.relay.MailboxStats(); s.Open != 0 || s.Opened != 0 {
		t.Errorf("stats %+v: a refused open opened a mailbox", s)
	}
	// The right signature on its own connection opens it.
	if status, code := do(t, cc1, http.MethodGet, pub(victim), victimSig, nil); status != http.StatusOK {
		t.Fatalf("victim's open: %d %s", status, code)
	}

	// With the victim's mailbox held by a real Accepter, the attacker's
	// attempts change nothing: the victim still gets the dial.
	dID := GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, victim, pub(dID))
	if status, code := do(t, cc2, http.MethodGet, pub(victim), sign(attacker, qc1, pub(victim)), nil); status != http.StatusForbidden {
		t.Fatalf("attacker's open: %d %s, want 403", status, code)
	}
	go echoMailbox(ctx, a)
	qc, err := e.dialer(t, ctx, dID).DialMailbox(ctx, pub(victim))
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(ctx, qc, 1000, 0); err != nil {
		t.Fatalf("still mine: %v", err)
	}
}

// TestMailboxUntrustedDialer: the mailbox delivers anyone's flight, but the
// accepter's TLS refuses a dialer whose key it does not trust, and the
// dialer learns it from DialMailbox itself, never from a connection that
// fails later.
func TestMailboxUntrustedDialer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	bID := GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, bID, pub(GenerateIdentity()))
	got := make(chan error, 1)
	go func() {
		_, err := a.AcceptMailbox(ctx)
		got <- err
	}()
	start := time.Now()
	qc, err := DialMailbox(ctx, e.config(GenerateIdentity()), pub(bID))
	if err == nil {
		qc.CloseWithError(0, "")
		t.Fatal("DialMailbox returned a connection for an untrusted dialer")
	}
	if !errors.Is(err, ErrKeyRefused) {
		t.Fatalf("untrusted dialer: %v, want an error wrapping ErrKeyRefused", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("untrusted dialer: %v only at the test's deadline", err)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	select {
	case err := <-got:
		t.Fatalf("AcceptMailbox returned (%v) for an untrusted dialer", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestMailboxPostLimits: malformed, oversized and flooding posts are refused
// with JSON errors and counted.
func TestMailboxPostLimits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, &MailboxConfig{MaxPostBytes: 2500, PostRate: 0.001, PostBurst: 6})
	cc, _ := e.rawClient(t, ctx)
	key := pub(GenerateIdentity())
	flight := testFlightBinary(t)
	if len(flight) <= 2500 {
		t.Fatalf("test flight is %d bytes; the test needs it above MaxPostBytes", len(flight))
	}
	small := flight[:1000]
	for i, tc := range []struct {
		body   []byte
		status int
		code   string
	}{
		{flight, http.StatusRequestEntityTooLarge, "body_too_large"},
		{[]byte("not a flight"), http.StatusBadRequest, "bad_flight"},
		{small, http.StatusBadRequest, "bad_flight"},
		{[]byte("QPF\x01\x01\x04\xb0" + string(make([]byte, 1200))), http.StatusNotFound, "no_mailbox"},
		{[]byte("QPF\x01\x01\x04\xb0" + string(make([]byte, 1200))), http.StatusNotFound, "no_mailbox"},
		{[]byte("QPF\x01\x01\x04\xb0" + string(make([]byte, 1200))), http.StatusNotFound, "no_mailbox"},
		// The burst of 6 is spent: the flood is refused before the body
		// is even read.
		{[]byte("QPF\x01\x01\x04\xb0" + string(make([]byte, 1200))), http.StatusTooManyRequests, "rate_limited"},
		{flight, http.StatusTooManyRequests, "rate_limited"},
		{nil, http.StatusTooManyRequests, "rate_limited"},
	} {
		if status, code := do(t, cc, http.MethodPost, key, nil, tc.body); status != tc.status || code != tc.code {
			t.Errorf("post %d: %d %s, want %d %s", i, status, code, tc.status, tc.code)
		}
	}
	// Other methods and bad keys.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "https://"+ServerName+mailboxPath+EncodeKey(key), nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := relayErrorOf(resp); !isRelayError(err, http.StatusMethodNotAllowed, "bad_method") || resp.Header.Get("Allow") != "GET, POST" {
		t.Errorf("PUT: %v (Allow %q)", err, resp.Header.Get("Allow"))
	}
	for _, path := range []string{"short", EncodeKey(key) + "x", EncodeKey(key) + "/more", ""} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+ServerName+mailboxPath+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if err := relayErrorOf(resp); !isRelayError(err, http.StatusBadRequest, "bad_key") {
			t.Errorf("GET %q: %v, want 400 bad_key", path, err)
		}
	}
	s := e.relay.MailboxStats()
	want := map[string]uint64{"body_too_large": 1, "bad_flight": 2, "no_mailbox": 3, "rate_limited": 3, "bad_method": 1, "bad_key": 4}
	for code, n := range want {
		if s.Rejected[code] != n {
			t.Errorf("Rejected[%q] = %d, want %d", code, s.Rejected[code], n)
		}
	}
	if s.Delivered != 0 {
		t.Errorf("Delivered = %d, want 0", s.Delivered)
	}
}

func isRelayError(err error, status int, code string) bool {
	var re *RelayError
	return errors.As(err, &re) && re.Status == status && re.Code == code
}

// TestMailboxTakeover: a second accepter with the same key takes the
// mailbox; the first is told and does not take it back.
func TestMailboxTakeover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	aID, bID := GenerateIdentity(), GenerateIdentity()
	first := e.mailboxAccepter(t, ctx, bID, pub(aID))
	firstErr := make(chan error, 1)
	go func() {
		_, err := first.AcceptMailbox(ctx)
		firstErr <- err
	}()
	second := e.mailboxAccepter(t, ctx, bID, pub(aID))
	select {
	case err := <-firstErr:
		if !errors.Is(err, ErrMailboxTaken) {
			t.Fatalf("first accepter: %v, want ErrMailboxTaken", err)
		}
	case <-ctx.Done():
		t.Fatal("the first accepter was not told")
	}
	if err := first.OpenMailbox(ctx); !errors.Is(err, ErrMailboxTaken) {
		t.Fatalf("first accepter reopening: %v, want ErrMailboxTaken", err)
	}
	if err := first.CloseMailbox(); !errors.Is(err, ErrMailboxTaken) {
		t.Fatalf("first accepter's CloseMailbox: %v, want the ErrMailboxTaken that ended it", err)
	}
	if err := first.CloseMailbox(); err != nil {
		t.Fatalf("CloseMailbox on a closed mailbox: %v, want nil", err)
	}
	go echoMailbox(ctx, second)
	qc, err := e.dialer(t, ctx, aID).DialMailbox(ctx, pub(bID))
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(ctx, qc, 1000, 0); err != nil {
		t.Fatalf("to the second: %v", err)
	}
	if s := e.relay.MailboxStats(); s.Open != 1 || s.Opened != 2 {
		t.Errorf("stats %+v, want 1 open, 2 opened", s)
	}
}

// TestMailboxReopen: when the accepter's connection to the relay drops, it
// reconnects and reopens its mailbox by itself.
func TestMailboxReopen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	aID, bID := GenerateIdentity(), GenerateIdentity()
	a := e.mailboxAccepter(t, ctx, bID, pub(aID))
	a.p.sess.regMu.Lock()
	a.p.sess.qc.CloseWithError(0, "test drops the connection")
	a.p.sess.regMu.Unlock()
	waitFor(t, func() bool { s := e.relay.MailboxStats(); return s.Opened == 2 && s.Open == 1 }, "the mailbox is reopened")
	go echoMailbox(ctx, a)
	// The accepter's registration heals too (its session re-registers on
	// the new connection); the dial may race it, so allow a retry.
	d := e.dialer(t, ctx, aID)
	var qc *quic.Conn
	var err error
	for range 3 {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		qc, err = d.DialMailbox(dctx, pub(bID))
		dcancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(ctx, qc, 1000, 0); err != nil {
		t.Fatalf("after the drop: %v", err)
	}
}

// TestMailboxOff: a relay without a mailbox refuses to open one.
func TestMailboxOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id := GenerateIdentity()
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(ctx)
	t.Cleanup(func() { r.Close() })
	a, err := NewAccepter(ctx, &Config{RelayAddr: r.LocalAddr().String(), RelayKey: pub(id), Identity: GenerateIdentity(),
		TrustedPeers: []ed25519.PublicKey{pub(GenerateIdentity())}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.OpenMailbox(ctx); !isRelayError(err, http.StatusNotFound, "not_found") {
		t.Fatalf("OpenMailbox: %v, want 404 not_found", err)
	}
	if _, err := a.AcceptMailbox(ctx); err == nil {
		t.Fatal("AcceptMailbox succeeded on a relay without mailbox")
	}
	if s := r.MailboxStats(); s.Open != 0 || s.Rejected == nil {
		t.Errorf("MailboxStats of a relay without mailbox: %+v", s)
	}
	if err := a.Close(); err != nil {
		t.Error(err)
	}
	if err := a.OpenMailbox(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("OpenMailbox after Close: %v, want ErrClosed", err)
	}
}

// TestSourceLimiter checks the token bucket with a synthetic clock.
func TestSourceLimiter(t *testing.T) {
	l := sourceLimiter{rate: 2, burst: 3, max: 2, buckets: make(map[netip.Prefix]*forward.TokenBucket)}
	now := time.Unix(1000, 0)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("198.51.100.7")
	for i := range 3 {
		if ok, _ := l.allow(a, now); !ok {
			t.Fatalf("post %d within the burst refused", i)
		}
	}
	ok, wait := l.allow(a, now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("beyond the burst: %v, wait %v; want refused, 500ms", ok, wait)
	}
	if ok, _ := l.allow(a, now.Add(500*time.Millisecond)); !ok {
		t.Fatal("refill after 500ms at 2/s refused")
	}
	// Same /64: same bucket.
	if ok, _ := l.allow(b, now); !ok {
		t.Fatal("first IPv6 post refused")
	}
	l.allow(netip.MustParseAddr("2001:db8::2"), now)
	l.allow(netip.MustParseAddr("2001:db8::ffff"), now)
	if ok, _ := l.allow(b, now); ok {
		t.Fatal("a /64 got more than its burst")
	}
	// The table is full (max 2): a new source is refused until a bucket
	// is full again, then swept.
	if ok, _ := l.allow(c, now); ok {
		t.Fatal("a new source was tracked beyond the bound")
	}
	if ok, _ := l.allow(c, now.Add(2*time.Second)); !ok {
		t.Fatal("a new source refused after the others refilled")
	}
}

// TestDialTicket: a ticket with a secret is all a dialer needs; the
// accepter trusts the identity derived from it.
func TestDialTicket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, nil)
	bID := GenerateIdentity()
	ticket := &Ticket{Peer: pub(bID), RelayAddr: e.relay.LocalAddr().String(), RelayKey: pub(e.relayID), Secret: NewTicketSecret()}
	a := e.mailboxAccepter(t, ctx, bID, pub(ticket.DialerIdentity()))
	go echoMailbox(ctx, a)
	parsed, err := ParseTicket(ticket.String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := DialTicket(ctx, parsed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	if err := echo(ctx, conn, 1000, 0); err != nil {
		t.Fatalf("ticket holder: %v", err)
	}

	parsed.Secret = nil
	if _, err := DialTicket(ctx, parsed, nil); err == nil || !strings.Contains(err.Error(), "Config.Identity is required") {
		t.Fatalf("DialTicket without secret or identity: %v", err)
	}
}

// TestPostToMailboxRetries: a post the relay refuses for now (429
// rate_limited with Retry-After, or 503 mailbox_busy when flights pile up,
// which ten simultaneous dials to one accepter behind a lossy link met) is
// tried again while the context allows.
func TestPostToMailboxRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newMailboxEnv(t, &MailboxConfig{PostRate: 1, PostBurst: 1})
	aID, bID := GenerateIdentity(), GenerateIdentity()
	e.mailboxAccepter(t, ctx, bID, pub(aID))
	f, err := ParseFirstFlight(testFlightBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	d := e.dialer(t, ctx, aID)
	if err := d.PostToMailbox(ctx, pub(bID), f); err != nil {
		t.Fatalf("first post: %v", err)
	}
	// The second post exceeds the source's rate: the relay asks for a
	// second's wait, and the post goes through after it.
	if err := d.PostToMailbox(ctx, pub(bID), f); err != nil {
		t.Fatalf("second post: %v, want it to wait for the relay's Retry-After and go through", err)
	}
	if n := e.relay.MailboxStats().Rejected[CodeRateLimited]; n != 1 {
		t.Errorf("rate_limited counted %d times, want 1 (one refusal, then the retry)", n)
	}
	// With too little time left for the wait, the refusal is returned.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	err = d.PostToMailbox(short, pub(bID), f)
	var re *RelayError
	if !errors.As(err, &re) || re.Code != CodeRateLimited || re.RetryAfter != time.Second || !errors.Is(err, ErrRelayLimit) {
		t.Fatalf("post with 200 ms left: %v, want rate_limited with a 1 s Retry-After", err)
	}
}
