package quicpipe

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestPathReason checks that a search for a direct path that ends without
// one is reported once through OnPathChange, with PathInfo.Reason saying
// why, and that retries failing alike are not reported again.
func TestPathReason(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := dialOneSideDisabled(t, ctx)
	info, err := p.dw.wait(ctx, func(p PathInfo) bool { return p.Kind == PathRelayed && p.Reason != "" })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.Reason, "did not take part") || info.Remote != info.Relay {
		t.Errorf("path %+v: want relayed because the other side did not take part", info)
	}
	for p.d.DirectStats().PunchAttempts < 3 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	p.dw.mu.Lock()
	n := len(p.dw.events)
	p.dw.mu.Unlock()
	if n != 1 {
		t.Errorf("%d path changes after %d rounds failing alike, want 1", n, p.d.DirectStats().PunchAttempts)
	}
	if got, _ := p.d.Path(p.dc); got.Reason != info.Reason {
		t.Errorf("Dialer.Path reason %q, want %q", got.Reason, info.Reason)
	}
}
