package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestUntrustedDialer: a dialer whose key the listener does not allow is
// told so by connect itself, which exits 1 without ever saying it
// connected; the listener warns about the refused dial (shown without -v)
// and keeps waiting for an allowed one.
func TestUntrustedDialer(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	key := start(t, "key", procOpts{home: dir}, "key", "-identity", filepath.Join(dir, "dialer.key"))
	key.expectExit(t, 30*time.Second, 0)
	allowed := strings.TrimSpace(key.stdout.String())

	l := start(t, "listen", procOpts{home: dir}, "listen", "-allow", allowed)
	ticket := l.ticket(t)

	c := start(t, "connect", procOpts{home: dir}, "connect", "-identity", filepath.Join(dir, "other.key"), ticket)
	c.expectExit(t, 30*time.Second, 1)
	stderr := c.stderr.String()
	if strings.Contains(stderr, "connected to") {
		t.Errorf("the refused dialer was told it connected:\n%s", stderr)
	}
	if !strings.Contains(stderr, "the listener refused this side's key") {
		t.Errorf("connect's stderr does not say the listener refused its key:\n%s", stderr)
	}
	l.match(t, &l.stderr, regexp.MustCompile(`(level=WARN msg="mailbox: a dial failed")`), 10*time.Second)
	select {
	case <-l.done:
		t.Fatalf("listen exited (%v) after refusing a dialer", l.err)
	default:
	}
}
