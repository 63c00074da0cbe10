package main

// How a stdin/stdout session ends when it does not end in order: a sender
// stopped by a signal or killed, and a second dialer racing for a listener
// that serves one session. Each side must tell the truth in its exit status
// and say what happened (docs/PROTOCOL.md, "The quicpipe command").

import (
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// feed writes n random bytes to w in 64 KiB chunks, one every 20 ms (about
// 3 MiB/s, so that a 12 MiB input takes seconds), and leaves w open: the
// input never ends by itself. It stops at the first write error (the
// process exited).
func feed(w io.Writer, n int) {
	chunk := make([]byte, 64<<10)
	for sent := 0; sent < n; sent += len(chunk) {
		rand.Read(chunk)
		if _, err := w.Write(chunk); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fileSize returns the size of the file at path, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitSize waits until the file at path holds at least n bytes.
func waitSize(t *testing.T, p *proc, path string, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for fileSize(path) < n {
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) with %d bytes in %s, before %d", p.name, p.err, fileSize(path), path, n)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d bytes in %s after %v, want %d", p.name, fileSize(path), path, timeout, n)
		}
	}
}

const slowInput = 12 << 20

// startTransfer starts listen (its stdout in a file, its stdin a pipe left
// open) and connect (its stdin fed slowly with slowInput bytes, never
// ending), and waits until 1 MiB has arrived at the listener.
func startTransfer(t *testing.T) (l, c *proc, out string) {
	t.Helper()
	dir := t.TempDir()
	out = filepath.Join(dir, "listen.out")
	l = start(t, "listen", procOpts{home: filepath.Join(dir, "l"), stdout: createFile(t, out)}, "listen")
	c = start(t, "connect", procOpts{home: filepath.Join(dir, "c")}, "connect", l.ticket(t))
	go feed(c.stdin, slowInput)
	waitSize(t, l, out, 1<<20, 30*time.Second)
	return l, c, out
}

// TestInterruptedSender: SIGINT or SIGTERM on connect in the middle of a
// transfer is not the end of its input. Connect exits with 128+signal, and
// closes the connection with the "interrupted" code; the listener, which
// holds only part of the input, exits 1 and says the other side was
// interrupted.
func TestInterruptedSender(t *testing.T) {
	binary(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		code int
	}{
		{"SIGINT", syscall.SIGINT, 130},
		{"SIGTERM", syscall.SIGTERM, 143},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, c, out := startTransfer(t)
			if err := c.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			c.expectExit(t, 10*time.Second, tc.code)
			l.expectExit(t, 10*time.Second, 1)
			n := fileSize(out)
			t.Logf("listener got %d of %d bytes; its stderr: %s", n, slowInput, lastLine(l.stderr.String()))
			if n >= slowInput {
				t.Errorf("the listener got all %d bytes: the signal did not land mid-transfer", n)
			}
			if !strings.Contains(l.stderr.String(), "the other side was interrupted") {
				t.Errorf("the listener did not say the other side was interrupted:\n%s", l.stderr.String())
			}
		})
	}
}

// TestVanishedPeer: a side killed with SIGKILL in the middle of a transfer
// (no close at all) makes the other side exit 1 within seconds, saying that
// the other side stopped answering. The bound is the test's, not a
// performance claim: the command's idle timeout is peerIdleTimeout.
func TestVanishedPeer(t *testing.T) {
	binary(t)
	for _, killed := range []string{"connect", "listen"} {
		t.Run(killed+"-killed", func(t *testing.T) {
			l, c, out := startTransfer(t)
			victim, other := c, l
			if killed == "listen" {
				victim, other = l, c
			}
			if err := victim.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			begin := time.Now()
			other.expectExit(t, 15*time.Second, 1)
			t.Logf("%s noticed after %v (listener got %d of %d bytes): %s",
				other.name, time.Since(begin).Round(10*time.Millisecond), fileSize(out), slowInput,
				lastLine(other.stderr.String()))
			if !strings.Contains(other.stderr.String(), "the other side stopped answering") {
				t.Errorf("%s did not say the other side stopped answering:\n%s", other.name, other.stderr.String())
			}
		})
	}
}

// TestConcurrentConnects: two dialers race for a listener's one session.
// The listener serves the first; the other is refused with the "busy" code
// before any data and exits 1 saying so, without ever saying it connected.
// The winner's session is unaffected. Repeated, as the race falls either
// way.
func TestConcurrentConnects(t *testing.T) {
	binary(t)
	for i := range 5 {
		dir := t.TempDir()
		l := start(t, "listen", procOpts{home: filepath.Join(dir, "l")}, "listen")
		ticket := l.ticket(t)
		var cs [2]*proc
		for j := range cs {
			cs[j] = start(t, "connect", procOpts{home: filepath.Join(dir, "c")}, "connect", ticket)
			io.WriteString(cs[j].stdin, "from dialer "+string(rune('A'+j))+"\n")
			cs[j].stdin.Close()
		}
		// The winner cannot end before the listener's input does: the
		// first to exit must be the loser.
		var loser, winner *proc
		select {
		case <-cs[0].done:
			loser, winner = cs[0], cs[1]
		case <-cs[1].done:
			loser, winner = cs[1], cs[0]
		case <-time.After(40 * time.Second):
			t.Fatalf("round %d: neither dialer exited within 40 s", i)
		}
		code := loser.wait(t, time.Second)
		t.Logf("round %d: loser exit %d: %s", i, code, lastLine(loser.stderr.String()))
		if code != 1 || !strings.Contains(loser.stderr.String(), "the listener is already connected to another peer") {
			t.Fatalf("round %d: the losing dialer exited with %d, want 1 and the message:\n%s", i, code, loser.stderr.String())
		}
		if strings.Contains(loser.stderr.String(), "quicpipe: connected to ") {
			t.Fatalf("round %d: the losing dialer said it connected:\n%s", i, loser.stderr.String())
		}
		l.stdin.Close()
		winner.expectExit(t, 30*time.Second, 0)
		l.expectExit(t, 10*time.Second, 0)
		want := "from dialer A\n"
		if winner == cs[1] {
			want = "from dialer B\n"
		}
		if got := l.stdout.String(); got != want {
			t.Fatalf("round %d: listener's stdout %q, want the winner's input %q", i, got, want)
		}
		winner.match(t, &winner.stderr, regexp.MustCompile(`(quicpipe: connected to )`), time.Second)
	}
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
