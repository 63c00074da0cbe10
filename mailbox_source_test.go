package quicpipe

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// rawClientFrom is rawClient from a socket bound to ip.
func (e *mailboxEnv) rawClientFrom(t *testing.T, ctx context.Context, ip string) (*http3.ClientConn, *quic.Conn) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() {
		tr.Close()
		udp.Close()
	})
	tlsConf, err := ClientTLSConfig(nil, e.relayID.Public().(ed25519.PublicKey), http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	qc, err := tr.Dial(ctx, e.relay.LocalAddr(), tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	return (&http3.Transport{}).NewClientConn(qc), qc
}

// holdMailbox opens the mailbox of id over cc (on qc) and keeps it open
// until the returned function is called or the test ends. It returns the
// status and error code of the answer.
func holdMailbox(t *testing.T, cc *http3.ClientConn, qc *quic.Conn, id ed25519.PrivateKey) (int, string, func()) {
	t.Helper()
	key := pub(id)
	ekm, err := mailboxExporter(qc, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+ServerName+mailboxPath+EncodeKey(key), nil)
	req.Header.Set(mailboxSignatureHeader, base64.RawURLEncoding.EncodeToString(ed25519.Sign(id, mailboxMessage(key, ekm))))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		var re *RelayError
		if errors.As(relayErrorOf(resp), &re) {
			return re.Status, re.Code, cancel
		}
		t.Fatalf("open: status %d without a relay error", resp.StatusCode)
	}
	return resp.StatusCode, "", func() {
		cancel()
		resp.Body.Close()
	}
}

// TestMailboxSourceLimit: one source holds at most MaxMailboxesPerSource
// mailboxes, however many connections it spreads them over; another source
// still opens one, and the source gets room back when it leaves one.
func TestMailboxSourceLimit(t *testing.T) {
	if c, err := populateMailboxConfig(&MailboxConfig{}); err != nil || c.MaxMailboxesPerSource != 64 {
		t.Errorf("default MaxMailboxesPerSource: got %v (%v), want 64", c.MaxMailboxesPerSource, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const limit = 4
	e := newMailboxEnv(t, &MailboxConfig{MaxMailboxesPerSource: limit})
	ids := make([]ed25519.PrivateKey, limit+2)
	for i := range ids {
		ids[i] = GenerateIdentity()
	}
	// Two connections from one source.
	cc1, qc1 := e.rawClient(t, ctx)
	cc2, qc2 := e.rawClient(t, ctx)
	var leave []func()
	for i := range limit {
		cc, qc := cc1, qc1
		if i%2 == 1 {
			cc, qc = cc2, qc2
		}
		status, code, closeFn := holdMailbox(t, cc, qc, ids[i])
		if status != http.StatusOK {
			t.Fatalf("open %d: %d %s, want 200", i, status, code)
		}
		leave = append(leave, closeFn)
	}
	waitFor(t, func() bool { return e.relay.MailboxStats().Open == limit }, "the mailboxes to open")
	for _, cc := range []struct {
		cc *http3.ClientConn
		qc *quic.Conn
	}{{cc1, qc1}, {cc2, qc2}} {
		if status, code, _ := holdMailbox(t, cc.cc, cc.qc, ids[limit]); status != http.StatusTooManyRequests || code != "limit_source" {
			t.Errorf("open beyond the limit: %d %s, want 429 limit_source", status, code)
		}
	}
	// Taking over one of its own mailboxes (a reconnecting accepter) is
	// not a new one.
	status, code, _ := holdMailbox(t, cc2, qc2, ids[0])
	if status != http.StatusOK {
		t.Errorf("takeover by the same source: %d %s, want 200", status, code)
	}
	// Another source opens one.
	cc3, qc3 := e.rawClientFrom(t, ctx, "127.0.0.2")
	if status, code, _ := holdMailbox(t, cc3, qc3, ids[limit+1]); status != http.StatusOK {
		t.Errorf("open from another source: %d %s, want 200", status, code)
	}
	// Leaving one makes room.
	leave[1]()
	waitFor(t, func() bool { return e.relay.MailboxStats().Open == limit }, "a mailbox to be left")
	if status, code, _ := holdMailbox(t, cc1, qc1, ids[limit]); status != http.StatusOK {
		t.Errorf("open after leaving one: %d %s, want 200", status, code)
	}
	s := e.relay.MailboxStats()
	if s.Rejected["limit_source"] != 2 || s.Rejected["limit_mailboxes"] != 0 {
		t.Errorf("Rejected: limit_source %d, limit_mailboxes %d; want 2, 0", s.Rejected["limit_source"], s.Rejected["limit_mailboxes"])
	}
	if s.Open != limit+1 {
		t.Errorf("Open: got %d, want %d", s.Open, limit+1)
	}
}
