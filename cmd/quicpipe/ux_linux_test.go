package main

// The command as a person and a script use it (issue 13, decision 0017):
// transfers that end by themselves although a side's standard input is a
// terminal, progress only for transfers and at the real rate, and the
// flags scripts need. Terminals are pseudo-terminals opened here.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quicpipe/quicpipe/internal/testbin"
)

// pty is a pseudo-terminal: the test holds the master side, a process gets
// the slave as one of its standard streams.
type pty struct {
	master, slave *os.File
	out           syncBuffer // what the process wrote to the terminal
}

// openPTY opens a pseudo-terminal and copies what is written to it into
// its out buffer.
func openPTY(t *testing.T) *pty {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	var n uint32
	rc, err := m.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			if err = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); err == nil {
				n, err = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
			}
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		m.Close()
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	p := &pty{master: m, slave: s}
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(&p.out, m)
	}()
	t.Cleanup(func() {
		s.Close()
		m.Close()
		<-done
	})
	return p
}

// TestTransferEndsByItself: a file sent to a side whose standard input is
// a terminal ends the session when the sender's input ends, with exit 0 on
// both sides and every byte delivered, whichever side sends; -recv does
// without a terminal. A terminal that has sent something holds the session
// open until Ctrl-D.
func TestTransferEndsByItself(t *testing.T) {
	binary(t)
	const size = 8 << 20
	// The receiving side's stdin is a terminal that sends nothing; -recv
	// sends nothing whatever stdin is. Without -recv, connect learns that
	// the listener's input ended from the listener's notice.
	for _, tc := range []struct {
		name       string
		listenRecv bool // the listener receives; else connect does
		recvFlag   []string
	}{
		{name: "listen-receives", listenRecv: true},
		{name: "connect-recv", recvFlag: []string{"-recv"}},
		{name: "connect-receives"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			term := openPTY(t)
			in, sum := randomFile(t, dir, "in", size)
			out := createFile(t, filepath.Join(dir, "out"))
			sender := procOpts{home: dir, stdin: in}
			receiver := procOpts{home: dir, stdin: term.slave, stdout: out}
			lo, co := sender, receiver
			if tc.listenRecv {
				lo, co = receiver, sender
			}
			l := start(t, "listen", lo, "listen")
			c := start(t, "connect", co, append(append([]string{"connect"}, tc.recvFlag...), l.ticket(t))...)
			c.expectExit(t, 30*time.Second, 0)
			l.expectExit(t, 10*time.Second, 0)
			if got, n := fileHash(t, out.Name()); got != sum {
				t.Errorf("the receiver's stdout: %d bytes, not the sender's %d", n, size)
			}
		})
	}
	t.Run("typed-holds", func(t *testing.T) {
		dir := t.TempDir()
		term := openPTY(t)
		l := start(t, "listen", procOpts{home: dir, stdin: term.slave}, "listen")
		c := start(t, "connect", procOpts{home: dir}, "connect", l.ticket(t))
		c.match(t, &c.stderr, regexp.MustCompile(`(connected to)`), 30*time.Second)
		io.WriteString(term.master, "typed\n")
		c.match(t, &c.stdout, regexp.MustCompile(`(typed)\n`), 10*time.Second)
		io.WriteString(c.stdin, "sent\n")
		c.stdin.Close()
		l.match(t, &l.stdout, regexp.MustCompile(`(sent)\n`), 10*time.Second)
		select {
		case <-l.done:
			t.Fatalf("the listener ended although its terminal had sent something:\n%s", l.stderr.String())
		case <-time.After(2 * time.Second):
		}
		io.WriteString(term.master, "\x04") // Ctrl-D
		c.expectExit(t, 10*time.Second, 0)
		l.expectExit(t, 10*time.Second, 0)
	})
}

// TestProgressOnlyForTransfers: a chat (standard input and output
// terminals) shows no progress on the terminal of its standard error, even
// when it lasts past the progress delay; a transfer ends with a summary
// whose rate is the transfer's, not one decayed while the session waited
// for the other side (before the fix: 0 B/s after a 4 s wait).
func TestProgressOnlyForTransfers(t *testing.T) {
	binary(t)
	t.Run("chat", func(t *testing.T) {
		dir := t.TempDir()
		chat, errTerm := openPTY(t), openPTY(t)
		l := start(t, "listen", procOpts{home: dir}, "listen")
		c := start(t, "connect", procOpts{home: dir, stdin: chat.slave, stdout: chat.slave, stderr: errTerm.slave}, "connect", l.ticket(t))
		for i := range 10 {
			fmt.Fprintf(l.stdin, "line %d\n", i)
			time.Sleep(500 * time.Millisecond)
		}
		io.WriteString(chat.master, "bye\n")
		l.match(t, &l.stdout, regexp.MustCompile(`(bye)\n`), 10*time.Second)
		l.stdin.Close()
		io.WriteString(chat.master, "\x04")
		c.expectExit(t, 10*time.Second, 0)
		l.expectExit(t, 10*time.Second, 0)
		time.Sleep(100 * time.Millisecond) // the copy from the terminal
		if s := errTerm.out.String(); strings.Contains(s, "quicpipe: sent") {
			t.Errorf("a chat showed progress:\n%q", s)
		}
		if s := chat.out.String(); !strings.Contains(s, "line 9") || strings.Contains(s, "quicpipe:") {
			t.Errorf("the chat's terminal shows:\n%q", s)
		}
	})
	t.Run("transfer-rate", func(t *testing.T) {
		const size = 48 << 20
		dir := t.TempDir()
		errTerm := openPTY(t)
		in, _ := randomFile(t, dir, "in", size)
		outPath := filepath.Join(dir, "out")
		l := start(t, "listen", procOpts{home: dir, stdout: createFile(t, outPath)}, "listen")
		ticket := l.ticket(t)
		begin := time.Now()
		c := start(t, "connect", procOpts{home: dir, stdin: in, stderr: errTerm.slave}, "connect", ticket)
		waitSize(t, l, outPath, size, 60*time.Second)
		elapsed := time.Since(begin)
		time.Sleep(4 * time.Second) // the listener's input is still open
		l.stdin.Close()
		c.expectExit(t, 10*time.Second, 0)
		l.expectExit(t, 10*time.Second, 0)
		time.Sleep(100 * time.Millisecond)
		m := regexp.MustCompile(`sent [\d.]+ \S+ (?:in \S+ )?\(([\d.]+) (B|KiB|MiB|GiB)/s\)`).FindAllStringSubmatch(errTerm.out.String(), -1)
		if m == nil {
			t.Fatalf("connect showed no rate:\n%q", errTerm.out.String())
		}
		last := m[len(m)-1]
		v, _ := strconv.ParseFloat(last[1], 64)
		shown := v * map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[last[2]]
		// The whole run, start-up included, is a lower bound of the
		// transfer's rate.
		floor := size / elapsed.Seconds()
		t.Logf("shown %s %s/s; %d bytes in %v from the start (%.1f MiB/s)", last[1], last[2], size, elapsed.Round(time.Millisecond), floor/(1<<20))
		if shown < floor {
			t.Errorf("the summary shows %s %s/s, below the %.1f MiB/s of the whole run", last[1], last[2], floor/(1<<20))
		}
	})
}

// TestScriptable: version, -q with the ticket on standard output (not the
// data stream with -tcp) and in -ticket-file, listen -timeout, JSON logs,
// and the command line printed for the other side.
func TestScriptable(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	for _, arg := range []string{"version", "--version"} {
		p := start(t, "version", procOpts{home: dir}, arg)
		p.expectExit(t, 30*time.Second, 0)
		if out := p.stdout.String(); !regexp.MustCompile(`^quicpipe \S+.* go1\.\S+\n$`).MatchString(out) {
			t.Errorf("%s printed %q", arg, out)
		}
	}

	t.Run("quiet-tcp-timeout", func(t *testing.T) {
		tf := filepath.Join(dir, "ticket")
		if err := os.WriteFile(tf, []byte("stale\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		l := start(t, "listen", procOpts{home: dir}, "listen", "-q", "-tcp", "127.0.0.1:1", "-ticket-file", tf, "-timeout", "2s")
		ticket := l.match(t, &l.stdout, regexp.MustCompile(`^(qp1[a-z2-7]+)\n$`), 30*time.Second)
		if b, err := os.ReadFile(tf); err != nil || string(b) != ticket+"\n" {
			t.Errorf("ticket file %q (%v), want %q", b, err, ticket)
		}
		if fi, err := os.Stat(tf); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("ticket file mode: %v %v", fi, err)
		}
		l.expectExit(t, 30*time.Second, 1)
		took := time.Since(begin)
		if _, err := os.Stat(tf); !os.IsNotExist(err) {
			t.Errorf("the ticket file outlived the listener: %v", err)
		}
		if got, want := l.stderr.String(), "quicpipe listen: no dialer connected within 2s (-timeout)\n"; got != want {
			t.Errorf("stderr %q, want only %q", got, want)
		}
		if took > 15*time.Second {
			t.Errorf("gave up after %v", took)
		}
	})

	t.Run("quiet-json-session", func(t *testing.T) {
		tf := filepath.Join(dir, "ticket2")
		l := start(t, "listen", procOpts{home: dir}, "listen", "-q", "-ticket-file", tf)
		var ticket []byte
		for deadline := time.Now().Add(30 * time.Second); len(ticket) == 0; time.Sleep(20 * time.Millisecond) {
			// The file appears whole or not at all.
			if time.Now().After(deadline) {
				t.Fatal("no ticket file")
			}
			ticket, _ = os.ReadFile(tf)
		}
		c := start(t, "connect", procOpts{home: dir}, "connect", "-log-json", "-v", strings.TrimSpace(string(ticket)))
		io.WriteString(c.stdin, "to listen\n")
		io.WriteString(l.stdin, "to connect\n")
		c.stdin.Close()
		l.stdin.Close()
		c.expectExit(t, 30*time.Second, 0)
		l.expectExit(t, 10*time.Second, 0)
		if l.stdout.String() != "to listen\n" || c.stdout.String() != "to connect\n" {
			t.Errorf("stdout: listen %q, connect %q", l.stdout.String(), c.stdout.String())
		}
		if s := l.stderr.String(); s != "" {
			t.Errorf("listen -q wrote %q", s)
		}
		logs := 0
		for line := range strings.Lines(c.stderr.String()) {
			if !strings.HasPrefix(line, "{") {
				continue // the command's own messages
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(line), &v); err != nil || v["msg"] == nil {
				t.Errorf("log line %q: %v", line, err)
			}
			logs++
		}
		if logs == 0 {
			t.Errorf("connect -log-json -v logged no JSON:\n%s", c.stderr.String())
		}
	})

	t.Run("relay-json", func(t *testing.T) {
		r := start(t, "relay", procOpts{home: dir}, "relay", "-listen", "127.0.0.1:0", "-log-json")
		line := r.match(t, &r.stderr, regexp.MustCompile(`(?m)^(\{.*"level":"WARN".*\})$`), 30*time.Second)
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("relay log line %q: %v", line, err)
		}
		// Started through its path, which PATH does not find: that path.
		r.match(t, &r.stderr, regexp.MustCompile(`\n    (`+regexp.QuoteMeta(bin)+` listen -relay \S+ -relay-key \S+)\n`), 10*time.Second)
		r.interrupt(t)
		r.expectExit(t, 10*time.Second, 0)
	})

	t.Run("command-line", func(t *testing.T) {
		// Found on PATH under its name, through a path, and as go run's
		// temporary binary.
		goRun := filepath.Join(dir, "go-build1234", "b001", "exe", "quicpipe")
		if err := os.MkdirAll(filepath.Dir(goRun), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goRun, data, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, path, arg0, pathVar, want string
			args                            []string
		}{
			{"tcp", bin, bin, "/usr/bin:/bin", bin + " connect -tcp-listen 127.0.0.1:0 qp1", []string{"-tcp", "127.0.0.1:1"}},
			{"on-path", bin, "quicpipe", filepath.Dir(bin) + ":/usr/bin:/bin", "quicpipe connect qp1", nil},
			{"by-path", bin, bin, "/usr/bin:/bin", bin + " connect qp1", nil},
			{"go-run", goRun, goRun, filepath.Dir(bin) + ":/usr/bin:/bin", "go run ./cmd/quicpipe connect qp1", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var stderr syncBuffer
				cmd := exec.Command(tc.path, append([]string{"listen", "-timeout", "1s"}, tc.args...)...)
				cmd.Args[0] = tc.arg0
				cmd.Env = append(testbin.Env("HOME=", "XDG_CONFIG_HOME=", "PATH="), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "PATH="+tc.pathVar)
				cmd.Stderr = &stderr
				err := cmd.Run()
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
					t.Fatalf("exit %v, want 1 after -timeout:\n%s", err, stderr.String())
				}
				if !strings.Contains(stderr.String(), "\n    "+tc.want) {
					t.Errorf("the printed command is not %q:\n%s", tc.want, stderr.String())
				}
			})
		}
	})
}
