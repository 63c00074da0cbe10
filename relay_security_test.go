package quicpipe

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func TestTokenAuthorizer(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	a := &TokenAuthorizer{Secret: secret, Now: func() time.Time { return now }}
	good, err := NewToken(secret, "alice", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := NewToken(secret, "alice", now.Add(-time.Second))
	other, _ := NewToken([]byte("another secret, 32 bytes long..."), "alice", now.Add(time.Hour))
	tampered := strings.Replace(good, ".alice.", ".mallory.", 1)
	for _, tc := range []struct {
		name, header string
		ok           bool
	}{
		{"good", "Bearer " + good, true},
		{"missing", "", false},
		{"not bearer", "Basic " + good, false},
		{"expired", "Bearer " + expired, false},
		{"other secret", "Bearer " + other, false},
		{"tampered subject", "Bearer " + tampered, false},
		{"garbage", "Bearer qpt1.x.y", false},
		{"wrong prefix", "Bearer " + strings.Replace(good, "qpt1", "qpt2", 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "https://quicpipe/v1/register", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			err := a.Authorize(req, OpRegister)
			if (err == nil) != tc.ok {
				t.Fatalf("Authorize = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("error %v does not wrap ErrUnauthorized", err)
			}
		})
	}
	if _, err := NewToken([]byte("short"), "a", now); err == nil {
		t.Fatal("NewToken accepted a 5-byte secret")
	}
	if _, err := NewToken(secret, "a.b", now); err == nil {
		t.Fatal("NewToken accepted a subject with a dot")
	}
}

// TestRelayAuthorization runs peers against a relay that requires tokens.
func TestRelayAuthorization(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Authorizer: &TokenAuthorizer{Secret: secret}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := NewDialer(ctx, e.config(e.aID))
	var re *RelayError
	if !errors.As(err, &re) || re.Code != "unauthorized" || re.Status != http.StatusUnauthorized {
		t.Fatalf("NewDialer without a token = %v, want a 401 unauthorized RelayError", err)
	}
	cfg := e.config(e.aID)
	cfg.RelayToken, _ = NewToken(secret, "a", time.Now().Add(-time.Minute))
	if _, err := NewDialer(ctx, cfg); !errors.As(err, &re) || re.Code != "unauthorized" {
		t.Fatalf("NewDialer with an expired token = %v, want unauthorized", err)
	}
	cfg.RelayToken, _ = NewToken(secret, "a", time.Now().Add(time.Hour))
	d, err := NewDialer(ctx, cfg)
	if err != nil {
		t.Fatalf("NewDialer with a good token: %v", err)
	}
	d.Close()
	st := e.relay.Stats()
	if st.Rejected["unauthorized"] != 2 || st.Registered != 1 {
		t.Fatalf("stats: %d unauthorized, %d registered; want 2 and 1", st.Rejected["unauthorized"], st.Registered)
	}
}

func TestCheckTarget(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name          string
		target, local string
		allowPrivate  bool
		ok            bool
	}{
		{"public from public", "203.0.113.9:4000", "198.51.100.1:4433", false, true},
		{"public from loopback", "203.0.113.9:4000", "127.0.0.1:4433", false, true},
		{"loopback from loopback", "127.0.0.1:4000", "127.0.0.1:4433", false, true},
		{"ipv6 loopback from ipv6 loopback", "[::1]:4000", "[::1]:4433", false, true},
		{"loopback from public", "127.0.0.1:4000", "198.51.100.1:4433", false, false},
		{"loopback from public, allowed", "127.0.0.1:4000", "198.51.100.1:4433", true, true},
		{"private from private", "10.1.2.3:4000", "10.0.0.1:4433", false, true},
		{"private from public", "192.168.1.5:4000", "198.51.100.1:4433", false, false},
		{"cgnat from public", "100.64.1.1:4000", "198.51.100.1:4433", false, false},
		{"ula from public", "[fd00::5]:4000", "[2001:db8::1]:4433", false, false},
		{"link-local from public", "169.254.1.1:4000", "198.51.100.1:4433", false, false},
		{"multicast", "224.0.0.1:4000", "198.51.100.1:4433", true, false},
		{"broadcast", "255.255.255.255:4000", "198.51.100.1:4433", true, false},
		{"unspecified", "0.0.0.0:4000", "198.51.100.1:4433", true, false},
		{"this network", "0.1.2.3:4000", "198.51.100.1:4433", true, false},
		{"port zero", "203.0.113.9:0", "198.51.100.1:4433", false, false},
		{"the relay itself", "127.0.0.1:4433", "127.0.0.1:4433", true, false},
		{"the relay itself, mapped", "[::ffff:127.0.0.1]:4433", "127.0.0.1:4433", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkTarget(ap(tc.target), ap(tc.local), tc.allowPrivate)
			if (err == nil) != tc.ok {
				t.Fatalf("checkTarget(%s, %s) = %v, want ok=%v", tc.target, tc.local, err, tc.ok)
			}
		})
	}
}

// TestReflectionRefused tries to make the relay forward to itself and to a
// scope it does not serve; each attempt must be refused and counted.
func TestReflectionRefused(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	key := newCIDKey()
	for _, target := range []*net.UDPAddr{
		e.relay.udpAddr(),                          // itself
		{IP: net.IPv4(10, 0, 0, 1), Port: 53},      // private, relay on loopback
		{IP: net.IPv4(224, 0, 0, 251), Port: 5353}, // multicast
	} {
		if _, status, code, err := e.relay.register(key, 1, 8, target, nil); err == nil || code != "target" || status != http.StatusForbidden {
			t.Errorf("register towards %v = %d %s %v, want 403 target", target, status, code, err)
		}
	}
	if st := e.relay.Stats(); st.CIDs != 0 || st.Registrations != 0 {
		t.Fatalf("refused registrations left %d CIDs, %d registrations", st.CIDs, st.Registrations)
	}
}

// TestCIDTheft: another key cannot take over a peer's CIDs, whatever window
// it asks for, and the victim's pipe keeps working meanwhile.
func TestCIDTheft(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	dc, ac, d, _ := e.pipe(t, ctx, true)
	serveEcho(ctx, ac)
	victim, _ := DeriveCID(d.p.cfg.CIDKey, 1)
	before := e.relay.table.Lookup(victim[:])
	attacker := newAPIClient(t, e)
	for _, first := range []int64{0, 1, 2, 1000} {
		attacker.register(t, newCIDKey(), first, 64)
	}
	// A CID taken verbatim as a key registers that key's own CIDs, not the
	// victim's.
	stolen := append(append([]byte{}, victim[:]...), victim[:4]...)
	attacker.register(t, stolen, 0, 64)
	if got := e.relay.table.Lookup(victim[:]); got != before {
		t.Fatal("the victim's CID now maps to another registration")
	}
	if err := echo(ctx, dc, 256<<10, 3); err != nil {
		t.Fatalf("victim's pipe: %v", err)
	}
}

// TestForwardingFloodContained floods one registration beyond its packet
// rate: the excess is dropped and counted, and another pipe through the
// same relay loses nothing.
func TestForwardingFloodContained(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxPacketsPerSecond: 2000})
	dc, ac, _, _ := e.pipe(t, ctx, false)
	serveEcho(ctx, ac)

	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	key := newCIDKey()
	if _, _, _, err := e.relay.register(key, 1, 8, sink.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	cid, _ := DeriveCID(key, 1)
	flood := append([]byte{0x40}, append(cid[:], make([]byte, 1000)...)...)
	src, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// The flooder is a registered peer: the relay forwards only from the
	// addresses of live registrations.
	if _, _, _, err := e.relay.register(newCIDKey(), 1, 1, src.LocalAddr().(*net.UDPAddr), nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; i < 200000; i++ { // bounded
			select {
			case <-stop:
				return
			default:
			}
			src.WriteToUDP(flood, e.relay.udpAddr())
		}
	})
	err = echo(ctx, dc, 2<<20, 9)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("pipe during the flood: %v", err)
	}
	if st := e.relay.Stats(); st.Dropped["rate_limit"] == 0 {
		t.Fatalf("no rate_limit drops counted: %+v", st.Dropped)
	}
}

// TestRelayRestart restarts the relay on the same address in the middle of a
// pipe, after a clean shutdown (the relay closes its connections) and after a
// crash (its socket just goes away): the peers notice, register again, and
// the pipe resumes with no stream byte lost. After a crash, the peers learn
// it from the stateless reset the new relay sends for its predecessor's CIDs.
func TestRelayRestart(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "clean"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			relayID := GenerateIdentity()
			conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			r1, err := NewRelay(conn, &RelayConfig{Identity: relayID})
			if err != nil {
				t.Fatal(err)
			}
			addr := r1.LocalAddr().String()
			go r1.Serve(ctx)
			e := &testEnv{relay: r1, relayID: relayID, aID: GenerateIdentity(), bID: GenerateIdentity()}
			dc, ac, _, _ := e.pipe(t, ctx, false)
			serveEcho(ctx, ac)
			if err := echo(ctx, dc, 64<<10, 1); err != nil {
				t.Fatal(err)
			}
			if crash {
				conn.Close() // no CONNECTION_CLOSE reaches the peers
				defer r1.Close()
			} else {
				r1.Close()
				conn.Close()
			}
			r2, err := ListenRelay(addr, &RelayConfig{Identity: relayID})
			if err != nil {
				t.Fatal(err)
			}
			defer r2.Close()
			go r2.Serve(ctx)
			start := time.Now()
			for r2.Stats().Registrations < 2 {
				if time.Since(start) > 15*time.Second {
					t.Fatalf("peers did not re-register with the restarted relay: %+v", r2.Stats())
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("both peers re-registered %v after the restart", time.Since(start).Round(time.Millisecond))
			if crash && r2.Stats().Resets == 0 {
				t.Error("the restarted relay sent no stateless reset to the peers' old connections")
			}
			if err := echo(ctx, dc, 1<<20, 2); err != nil {
				t.Fatalf("pipe after the restart: %v", err)
			}
			t.Logf("pipe carried 1 MB again %v after the restart", time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestNATRebinding moves the dialer's public address in the middle of a
// transfer: the relay follows its migrated connection, and the pipe
// continues without losing a byte. The move reaches the relay's Replicator.
func TestNATRebinding(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	rep := &recordingReplicator{}
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Replicator: rep})
	nat := newImpairNAT(t, e.relay.udpAddr(), 0, 0)
	a, err := NewAccepter(ctx, e.config(e.bID, e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	dcfg := e.config(e.aID)
	dcfg.RelayAddr = nat.inside.LocalAddr().String() // the dialer is behind the NAT
	acc := make(chan *quic.Conn, 1)
	dc, err := Dial(ctx, dcfg, e.bID.Public().(ed25519.PublicKey), func(ctx context.Context, f *FirstFlight) error {
		go func() {
			c, err := a.Accept(ctx, f)
			if err != nil {
				t.Error(err)
			}
			acc <- c
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.CloseWithError(0, "")
	ac := <-acc
	if ac == nil {
		t.FailNow()
	}
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 256<<10, 4); err != nil {
		t.Fatal(err)
	}
	before := rep.targets()
	nat.rebindAll(t)
	start := time.Now()
	if err := echo(ctx, dc, 4<<20, 5); err != nil {
		t.Fatalf("pipe across the rebinding: %v", err)
	}
	t.Logf("transfer finished %v after the rebinding; relay rebinds=%d", time.Since(start).Round(time.Millisecond), e.relay.Stats().Rebinds)
	if e.relay.Stats().Rebinds == 0 {
		t.Fatal("the relay never moved the registration to the new address")
	}
	if after := rep.targets(); len(after) <= len(before) {
		t.Fatalf("replicated targets: %v before the rebinding, %v after; want a new one", before, after)
	}
}

// TestRelayShutdownDrains: during Shutdown new registrations are refused
// while an existing pipe keeps flowing.
func TestRelayShutdownDrains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	dc, ac, _, _ := e.pipe(t, ctx, false)
	serveEcho(ctx, ac)
	sctx, scancel := context.WithCancel(ctx)
	shut := make(chan error, 1)
	go func() { shut <- e.relay.Shutdown(sctx) }()
	time.Sleep(50 * time.Millisecond)
	_, err := NewDialer(ctx, e.config(GenerateIdentity()))
	var re *RelayError
	if !errors.As(err, &re) || re.Code != "closing" {
		t.Fatalf("NewDialer during the drain = %v, want a closing RelayError", err)
	}
	if err := echo(ctx, dc, 1<<20, 4); err != nil {
		t.Fatalf("pipe during the drain: %v", err)
	}
	scancel()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
}
