package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procStopTimeout bounds how long Stop waits for a process to exit after
// SIGTERM before it kills it.
const procStopTimeout = 10 * time.Second

// Proc is a process a lab runs inside one of its namespaces (NS.Start). It
// is killed, with the processes it started, when the test ends.
type Proc struct {
	// Name names the process in logs.
	Name string
	ns   *NS
	cmd  *exec.Cmd
	out  lockedBuffer // standard output
	errb lockedBuffer // standard error
	done chan struct{}
	err  error // once done is closed
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Start runs args (a program and its arguments) inside the namespace with
// the environment env (nil: this process's), as `ip netns exec` does, in a
// process group of its own. When the test ends the group is killed; if the
// test failed, the process's standard error is logged.
func (n *NS) Start(name string, env []string, args ...string) *Proc {
	t := n.lab.t
	t.Helper()
	p := &Proc{Name: name, ns: n, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
	// ip netns exec execs the program: the process is the program, and
	// its group holds what it starts.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("netlab: starting %s in %s: %v", name, n.Name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			if s := p.errb.String(); s != "" {
				t.Logf("%s (in %s) wrote on standard error:\n%s", name, n.Name, tail(s, 4000))
			}
		}
	})
	return p
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// Stdout returns what the process wrote on standard output so far.
func (p *Proc) Stdout() string { return p.out.String() }

// Stderr returns what the process wrote on standard error so far.
func (p *Proc) Stderr() string { return p.errb.String() }

// Match waits until the process's standard output matches re and returns
// the first submatch (or the whole match if re has no group). It fails the
// test if the process exits first or timeout passes.
func (p *Proc) Match(re *regexp.Regexp, timeout time.Duration) string {
	t := p.ns.lab.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m[len(m)-1]
		}
		select {
		case <-p.done:
			if m := re.FindStringSubmatch(p.out.String()); m != nil {
				return m[len(m)-1]
			}
			t.Fatalf("netlab: %s exited (%v) before printing %q; standard error:\n%s", p.Name, p.err, re, tail(p.errb.String(), 4000))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("netlab: %s did not print %q within %v; standard error:\n%s", p.Name, re, timeout, tail(p.errb.String(), 4000))
		}
	}
}

// Kill kills the process's group with SIGKILL, as a crash would, and waits
// for the process to exit. It returns at once if the process has exited.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to exit with SIGTERM and waits; after
// procStopTimeout it kills it. It returns the process's exit error.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(procStopTimeout):
		p.Kill()
	}
	return p.err
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// DialContext connects to address (network "tcp", "udp" and the like) from
// inside the namespace, for clients in the test process that talk to
// servers of the lab (http.Transport.DialContext, a NATS custom dialer).
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: dialing %s from %s: %w", address, n.Name, err)
	}
	return c, nil
}

// Sysctl sets a sysctl of the namespace (its net.* keys are per
// namespace), for example Sysctl("net.ipv4.fib_multipath_hash_policy", "1").
func (n *NS) Sysctl(key, value string) {
	n.lab.t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	// /proc/sys/net shows the namespace of the thread that opens it.
	err := n.Do(func() error { return os.WriteFile(path, []byte(value+"\n"), 0) })
	if err != nil {
		n.lab.t.Fatalf("netlab: sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// Multipath sets the route to dst (a prefix) in the namespace to a
// multipath route with one next hop per gateway in via, replacing the
// route there was: what an ECMP router holds for an anycast address, each
// next hop announced by one server. With a single gateway, it is a plain
// route.
func (n *NS) Multipath(dst string, via ...string) {
	n.lab.t.Helper()
	args := []string{"ip", "route", "replace", dst}
	if len(via) == 1 {
		args = append(args, "via", via[0])
	} else {
		for _, gw := range via {
			args = append(args, "nexthop", "via", gw)
		}
	}
	n.Run(args...)
}
