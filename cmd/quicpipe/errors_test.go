package main

import (
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRelayErrors: a relay process warns that its API is open naming
// -token-secret-file (not the library's Go API); listen with a wrong
// -relay-key says the relay's key does not match, naming both keys; listen
// with a relay that does not answer says it is unreachable, with its
// address and the time waited.
func TestRelayErrors(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	relay, raddr, rkey := startRelayProc(t, "relay", dir, "127.0.0.1:0")
	relay.match(t, &relay.stderr, regexp.MustCompile(`(the relay API is open.*-token-secret-file)`), 10*time.Second)
	if strings.Contains(relay.stderr.String(), "RelayConfig.Authorizer") {
		t.Errorf("the relay's warning names the library's API:\n%s", relay.stderr.String())
	}

	const wrongKey = "09Y2fFgYxhg-D9ibrqDzbUG5723pL-GrqGc06wdJpJ4"
	l := start(t, "listen", procOpts{home: dir}, "listen", "-relay", raddr, "-relay-key", wrongKey)
	l.expectExit(t, 30*time.Second, 1)
	want := "the relay at " + raddr + " presented the key " + rkey + ", not the -relay-key " + wrongKey
	if !strings.Contains(l.stderr.String(), want) || strings.Contains(l.stderr.String(), "CRYPTO_ERROR") {
		t.Errorf("listen with a wrong -relay-key: want %q, got:\n%s", want, l.stderr.String())
	}

	relay.interrupt(t)
	relay.expectExit(t, 10*time.Second, 0)
	dead := start(t, "listen", procOpts{home: dir}, "listen", "-relay", raddr, "-relay-key", rkey)
	dead.expectExit(t, 30*time.Second, 1)
	// The time waited, to 100 ms: 10s, or a little more on a loaded machine.
	wantRE := regexp.MustCompile(`relay ` + regexp.QuoteMeta(raddr) + ` \(-relay\) unreachable: no answer within 10(\.[0-9])?s`)
	if !wantRE.MatchString(dead.stderr.String()) {
		t.Errorf("listen with a dead relay: want %q, got:\n%s", wantRE, dead.stderr.String())
	}
}

// TestTCPTargetDown: "listen -tcp" whose service is down resets the
// dialer's stream; connect resets the local TCP connection (the client sees
// a reset, not an empty reply) and says why.
func TestTCPTargetDown(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	l := start(t, "listen", procOpts{home: dir}, "listen", "-tcp", down)
	c := start(t, "connect", procOpts{home: dir}, "connect", "-tcp-listen", "127.0.0.1:0", l.ticket(t))
	local := c.match(t, &c.stderr, regexp.MustCompile(`forwarding tcp (\S+) to the listener\n`), 30*time.Second)
	tc, err := net.DialTimeout("tcp", local, 5*time.Second)
	if err == nil {
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = io.ReadAll(tc)
	}
	// The reset may come before the dial returns: the kernel has completed
	// the handshake, and connect resets the connection as soon as the
	// listener answers, which can be sooner than the dialer is scheduled.
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the TCP client read %v, want a connection reset", err)
	}
	c.match(t, &c.stderr, regexp.MustCompile(`(the listener could not reach its TCP service)`), 10*time.Second)
}

// TestRelayRestart: just after its relay restarts (killed, down 3 s, back
// on the same address and key), a running listener takes a few seconds to
// reopen its mailbox; connect, started at once, waits for it instead of
// saying that nobody listens.
func TestRelayRestart(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	relay, raddr, rkey := startRelayProc(t, "relay", dir, "127.0.0.1:0")
	l := start(t, "listen", procOpts{home: dir}, "listen", "-relay", raddr, "-relay-key", rkey)
	ticket := l.ticket(t)
	relay.cmd.Process.Kill()
	<-relay.done
	time.Sleep(3 * time.Second)
	startRelayProc(t, "relay again", dir, raddr)
	c := start(t, "connect", procOpts{home: dir}, "connect", ticket)
	io.WriteString(c.stdin, "after the restart\n")
	c.stdin.Close()
	l.stdin.Close()
	c.expectExit(t, 30*time.Second, 0)
	l.expectExit(t, 10*time.Second, 0)
	if got := l.stdout.String(); got != "after the restart\n" {
		t.Errorf("listen's stdout %q", got)
	}
}
