//go:build linux

package quicpipe

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// TestMeasureIdleWake measures, in the NAT lab (10 ms each way on each NAT's
// uplink: a relay round trip of 20 ms from either peer), a dial through
// the mailbox of an awake listener, and what a listener that held no
// connection to the relay must do before its mailbox can take a flight:
// connect, register and open the mailbox (docs/decisions/0029-idle-peers.md).
//
//	QUICPIPE_MEASURE_IDLE=1 go test -run '^TestMeasureIdleWake$' -v .
func TestMeasureIdleWake(t *testing.T) {
	if os.Getenv(measureIdleEnv) != "1" {
		t.Skip("set " + measureIdleEnv + "=1 to measure")
	}
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	const (
		rounds   = 7
		relayRTT = 2 * 10 * time.Millisecond // natUplink, both ways
	)
	l := newDialLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := l.dialer(t, ctx, l.aID)

	a := l.echoAccepterWith(t, ctx, -1, pub(l.aID)) // awake throughout
	var dials []time.Duration
	for range rounds {
		start := time.Now()
		qc, err := d.DialMailbox(ctx, pub(l.bID))
		if err != nil {
			t.Fatal(err)
		}
		dials = append(dials, time.Since(start))
		qc.CloseWithError(0, "")
	}
	a.Close()

	var wakes []time.Duration
	for range rounds {
		start := time.Now()
		a, err := NewAccepter(ctx, l.config(t, l.peerB, l.bID, pub(l.aID)))
		if err != nil {
			t.Fatal(err)
		}
		err = a.OpenMailbox(ctx)
		took := time.Since(start)
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		wakes = append(wakes, took)
	}
	// A sleeping listener: each dial wakes it with the flight; it falls
	// asleep again between dials.
	a = l.echoAccepterWith(t, ctx, 100*time.Millisecond, pub(l.aID))
	var sleeping []time.Duration
	for range rounds {
		waitAsleep(t, l.relay, a, 1)
		start := time.Now()
		qc, err := d.DialMailbox(ctx, pub(l.bID))
		if err != nil {
			t.Fatal(err)
		}
		sleeping = append(sleeping, time.Since(start))
		qc.CloseWithError(0, "")
	}
	a.Close()
	if s := l.relay.SleepStats(); s.Wakes < rounds {
		t.Fatalf("relay counts %d wakes, want %d", s.Wakes, rounds)
	}

	med := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	dm, wm, sm := med(dials), med(wakes), med(sleeping)
	t.Logf("relay round trip %v: a dial through an awake listener's mailbox %v (%.1f round trips, median of %d)",
		relayRTT, dm.Round(time.Millisecond), float64(dm)/float64(relayRTT), rounds)
	t.Logf("connect, register and open the mailbox: %v (%.1f relay round trips, median of %d); a wake datagram adds half a round trip",
		wm.Round(time.Millisecond), float64(wm)/float64(relayRTT), rounds)
	t.Logf("a dial through a sleeping listener's mailbox (woken by the flight): %v (%.1f round trips, median of %d): %+.1f round trips against an awake one",
		sm.Round(time.Millisecond), float64(sm)/float64(relayRTT), rounds, float64(sm-dm)/float64(relayRTT))
	t.Logf("all: awake %v, sleeping %v", dials, sleeping)
}
