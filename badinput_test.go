package quicpipe

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestBadConfig: NewDialer and NewAccepter refuse a bad Config at once,
// before any network traffic, with a message naming the field.
func TestBadConfig(t *testing.T) {
	relayKey := GenerateIdentity().Public().(ed25519.PublicKey)
	good := func() *Config {
		return &Config{
			RelayAddr:    "127.0.0.1:4433",
			RelayKey:     relayKey,
			Identity:     GenerateIdentity(),
			TrustedPeers: []ed25519.PublicKey{GenerateIdentity().Public().(ed25519.PublicKey)},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
		is     error
	}{
		{"identity nil", func(c *Config) { c.Identity = nil }, "Config.Identity must be a 64-byte Ed25519 private key, got 0 bytes", nil},
		{"identity is a seed", func(c *Config) { c.Identity = c.Identity.Seed() }, "got 32 bytes", nil},
		{"relay key nil", func(c *Config) { c.RelayKey = nil }, "Config.RelayKey must be a 32-byte Ed25519 public key, got 0 bytes", nil},
		{"relay key 31 bytes", func(c *Config) { c.RelayKey = c.RelayKey[:31] }, "got 31 bytes", nil},
		{"relay key is a private key", func(c *Config) { c.RelayKey = ed25519.PublicKey(GenerateIdentity()) }, "got 64 bytes", nil},
		{"CID key 15 bytes", func(c *Config) { c.CIDKey = make([]byte, 15) }, "Config.CIDKey is 15 bytes", ErrCIDKeyLength},
		{"CID key 65 bytes", func(c *Config) { c.CIDKey = make([]byte, 65) }, "Config.CIDKey is 65 bytes", ErrCIDKeyLength},
		{"CID key empty", func(c *Config) { c.CIDKey = []byte{} }, "Config.CIDKey is 0 bytes", ErrCIDKeyLength},
		{"relay address missing", func(c *Config) { c.RelayAddr = "" }, "Config.RelayAddr is required", nil},
		{"relay address without port", func(c *Config) { c.RelayAddr = "127.0.0.1" }, `relay address "127.0.0.1"`, nil},
		{"relay address port 0", func(c *Config) { c.RelayAddr = "127.0.0.1:0" }, "needs a host and a port", nil},
		{"relay address without host", func(c *Config) { c.RelayAddr = ":4433" }, "needs a host and a port", nil},
		{"relay address bad port", func(c *Config) { c.RelayAddr = "127.0.0.1:http3" }, `relay address "127.0.0.1:http3"`, nil},
		{"registration window 4", func(c *Config) { c.RegistrationWindow = 4 }, "RegistrationWindow 4 is outside 8..4096", nil},
		{"QUIC config with GetConfigForClient", func(c *Config) {
			c.QUICConfig = &quic.Config{GetConfigForClient: func(*quic.ClientInfo) (*quic.Config, error) { return nil, nil }}
		}, "GetConfigForClient is not supported", nil},
		{"trusted peer wrong size", func(c *Config) { c.TrustedPeers = append(c.TrustedPeers, make([]byte, 16)) }, "Config.TrustedPeers[1] must be a 32-byte", nil},
	} {
		for _, side := range []string{"Dialer", "Accepter"} {
			t.Run(tc.name+"/"+side, func(t *testing.T) {
				cfg := good()
				tc.change(cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				start := time.Now()
				err := newPeerForTest(ctx, side, cfg)
				if err == nil {
					t.Fatalf("New%s: got success, want an error containing %q", side, tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("New%s: got %q, want it to contain %q", side, err, tc.want)
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("New%s: got errors.Is(%v) false, want true", side, tc.is)
				}
				if el := time.Since(start); el > time.Second {
					t.Errorf("New%s took %v, want an error at once", side, el)
				}
			})
		}
	}
	t.Run("nil config", func(t *testing.T) {
		for _, side := range []string{"Dialer", "Accepter"} {
			if err := newPeerForTest(context.Background(), side, nil); err == nil || !strings.Contains(err.Error(), "nil Config") {
				t.Errorf("New%s(nil): got %v, want an error about a nil Config", side, err)
			}
		}
	})
	t.Run("accepter without trusted peers", func(t *testing.T) {
		cfg := good()
		cfg.TrustedPeers = nil
		_, err := NewAccepter(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "TrustedPeers is required") {
			t.Errorf("NewAccepter: got %v, want an error saying TrustedPeers is required", err)
		}
	})
}

// newPeerForTest makes a Dialer or an Accepter, closes it if that worked,
// and returns the error.
func newPeerForTest(ctx context.Context, side string, cfg *Config) error {
	if side == "Dialer" {
		d, err := NewDialer(ctx, cfg)
		if err == nil {
			d.Close()
		}
		return err
	}
	a, err := NewAccepter(ctx, cfg)
	if err == nil {
		a.Close()
	}
	return err
}

// unusedUDPAddr returns a loopback UDP address nobody listens on.
func unusedUDPAddr(t testing.TB) string {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// TestBadRelay: a relay that does not answer and a relay whose key is not
// the pinned one fail NewDialer and NewAccepter within the relay timeout,
// with a *RelayConnError that names the relay, the time waited or both
// keys, and matches ErrRelayUnreachable or ErrRelayKeyMismatch.
func TestBadRelay(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	wrongKey := GenerateIdentity().Public().(ed25519.PublicKey)
	relayKey := e.config(e.aID, e.bID).RelayKey
	for _, tc := range []struct {
		name   string
		change func(*Config)
		reason error
		want   func(cfg *Config) []string // all in the message
		within time.Duration
	}{
		{
			name:   "unreachable",
			change: func(c *Config) { c.RelayAddr = unusedUDPAddr(t) },
			reason: ErrRelayUnreachable,
			want: func(c *Config) []string {
				return []string{"relay " + c.RelayAddr + " unreachable: no answer within 1s"}
			},
			within: 3 * time.Second,
		},
		{
			name:   "wrong pinned key",
			change: func(c *Config) { c.RelayKey = wrongKey },
			reason: ErrRelayKeyMismatch,
			want: func(*Config) []string {
				return []string{"relay " + e.relay.LocalAddr().String() + " presented the key " + EncodeKey(relayKey) + ", not the pinned relay key " + EncodeKey(wrongKey)}
			},
			within: 3 * time.Second,
		},
	} {
		for _, side := range []string{"Dialer", "Accepter"} {
			t.Run(tc.name+"/"+side, func(t *testing.T) {
				cfg := e.config(e.aID, e.bID)
				cfg.RelayTimeout = time.Second
				tc.change(cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				start := time.Now()
				err := newPeerForTest(ctx, side, cfg)
				el := time.Since(start)
				if err == nil {
					t.Fatalf("New%s: got success, want an error", side)
				}
				t.Logf("New%s after %v: %v", side, el.Round(time.Millisecond), err)
				if !errors.Is(err, tc.reason) {
					t.Errorf("New%s: %v does not match %v", side, err, tc.reason)
				}
				var ce *RelayConnError
				if !errors.As(err, &ce) || ce.Addr != cfg.RelayAddr {
					t.Errorf("New%s: %#v is not a *RelayConnError for %s", side, err, cfg.RelayAddr)
				} else if ce.Waited < 0 || ce.Waited > el {
					t.Errorf("New%s: Waited %v, outside the call's %v", side, ce.Waited, el)
				}
				for _, w := range tc.want(cfg) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("New%s: got %q, want it to contain %q", side, err, w)
					}
				}
				if el > tc.within {
					t.Errorf("New%s took %v, want at most %v", side, el, tc.within)
				}
			})
		}
	}
	if got := e.relay.Stats().Registrations; got != 0 {
		t.Errorf("relay registrations after failed peers: got %d, want 0", got)
	}
}

// TestRelayRefuses: a relay's refusal reaches the application as a
// *RelayError with the relay's code.
func TestRelayRefuses(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxRegistrationsPerSource: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d1, err := NewDialer(ctx, e.config(e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	for _, side := range []string{"Dialer", "Accepter"} {
		t.Run(side, func(t *testing.T) {
			err := newPeerForTest(ctx, side, e.config(e.bID, e.aID))
			var re *RelayError
			if !errors.As(err, &re) {
				t.Fatalf("New%s from the same IP: got %v, want a *RelayError", side, err)
			}
			if re.Code != "limit_source" || re.Status != http.StatusTooManyRequests {
				t.Errorf("RelayError: got %d %q, want 429 %q", re.Status, re.Code, "limit_source")
			}
			if !strings.Contains(err.Error(), "limit_source") || !strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("error: got %q, want it to name the code and the source", err)
			}
		})
	}
	if got := e.relay.Stats().Rejected["limit_source"]; got != 2 {
		t.Errorf("Rejected[limit_source]: got %d, want 2", got)
	}
	// Closing the first Dialer unregisters it, which makes room.
	d1.Close()
	if got := e.relay.Stats().Registrations; got != 0 {
		t.Fatalf("registrations after Close: got %d, want 0", got)
	}
	d2, err := NewDialer(ctx, e.config(e.bID))
	if err != nil {
		t.Fatalf("NewDialer after the first one closed: got %v, want success", err)
	}
	d2.Close()
}

// TestUntrustedPeer: the handshake fails when the accepter does not trust
// the dialer or the dialer pins another key than the accepter's, and both
// Dial and Accept say so before returning.
//
// In TLS 1.3 the client's handshake is complete once it has sent its
// Finished, before the server has judged its certificate: Dial must wait
// for the accepter's confirmation, or an untrusted dialer would be handed a
// connection that the accepter closes right after.
func TestUntrustedPeer(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	stranger := GenerateIdentity()
	for _, tc := range []struct {
		name       string
		trusted    ed25519.PrivateKey // the key the accepter trusts
		pinned     ed25519.PublicKey  // the key the dialer pins
		dialIs     error              // the error Dial's must wrap, if any
		dialWant   string
		acceptWant string
	}{
		{
			name:       "accepter does not trust the dialer",
			trusted:    stranger,
			pinned:     e.bID.Public().(ed25519.PublicKey),
			dialIs:     ErrKeyRefused,
			dialWant:   "the accepter refused this dialer's key",
			acceptWant: "peer key is not trusted: ",
		},
		{
			name:       "dialer pins another key",
			trusted:    e.aID,
			pinned:     stranger.Public().(ed25519.PublicKey),
			dialWant:   "handshake with the accepter: CRYPTO_ERROR",
			acceptWant: "handshake failed: CRYPTO_ERROR",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d, a := newEndpoints(t, ctx, e.config(e.bID, tc.trusted), e.config(e.aID))
			start := time.Now()
			res := runDial(t, ctx, d, a, tc.pinned, nil, 0)
			t.Logf("after %v: Dial: %v; Accept: %v", time.Since(start).Round(time.Millisecond), res.dialErr, res.acceptEr)
			if res.acceptEr == nil {
				res.accepted.CloseWithError(0, "")
				t.Errorf("Accept: got a connection, want an error")
			} else if !strings.Contains(res.acceptEr.Error(), tc.acceptWant) {
				t.Errorf("Accept: got %q, want it to contain %q", res.acceptEr, tc.acceptWant)
			}
			switch {
			case res.dialErr == nil:
				res.dialed.CloseWithError(0, "")
				t.Errorf("Dial: got a connection, want an error containing %q", tc.dialWant)
			case !strings.Contains(res.dialErr.Error(), tc.dialWant):
				t.Errorf("Dial: got %q, want it to contain %q", res.dialErr, tc.dialWant)
			case tc.dialIs != nil && !errors.Is(res.dialErr, tc.dialIs):
				t.Errorf("Dial: got %q, want an error wrapping %q", res.dialErr, tc.dialIs)
			case tc.dialIs == nil && errors.Is(res.dialErr, ErrKeyRefused):
				t.Errorf("Dial: got %q, which wraps ErrKeyRefused", res.dialErr)
			}
			if ctx.Err() != nil {
				t.Errorf("deadline reached, want a prompt handshake failure")
			}
		})
	}
}

// TestBadRelayCanceled: a caller that gives up on an unreachable relay
// gets its context's error, not ErrRelayUnreachable; a caller's deadline
// shorter than RelayTimeout is the time waited.
func TestBadRelayCanceled(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	cfg := e.config(e.aID)
	cfg.RelayAddr = unusedUDPAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := NewDialer(ctx, cfg)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrRelayUnreachable) {
		t.Errorf("canceled NewDialer: %v, want context.Canceled and not ErrRelayUnreachable", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = NewDialer(ctx, cfg)
	var ce *RelayConnError
	if !errors.Is(err, ErrRelayUnreachable) || !errors.As(err, &ce) || ce.Waited > time.Second {
		t.Errorf("NewDialer with a 300ms deadline: %v, want ErrRelayUnreachable after about 300ms", err)
	}
}
