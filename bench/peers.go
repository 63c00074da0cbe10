package main

// The peers of the setup and bulk comparisons: one role, "peer", with a kind
// (quicpipe through the relay's mailbox, a direct quic-go connection, a pion
// WebRTC data channel) and a side (dial or accept).
//
// Every kind carries one stream the same way: the dialer opens it, writes
// N bytes (1 for a setup measurement) and ends it; the accepter reads to the
// end, reporting the CLOCK_MONOTONIC time of the first byte and of the end as
// events, then answers one byte; the dialer waits for that byte and closes
// the connection. The harness subtracts the dialer's start time from the
// accepter's first-byte time: the same clock in both processes.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

func init() {
	roles["peer"] = peerRole
	roles["signal"] = signalRole
}

const benchALPN = "qpbench"

type peerFlags struct {
	kind, side       string
	relay, relayKey  string
	listen, to       string
	signal, iface    string
	loopback, direct bool
	// qpParams gives a plain quic-go connection Quicpipe's packet
	// parameters: 12-byte connection IDs and no path MTU discovery
	// (1280-byte datagrams).
	qpParams bool
	// tunnel, for Quicpipe peers: "off" reaches the relay over UDP only
	// (TunnelOff), a wss:// URL through the relay's tunnel only
	// (TunnelOnly), empty the library's default (TunnelAuto).
	tunnel string
}

// streamEvent is what the accepter reports per stream.
type streamEvent struct {
	Type  string `json:"type"` // "first" or "eof"
	T     int64  `json:"t"`    // CLOCK_MONOTONIC, ns
	First int64  `json:"first,omitempty"`
	Bytes int64  `json:"bytes,omitempty"`
	// Marks[i] is when the first (i+1) MiB had been read.
	Marks []int64 `json:"marks,omitempty"`
}

// dialResult is the dialer's answer to "dial N".
type dialResult struct {
	T0    int64 `json:"t0"`    // before dialing
	TConn int64 `json:"tconn"` // connection established (stream may open)
	TDone int64 `json:"tdone"` // the accepter's answer arrived
	// Path is where the connection ran when its stream opened (Quicpipe:
	// "relayed" or "direct"); WaitMs is how long the dialer waited for a
	// direct path before opening it.
	Path   string  `json:"path,omitempty"`
	WaitMs float64 `json:"wait_ms,omitempty"`
	// Transport is how the Quicpipe dialer reached its relay ("udp" or
	// "tunnel").
	Transport string `json:"transport,omitempty"`
}

func peerRole(args []string) error {
	var f peerFlags
	fs := flag.NewFlagSet("peer", flag.ContinueOnError)
	fs.StringVar(&f.kind, "kind", "", "quicpipe, quic or webrtc")
	fs.StringVar(&f.side, "side", "", "dial or accept")
	fs.StringVar(&f.relay, "relay", "", "relay address (quicpipe)")
	fs.StringVar(&f.relayKey, "relaykey", "", "relay public key, hex (quicpipe)")
	fs.StringVar(&f.listen, "listen", "", "address to listen on (quic accept)")
	fs.StringVar(&f.to, "to", "", "address to dial (quic dial)")
	fs.StringVar(&f.signal, "signal", "", "signalling server URL (webrtc)")
	fs.StringVar(&f.iface, "iface", "", "the one interface ICE may use (webrtc)")
	fs.BoolVar(&f.loopback, "loopback", false, "allow loopback ICE candidates (webrtc)")
	fs.BoolVar(&f.direct, "direct", false, "let Quicpipe move the pipe onto a direct path")
	fs.BoolVar(&f.qpParams, "qpparams", false, "quic: 12-byte connection IDs, no path MTU discovery, like Quicpipe")
	fs.StringVar(&f.tunnel, "tunnel", "", "quicpipe: off (UDP only), or the relay's tunnel URL wss://... (tunnel only); empty: the default, auto")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	switch f.kind + "/" + f.side {
	case "quicpipe/accept":
		return quicpipeAccept(ctx, f)
	case "quicpipe/dial":
		return quicpipeDial(ctx, f)
	case "quic/accept":
		return quicAccept(ctx, f)
	case "quic/dial":
		return quicDial(ctx, f)
	case "webrtc/accept":
		return webrtcAccept(ctx, f)
	case "webrtc/dial":
		return webrtcDial(ctx, f)
	}
	return fmt.Errorf("unknown peer %s/%s", f.kind, f.side)
}

// serveStream is the accepter's side of one measured stream.
func serveStream(r io.Reader, w io.Writer) error {
	buf := make([]byte, 256<<10)
	var first, total int64
	var marks []int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if total == 0 {
				first = monoNow()
				say("ev", streamEvent{Type: "first", T: first})
			}
			total += int64(n)
			if k := int(total >> 20); k > len(marks) {
				now := monoNow()
				for len(marks) < k {
					marks = append(marks, now)
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	say("ev", streamEvent{Type: "eof", T: monoNow(), First: first, Bytes: total, Marks: marks})
	_, err := w.Write([]byte{1})
	return err
}

// sendStream is the dialer's side: write n bytes, end the stream and wait
// for the accepter's one-byte answer.
func sendStream(rw io.ReadWriter, closeWrite func() error, n int64) error {
	chunk := make([]byte, 64<<10)
	rand.Read(chunk)
	for n > 0 {
		k := min(n, int64(len(chunk)))
		if _, err := rw.Write(chunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	if err := closeWrite(); err != nil {
		return err
	}
	var b [1]byte
	_, err := io.ReadFull(rw, b[:])
	return err
}

func parseN(a []string) (int64, error) {
	if len(a) != 1 {
		return 0, errors.New("usage: dial BYTES")
	}
	return strconv.ParseInt(a[0], 10, 64)
}

// quicpipeConfig returns a Quicpipe peer's configuration, and a function
// that tells how it reaches the relay.
func quicpipeConfig(f peerFlags, self string) (*quicpipe.Config, func() string, error) {
	rk, err := hex.DecodeString(f.relayKey)
	if err != nil {
		return nil, nil, err
	}
	cfg := &quicpipe.Config{
		RelayAddr:     f.relay,
		RelayKey:      rk,
		Identity:      benchKey(self),
		TrustedPeers:  []ed25519.PublicKey{pub(benchKey("dialer"))},
		DisableDirect: !f.direct,
	}
	switch f.tunnel {
	case "":
	case "off":
		cfg.Tunnel = quicpipe.TunnelOff
	default:
		cfg.Tunnel, cfg.TunnelURL = quicpipe.TunnelOnly, f.tunnel
	}
	var tr atomic.Value
	tr.Store(string(quicpipe.TransportUDP))
	cfg.OnRelayTransport = func(t quicpipe.Transport) { tr.Store(string(t)) }
	return cfg, func() string { return tr.Load().(string) }, nil
}

func quicpipeAccept(ctx context.Context, f peerFlags) error {
	cfg, transport, err := quicpipeConfig(f, "accepter")
	if err != nil {
		return err
	}
	a, err := quicpipe.NewAccepter(ctx, cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.OpenMailbox(ctx); err != nil {
		return err
	}
	go func() {
		for {
			conn, err := a.AcceptMailbox(ctx)
			if err != nil {
				say("ev", streamEvent{Type: "error: " + err.Error()})
				return
			}
			go acceptQUICStream(ctx, conn)
		}
	}()
	say("ready", nil)
	serveCommands(func(cmd string, _ []string) (any, error) {
		if cmd != "transport" {
			return nil, errors.New("unknown command")
		}
		return map[string]string{"transport": transport()}, nil
	})
	return nil
}

func acceptQUICStream(ctx context.Context, conn *quic.Conn) {
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	if err := serveStream(str, str); err != nil {
		return
	}
	str.Close()
	// The dialer closes the connection once it has the answer.
	select {
	case <-conn.Context().Done():
	case <-time.After(30 * time.Second):
		conn.CloseWithError(0, "")
	}
}

func quicpipeDial(ctx context.Context, f peerFlags) error {
	cfg, transport, err := quicpipeConfig(f, "dialer")
	if err != nil {
		return err
	}
	d, err := quicpipe.NewDialer(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	peer := pub(benchKey("accepter"))
	// "connect": a second Dialer of the same configuration, from a new
	// socket: NewDialer's time to reach the relay and register (through
	// the tunnel: TCP, TLS, the WebSocket upgrade, then the same).
	connect := func() (any, error) {
		cfg, transport, err := quicpipeConfig(f, "dialer")
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		t0 := monoNow()
		d, err := quicpipe.NewDialer(ctx, cfg)
		if err != nil {
			return nil, err
		}
		t1 := monoNow()
		d.Close()
		return map[string]any{"ms": float64(t1-t0) / 1e6, "transport": transport()}, nil
	}
	serveDials(ctx, func(ctx context.Context, n int64, r *dialResult) error {
		r.Transport = transport()
		conn, err := d.DialMailbox(ctx, peer)
		if err != nil {
			return err
		}
		defer conn.CloseWithError(0, "")
		if f.direct {
			// Measure the direct path: wait (10 s at most) for the
			// connection to move onto it.
			t := time.Now()
			for time.Since(t) < 10*time.Second {
				if pi, ok := d.Path(conn); ok && pi.Kind == quicpipe.PathDirect {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			r.WaitMs = float64(time.Since(t)) / 1e6
		}
		if pi, ok := d.Path(conn); ok {
			r.Path = pi.Kind.String()
		}
		return dialStream(ctx, conn, n, r)
	}, map[string]func() (any, error){"connect": connect})
	return nil
}

// serveDials says ready and answers "dial BYTES" commands: dial runs with a
// 600 s deadline, and r.T0 is taken just before it. Other commands without
// arguments go to the functions of more, if any.
func serveDials(ctx context.Context, dial func(ctx context.Context, n int64, r *dialResult) error, more map[string]func() (any, error)) {
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if f, ok := more[cmd]; ok && len(a) == 0 {
			return f()
		}
		n, err := parseN(a)
		if err != nil || cmd != "dial" {
			return nil, fmt.Errorf("usage: dial BYTES")
		}
		ctx, cancel := context.WithTimeout(ctx, 600*time.Second)
		defer cancel()
		var r dialResult
		r.T0 = monoNow()
		if err := dial(ctx, n, &r); err != nil {
			return nil, err
		}
		return r, nil
	})
}

func dialStream(ctx context.Context, conn *quic.Conn, n int64, r *dialResult) error {
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	r.TConn = monoNow()
	if err := sendStream(str, str.Close, n); err != nil {
		return err
	}
	r.TDone = monoNow()
	return nil
}

func quicAccept(ctx context.Context, f peerFlags) error {
	tlsConf, err := quicpipe.ServerTLSConfig(benchKey("accepter"), []ed25519.PublicKey{pub(benchKey("dialer"))}, benchALPN)
	if err != nil {
		return err
	}
	laddr, err := net.ResolveUDPAddr("udp", f.listen)
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return err
	}
	tr := f.quicTransport(conn)
	defer tr.Close()
	ln, err := tr.Listen(tlsConf, f.quicConfig())
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go acceptQUICStream(ctx, conn)
		}
	}()
	serveNothing()
	return nil
}

func quicDial(ctx context.Context, f peerFlags) error {
	tlsConf, err := quicpipe.ClientTLSConfig(benchKey("dialer"), pub(benchKey("accepter")), benchALPN)
	if err != nil {
		return err
	}
	to, err := net.ResolveUDPAddr("udp", f.to)
	if err != nil {
		return err
	}
	// Like Quicpipe's registered socket, the socket exists before the dial.
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	tr := f.quicTransport(conn)
	defer tr.Close()
	serveDials(ctx, func(ctx context.Context, n int64, r *dialResult) error {
		qc, err := tr.Dial(ctx, to, tlsConf, f.quicConfig())
		if err != nil {
			return err
		}
		defer qc.CloseWithError(0, "")
		return dialStream(ctx, qc, n, r)
	}, nil)
	return nil
}

// WebRTC: host candidates only (UDP4, one interface, no mDNS), certificates
// made in advance (as Quicpipe's identities are), offer and answer complete
// with their candidates (no trickle), through the signalling server.

func webrtcAPI(f peerFlags) *webrtc.API {
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if f.iface != "" {
		iface := f.iface
		se.SetInterfaceFilter(func(name string) bool { return name == iface })
	}
	if f.loopback {
		se.SetIncludeLoopbackCandidate(true)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se))
}

func webrtcConfig() (webrtc.Configuration, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return webrtc.Configuration{}, err
	}
	cert, err := webrtc.GenerateCertificate(k)
	if err != nil {
		return webrtc.Configuration{}, err
	}
	return webrtc.Configuration{Certificates: []webrtc.Certificate{*cert}}, nil
}

func webrtcAccept(ctx context.Context, f peerFlags) error {
	api := webrtcAPI(f)
	conf, err := webrtcConfig()
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 0}
	answer := func(offer webrtc.SessionDescription) (*webrtc.PeerConnection, webrtc.SessionDescription, error) {
		pc, err := api.NewPeerConnection(conf)
		if err != nil {
			return nil, webrtc.SessionDescription{}, err
		}
		pc.OnDataChannel(func(dc *webrtc.DataChannel) {
			var first int64
			var once sync.Once
			dc.OnMessage(func(m webrtc.DataChannelMessage) {
				once.Do(func() {
					first = monoNow()
					say("ev", streamEvent{Type: "first", T: first})
					say("ev", streamEvent{Type: "eof", T: first, First: first, Bytes: int64(len(m.Data))})
					dc.Send([]byte{1})
				})
			})
		})
		pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
			if s == webrtc.PeerConnectionStateClosed || s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateDisconnected {
				pc.Close()
			}
		})
		if err := pc.SetRemoteDescription(offer); err != nil {
			pc.Close()
			return nil, webrtc.SessionDescription{}, err
		}
		ans, err := pc.CreateAnswer(nil)
		if err != nil {
			pc.Close()
			return nil, webrtc.SessionDescription{}, err
		}
		gathered := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(ans); err != nil {
			pc.Close()
			return nil, webrtc.SessionDescription{}, err
		}
		<-gathered
		return pc, *pc.LocalDescription(), nil
	}
	go func() {
		for {
			// Wait (long poll) for the next offer.
			resp, err := client.Get(f.signal + "/offer")
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			var msg signalMsg
			err = json.NewDecoder(resp.Body).Decode(&msg)
			resp.Body.Close()
			if err != nil || msg.ID == "" {
				continue
			}
			pc, ans, err := answer(msg.SDP)
			if err != nil {
				say("ev", streamEvent{Type: "error: " + err.Error()})
				continue
			}
			body, _ := json.Marshal(signalMsg{ID: msg.ID, SDP: ans})
			r, err := client.Post(f.signal+"/answer", "application/json", bytes.NewReader(body))
			if err != nil {
				pc.Close()
				continue
			}
			r.Body.Close()
			go func() { // closed by the dialer; never outlive a minute
				time.Sleep(60 * time.Second)
				pc.Close()
			}()
		}
	}()
	serveNothing()
	return nil
}

func webrtcDial(ctx context.Context, f peerFlags) error {
	api := webrtcAPI(f)
	conf, err := webrtcConfig()
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 60 * time.Second}
	// The signalling connection exists before the dial, as the relay
	// registration does for Quicpipe.
	if r, err := client.Get(f.signal + "/ping"); err == nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	} else {
		return err
	}
	var seq atomic.Int64
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if _, err := parseN(a); err != nil || cmd != "dial" {
			return nil, fmt.Errorf("usage: dial BYTES")
		}
		var r dialResult
		r.T0 = monoNow()
		pc, err := api.NewPeerConnection(conf)
		if err != nil {
			return nil, err
		}
		defer pc.Close()
		dc, err := pc.CreateDataChannel("bench", nil)
		if err != nil {
			return nil, err
		}
		done := make(chan struct{})
		var once sync.Once
		dc.OnOpen(func() {
			r.TConn = monoNow()
			dc.Send([]byte{'x'})
		})
		dc.OnMessage(func(webrtc.DataChannelMessage) { once.Do(func() { close(done) }) })
		offer, err := pc.CreateOffer(nil)
		if err != nil {
			return nil, err
		}
		gathered := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(offer); err != nil {
			return nil, err
		}
		<-gathered
		body, _ := json.Marshal(signalMsg{ID: fmt.Sprint(seq.Add(1)), SDP: *pc.LocalDescription()})
		resp, err := client.Post(f.signal+"/offer", "application/json", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		var ans signalMsg
		err = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("answer: %w", err)
		}
		if err := pc.SetRemoteDescription(ans.SDP); err != nil {
			return nil, err
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			return nil, errors.New("data channel: no answer within 30s")
		}
		r.TDone = monoNow()
		return r, nil
	})
	return nil
}

// The signalling server: a dialer posts its offer and gets the answer in
// the response; the accepter holds a long poll for offers and posts answers.

type signalMsg struct {
	ID  string                    `json:"id"`
	SDP webrtc.SessionDescription `json:"sdp"`
}

func signalRole(args []string) error {
	fs := flag.NewFlagSet("signal", flag.ContinueOnError)
	listen := fs.String("listen", "", "TCP address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	offers := make(chan signalMsg, 16)
	var mu sync.Mutex
	answers := map[string]chan signalMsg{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("pong")) })
	mux.HandleFunc("POST /offer", func(w http.ResponseWriter, r *http.Request) {
		var m signalMsg
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		ch := make(chan signalMsg, 1)
		mu.Lock()
		answers[m.ID] = ch
		mu.Unlock()
		defer func() { mu.Lock(); delete(answers, m.ID); mu.Unlock() }()
		select {
		case offers <- m:
		case <-time.After(10 * time.Second):
			http.Error(w, "nobody listening", 503)
			return
		}
		select {
		case a := <-ch:
			json.NewEncoder(w).Encode(a)
		case <-time.After(30 * time.Second):
			http.Error(w, "no answer", 504)
		}
	})
	mux.HandleFunc("GET /offer", func(w http.ResponseWriter, r *http.Request) {
		select {
		case m := <-offers:
			json.NewEncoder(w).Encode(m)
		case <-time.After(30 * time.Second):
			json.NewEncoder(w).Encode(signalMsg{})
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("POST /answer", func(w http.ResponseWriter, r *http.Request) {
		var m signalMsg
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		ch := answers[m.ID]
		mu.Unlock()
		if ch != nil {
			ch <- m
		}
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	serveNothing()
	srv.Close()
	return nil
}

// quicTransport is the transport of a plain quic-go peer.
func (f peerFlags) quicTransport(conn *net.UDPConn) *quic.Transport {
	tr := &quic.Transport{Conn: conn}
	if f.qpParams {
		tr.ConnectionIDLength = quicpipe.CIDLen
	}
	return tr
}

// quicConfig is the configuration of a plain quic-go peer's connection.
func (f peerFlags) quicConfig() *quic.Config {
	return &quic.Config{DisablePathMTUDiscovery: f.qpParams}
}
