package quicpipe

import (
	"bytes"
	"net"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// injector is the injection state of a peer's socket.
type injector struct {
	injMu        sync.Mutex
	injected     []injectedPacket
	userDeadline bool // quic-go set a read deadline: timeouts are its own
	woken        bool // a read deadline was set to wake the reader
}

type injectedPacket struct {
	b    []byte
	from net.Addr
}

// inject queues datagram b as received from "from" and wakes the reader.
func (c *peerConn) inject(b []byte, from net.Addr) {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	c.injected = append(c.injected, injectedPacket{b: bytes.Clone(b), from: from})
	if !c.userDeadline && !c.woken {
		c.woken = true
		c.UDPConn().SetReadDeadline(time.Unix(1, 0))
	}
}

func (c *peerConn) takeInjected(ms []ipv4.Message) int {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	n := 0
	for n < len(ms) && n < len(c.injected) {
		p := c.injected[n]
		m := &ms[n]
		m.N = copy(m.Buffers[0], p.b)
		m.NN = 0
		m.Flags = 0
		m.Addr = p.from
		n++
	}
	c.injected = c.injected[n:]
	if len(c.injected) == 0 {
		c.injected = nil
	}
	return n
}

// SetReadDeadline passes quic-go's deadline through and remembers it, so
// that its timeouts are never mistaken for a wake-up.
func (c *peerConn) SetReadDeadline(t time.Time) error {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	c.userDeadline = !t.IsZero()
	c.woken = false
	return c.UDPConn().SetReadDeadline(t)
}
