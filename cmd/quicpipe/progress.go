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

// progress counts the bytes of a stdin/stdout pipe and, when enabled (its
// writer is a terminal), shows them with their rates on one line that it
// rewrites in place, once the transfer has run for progressDelay.
type progress struct {
	sent, received atomic.Int64

	w       io.Writer
	enabled bool
	delay   time.Duration
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newProgress(w io.Writer, enabled bool) *progress {
	return &progress{w: w, enabled: enabled, delay: progressDelay, stop: make(chan struct{}), done: make(chan struct{})}
}

// start starts showing progress, if enabled.
func (p *progress) start() {
	if !p.enabled {
		close(p.done)
		return
	}
	go p.run()
}

// finish stops showing progress and ends its line, if one was shown.
func (p *progress) finish() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

func (p *progress) run() {
	defer close(p.done)
	begin := time.Now()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	shown := false
	var lastSent, lastRecv int64
	var rateSent, rateRecv float64
	last := begin
	for {
		select {
		case <-p.stop:
			if shown {
				fmt.Fprintf(p.w, "\r%s\x1b[K\n", p.line(rateSent, rateRecv))
			}
			return
		case now := <-t.C:
			s, r := p.sent.Load(), p.received.Load()
			dt := now.Sub(last).Seconds()
			rateSent = smooth(rateSent, float64(s-lastSent)/dt)
			rateRecv = smooth(rateRecv, float64(r-lastRecv)/dt)
			lastSent, lastRecv, last = s, r, now
			if now.Sub(begin) >= p.delay {
				shown = true
				fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(rateSent, rateRecv))
			}
		}
	}
}

func smooth(avg, sample float64) float64 { return 0.6*avg + 0.4*sample }

func (p *progress) line(rateSent, rateRecv float64) string {
	return fmt.Sprintf("quicpipe: sent %s (%s/s), received %s (%s/s)",
		formatBytes(float64(p.sent.Load())), formatBytes(rateSent),
		formatBytes(float64(p.received.Load())), formatBytes(rateRecv))
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

// reader counts what is read from r into n.
func (p *progress) reader(r io.Reader, n *atomic.Int64) io.Reader {
	return &countingReader{r: r, n: n}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
