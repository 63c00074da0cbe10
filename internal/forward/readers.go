package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// This file holds the engine's own receive path: reads with UDP GRO, whose
// messages hold many datagrams, and extra readers on more sockets sharing the
// relay's port (SO_REUSEPORT), which hand the datagrams for quic-go to the
// one transport through a queue.

// maxPacketOOB bounds the control messages kept with a datagram queued for
// quic-go: packet info and ECN for IPv4 and IPv6, and the GRO segment size.
const maxPacketOOB = 128

// groBufSize is the receive buffer of one GRO read: the kernel coalesces up
// to 64 KiB.
const groBufSize = 1 << 16

// maxGSOSegments and maxGSOBytes bound one GSO message (the kernel's limits
// are 64 segments and 64 KiB).
const (
	maxGSOSegments = 64
	maxGSOBytes    = 65000
)

// maxReadErrors and readErrorPause bound how a reader rides out read
// errors: a pause after each, and Run gives up after this many in a row.
const (
	maxReadErrors  = 100
	readErrorPause = 10 * time.Millisecond
)

// readerBatch is the number of messages an extra reader reads at once.
const readerBatch = 8

// segRef is a datagram kept for quic-go inside one of the engine's receive
// buffers: message msg, bytes [off, off+n).
type segRef struct{ msg, off, n int }

// growGRO sizes the engine's receive buffers for n messages.
func (r *reader) growGRO(n int) {
	if len(r.gms) >= n {
		return
	}
	size := MaxTunnelDatagram
	if r.io.gro {
		size = groBufSize
	}
	r.gms = make([]ipv4.Message, n)
	for i := range r.gms {
		r.gms[i].Buffers = [][]byte{make([]byte, size)}
		r.gms[i].OOB = make([]byte, maxPacketOOB)
	}
	r.io.grow(n)
	r.io.growSend(n * maxGSOSegments)
	r.kept = make([]segRef, 0, n*maxGSOSegments)
}

// routeSegs forwards the datagrams of ms, each message holding one or (after
// GRO) several datagrams of one size from one sender, and records those for
// quic-go in r.kept, in order. Forwarded runs for one destination leave as
// UDP GSO messages pointing into the receive buffers: a whole GRO read for
// one destination leaves as one message, uncopied.
func (r *reader) routeSegs(ms []ipv4.Message) {
	c := r.c
	now := time.Now().UnixNano()
	io := &r.io
	r.kept = r.kept[:0]
	var n batchCounts
	var src srcCheck
	sent := false
	read := 0
	for i := range ms {
		buf := ms[i].Buffers[0][:ms[i].N]
		if len(buf) == 0 {
			read++
			n.drops[dropMalformed]++
			continue
		}
		src.set(io.srcKey(i))
		seg := io.segSize(&ms[i])
		if seg <= 0 || seg > len(buf) {
			seg = len(buf)
		}
		reset := false // one stateless reset per message: one buffer each
		for off := 0; off < len(buf); off += seg {
			b := buf[off:min(off+seg, len(buf))]
			read++
			v, d := c.classify(b, &src, now)
			switch v {
			case forward:
				if d.tun != nil {
					if d.tun.enqueue(b) {
						n.fwdTunnel++
						n.fwdBytes += uint64(len(b))
					} else {
						n.drops[dropTunnelFull]++
					}
					continue
				}
				if io.full() {
					r.flushCount(&n)
				}
				io.queue(b, d)
				n.fwdBytes += uint64(len(b))
				sent = true
			case toServer:
				r.kept = append(r.kept, segRef{i, off, len(b)})
			case toSleep:
				c.cfg.Sleep(b, src.key.AddrPort())
				n.sleep++
			case resetStale:
				if io.full() {
					r.flushCount(&n)
				}
				if !reset && r.queueReset(b, i, now) {
					reset = true
					n.resets++
					sent = true
				} else {
					n.drops[v]++
				}
			default:
				n.drops[v]++
			}
		}
	}
	if sent {
		r.flushCount(&n)
	}
	n.fwd += n.fwdTunnel
	n.toServer = uint64(len(r.kept))
	c.stats.add(&n)
	r.datagrams.Add(uint64(read))
}

// flushCount sends the queued messages and counts them in n: the datagrams
// sent, less the resets among them, are forwarded ones.
func (r *reader) flushCount(n *batchCounts) {
	sent, failed := r.io.flush()
	n.fwd += uint64(max(sent-int(n.resets-n.resetsSent), 0))
	n.resetsSent = n.resets
	n.sendErrs += uint64(failed)
}

// readGRO is ReadBatch with GRO on: it reads into the engine's buffers,
// forwards, and copies the datagrams for quic-go into ms, one per message,
// in order; those that do not fit are queued for the next call.
func (r *reader) readGRO(ms []ipv4.Message) (int, error) {
	r.growGRO(len(ms))
	n, err := r.io.read(r.gms[:len(ms)], 0)
	if err != nil {
		return 0, err
	}
	r.routeSegs(r.gms[:n])
	j := 0
	var drops batchCounts
	for _, k := range r.kept {
		g := &r.gms[k.msg]
		b := g.Buffers[0][k.off : k.off+k.n]
		oob := g.OOB[:g.NN]
		if j < len(ms) {
			m := &ms[j]
			m.N = copy(m.Buffers[0], b)
			m.NN = copyOOB(m.OOB, oob)
			m.Flags = 0
			m.Addr = r.io.addr(k.msg)
			j++
		} else if !r.c.srv.put(b, r.io.srcKey(k.msg), oob) {
			drops.drops[dropTunnelFull]++
		}
	}
	r.c.stats.add(&drops)
	return j, nil
}

// copyOOB copies the control messages src into dst, or none if they do not
// fit: quic-go fails on a truncated control message.
func copyOOB(dst, src []byte) int {
	if len(src) > len(dst) {
		return 0
	}
	return copy(dst, src)
}

// Reader is one more forwarding reader of the relay's port: a socket bound
// to the same address with SO_REUSEPORT, read by its own goroutine (Run).
// The kernel hashes each sender's flow to one of the sockets; every reader
// forwards what it reads on its own, sending from its socket (the same
// address and port), and hands the datagrams for the relay's HTTP/3 server
// to the Conn's ReadBatch, so that one quic-go transport serves them all.
type Reader struct {
	reader
	sock *net.UDPConn
}

// NewReader returns a reader of sock for c, with c's table, targets and
// configuration. sock must be bound to c's address (SO_REUSEPORT) and of its
// family; the caller keeps ownership of it.
func (c *Conn) NewReader(sock *net.UDPConn) (*Reader, error) {
	rd := &Reader{sock: sock}
	if err := rd.reader.init(c, sock); err != nil {
		return nil, err
	}
	if !rd.io.sameFamily(&c.io) {
		return nil, errors.New("forward: reader socket of another address family")
	}
	rd.io.recvInfo()
	return rd, nil
}

// Run reads and forwards until ctx is done or the socket is closed, and then
// returns nil; it returns the socket's error if reading keeps failing
// otherwise (maxReadErrors times in a row).
func (rd *Reader) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { rd.sock.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rd.growGRO(readerBatch)
	c := rd.c
	failed := 0 // consecutive read errors
	for {
		n, err := rd.io.read(rd.gms, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// The kernel still hashes flows to this socket: ride out
			// a passing error (ENOMEM, ENOBUFS), give up on one that
			// persists.
			if failed++; failed > maxReadErrors {
				return fmt.Errorf("forward: reader: %w", err)
			}
			time.Sleep(readErrorPause)
			continue
		}
		failed = 0
		rd.routeSegs(rd.gms[:n])
		if len(rd.kept) == 0 {
			continue
		}
		var drops batchCounts
		for _, k := range rd.kept {
			g := &rd.gms[k.msg]
			if !c.srv.put(g.Buffers[0][k.off:k.off+k.n], rd.io.srcKey(k.msg), g.OOB[:g.NN]) {
				drops.drops[dropTunnelFull]++
			}
		}
		c.stats.add(&drops)
		c.srv.wake(c.UDPConn())
	}
}

// serverQueue carries datagrams for quic-go from the engine's other readers
// to ReadBatch. A reader that queues wakes a ReadBatch blocked on the socket
// by setting the socket's read deadline in the past; ReadBatch then restores
// the deadline quic-go set (quic-go sets one only to stop reading).
type serverQueue struct {
	in chan *Packet

	mu       sync.Mutex
	deadline time.Time // quic-go's read deadline
	woken    bool      // the socket's deadline is in the past to wake ReadBatch
}

// readerQueueLen bounds the datagrams from other readers waiting for the
// relay's HTTP/3 server.
const readerQueueLen = 1024

// aLongTimeAgo is a deadline in the past.
var aLongTimeAgo = time.Unix(1, 0)

func (q *serverQueue) init() { q.in = make(chan *Packet, readerQueueLen) }

// put queues a copy of b, from src with control messages oob, without
// blocking, and reports whether it was queued.
func (q *serverQueue) put(b []byte, src AddrKey, oob []byte) bool {
	if len(b) > MaxTunnelDatagram || len(oob) > maxPacketOOB {
		return false
	}
	p := newPacket(b)
	p.src = src
	p.noob = copy(p.oob[:], oob)
	select {
	case q.in <- p:
		return true
	default:
		p.Release()
		return false
	}
}

// take moves queued datagrams into the lowest slots of ms without blocking,
// and returns how many.
func (q *serverQueue) take(ms []ipv4.Message) int {
	n := 0
	for n < len(ms) {
		select {
		case p := <-q.in:
			m := &ms[n]
			m.N = copy(m.Buffers[0], p.Bytes())
			m.NN = copyOOB(m.OOB, p.oob[:p.noob])
			m.Flags = 0
			m.Addr = net.UDPAddrFromAddrPort(p.src.AddrPort())
			p.Release()
			n++
		default:
			return n
		}
	}
	return n
}

// wake makes a ReadBatch blocked on sock return, unless quic-go's deadline
// has passed (it is stopping) or a wake-up is pending.
func (q *serverQueue) wake(sock *net.UDPConn) {
	q.mu.Lock()
	if !q.woken && (q.deadline.IsZero() || time.Now().Before(q.deadline)) {
		q.woken = true
		sock.SetReadDeadline(aLongTimeAgo)
	}
	q.mu.Unlock()
}

// woke reports whether err, returned by a read of sock, is a wake-up rather
// than quic-go's deadline; it then restores quic-go's deadline.
func (q *serverQueue) woke(sock *net.UDPConn, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.woken {
		return false
	}
	q.woken = false
	sock.SetReadDeadline(q.deadline)
	return true
}

// setDeadline sets quic-go's read deadline on sock.
func (q *serverQueue) setDeadline(sock *net.UDPConn, t time.Time) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.deadline = t
	q.woken = false
	if err := sock.SetReadDeadline(t); err != nil {
		return err
	}
	if (t.IsZero() || time.Now().Before(t)) && len(q.in) > 0 {
		q.woken = true
		return sock.SetReadDeadline(aLongTimeAgo)
	}
	return nil
}
