package example_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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

// binaries builds the three example programs once and returns their
// directory.
func binaries(t *testing.T) string {
	t.Helper()
	dir, err := testbin.Build(
		"github.com/quicpipe/quicpipe/example/server",
		"github.com/quicpipe/quicpipe/example/dialer",
		"github.com/quicpipe/quicpipe/example/accepter",
	)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// proc is a running example program.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr syncBuffer

	mu     sync.Mutex
	lines  []string      // stdout, line by line
	eof    bool          // stdout is closed
	notify chan struct{} // signaled when lines or eof change

	done chan struct{} // closed when the program has exited
	err  error         // the result of Wait, once done is closed
}

// start runs an example program with the given standard input and extra
// environment. The program is killed when the test ends, if still running.
func start(t *testing.T, name, stdin string, env ...string) *proc {
	t.Helper()
	p := &proc{name: name, notify: make(chan struct{}, 1), done: make(chan struct{})}
	exe := filepath.Join(binaries(t), name)
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	p.cmd = exec.Command(exe)
	// Without the variables the examples read, unless env sets them.
	p.cmd.Env = append(testbin.Env("QHOST=", "QUICPIPE_"), env...)
	if stdin != "" {
		p.cmd.Stdin = strings.NewReader(stdin)
	}
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			p.signal()
		}
		p.mu.Lock()
		p.eof = true
		p.mu.Unlock()
		p.signal()
		p.err = p.cmd.Wait() // only after every read from stdout
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
			t.Logf("%s: exit: %v\nstdout:\n%s\nstderr:\n%s", name, p.err, p.stdout(), p.stderr.String())
		}
	})
	return p
}

func (p *proc) signal() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// line waits for the i-th line (from 0) of the program's standard output.
func (p *proc) line(ctx context.Context, i int) (string, error) {
	for {
		p.mu.Lock()
		n, eof := len(p.lines), p.eof
		var l string
		if i < n {
			l = p.lines[i]
		}
		p.mu.Unlock()
		switch {
		case i < n:
			return l, nil
		case eof:
			// p.err is set only once p.done is closed.
			select {
			case <-p.done:
				return "", fmt.Errorf("%s closed stdout after %d lines (exit: %v)", p.name, n, p.err)
			case <-ctx.Done():
				return "", fmt.Errorf("%s closed stdout after %d lines", p.name, n)
			}
		}
		select {
		case <-p.notify:
		case <-ctx.Done():
			return "", fmt.Errorf("%s: waiting for stdout line %d: %w", p.name, i+1, ctx.Err())
		}
	}
}

func (p *proc) stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// wait waits for the program to exit, killing it after timeout, and returns
// the result of Wait.
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %v and was killed", p.name, timeout)
	}
}

// syncBuffer holds a process's output while the test reads it.
type syncBuffer = testbin.Buffer

var listeningRE = regexp.MustCompile(`^listening on (127\.0\.0\.1:[1-9][0-9]*)$`)

// TestFlow runs the three programs as the documentation does: the dialer's
// first line of output becomes the accepter's input.
func TestFlow(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the test stops the programs with SIGINT")
	}
	for _, tc := range []struct{ name, xdpIface string }{
		{"userspace", ""},
		{"xdp-iface-set", "lo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testFlow(t, tc.xdpIface)
		})
	}
}

func testFlow(t *testing.T, xdpIface string) {
	binaries(t) // build before the clock starts
	begin := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	env := []string{"QUICPIPE_LISTEN=127.0.0.1:0"}
	if xdpIface != "" {
		env = append(env, "QUICPIPE_XDP_IFACE="+xdpIface)
	}
	server := start(t, "server", "", env...)
	first, err := server.line(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := listeningRE.FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("server: first line %q, want %q", first, "listening on 127.0.0.1:<port>")
	}
	qhost := "QHOST=" + m[1]

	dialer := start(t, "dialer", "", qhost)
	flight, err := dialer.line(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(flight, `{"v":1,`) {
		t.Fatalf("dialer: first line %q is not a first flight in JSON form", flight)
	}

	accepter := start(t, "accepter", flight+"\n", qhost)
	for i := range 3 {
		l, err := accepter.line(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if l != "hello" {
			t.Fatalf("accepter: line %d is %q, want %q", i+1, l, "hello")
		}
	}

	t.Logf("three hellos %v after starting the server", time.Since(begin).Round(time.Millisecond))

	// Ctrl-C all three: each must exit cleanly.
	stopping := time.Now()
	procs := []*proc{accepter, dialer, server}
	for _, p := range procs {
		if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
	for _, p := range procs {
		if err := p.wait(10 * time.Second); err != nil {
			t.Errorf("%s: after SIGINT: %v", p.name, err)
		}
	}
	t.Logf("all three exited %v after SIGINT", time.Since(stopping).Round(time.Millisecond))

	if got := server.stdout(); got != first {
		t.Errorf("server: stdout %q, want only %q", got, first)
	}
	if got := dialer.stdout(); got != flight {
		t.Errorf("dialer: stdout %q, want only the first flight", got)
	}
	for _, l := range strings.Split(accepter.stdout(), "\n") {
		if l != "hello" {
			t.Errorf("accepter: stdout line %q, want %q", l, "hello")
		}
	}
	for _, want := range []string{"connected to accepter", "sent hello"} {
		if !strings.Contains(dialer.stderr.String(), want) {
			t.Errorf("dialer: stderr lacks %q", want)
		}
	}
	stderr := server.stderr.String()
	switch {
	case xdpIface == "":
		if strings.Contains(stderr, "XDP") && !strings.Contains(stderr, ", 0 in XDP") {
			t.Errorf("server: stderr mentions XDP without QUICPIPE_XDP_IFACE:\n%s", stderr)
		}
	case os.Geteuid() == 0:
		// As root on Linux the program attaches (generic mode on lo) and
		// forwards the peers' packets in the kernel.
		if !strings.Contains(stderr, "XDP active on "+xdpIface+" (") {
			t.Errorf("server: stderr lacks \"XDP active on %s\":\n%s", xdpIface, stderr)
		}
		m := regexp.MustCompile(`forwarded \d+ packets in userspace, (\d+) in XDP`).FindStringSubmatch(stderr)
		if m == nil || m[1] == "0" {
			t.Errorf("server: XDP forwarded nothing:\n%s", stderr)
		}
	default:
		if !strings.Contains(stderr, "XDP unavailable on "+xdpIface) {
			t.Errorf("server: stderr lacks the XDP-unavailable line:\n%s", stderr)
		}
	}
}

// TestErrors checks that the programs fail clearly on bad input, before
// contacting any relay.
func TestErrors(t *testing.T) {
	const qhost = "QHOST=127.0.0.1:4433"
	for _, tc := range []struct {
		name, prog, stdin string
		env               []string
		want              string
	}{
		{"dialer-without-QHOST", "dialer", "", nil,
			"dialer: QHOST must be set to the relay's address, e.g. QHOST=127.0.0.1:4433"},
		{"accepter-without-QHOST", "accepter", "", nil,
			"accepter: QHOST must be set to the relay's address, e.g. QHOST=127.0.0.1:4433"},
		{"accepter-empty-stdin", "accepter", "", []string{qhost},
			"accepter: stdin is empty"},
		{"accepter-garbage", "accepter", "this is not a first flight\n", []string{qhost},
			"accepter: stdin does not hold the dialer's first flight: quicpipe: bad first flight"},
		{"accepter-bad-json-flight", "accepter", `{"v":1,"datagrams":["AAAA"]}` + "\n", []string{qhost},
			"accepter: stdin does not hold the dialer's first flight: quicpipe: bad first flight"},
		{"accepter-long-line", "accepter", strings.Repeat("x", 100<<10), []string{qhost},
			"accepter: the first line of stdin is longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, tc.prog, tc.stdin, tc.env...)
			err := p.wait(20 * time.Second)
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
				t.Fatalf("exit: %v, want exit status 1", err)
			}
			if stderr := p.stderr.String(); !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tc.want)
			}
			if out := p.stdout(); out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}
