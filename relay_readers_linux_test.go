package quicpipe

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestRelayReaders runs a relay with two forwarding readers on its port:
// peers whose flows the kernel hashes to either socket register over HTTP/3
// and carry pipes through the relay, intact, until both readers have
// forwarded.
func TestRelayReaders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Readers: 2})
	r := e.relay
	if len(r.readers) != 1 {
		t.Fatalf("%d extra readers, want 1", len(r.readers))
	}
	payload := make([]byte, 256<<10)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	pipes := 0
	for ; pipes < 12 && (pipes < 2 || r.rconn.Datagrams() == 0 || r.readers[0].Datagrams() == 0); pipes++ {
		dc, ac, _, _ := e.pipe(t, ctx, true)
		go func() {
			s, err := ac.AcceptStream(ctx)
			if err != nil {
				return
			}
			io.Copy(s, s)
			s.Close()
		}()
		s, err := dc.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			s.Write(payload)
			s.Close()
		}()
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatalf("pipe %d: %v", pipes, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("pipe %d: echoed %d bytes, not the %d sent", pipes, len(got), len(payload))
		}
	}
	main, extra := r.rconn.Datagrams(), r.readers[0].Datagrams()
	t.Logf("%d pipes; the relay's socket read %d datagrams, the extra reader's %d; %+v", pipes, main, extra, r.Stats())
	if main == 0 || extra == 0 {
		t.Fatalf("after %d pipes, the relay's socket read %d datagrams and the extra reader's %d: want both some", pipes, main, extra)
	}
	if st := r.Stats(); st.Forwarded == 0 {
		t.Fatal("the relay forwarded nothing")
	}
}

// TestRelayReadersConfig checks the number of readers a relay opens.
func TestRelayReadersConfig(t *testing.T) {
	for _, tc := range []struct {
		readers, want int
	}{{1, 0}, {3, 2}} {
		e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Readers: tc.readers})
		if got := len(e.relay.readers); got != tc.want {
			t.Errorf("Readers %d: %d extra readers, want %d", tc.readers, got, tc.want)
		}
	}
	// A caller's socket without SO_REUSEPORT: one reader by default, an
	// error if more were asked for.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := NewRelay(conn, &RelayConfig{Identity: GenerateIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.readers) != 0 {
		t.Errorf("%d extra readers on a socket without SO_REUSEPORT, want 0", len(r.readers))
	}
	r.Close()
	if _, err := NewRelay(conn, &RelayConfig{Identity: GenerateIdentity(), Readers: 2}); err == nil {
		t.Error("NewRelay with Readers 2 on a socket without SO_REUSEPORT succeeded")
	}
	if _, err := NewRelay(conn, &RelayConfig{Identity: GenerateIdentity(), Readers: -1}); err == nil {
		t.Error("NewRelay with Readers -1 succeeded")
	}
}
