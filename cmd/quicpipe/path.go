package main

import (
	"fmt"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
)

// pathReporter returns a Config.OnPathChange that tells the user, in one
// line on standard error, each time the pipe moves between the relay and a
// direct path, and when the relay is the path for a new reason (a search
// for a direct path ended without one). Every line goes through e.notice, the one place to silence.
func pathReporter(e *env) func(*quic.Conn, quicpipe.PathInfo) {
	return func(_ *quic.Conn, p quicpipe.PathInfo) {
		e.notice(pathLine(p))
	}
}

// pathLine describes path p for a person.
func pathLine(p quicpipe.PathInfo) string {
	if p.Kind == quicpipe.PathDirect {
		if p.Via != "" {
			return fmt.Sprintf("direct to %s (%v, %s)", p.Remote, roundRTT(p.RTT), p.Via)
		}
		return fmt.Sprintf("direct to %s (%v)", p.Remote, roundRTT(p.RTT))
	}
	if p.Reason != "" {
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
