package quicpipe

import (
	"context"
	"crypto/ed25519"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// countingReader is an endless request body that counts what was read.
type countingReader struct{ n atomic.Int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	r.n.Add(int64(len(p)))
	return len(p), nil
}

// TestRelayReceiveWindow checks that a client cannot make the relay buffer
// more than its small receive window of a request body nobody reads (here
// the embedding service's handler, which never reads it): quic-go's default
// window would let it push half a megabyte per stream.
func TestRelayReceiveWindow(t *testing.T) {
	_, relayID, _ := ed25519.GenerateKey(nil)
	reached := make(chan struct{}, 1)
	release := make(chan struct{})
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{
		Identity: relayID,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			reached <- struct{}{}
			<-release
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, r, nil)
	defer close(release)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := newAPIClientOn(t, relayID.Public().(ed25519.PublicKey), r.udpAddr(), udp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body := &countingReader{}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://relay/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	go c.rt.RoundTrip(req)
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the request did not reach the handler")
	}
	// Wait until the client is blocked by flow control: the count stops.
	last := int64(-1)
	for n := body.n.Load(); n != last; n = body.n.Load() {
		last = n
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	// The client's copy buffers hold a little more than the window.
	if max := int64(relayStreamWindow + 64<<10); last > max {
		t.Errorf("the client wrote %d bytes of a body nobody reads, want at most %d", last, max)
	}
	t.Logf("%d bytes written before flow control stopped the client", last)
}
