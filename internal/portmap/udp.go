package portmap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// maxReply bounds a reply datagram read (PCP's maximum message size).
const maxReply = pcpMaxMessage

// firstResend is when a request is first sent again without an answer; the
// interval doubles after each send (RFC 6886 starts at 250 ms: the probe's
// whole budget, so the first resend comes sooner here).
const firstResend = 100 * time.Millisecond

// exchange sends req on conn until a reply that parse accepts arrives or
// ctx ends. Replies parse rejects with errMalformed are counted and
// ignored; any other error from parse ends the exchange.
func (c *Client) exchange(ctx context.Context, conn net.Conn, req []byte, parse func([]byte) error) error {
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, maxReply+1)
	resend := firstResend
	for {
		if _, err := conn.Write(req); err != nil {
			return fmt.Errorf("sending: %w", err)
		}
		next := time.Now().Add(resend)
		resend *= 2
		for {
			if ctx.Err() != nil {
				return fmt.Errorf("no answer: %w", ctx.Err())
			}
			conn.SetReadDeadline(next)
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("no answer: %w", ctx.Err())
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // send again
				}
				// An ICMP port unreachable: nothing listens there.
				return fmt.Errorf("receiving: %w", err)
			}
			err = parse(buf[:n])
			if errors.Is(err, errMalformed) {
				c.bad.Add(1)
				continue
			}
			return err
		}
	}
}

// pmpMapper speaks NAT-PMP.
type pmpMapper struct {
	c    *Client
	conn net.Conn
	ext  uint16 // the external port granted last
}

func newPMPMapper(ctx context.Context, c *Client) (*pmpMapper, error) {
	conn, err := c.cfg.DialContext(ctx, "udp4", netip.AddrPortFrom(c.cfg.Gateway, c.cfg.pmpPort).String())
	if err != nil {
		return nil, err
	}
	return &pmpMapper{c: c, conn: conn}, nil
}

func (m *pmpMapper) probe(ctx context.Context) error {
	_, err := m.externalAddr(ctx)
	return err
}

func (m *pmpMapper) externalAddr(ctx context.Context) (netip.Addr, error) {
	var r pmpAddrReply
	err := m.c.exchange(ctx, m.conn, pmpAddrRequest(), func(b []byte) (err error) {
		r, err = parsePMPAddrReply(b)
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	if !r.addr.IsGlobalUnicast() {
		return netip.Addr{}, fmt.Errorf("external address %v is not usable", r.addr)
	}
	return r.addr, nil
}

func (m *pmpMapper) mapPort(ctx context.Context, life time.Duration) (netip.AddrPort, time.Duration, error) {
	ip, err := m.externalAddr(ctx)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	in := m.c.cfg.InternalPort
	want := m.ext
	if want == 0 {
		want = in
	}
	var r pmpMapReply
	err = m.c.exchange(ctx, m.conn, pmpMapRequest(in, want, life), func(b []byte) (err error) {
		r, err = parsePMPMapReply(b)
		if err == nil && r.internal != in {
			return errMalformed // the answer to another request
		}
		return err
	})
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	if r.external == 0 || r.lifetime == 0 {
		return netip.AddrPort{}, 0, fmt.Errorf("gateway granted port %d for %v", r.external, r.lifetime)
	}
	m.ext = r.external
	return netip.AddrPortFrom(ip, r.external), r.lifetime, nil
}

func (m *pmpMapper) unmap(ctx context.Context) error {
	in := m.c.cfg.InternalPort
	return m.c.exchange(ctx, m.conn, pmpMapRequest(in, 0, 0), func(b []byte) error {
		r, err := parsePMPMapReply(b)
		if err == nil && r.internal != in {
			return errMalformed
		}
		return err
	})
}

func (m *pmpMapper) close() { m.conn.Close() }

// pcpMapper speaks PCP.
type pcpMapper struct {
	c     *Client
	conn  net.Conn
	local netip.Addr
	nonce [pcpNonceLen]byte
	ext   netip.AddrPort // the mapping granted last
}

func newPCPMapper(ctx context.Context, c *Client, local netip.Addr) (*pcpMapper, error) {
	conn, err := c.cfg.DialContext(ctx, "udp4", netip.AddrPortFrom(c.cfg.Gateway, c.cfg.pmpPort).String())
	if err != nil {
		return nil, err
	}
	m := &pcpMapper{c: c, conn: conn, local: local}
	rand.Read(m.nonce[:])
	return m, nil
}

func (m *pcpMapper) probe(ctx context.Context) error {
	return m.c.exchange(ctx, m.conn, pcpAnnounceRequest(m.local), parsePCPAnnounceReply)
}

func (m *pcpMapper) request(ctx context.Context, life time.Duration) (pcpMapReply, error) {
	in := m.c.cfg.InternalPort
	want := m.ext
	if !want.IsValid() {
		want = netip.AddrPortFrom(netip.Addr{}, in)
	}
	var r pcpMapReply
	err := m.c.exchange(ctx, m.conn, pcpMapRequest(m.local, m.nonce, in, want.Port(), want.Addr(), life), func(b []byte) (err error) {
		r, err = parsePCPMapReply(b, m.nonce)
		if err == nil && r.internal != in {
			return errMalformed
		}
		return err
	})
	return r, err
}

func (m *pcpMapper) mapPort(ctx context.Context, life time.Duration) (netip.AddrPort, time.Duration, error) {
	r, err := m.request(ctx, life)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	if r.external.Port() == 0 || r.lifetime == 0 || !r.external.Addr().Is4() || !r.external.Addr().IsGlobalUnicast() {
		return netip.AddrPort{}, 0, fmt.Errorf("gateway granted %v for %v", r.external, r.lifetime)
	}
	m.ext = r.external
	return r.external, r.lifetime, nil
}

func (m *pcpMapper) unmap(ctx context.Context) error {
	_, err := m.request(ctx, 0)
	return err
}

func (m *pcpMapper) close() { m.conn.Close() }
