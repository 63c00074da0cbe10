package main

// Roles of the tunnel comparison (tunnel.go) that speak the relay's
// TLS/WebSocket tunnel themselves, as a peer does (peer_tunnel.go in the
// library; docs/decisions/0025-tunnel.md): TLS to the relay's tunnel
// listener, checked against the relay's pinned key, an HTTP/1.1 WebSocket
// upgrade with the tunnel's subprotocol, then one datagram per binary
// message, written with github.com/coder/websocket as the peer writes them.
//
//   - "tungen", the load generator through a tunnel: it registers CIDs of
//     its own with the relay over an HTTP/3 connection inside its tunnel
//     (so that its tunnel's virtual address is a live registration's
//     target, which the forwarding rule asks of a source), then writes
//     1200-byte QUIC short-header datagrams for the sink's 64 registered
//     CIDs into the tunnel, one message each, as fast as it can or at a
//     rate. It answers the same "run SECONDS MAX RATE" command and reports
//     the same event as the UDP generator (gen.go), so that the capacity
//     harness (capWindow) drives both alike.
//   - "tunnels": opens idle tunnels and holds them, for the relay's memory
//     per open tunnel.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe"
)

func init() {
	roles["tungen"] = tunGenRole
	roles["tunnels"] = tunnelsRole
}

// tunnelSubprotocol is the tunnel's WebSocket subprotocol (docs/PROTOCOL.md,
// "Tunnel").
const tunnelSubprotocol = "quicpipe-tunnel.v1"

// maxTunnelDatagram is the longest message a tunnel carries.
const maxTunnelDatagram = 1500

// dialRelayTunnel opens a tunnel to url. The relay's outer certificate must
// hold relayKey, as a peer that pins the relay's key checks it.
func dialRelayTunnel(ctx context.Context, url string, relayKey ed25519.PublicKey) (*websocket.Conn, error) {
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		// Checked by VerifyConnection: the relay's pinned key.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tunnel: no certificate")
			}
			if pk, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey); !ok || !pk.Equal(relayKey) {
				return errors.New("tunnel: the certificate does not hold the relay's key")
			}
			return nil
		},
	}
	tr := &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true, TLSHandshakeTimeout: 10 * time.Second}
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr, Timeout: 10 * time.Second},
		Subprotocols:    []string{tunnelSubprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil && ws == nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	if ws.Subprotocol() != tunnelSubprotocol {
		ws.CloseNow()
		return nil, fmt.Errorf("tunnel: the relay does not speak %s", tunnelSubprotocol)
	}
	ws.SetReadLimit(maxTunnelDatagram)
	return ws, nil
}

// tunnelPacketConn is a net.PacketConn over a tunnel: what is written to
// any address goes into the tunnel, what comes out of it is read as from
// relay. quic-go runs the generator's HTTP/3 connection to the relay on it.
type tunnelPacketConn struct {
	ws    *websocket.Conn
	relay net.Addr
	in    chan []byte
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed when the read deadline changes
}

func newTunnelPacketConn(ws *websocket.Conn, relay net.Addr) *tunnelPacketConn {
	c := &tunnelPacketConn{ws: ws, relay: relay, in: make(chan []byte, 256), done: make(chan struct{}), wake: make(chan struct{})}
	go func() {
		defer c.Close()
		for {
			typ, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			if typ != websocket.MessageBinary {
				continue
			}
			select {
			case c.in <- b:
			default: // dropped, as a full socket buffer drops
			}
		}
	}()
	return c
}

// ReadFrom returns the next datagram out of the tunnel, as from the relay.
func (c *tunnelPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl, wake := c.deadline, c.wake
		c.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			expired = t.C
		}
		select {
		case p := <-c.in:
			return copy(b, p), c.relay, nil
		case <-c.done:
			return 0, nil, net.ErrClosed
		case <-expired:
			return 0, nil, os.ErrDeadlineExceeded
		case <-wake:
		}
	}
}

// WriteTo writes b into the tunnel as one binary message, whatever the
// address.
func (c *tunnelPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	if err := c.ws.Write(context.Background(), websocket.MessageBinary, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close closes the tunnel; it is idempotent.
func (c *tunnelPacketConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.ws.CloseNow()
	})
	return nil
}

// LocalAddr returns a placeholder: the tunnel has no local UDP address.
func (c *tunnelPacketConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv6loopback, Port: 1}
}

// SetReadDeadline bounds ReadFrom, including one already waiting (quic-go
// wakes its reader with it when it closes).
func (c *tunnelPacketConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline does nothing: writes into the tunnel are not bounded.
func (c *tunnelPacketConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline.
func (c *tunnelPacketConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// registerThroughTunnel registers num CIDs of key with the relay at relay
// (its UDP address, which the relay's HTTP/3 server answers for inside the
// tunnel too) over an HTTP/3 connection on pc. The connection stays open
// until close is called.
func registerThroughTunnel(ctx context.Context, pc net.PacketConn, relay *net.UDPAddr, relayKey []byte, key []byte, num int) (close func(), err error) {
	tlsConf, err := quicpipe.ClientTLSConfig(nil, relayKey, http3.NextProtoH3)
	if err != nil {
		return nil, err
	}
	qtr := &quic.Transport{Conn: pc}
	h3 := &http3.Transport{
		TLSClientConfig: tlsConf,
		QUICConfig:      &quic.Config{MaxIdleTimeout: 5 * time.Minute, KeepAlivePeriod: 10 * time.Second},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return qtr.DialEarly(ctx, relay, tlsCfg, cfg)
		},
	}
	close = func() { h3.Close(); qtr.Close() }
	// The registration body of docs/PROTOCOL.md.
	body, _ := json.Marshal(struct {
		Key   []byte `json:"key"`
		Num   uint32 `json:"num"`
		First uint32 `json:"first"`
	}{key, uint32(num), 1})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+relay.String()+"/v1/register", bytes.NewReader(body))
	if err != nil {
		close()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: h3}).Do(req)
	if err != nil {
		close()
		return nil, fmt.Errorf("register through the tunnel: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		close()
		return nil, fmt.Errorf("register through the tunnel: %s: %s", resp.Status, b)
	}
	return close, nil
}

func tunGenRole(args []string) error {
	fs := flag.NewFlagSet("tungen", flag.ContinueOnError)
	url := fs.String("url", "", "the relay's tunnel, wss://host:port/path")
	size := fs.Int("size", payloadSize, "bytes per datagram")
	cidKey := fs.String("cidkey", "", "hex CID key of the sink's registration")
	ncids := fs.Int("ncids", 64, "CIDs to rotate over, from index 1")
	regKey := fs.String("regkey", "", "hex CID key the generator registers its own tunnel address with")
	relay, rk, err := parseRelayFlags(fs, args)
	if err != nil {
		return err
	}
	relayAddr, err := net.ResolveUDPAddr("udp", relay)
	if err != nil {
		return err
	}
	rkey, err := hex.DecodeString(*regKey)
	if err != nil {
		return err
	}
	payloads, err := cidPayloads(*cidKey, *ncids, *size)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ws, err := dialRelayTunnel(ctx, *url, rk)
	if err != nil {
		return err
	}
	pc := newTunnelPacketConn(ws, relayAddr)
	defer pc.Close()
	closeReg, err := registerThroughTunnel(ctx, pc, relayAddr, rk, rkey, 64)
	if err != nil {
		return err
	}
	defer closeReg()
	say("ready", map[string]any{"bytes": len(payloads[0])})

	var running atomic.Bool
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "run" || len(a) != 3 {
			return nil, fmt.Errorf("usage: run SECONDS MAX RATE")
		}
		secs, _ := strconv.ParseFloat(a[0], 64)
		maxN, _ := strconv.ParseInt(a[1], 10, 64)
		rate, _ := strconv.ParseFloat(a[2], 64)
		if secs <= 0 || secs > 600 {
			return nil, fmt.Errorf("seconds must be in (0, 600]")
		}
		if maxN <= 0 {
			maxN = int64(secs * 5e6)
		}
		if !running.CompareAndSwap(false, true) {
			return nil, fmt.Errorf("already running")
		}
		go func() {
			sent, errs, el := blastTunnel(ws, payloads, time.Duration(secs*float64(time.Second)), maxN, rate)
			running.Store(false)
			say("ev", map[string]any{"sent": sent, "errors": errs, "secs": el.Seconds()})
		}()
		return nil, nil
	})
	return nil
}

// cidPayloads returns n QUIC short-header datagrams of size bytes, one for
// each of the first n CIDs of the hex key, the rest random (as gen.go's).
func cidPayloads(hexKey string, n, size int) ([][]byte, error) {
	key, err := hex.DecodeString(hexKey)
	if err != nil {
		return nil, err
	}
	var payloads [][]byte
	for i := 1; i <= n; i++ {
		cid, err := quicpipe.DeriveCID(key, uint32(i))
		if err != nil {
			return nil, err
		}
		p := make([]byte, size)
		rand.Read(p)
		p[0] = 0x40 | p[0]&0x3f // short header, fixed bit set
		copy(p[1:], cid[:])
		payloads = append(payloads, p)
	}
	return payloads, nil
}

// blastTunnel writes the payloads in turn into ws, one binary message each
// (as a peer writes its datagrams), until d has passed or maxN are out,
// pacing to rate per second if rate > 0. A failed write ends the tunnel:
// it stops there.
func blastTunnel(ws *websocket.Conn, payloads [][]byte, d time.Duration, maxN int64, rate float64) (sent, errs int64, elapsed time.Duration) {
	const batch = 64 // datagrams between two looks at the clock, as gen.go's batches
	ctx := context.Background()
	start := time.Now()
	end := start.Add(d)
	for sent < maxN {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if rate > 0 && float64(sent) >= rate*now.Sub(start).Seconds() {
			time.Sleep(time.Duration(batch / rate * float64(time.Second)))
			continue
		}
		for k := 0; k < batch && sent < maxN; k++ {
			if err := ws.Write(ctx, websocket.MessageBinary, payloads[int(sent)%len(payloads)]); err != nil {
				return sent, errs + 1, time.Since(start)
			}
			sent++
		}
	}
	return sent, errs, time.Since(start)
}

// tunnelsRole opens idle tunnels on "open N" and holds them until its
// standard input closes.
func tunnelsRole(args []string) error {
	fs := flag.NewFlagSet("tunnels", flag.ContinueOnError)
	url := fs.String("url", "", "the relay's tunnel, wss://host:port/path")
	_, rk, err := parseRelayFlags(fs, args)
	if err != nil {
		return err
	}
	var open []*websocket.Conn
	defer func() {
		for _, ws := range open {
			ws.CloseNow()
		}
	}()
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "open" || len(a) != 1 {
			return nil, errors.New("usage: open N")
		}
		n, err := strconv.Atoi(a[0])
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		for range n {
			ws, err := dialRelayTunnel(ctx, *url, rk)
			if err != nil {
				return nil, err
			}
			open = append(open, ws)
		}
		return map[string]int{"open": len(open)}, nil
	})
	return nil
}
