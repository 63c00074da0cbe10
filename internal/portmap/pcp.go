package portmap

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"time"
)

// PCP (RFC 6887) constants: the MAP opcode over UDP.
const (
	pcpVersion      = 2
	pcpOpAnnounce   = 0
	pcpOpMap        = 1
	pcpReplyBit     = 0x80
	pcpHeaderLen    = 24
	pcpMapLen       = 36
	pcpMaxMessage   = 1100 // RFC 6887, section 7
	pcpResultOK     = 0
	pcpProtoUDP     = 17
	pcpNonceLen     = 12
	maxPCPLifetimes = 1<<32 - 1
)

// pcpMapRequest builds a MAP request for UDP port in of client (this
// host's address as the gateway sees it), suggesting external port ext and
// address extIP (zero: any), for life; a lifetime of zero deletes the
// mapping named by nonce.
func pcpMapRequest(client netip.Addr, nonce [pcpNonceLen]byte, in, ext uint16, extIP netip.Addr, life time.Duration) []byte {
	b := make([]byte, pcpHeaderLen+pcpMapLen)
	b[0], b[1] = pcpVersion, pcpOpMap
	binary.BigEndian.PutUint32(b[4:], lifetimeSeconds(life, maxPCPLifetimes))
	copy(b[8:24], v4mapped(client).AsSlice())
	p := b[pcpHeaderLen:]
	copy(p, nonce[:])
	p[12] = pcpProtoUDP
	binary.BigEndian.PutUint16(p[16:], in)
	binary.BigEndian.PutUint16(p[18:], ext)
	if extIP.IsValid() {
		copy(p[20:36], v4mapped(extIP).AsSlice())
	} else if client.Is4() {
		// "All zeros" for IPv4 is the IPv4-mapped ::ffff:0.0.0.0.
		copy(p[20:36], v4mapped(netip.IPv4Unspecified()).AsSlice())
	}
	return b
}

// v4mapped returns a's 16-byte form: IPv4 addresses IPv4-mapped.
func v4mapped(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom16(a.As16())
	}
	return a
}

// pcpAnnounceRequest is PCP's ANNOUNCE request, which a PCP server answers
// without creating anything: the probe.
func pcpAnnounceRequest(client netip.Addr) []byte {
	b := make([]byte, pcpHeaderLen)
	b[0], b[1] = pcpVersion, pcpOpAnnounce
	copy(b[8:24], v4mapped(client).AsSlice())
	return b
}

// parsePCPAnnounceReply checks a reply to pcpAnnounceRequest.
func parsePCPAnnounceReply(b []byte) error {
	if len(b) >= 4 && b[0] == pmpVersion && b[1] == pmpReply|pcpOpAnnounce {
		return &ResultError{Protocol: PCP, Code: 1}
	}
	if len(b) < pcpHeaderLen || len(b) > pcpMaxMessage || len(b)%4 != 0 ||
		b[0] != pcpVersion || b[1] != pcpReplyBit|pcpOpAnnounce {
		return errMalformed
	}
	if code := b[3]; code != pcpResultOK {
		return &ResultError{Protocol: PCP, Code: code}
	}
	return nil
}

// pcpMapReply is a parsed MAP reply.
type pcpMapReply struct {
	lifetime time.Duration
	epoch    uint32
	internal uint16
	external netip.AddrPort
}

// parsePCPMapReply parses a reply to a MAP request with nonce. A refusal
// is a *ResultError; a reply to another request (another nonce, protocol or
// opcode) or anything not a valid reply is errMalformed. A NAT-PMP gateway
// answers PCP with its own "unsupported version" reply: a *ResultError.
func parsePCPMapReply(b []byte, nonce [pcpNonceLen]byte) (pcpMapReply, error) {
	if len(b) >= 4 && b[0] == pmpVersion && b[1] == pmpReply|pcpOpMap {
		return pcpMapReply{}, &ResultError{Protocol: PCP, Code: 1}
	}
	if len(b) < pcpHeaderLen || len(b) > pcpMaxMessage || len(b)%4 != 0 ||
		b[0] != pcpVersion || b[1] != pcpReplyBit|pcpOpMap {
		return pcpMapReply{}, errMalformed
	}
	if code := b[3]; code != pcpResultOK {
		return pcpMapReply{}, &ResultError{Protocol: PCP, Code: code}
	}
	if len(b) < pcpHeaderLen+pcpMapLen {
		return pcpMapReply{}, errMalformed
	}
	p := b[pcpHeaderLen:]
	if !bytes.Equal(p[:pcpNonceLen], nonce[:]) || p[12] != pcpProtoUDP {
		return pcpMapReply{}, errMalformed
	}
	ext := netip.AddrFrom16([16]byte(p[20:36])).Unmap()
	return pcpMapReply{
		lifetime: time.Duration(binary.BigEndian.Uint32(b[4:])) * time.Second,
		epoch:    binary.BigEndian.Uint32(b[8:]),
		internal: binary.BigEndian.Uint16(p[16:]),
		external: netip.AddrPortFrom(ext, binary.BigEndian.Uint16(p[18:])),
	}, nil
}
