package portmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// NAT-PMP (RFC 6886) and PCP (RFC 6887) share the gateway's port 5351;
// UPnP's discovery (SSDP) listens on port 1900.
const (
	pmpPort  = 5351
	ssdpPort = 1900
)

// NAT-PMP opcodes and sizes (RFC 6886, sections 3.2 and 3.3).
const (
	pmpVersion        = 0
	pmpOpAddr         = 0
	pmpOpMapUDP       = 1
	pmpReply          = 128
	pmpAddrReplyLen   = 12
	pmpMapRequestLen  = 12
	pmpMapReplyLen    = 16
	pmpResultOK       = 0
	pmpResultBadVers  = 1
	maxPMPLifetimeSec = 1<<31 - 1
)

// errMalformed marks a reply that is not a well-formed answer to the
// request: it is counted and ignored, as if it had not arrived.
var errMalformed = errors.New("malformed reply")

// ResultError is a gateway's refusal: a NAT-PMP or PCP result code other
// than success.
type ResultError struct {
	Protocol Protocol
	Code     uint8
}

func (e *ResultError) Error() string {
	return fmt.Sprintf("portmap: %v gateway refused: result code %d (%s)", e.Protocol, e.Code, resultName(e.Protocol, e.Code))
}

func resultName(p Protocol, code uint8) string {
	if p == NATPMP {
		if n := [...]string{"success", "unsupported version", "not authorized", "network failure", "out of resources", "unsupported opcode"}; int(code) < len(n) {
			return n[code]
		}
		return "unknown"
	}
	if n := [...]string{"success", "unsupported version", "not authorized", "malformed request", "unsupported opcode",
		"unsupported option", "malformed option", "network failure", "no resources", "unsupported protocol",
		"user exceeded quota", "cannot provide external", "address mismatch", "excessive remote peers"}; int(code) < len(n) {
		return n[code]
	}
	return "unknown"
}

// pmpAddrRequest is NAT-PMP's external address request.
func pmpAddrRequest() []byte { return []byte{pmpVersion, pmpOpAddr} }

// pmpMapRequest asks for a UDP mapping of internal port in to external
// port ext (a suggestion) for life; a lifetime of zero with ext zero
// deletes the mapping.
func pmpMapRequest(in, ext uint16, life time.Duration) []byte {
	b := make([]byte, pmpMapRequestLen)
	b[0], b[1] = pmpVersion, pmpOpMapUDP
	binary.BigEndian.PutUint16(b[4:], in)
	binary.BigEndian.PutUint16(b[6:], ext)
	binary.BigEndian.PutUint32(b[8:], lifetimeSeconds(life, maxPMPLifetimeSec))
	return b
}

func lifetimeSeconds(d time.Duration, limit uint32) uint32 {
	s := d / time.Second
	if s > time.Duration(limit) {
		return limit
	}
	if s < 0 {
		return 0
	}
	return uint32(s)
}

// pmpAddrReply is a parsed external address reply.
type pmpAddrReply struct {
	epoch uint32
	addr  netip.Addr
}

// parsePMPAddrReply parses a reply to pmpAddrRequest. A refusal is a
// *ResultError; anything else not a valid reply is errMalformed.
func parsePMPAddrReply(b []byte) (pmpAddrReply, error) {
	if err := pmpHeader(b, pmpOpAddr, pmpAddrReplyLen); err != nil {
		return pmpAddrReply{}, err
	}
	a := netip.AddrFrom4([4]byte(b[8:12]))
	return pmpAddrReply{epoch: binary.BigEndian.Uint32(b[4:]), addr: a}, nil
}

// pmpMapReply is a parsed mapping reply.
type pmpMapReply struct {
	epoch    uint32
	internal uint16
	external uint16
	lifetime time.Duration
}

// parsePMPMapReply parses a reply to pmpMapRequest.
func parsePMPMapReply(b []byte) (pmpMapReply, error) {
	if err := pmpHeader(b, pmpOpMapUDP, pmpMapReplyLen); err != nil {
		return pmpMapReply{}, err
	}
	return pmpMapReply{
		epoch:    binary.BigEndian.Uint32(b[4:]),
		internal: binary.BigEndian.Uint16(b[8:]),
		external: binary.BigEndian.Uint16(b[10:]),
		lifetime: time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Second,
	}, nil
}

// pmpHeader checks the version, opcode, length and result code of a
// NAT-PMP reply to opcode op. A gateway that speaks only PCP answers a
// NAT-PMP request with a PCP "unsupported version" reply, which is a
// *ResultError too.
func pmpHeader(b []byte, op uint8, size int) error {
	if len(b) >= 4 && b[0] == pcpVersion && b[1] == pcpReplyBit|op {
		return &ResultError{Protocol: NATPMP, Code: pmpResultBadVers}
	}
	if len(b) < 4 || b[0] != pmpVersion || b[1] != pmpReply|op {
		return errMalformed
	}
	if code := binary.BigEndian.Uint16(b[2:]); code != pmpResultOK {
		return &ResultError{Protocol: NATPMP, Code: uint8(min(code, 255))}
	}
	if len(b) < size {
		return errMalformed
	}
	return nil
}
