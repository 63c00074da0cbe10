// Package pipetest connects a Dialer to an Accepter through relays and
// checks a stream echo over the pipe, for the tests of packages outside the
// root package (the root package's own tests have helpers_test.go).
package pipetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/quicpipe/quicpipe"
)

// Pipe makes an Accepter from acfg and dials it from a Dialer made from
// dcfg, handing the first flight over in memory. acfg must trust dcfg's
// identity. Both endpoints and connections close when the test ends; Pipe
// fails the test unless both sides connect.
func Pipe(t testing.TB, ctx context.Context, dcfg, acfg *quicpipe.Config) (dialed, accepted *quic.Conn) {
	t.Helper()
	a, err := quicpipe.NewAccepter(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	d, err := quicpipe.NewDialer(ctx, dcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	type result struct {
		c   *quic.Conn
		err error
	}
	acc := make(chan result, 1)
	dc, err := d.Dial(ctx, acfg.Identity.Public().(ed25519.PublicKey), func(ctx context.Context, f *quicpipe.FirstFlight) error {
		go func() {
			c, err := a.Accept(ctx, f)
			acc <- result{c, err}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.CloseWithError(0, "") })
	r := <-acc
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { r.c.CloseWithError(0, "") })
	return dc, r.c
}

// Echo has accepted echo one stream and sends size random bytes over it
// from dialed; it fails the test unless the same bytes (SHA-256) come back.
func Echo(t testing.TB, ctx context.Context, dialed, accepted *quic.Conn, size int) {
	t.Helper()
	go func() {
		s, err := accepted.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	data := make([]byte, size)
	rand.Read(data)
	s, err := dialed.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		s.Write(data)
		s.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("echo after %d of %d bytes: %v", len(got), size, err)
	}
	if want, sum := sha256.Sum256(data), sha256.Sum256(got); !bytes.Equal(sum[:], want[:]) {
		t.Fatalf("echo of %d bytes: got %d bytes, SHA-256 differs", size, len(got))
	}
}
