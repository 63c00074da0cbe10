package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// testEnv is a relay on loopback with one dialer and one accepter identity.
type testEnv struct {
	relay             *Relay
	relayID, aID, bID ed25519.PrivateKey
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("QUICPIPE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

func newTestEnv(t testing.TB, listen string, rcfg *RelayConfig) *testEnv {
	t.Helper()
	e := &testEnv{relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()}
	var cfg RelayConfig
	if rcfg != nil {
		cfg = *rcfg
	}
	cfg.Identity = e.relayID
	cfg.Logger = testLogger(t)
	r, err := ListenRelay(listen, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.relay = r
	serveRelay(t, r, nil)
	return e
}

func (e *testEnv) config(id ed25519.PrivateKey, trusted ...ed25519.PrivateKey) *Config {
	c := &Config{
		RelayAddr: e.relay.LocalAddr().String(),
		RelayKey:  e.relayID.Public().(ed25519.PublicKey),
		Identity:  id,
		// These tests exercise the relay; direct_test.go turns direct
		// paths back on.
		DisableDirect: true,
	}
	for _, k := range trusted {
		c.TrustedPeers = append(c.TrustedPeers, k.Public().(ed25519.PublicKey))
	}
	return c
}

// pipe dials from a new Dialer to a new Accepter through the relay, carrying
// the first flight through its binary or JSON form.
func (e *testEnv) pipe(t testing.TB, ctx context.Context, binary bool) (dialed, accepted *quic.Conn, d *Dialer, a *Accepter) {
	t.Helper()
	d, a = e.endpoints(t, ctx)
	dialed, accepted = dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), func(f *FirstFlight) (*FirstFlight, error) {
		var b []byte
		var err error
		if binary {
			b, err = f.MarshalBinary()
		} else {
			b, err = f.MarshalJSON()
		}
		if err != nil {
			return nil, err
		}
		return ParseFirstFlight(b)
	}, 0)
	return dialed, accepted, d, a
}

func TestEndToEndEcho(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
		binary       bool
	}{
		{"ipv4-json", "127.0.0.1:0", false},
		{"ipv4-binary", "127.0.0.1:0", true},
		{"ipv6-json", "[::1]:0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newTestEnv(t, tc.listen, nil)
			dc, ac, _, _ := e.pipe(t, ctx, tc.binary)
			const size = 10 << 20
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			want := sha256.Sum256(payload)

			var wg sync.WaitGroup
			wg.Go(func() { // accepter: echo one stream
				s, err := ac.AcceptStream(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := io.Copy(s, s); err != nil {
					t.Error(err)
				}
				s.Close()
			})
			s, err := dc.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				s.Write(payload)
				s.Close()
			}()
			h := sha256.New()
			n, err := io.Copy(h, s)
			if err != nil {
				t.Fatal(err)
			}
			if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("echo: got %d bytes, sha256 mismatch=%v", n, !bytes.Equal(h.Sum(nil), want[:]))
			}
			wg.Wait()
			st := e.relay.Stats()
			if st.Forwarded < size/1500 {
				t.Errorf("relay forwarded only %d datagrams", st.Forwarded)
			}
			t.Logf("relay stats: %+v", st)
		})
	}
}
