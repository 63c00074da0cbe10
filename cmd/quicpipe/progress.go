package main

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// progressDelay is how long a transfer runs before progress is shown.
const progressDelay = 3 * time.Second

// rateWindow is the span over which the live rate is measured.
const rateWindow = 2 * time.Second

// showProgress reports whether a session shows progress: only a transfer
// (standard input or output is not a terminal) on a terminal's standard
// error. A chat, where both are terminals, shows none: a line rewritten in
// place would mix with the text on screen.
func showProgress(stdinTerm, stdoutTerm, stderrTerm bool) bool {
	return stderrTerm && !(stdinTerm && stdoutTerm)
}

// progress counts the bytes of a stdin/stdout pipe and, when enabled, shows
// them with their rates on a line of their own that it rewrites in place,
// once the transfer has run for progressDelay, and a summary at the end.
//
// The live rate is the bytes of the last rateWindow over its duration; the
// summary's is a direction's bytes over the time from its first byte to its
// last, so that time spent waiting on the other side is not counted.
type progress struct {
	sent, received atomic.Int64
	// sentSpan and recvSpan hold when each direction moved its first and
	// last bytes.
	sentSpan, recvSpan span

	sw      *statusWriter
	enabled bool
	// outTerm: the piped output is a terminal, which may also show the
	// progress line.
	outTerm bool
	delay   time.Duration
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	midLine bool // the piped output on the terminal ended without a newline; guarded by sw.mu
}

// span is when a direction moved its first and last bytes (Unix
// nanoseconds, 0 if none).
type span struct {
	first, last atomic.Int64
}

func (s *span) add(now int64) {
	s.first.CompareAndSwap(0, now)
	s.last.Store(now)
}

// newProgress returns the progress of a session, shown on w if enabled:
// through w itself if it is a statusWriter (standard error on a terminal),
// so that the command's other messages clear the line first.
func newProgress(w io.Writer, enabled, outTerm bool) *progress {
	sw, ok := w.(*statusWriter)
	if !ok {
		sw = &statusWriter{w: w}
	}
	return &progress{sw: sw, enabled: enabled, outTerm: outTerm, delay: progressDelay, stop: make(chan struct{}), done: make(chan struct{})}
}

// start starts showing progress, if enabled.
func (p *progress) start() {
	if !p.enabled {
		close(p.done)
		return
	}
	go p.run()
}

// finish stops showing progress and replaces its line with a summary.
func (p *progress) finish() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

type sample struct {
	at             time.Time
	sent, received int64
}

func (p *progress) run() {
	defer close(p.done)
	begin := time.Now()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	samples := []sample{{at: begin}}
	for {
		select {
		case <-p.stop:
			p.summary()
			return
		case now := <-t.C:
			cur := sample{at: now, sent: p.sent.Load(), received: p.received.Load()}
			samples = append(samples, cur)
			for len(samples) > 2 && now.Sub(samples[1].at) >= rateWindow {
				samples = samples[1:]
			}
			if now.Sub(begin) < p.delay {
				continue
			}
			old := samples[0]
			dt := cur.at.Sub(old.at).Seconds()
			line := fmt.Sprintf("quicpipe: sent %s (%s/s), received %s (%s/s)",
				formatBytes(float64(cur.sent)), formatBytes(float64(cur.sent-old.sent)/dt),
				formatBytes(float64(cur.received)), formatBytes(float64(cur.received-old.received)/dt))
			p.sw.mu.Lock()
			if !p.midLine {
				p.sw.drawLocked(line)
			}
			p.sw.mu.Unlock()
		}
	}
}

// summary ends the progress line with the totals and average rates.
func (p *progress) summary() {
	s, r := p.sent.Load(), p.received.Load()
	if s == 0 && r == 0 {
		return
	}
	p.sw.mu.Lock()
	defer p.sw.mu.Unlock()
	if !p.sw.clearLocked() && p.midLine {
		fmt.Fprintln(p.sw.w)
	}
	fmt.Fprintf(p.sw.w, "quicpipe: sent %s, received %s\n", total(s, &p.sentSpan), total(r, &p.recvSpan))
}

// total formats a direction's byte count with its average rate.
func total(n int64, sp *span) string {
	d := time.Duration(sp.last.Load() - sp.first.Load())
	if n == 0 || d <= 0 {
		return formatBytes(float64(n))
	}
	return fmt.Sprintf("%s in %v (%s/s)", formatBytes(float64(n)), d.Round(time.Millisecond), formatBytes(float64(n)/d.Seconds()))
}

// formatBytes formats a byte count with binary prefixes.
func formatBytes(n float64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%.0f B", n)
	}
	for _, prefix := range []string{"KiB", "MiB", "GiB", "TiB"} {
		n /= unit
		if n < unit || prefix == "TiB" {
			return fmt.Sprintf("%.1f %s", n, prefix)
		}
	}
	panic("unreachable")
}

// reader counts what is read from r into n (p.sent or p.received).
func (p *progress) reader(r io.Reader, n *atomic.Int64) io.Reader {
	sp := &p.recvSpan
	if n == &p.sent {
		sp = &p.sentSpan
	}
	return &countingReader{r: r, n: n, span: sp}
}

type countingReader struct {
	r    io.Reader
	n    *atomic.Int64
	span *span
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.n.Add(int64(n))
		c.span.add(time.Now().UnixNano())
	}
	return n, err
}

// writer returns the writer for the piped output w. When progress is shown
// and w is a terminal, it clears the progress line before each write and
// keeps it off a line the output has begun, so that neither mixes with the
// other.
func (p *progress) writer(w io.Writer) io.Writer {
	if !p.enabled || !p.outTerm {
		return w
	}
	return &progressWriter{w: w, p: p}
}

type progressWriter struct {
	w io.Writer
	p *progress
}

func (pw *progressWriter) Write(b []byte) (int, error) {
	p := pw.p
	p.sw.mu.Lock()
	defer p.sw.mu.Unlock()
	p.sw.clearLocked()
	n, err := pw.w.Write(b)
	if n > 0 {
		p.midLine = b[n-1] != '\n'
	}
	return n, err
}

// statusWriter is standard error on a terminal, whose last line may hold a
// status line (the progress) that is rewritten in place. Every other write
// clears it first, so that messages and logs never run into it; the status
// is drawn again at its next update.
type statusWriter struct {
	w     io.Writer
	mu    sync.Mutex
	drawn bool // the status line is on screen
}

func (sw *statusWriter) Write(b []byte) (int, error) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.clearLocked()
	return sw.w.Write(b)
}

// drawLocked shows line as the status.
func (sw *statusWriter) drawLocked(line string) {
	fmt.Fprintf(sw.w, "\r%s\x1b[K", line)
	sw.drawn = true
}

// clearLocked erases the status line, if drawn, and reports whether it was.
func (sw *statusWriter) clearLocked() bool {
	if !sw.drawn {
		return false
	}
	io.WriteString(sw.w, "\r\x1b[K")
	sw.drawn = false
	return true
}
