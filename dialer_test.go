package quicpipe

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestClosedErrClosed checks that Dial on a closed Dialer, a Dial that Close
// cuts short and Accept on a closed Accepter fail with an error that
// errors.Is matches to ErrClosed.
func TestClosedErrClosed(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, a := e.endpoints(t, ctx)
	peer := pub(e.bID)

	// Closed while the first flight is being delivered.
	_, err := d.Dial(ctx, peer, func(context.Context, *FirstFlight) error {
		d.Close()
		return nil
	})
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Dial cut short by Close: %v, want ErrClosed", err)
	}
	_, err = d.Dial(ctx, peer, func(context.Context, *FirstFlight) error {
		t.Error("a closed Dialer delivered a first flight")
		return nil
	})
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Dial after Close: %v, want ErrClosed", err)
	}

	a.Close()
	if _, err := a.Accept(ctx, recordedFlight(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Accept after Close: %v, want ErrClosed", err)
	}
}
