//go:build linux

package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Light sleepers for TestMeasureIdlePeers (QUICPIPE_MEASURE_IDLE_SLEEP=light):
// each speaks to the relay exactly as a sleeping Accepter does (an HTTP/3
// connection from its own socket: register, open the mailbox, sleep; then
// keep-alives from that socket), without the Accepter around it, whose
// process costs about 216 KB per sleeping listener: 100,000 real ones do not
// fit this machine beside the relay. The relay cannot tell them apart.

// lightSleeper is one sleeping listener: its socket and its sleep state.
type lightSleeper struct {
	conn  *net.UDPConn
	key   [sleepKeyLen]byte
	id    [sleepIDLen]byte
	ctr   uint64
	every time.Duration
}

// openLightSleeper registers a new key over a socket of its own, opens its
// mailbox and puts it to sleep.
func openLightSleeper(ctx context.Context, relay string, relayKey ed25519.PublicKey, ip net.IP) (*lightSleeper, error) {
	raddr, err := net.ResolveUDPAddr("udp4", relay)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, err
	}
	s, err := sleepOver(ctx, conn, raddr, relayKey)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func sleepOver(ctx context.Context, conn *net.UDPConn, raddr *net.UDPAddr, relayKey ed25519.PublicKey) (*lightSleeper, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tr := &quic.Transport{Conn: conn}
	defer tr.Close() // leaves conn open
	tlsConf, err := ClientTLSConfig(nil, relayKey, http3.NextProtoH3)
	if err != nil {
		return nil, err
	}
	qc, err := tr.Dial(ctx, raddr, tlsConf, &quic.Config{})
	if err != nil {
		return nil, fmt.Errorf("dialing the relay: %w", err)
	}
	defer qc.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(qc)
	do := func(method, path string, in, out any) error {
		body, _ := json.Marshal(in)
		req, _ := http.NewRequestWithContext(ctx, method, "https://"+ServerName+path, bytes.NewReader(body))
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return relayErrorOf(resp)
		}
		return json.NewDecoder(resp.Body).Decode(out)
	}
	cidKey := make([]byte, 32)
	rand.Read(cidKey)
	var reg registerResponse
	if err := do(http.MethodPost, registerPath, registerRequest{Key: cidKey, Num: 64}, &reg); err != nil {
		return nil, fmt.Errorf("registering: %w", err)
	}
	if reg.Sleep == nil {
		return nil, fmt.Errorf("the relay does not offer sleep")
	}
	mpub, mpriv, _ := ed25519.GenerateKey(nil)
	ekm, err := mailboxExporter(qc, mpub)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(mpriv, mailboxMessage(mpub, ekm))
	mctx, mcancel := context.WithCancel(ctx)
	defer mcancel()
	req, _ := http.NewRequestWithContext(mctx, http.MethodGet, "https://"+ServerName+mailboxPath+EncodeKey(mpub), nil)
	req.Header.Set(mailboxSignatureHeader, base64.RawURLEncoding.EncodeToString(sig))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("opening the mailbox: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, relayErrorOf(resp)
	}
	defer resp.Body.Close()
	k, err := deriveSleepKey(cidKey, mpub)
	if err != nil {
		return nil, err
	}
	s := &lightSleeper{conn: conn, key: k, id: sleepIDOf(mpub), ctr: nextCounter(0, time.Now().UnixNano())}
	var ans sleepAnswer
	if err := do(http.MethodPost, sleepPath, sleepRequest{Key: cidKey, Mailbox: mpub, First: 1, Num: sleepWindow, Counter: s.ctr}, &ans); err != nil {
		return nil, fmt.Errorf("going to sleep: %w", err)
	}
	s.every = time.Duration(ans.KeepAliveMS) * time.Millisecond
	io.Copy(io.Discard, resp.Body) // the relay ends the mailbox's request
	return s, nil
}

// keepAlive sends a keep-alive, after draining what the relay sent (acks,
// the first challenge), which nothing else reads.
func (s *lightSleeper) keepAlive(relay netip.AddrPort, buf []byte) {
	s.conn.SetReadDeadline(time.Unix(1, 0))
	for {
		if _, err := s.conn.Read(buf); err != nil {
			break
		}
	}
	s.ctr = nextCounter(s.ctr, time.Now().UnixNano())
	s.conn.WriteToUDPAddrPort(appendSleep(buf[:0], &s.key, sleepKeepAlive, s.id, s.ctr), relay)
}

// lightSleepers keeps a child's light sleepers alive until ctx ends.
type lightSleepers struct {
	mu    sync.Mutex
	all   []*lightSleeper
	relay netip.AddrPort
}

func (l *lightSleepers) add(s *lightSleeper) {
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
}

func (l *lightSleepers) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.all)
}

// run sends every sleeper's keep-alive once per interval, spread over it.
func (l *lightSleepers) run(ctx context.Context) {
	buf := make([]byte, 2048)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		all := l.all
		l.mu.Unlock()
		if len(all) == 0 {
			continue
		}
		// One interval's share each second.
		per := max(1, len(all)*int(time.Second)/int(all[0].every))
		for range per {
			if next >= len(all) {
				next = 0
			}
			all[next].keepAlive(l.relay, buf)
			next++
		}
	}
}

func (l *lightSleepers) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.all {
		s.conn.Close()
	}
}
