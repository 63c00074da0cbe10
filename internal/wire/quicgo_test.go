package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// captureFirstFlight lets quic-go dial a UDP socket that never answers and
// returns the datagrams the socket received within wait, waiting longer, up
// to a few seconds, until at least atLeast datagrams have arrived.
func captureFirstFlight(tb testing.TB, wait time.Duration, atLeast int) [][]byte {
	tb.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	var (
		mu        sync.Mutex
		datagrams [][]byte
	)
	enough := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 1<<16)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			datagrams = append(datagrams, bytes.Clone(buf[:n]))
			if len(datagrams) == atLeast {
				close(enough)
			}
			mu.Unlock()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	dialDone := make(chan struct{})
	go func() {
		defer close(dialDone)
		tlsConf := &tls.Config{
			NextProtos:         []string{"quicpipe-test"},
			ServerName:         "x",
			InsecureSkipVerify: true, // the handshake never completes
		}
		quicConf := &quic.Config{HandshakeIdleTimeout: 2 * time.Second}
		if c, err := quic.DialAddr(ctx, conn.LocalAddr().String(), tlsConf, quicConf); err == nil {
			c.CloseWithError(0, "")
		}
	}()

	time.Sleep(wait)
	select {
	case <-enough:
	case <-time.After(3 * time.Second):
	}
	cancel()
	<-dialDone
	conn.Close()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	return datagrams
}

// TestQuicGoFirstFlight inspects a first flight sent by quic-go right now.
func TestQuicGoFirstFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping network test in short mode")
	}
	all := captureFirstFlight(t, 300*time.Millisecond, 2)
	if len(all) < 2 {
		t.Fatalf("received %d datagrams, want at least 2", len(all))
	}
	dcid, err := DestCID(all[0])
	if err != nil {
		t.Fatalf("DestCID: %v", err)
	}
	// Keep the datagrams of the first connection attempt.
	var ds [][]byte
	for _, d := range all {
		if c, err := DestCID(d); err == nil && bytes.Equal(c, dcid) {
			ds = append(ds, d)
		}
	}
	t.Logf("%d datagrams, sizes %v", len(ds), sizes(ds))
	checkFirstFlight(t, ds)
}

// TestRecordedFirstFlight inspects a first flight recorded from quic-go.
func TestRecordedFirstFlight(t *testing.T) {
	checkFirstFlight(t, recordedFlight(t))
}

func sizes(ds [][]byte) []int {
	var s []int
	for _, d := range ds {
		s = append(s, len(d))
	}
	return s
}

// checkFirstFlight checks the inspection of a quic-go client's first flight
// with an X25519MLKEM768 key share, whose ClientHello spans two datagrams.
func checkFirstFlight(t *testing.T, ds [][]byte) {
	t.Helper()
	want := []string{"quicpipe-test"}
	hdr, err := ParseLongHeader(ds[0])
	if err != nil {
		t.Fatalf("ParseLongHeader: %v", err)
	}

	info, err := InspectClientInitials(ds[:1])
	if err != nil {
		t.Fatalf("InspectClientInitials(first datagram): %v", err)
	}
	if info.Complete {
		t.Errorf("first datagram: Complete = true, want false (X25519MLKEM768 ClientHello should not fit)")
	}
	if !slices.Equal(info.ALPN, want) {
		t.Errorf("first datagram: ALPN = %q, want %q", info.ALPN, want)
	}

	info, err = InspectClientInitials(ds[:2])
	if err != nil {
		t.Fatalf("InspectClientInitials(two datagrams): %v", err)
	}
	if !info.Complete {
		t.Errorf("two datagrams: Complete = false, want true")
	}
	if !slices.Equal(info.ALPN, want) {
		t.Errorf("two datagrams: ALPN = %q, want %q", info.ALPN, want)
	}
	if !bytes.Equal(info.ODCID, hdr.DCID) || !bytes.Equal(info.SCID, hdr.SCID) {
		t.Errorf("connection IDs = %x, %x, want %x, %x", info.ODCID, info.SCID, hdr.DCID, hdr.SCID)
	}
	if info.Datagrams != 2 {
		t.Errorf("Datagrams = %d, want 2", info.Datagrams)
	}

	// Order and retransmissions do not matter.
	info, err = InspectClientInitials([][]byte{ds[1], ds[0], ds[1]})
	if err != nil {
		t.Fatalf("InspectClientInitials(reordered): %v", err)
	}
	if !info.Complete || !slices.Equal(info.ALPN, want) || info.Datagrams != 3 {
		t.Errorf("reordered: got %+v, want complete with ALPN %q from 3 datagrams", info, want)
	}
	if len(ds) > 2 {
		info, err = InspectClientInitials(ds)
		if err != nil {
			t.Fatalf("InspectClientInitials(all %d datagrams): %v", len(ds), err)
		}
		if !info.Complete || !slices.Equal(info.ALPN, want) {
			t.Errorf("all datagrams: got %+v, want complete with ALPN %q", info, want)
		}
	}
}
