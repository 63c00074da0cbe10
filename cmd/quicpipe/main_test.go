package main

// These tests build the quicpipe command and run it as real processes over
// loopback: listen and connect through the in-process relay and through a
// separate relay process, piping data both ways, forwarding TCP, and
// stopping with SIGINT.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.RemoveAll()
	os.Exit(code)
}

// binary builds the command once and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the tests use SIGINT")
	}
	dir, err := testbin.Build("github.com/quicpipe/quicpipe/cmd/quicpipe")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "quicpipe")
}

// proc is a running quicpipe process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser // set when the process reads a pipe
	stdout syncBuffer     // unless stdout went to a file
	stderr syncBuffer
	done   chan struct{}
	err    error
}

// procTimeout bounds the life of every process a test starts.
const procTimeout = 4 * time.Minute

// procOpts say where a process reads and writes.
type procOpts struct {
	home   string   // XDG_CONFIG_HOME and HOME (identity files)
	stdin  *os.File // nil: a pipe, in proc.stdin
	stdout *os.File // nil: proc.stdout
	stderr *os.File // nil: proc.stderr
}

// start runs the command; the test kills it at the end if still running.
func start(t *testing.T, name string, o procOpts, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	// No process outlives procTimeout, even if the test forgets it.
	ctx, cancel := context.WithTimeout(context.Background(), procTimeout)
	t.Cleanup(cancel)
	p.cmd = exec.CommandContext(ctx, binary(t), args...)
	p.cmd.Env = append(testbin.Env("XDG_CONFIG_HOME=", "HOME="), "XDG_CONFIG_HOME="+o.home, "HOME="+o.home)
	if o.stdin != nil {
		p.cmd.Stdin = o.stdin
	} else {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.stdin = w
	}
	if o.stdout != nil {
		p.cmd.Stdout = o.stdout
	} else {
		p.cmd.Stdout = &p.stdout
	}
	if o.stderr != nil {
		p.cmd.Stderr = o.stderr
	} else {
		p.cmd.Stderr = &p.stderr
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			out := p.stdout.String()
			if len(out) > 2000 {
				out = out[:2000] + "..."
			}
			t.Logf("%s %q: exit: %v\nstdout:\n%s\nstderr:\n%s", name, args, p.err, out, p.stderr.String())
		}
	})
	return p
}

// wait waits for the process to exit (killing it after timeout) and
// returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %v", p.name, timeout)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.name, p.err)
	return -1
}

// expectExit waits for the process and checks its exit code.
func (p *proc) expectExit(t *testing.T, timeout time.Duration, want int) {
	t.Helper()
	if got := p.wait(t, timeout); got != want {
		t.Fatalf("%s exited with %d, want %d\nstderr:\n%s", p.name, got, want, p.stderr.String())
	}
}

func (p *proc) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
}

// match waits until the process's stderr (or stdout) matches re and returns
// the first submatch.
func (p *proc) match(t *testing.T, buf *syncBuffer, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(buf.String()); m != nil {
			return m[1]
		}
		select {
		case <-p.done:
			if m := re.FindStringSubmatch(buf.String()); m != nil {
				return m[1]
			}
			t.Fatalf("%s exited (%v) before printing %s", p.name, p.err, re)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %s within %v", p.name, re, timeout)
		}
	}
}

// startRelayProc starts a relay process listening on listen with dir as
// its home, and returns it with the address and key it printed.
func startRelayProc(t *testing.T, name, dir, listen string, args ...string) (p *proc, addr, key string) {
	t.Helper()
	p = start(t, name, procOpts{home: dir}, append([]string{"relay", "-listen", listen}, args...)...)
	addr = p.match(t, &p.stdout, regexp.MustCompile(`relay listening on (\S+)\n`), 30*time.Second)
	key = p.match(t, &p.stdout, regexp.MustCompile(`relay key (\S+)\n`), 30*time.Second)
	return p, addr, key
}

var ticketRE = regexp.MustCompile(`quicpipe connect (?:-\S+ \S+ )*(qp1[a-z2-7]+)\n`)

func (p *proc) ticket(t *testing.T) string {
	t.Helper()
	return p.match(t, &p.stderr, ticketRE, 30*time.Second)
}

// syncBuffer holds a process's output while the test reads it.
type syncBuffer = testbin.Buffer

// randomFile writes n random bytes to a new file and returns it (at offset
// 0) with their SHA-256.
func randomFile(t *testing.T, dir, name string, n int64) (*os.File, [32]byte) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f, [32]byte(h.Sum(nil))
}

func fileHash(t *testing.T, path string) ([32]byte, int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b), int64(len(b))
}

func createFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestPipeBothWays: listen and connect, through the mailbox of the relay
// inside listen, pipe 10 MB each way; each side's stdout must be the other's
// stdin, and both must exit 0 once both inputs have ended.
func TestPipeBothWays(t *testing.T) {
	binary(t)
	const size = 10 << 20
	dir := t.TempDir()
	lin, lsum := randomFile(t, dir, "listen.in", size)
	cin, csum := randomFile(t, dir, "connect.in", size)
	lout, cout := createFile(t, filepath.Join(dir, "listen.out")), createFile(t, filepath.Join(dir, "connect.out"))
	begin := time.Now()
	l := start(t, "listen", procOpts{home: filepath.Join(dir, "l"), stdin: lin, stdout: lout}, "listen")
	ticket := l.ticket(t)
	c := start(t, "connect", procOpts{home: filepath.Join(dir, "c"), stdin: cin, stdout: cout}, "connect", ticket)
	c.expectExit(t, 120*time.Second, 0)
	l.expectExit(t, 10*time.Second, 0)
	t.Logf("10 MB each way in %v", time.Since(begin).Round(time.Millisecond))
	if got, n := fileHash(t, lout.Name()); got != csum {
		t.Errorf("listen's stdout: %d bytes, SHA-256 %x; want connect's stdin (%x)", n, got, csum)
	}
	if got, n := fileHash(t, cout.Name()); got != lsum {
		t.Errorf("connect's stdout: %d bytes, SHA-256 %x; want listen's stdin (%x)", n, got, lsum)
	}
	if !strings.Contains(c.stderr.String(), "quicpipe: connected to ") || !strings.Contains(l.stderr.String(), "quicpipe: connected to ") {
		t.Error("a side did not say it connected")
	}
	// The ticket carried a secret: connect needed no identity file.
	if _, err := os.Stat(filepath.Join(dir, "c", "quicpipe", "identity.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("connect created an identity file: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "l", "quicpipe", "identity.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("listen's identity file: %v", err)
	}
}

// TestInterrupt: Ctrl-C on either side of a chat (stdin left open) ends
// the session on both, and neither calls it complete: the interrupted side
// exits 130, the other exits 1 saying that the other side was interrupted.
func TestInterrupt(t *testing.T) {
	binary(t)
	for _, side := range []string{"connect", "listen"} {
		t.Run(side, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l := start(t, "listen", procOpts{home: dir}, "listen")
			c := start(t, "connect", procOpts{home: dir}, "connect", l.ticket(t))
			// Data flows both ways before the interrupt; stdin stays open.
			io.WriteString(c.stdin, "from connect\n")
			io.WriteString(l.stdin, "from listen\n")
			l.match(t, &l.stdout, regexp.MustCompile(`(from connect)\n`), 30*time.Second)
			c.match(t, &c.stdout, regexp.MustCompile(`(from listen)\n`), 30*time.Second)
			if side == "connect" {
				// The listener serves one session: another dial with the
				// ticket is refused at once.
				again := start(t, "second connect", procOpts{home: dir}, "connect", l.ticket(t))
				again.stdin.Close()
				again.expectExit(t, 30*time.Second, 1)
				if !strings.Contains(again.stderr.String(), "the listener is already connected to another peer") {
					t.Errorf("second connect: %s", again.stderr.String())
				}
			}
			stopped, other := c, l
			if side == "listen" {
				stopped, other = l, c
			}
			stopped.interrupt(t)
			stopped.expectExit(t, 10*time.Second, 130)
			other.expectExit(t, 10*time.Second, 1)
			if !strings.Contains(other.stderr.String(), "the other side was interrupted") {
				t.Errorf("%s did not say the other side was interrupted:\n%s", other.name, other.stderr.String())
			}
		})
	}
	t.Run("idle-listen", func(t *testing.T) {
		t.Parallel()
		l := start(t, "listen", procOpts{home: t.TempDir()}, "listen")
		l.ticket(t)
		l.interrupt(t)
		l.expectExit(t, 10*time.Second, 130)
	})
}

// TestTCPForwarding: a relay process, "listen -tcp" in front of a local TCP
// service that speaks first, and "connect -tcp-listen": several TCP
// connections at once, each a stream, with half-close both ways.
func TestTCPForwarding(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	svc := startBannerEcho(t)

	relay, raddr, rkey := startRelayProc(t, "relay", dir, "127.0.0.1:0")
	if fi, err := os.Stat(filepath.Join(dir, "quicpipe", "relay.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("relay identity file: %v", err)
	}

	l := start(t, "listen", procOpts{home: dir}, "listen", "-relay", raddr, "-relay-key", rkey, "-tcp", svc)
	ticket := l.ticket(t)
	c := start(t, "connect", procOpts{home: dir}, "connect", "-tcp-listen", "127.0.0.1:0", ticket)
	local := c.match(t, &c.stderr, regexp.MustCompile(`forwarding tcp (\S+) to the listener\n`), 30*time.Second)

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if err := echoThrough(local, 64<<10*(i+1)); err != nil {
				t.Errorf("TCP connection %d: %v", i, err)
			}
		})
	}
	wg.Wait()

	c.interrupt(t)
	c.expectExit(t, 10*time.Second, 0)
	l.match(t, &l.stderr, regexp.MustCompile(`quicpipe: (\S+) disconnected\n`), 10*time.Second)
	l.interrupt(t)
	l.expectExit(t, 10*time.Second, 0)
	relay.interrupt(t)
	relay.expectExit(t, 10*time.Second, 0)
}

// startBannerEcho starts a TCP service that greets first, then echoes until
// the client's end of input, then closes.
func startBannerEcho(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				io.WriteString(c, "hello\n")
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// echoThrough connects to addr, expects the banner, sends n random bytes,
// half-closes and expects them back followed by the end of the stream.
func echoThrough(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil || banner != "hello\n" {
		return fmt.Errorf("banner %q: %v", banner, err)
	}
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo: got %d bytes, want the %d sent", len(got), n)
	}
	return nil
}

// TestAllowList: with -allow, the ticket has no secret, only the allowed
// key connects, and a listener that took its one connection refuses more.
func TestAllowList(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	key := start(t, "key", procOpts{home: dir}, "key", "-identity", filepath.Join(dir, "dialer.key"))
	key.expectExit(t, 30*time.Second, 0)
	allowed := strings.TrimSpace(key.stdout.String())
	if len(allowed) != 43 {
		t.Fatalf("quicpipe key printed %q", allowed)
	}

	l := start(t, "listen", procOpts{home: dir}, "listen", "-allow", allowed)
	ticket := l.ticket(t)

	stranger := start(t, "connect", procOpts{home: dir}, "connect", "-identity", filepath.Join(dir, "other.key"), ticket)
	stranger.stdin.Close()
	stranger.expectExit(t, 30*time.Second, 1)

	c := start(t, "connect", procOpts{home: dir}, "connect", "-identity", filepath.Join(dir, "dialer.key"), ticket)
	io.WriteString(c.stdin, "allowed\n")
	c.stdin.Close()
	l.stdin.Close()
	c.expectExit(t, 30*time.Second, 0)
	l.expectExit(t, 10*time.Second, 0)
	if got := l.stdout.String(); got != "allowed\n" {
		t.Errorf("listen's stdout %q", got)
	}
	if !strings.Contains(c.stderr.String(), "dialing as "+allowed) {
		t.Errorf("connect did not say which key it dials as:\n%s", c.stderr.String())
	}
}

// TestUsage: exit status 2 for usage errors, 1 for other errors, with clear
// messages; nothing on stdout.
func TestUsage(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	insecure := filepath.Join(dir, "insecure.key")
	k := start(t, "key", procOpts{home: dir}, "key", "-identity", insecure)
	k.expectExit(t, 30*time.Second, 0)
	if err := os.Chmod(insecure, 0o644); err != nil {
		t.Fatal(err)
	}
	good := ticketRE.FindStringSubmatch("quicpipe connect qp1aeaqcaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7ibaueq2eivdeoscjjjfuytkoj5iadqaaaiarcunrcwbp2\n")[1]
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no-command", nil, 2, "usage: quicpipe <command>"},
		{"unknown-command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"help", []string{"-h"}, 0, "usage: quicpipe <command>"},
		{"listen-help", []string{"listen", "-h"}, 0, "-tcp address"},
		{"bad-flag", []string{"listen", "-bogus"}, 2, "flag provided but not defined: -bogus"},
		{"relay-without-key", []string{"listen", "-relay", "127.0.0.1:1"}, 2, "-relay needs the relay's key"},
		{"bad-relay-key", []string{"listen", "-relay", "127.0.0.1:1", "-relay-key", "xyz"}, 2, "bad public key"},
		{"connect-no-ticket", []string{"connect"}, 2, "need exactly one ticket"},
		{"connect-two-tickets", []string{"connect", good, good}, 2, "need exactly one ticket"},
		{"bad-ticket", []string{"connect", good[:50] + "a" + good[51:]}, 1, "quicpipe connect: bad ticket: checksum mismatch"},
		{"relay-without-port", []string{"listen", "-relay", "127.0.0.1", "-relay-key", "09Y2fFgYxhg-D9ibrqDzbUG5723pL-GrqGc06wdJpJ4"}, 2, "-relay 127.0.0.1 has no port: give host:port"},
		{"not-a-ticket", []string{"connect", "hello"}, 1, `bad ticket: a ticket starts with "qp1"`},
		{"insecure-identity", []string{"key", "-identity", insecure}, 1, "chmod 600 " + insecure},
		{"relay-args", []string{"relay", "extra"}, 2, "unexpected arguments"},
		{"relay-fleet-unreachable", []string{"relay", "-listen", "127.0.0.1:0", "-fleet", "nats://127.0.0.1:1"}, 1, "cannot connect to NATS at nats://127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, "quicpipe", procOpts{home: dir}, tc.args...)
			p.stdin.Close()
			p.expectExit(t, 30*time.Second, tc.code)
			if !strings.Contains(p.stderr.String(), tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, p.stderr.String())
			}
			if out := p.stdout.String(); out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			// One prefix per message; a usage error is the error and a
			// hint to -h, not the whole usage burying it.
			if strings.Contains(p.stderr.String(), ": quicpipe: ") {
				t.Errorf("doubled prefix:\n%s", p.stderr.String())
			}
			if tc.code == 2 && len(tc.args) > 0 && tc.name != "unknown-command" && (strings.Contains(p.stderr.String(), "flags:") || !strings.Contains(p.stderr.String(), "-h\" for its usage")) {
				t.Errorf("usage error prints the usage, or no hint to -h:\n%s", p.stderr.String())
			}
		})
	}
}

// TestRelayTokenSecretFile: the relay refuses a token secret file that
// others may read, and a secret too short to sign with; it starts with a
// private one.
func TestRelayTokenSecretFile(t *testing.T) {
	binary(t)
	dir := t.TempDir()
	secret := []byte("0123456789abcdef0123456789abcdef\n")
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	identity := filepath.Join(dir, "relay.key")
	for _, tc := range []struct {
		name, file, want string
	}{
		{"world-readable", write("world", secret, 0o644), "readable or writable by others (mode 0644); make it private with chmod 600"},
		{"group-readable", write("group", secret, 0o640), "readable or writable by others (mode 0640)"},
		{"empty", write("empty", nil, 0o600), "is 0 bytes; it must be at least 16"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, "relay", procOpts{home: dir}, "relay", "-listen", "127.0.0.1:0", "-identity", identity, "-token-secret-file", tc.file)
			p.expectExit(t, 30*time.Second, 1)
			if !strings.Contains(p.stderr.String(), tc.want) {
				t.Errorf("stderr %q does not say %q", p.stderr.String(), tc.want)
			}
			if strings.Contains(p.stdout.String(), "relay listening") {
				t.Errorf("the relay started: %q", p.stdout.String())
			}
		})
	}
	p := start(t, "relay", procOpts{home: dir}, "relay", "-listen", "127.0.0.1:0", "-identity", identity, "-token-secret-file", write("private", secret, 0o600))
	p.match(t, &p.stdout, regexp.MustCompile(`(relay listening on \S+)`), 30*time.Second)
	p.interrupt(t)
	p.expectExit(t, 10*time.Second, 0)
}
