package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process driven over its standard input and output: it
// prints "ready ..." once set up, answers each command line with one line
// "ok <json>" or "err <message>", and may print "ev <json>" event lines at
// any time. Closing its standard input asks it to exit.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // replies and other lines, in order
	events chan string // "ev" lines
	done   chan struct{}

	mu     sync.Mutex
	stderr []string // last lines of standard error
	once   sync.Once
}

func startProc(name string, argv []string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, stdin: stdin,
		lines: make(chan string, 1024), events: make(chan string, 1<<16), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if ev, ok := strings.CutPrefix(line, "ev "); ok {
				select {
				case p.events <- ev:
				default:
				}
				continue
			}
			p.lines <- line
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr = append(p.stderr, sc.Text())
			if len(p.stderr) > 40 {
				p.stderr = p.stderr[len(p.stderr)-40:]
			}
			p.mu.Unlock()
			if verbose {
				logf("  [%s] %s", name, sc.Text())
			}
		}
	}()
	go func() {
		wg.Wait()
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr, "\n")
}

// expect waits for a line starting with prefix and returns the rest.
func (p *proc) expect(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line := <-p.lines:
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				return strings.TrimSpace(rest), nil
			}
			if rest, ok := strings.CutPrefix(line, "err "); ok {
				return "", fmt.Errorf("%s: %s", p.name, rest)
			}
		case <-p.done:
			// Drain what it printed before exiting.
			for {
				select {
				case line := <-p.lines:
					if rest, ok := strings.CutPrefix(line, prefix); ok {
						return strings.TrimSpace(rest), nil
					}
					continue
				default:
				}
				break
			}
			return "", fmt.Errorf("%s exited (%v) before %q; stderr:\n%s", p.name, p.cmd.ProcessState, prefix, p.tail())
		case <-t.C:
			return "", fmt.Errorf("%s: no %q within %v; stderr:\n%s", p.name, prefix, timeout, p.tail())
		}
	}
}

// call sends a command and decodes the JSON of its "ok" answer into out
// (which may be nil).
func (p *proc) call(timeout time.Duration, out any, cmd string, args ...any) error {
	line := cmd
	for _, a := range args {
		line += " " + fmt.Sprint(a)
	}
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return fmt.Errorf("%s: %s: %w", p.name, cmd, err)
	}
	rest, err := p.expect("ok", timeout)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if out != nil && rest != "" {
		if err := json.Unmarshal([]byte(rest), out); err != nil {
			return fmt.Errorf("%s: %s: answer %q: %w", p.name, cmd, rest, err)
		}
	}
	return nil
}

// event waits for the next event line and decodes it into out.
func (p *proc) event(timeout time.Duration, out any) error {
	select {
	case ev := <-p.events:
		return json.Unmarshal([]byte(ev), out)
	case <-p.done:
		return fmt.Errorf("%s exited; stderr:\n%s", p.name, p.tail())
	case <-time.After(timeout):
		return fmt.Errorf("%s: no event within %v", p.name, timeout)
	}
}

// drainEvents discards pending events.
func (p *proc) drainEvents() {
	for {
		select {
		case <-p.events:
		default:
			return
		}
	}
}

// stop closes the process's standard input, waits up to 5 seconds for it to
// exit and then kills its process group.
func (p *proc) stop() {
	p.once.Do(func() {
		p.stdin.Close()
		select {
		case <-p.done:
			return
		case <-time.After(5 * time.Second):
		}
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			logf("cleanup: %s (pid %d) did not exit after SIGKILL", p.name, p.pid())
		}
	})
}

// kill kills the process group at once.
func (p *proc) kill() {
	p.once.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	})
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var selfExe string

func init() {
	var err error
	selfExe, err = os.Executable()
	if err != nil {
		selfExe = os.Args[0]
	}
}
