package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

// pathReporter returns a Config.OnPathChange that tells the user, in one
// line on standard error, each time the pipe moves between the relay and a
// direct path, and when the relay is the path for a new reason (a search
// for a direct path ended without one). Every line goes through e.notice, the one place to silence.
//
// A relayed line also gives this network's verdict on direct paths, as
// quicpipe doctor does: at the first path change the relay's probe ports
// (the two after relay's) are asked how this host's NAT maps, in the
// background; a relayed line waits for the answer at most verdictWait, and
// leaves the verdict out if there is none.
func pathReporter(ctx context.Context, e *env, relay string) func(*quic.Conn, quicpipe.PathInfo) {
	var once sync.Once
	done := make(chan struct{})
	var verdict string
	return func(_ *quic.Conn, p quicpipe.PathInfo) {
		once.Do(func() {
			go func() {
				defer close(done)
				verdict = networkVerdict(ctx, relay)
			}()
		})
		v := ""
		if p.Kind == quicpipe.PathRelayed && p.Reason != "" {
			select {
			case <-done:
				v = verdict
			case <-time.After(verdictWait):
			}
		}
		e.notice(pathLine(p, v))
	}
}

// verdictWait bounds how long a relayed line waits for the verdict.
const verdictWait = 2 * time.Second

// networkVerdict probes the relay's probe ports and returns the doctor's
// verdict, or "" if it tells nothing (no probe port answered, or the relay
// is on loopback).
func networkVerdict(ctx context.Context, relay string) string {
	ap, err := netip.ParseAddrPort(relay)
	if err == nil && ap.Addr().IsLoopback() {
		return ""
	}
	probes, err := probeAddrs("", relay)
	if err != nil {
		return ""
	}
	rep, err := probeNetwork(ctx, relay, probes, time.Second)
	if err != nil || rep.mapping() == mappingUnknown {
		return ""
	}
	rep.udp = true // the pipe reached the relay
	return rep.verdict()
}

// pathLine describes path p for a person; verdict, if not empty, is this
// network's verdict on direct paths, given for a relayed path.
func pathLine(p quicpipe.PathInfo, verdict string) string {
	if p.Kind == quicpipe.PathDirect {
		if p.Via != "" {
			return fmt.Sprintf("direct to %s (%v, %s)", p.Remote, roundRTT(p.RTT), p.Via)
		}
		return fmt.Sprintf("direct to %s (%v)", p.Remote, roundRTT(p.RTT))
	}
	if p.Reason != "" {
		if verdict != "" {
			return fmt.Sprintf("relayed via %s (no direct path: %s; this network: %s)", p.Relay, p.Reason, verdict)
		}
		return fmt.Sprintf("relayed via %s (no direct path: %s)", p.Relay, p.Reason)
	}
	return fmt.Sprintf("relayed via %s", p.Relay)
}

// notice prints one informational line on standard error.
func (e *env) notice(line string) {
	fmt.Fprintf(e.stderr, "quicpipe: %s\n", line)
}

// roundRTT keeps two or three significant digits of a round-trip time.
func roundRTT(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
