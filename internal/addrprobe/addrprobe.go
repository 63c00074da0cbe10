// Package addrprobe is the wire format of the relay's address probes
// (docs/PROTOCOL.md, "Address probes"): a client sends a request from a UDP
// socket to one of the relay's probe ports, and the relay answers with the
// address and port it saw the request come from. Probing two ports (or two
// addresses) from one socket tells whether the client's NAT maps that
// socket to the same public address for every destination.
//
// A request and a reply are both Size bytes, so the relay never sends more
// than it receives. Their first byte has its two high bits clear, so that
// no QUIC endpoint on the same socket takes them for QUIC packets.
package addrprobe

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Size is the length of a request and of a reply.
const Size = 40

// Message types, in byte 4.
const (
	typeRequest = 1
	typeReply   = 2
)

// magic opens every message.
var magic = [4]byte{0x00, 'Q', 'P', 'A'}

// TxID identifies a request; the reply echoes it.
type TxID [16]byte

// Errors of the parsers.
var (
	ErrShort   = errors.New("addrprobe: message too short")
	ErrMagic   = errors.New("addrprobe: not an address probe")
	ErrType    = errors.New("addrprobe: wrong message type")
	ErrAddress = errors.New("addrprobe: invalid address in reply")
)

// IsProbe reports whether b starts like an address-probe message.
func IsProbe(b []byte) bool {
	return len(b) >= len(magic) && [4]byte(b[:4]) == magic
}

// AppendRequest appends a request with transaction id to b.
func AppendRequest(b []byte, id TxID) []byte {
	b = append(b, magic[:]...)
	b = append(b, typeRequest, 0, 0, 0)
	b = append(b, id[:]...)
	var pad [Size - 24]byte
	return append(b, pad[:]...)
}

// ParseRequest returns the transaction ID of request b. Bytes after the
// ID are ignored (reserved), and a request shorter than Size is refused:
// the reply must not be larger than what asked for it.
func ParseRequest(b []byte) (TxID, error) {
	if err := check(b, typeRequest); err != nil {
		return TxID{}, err
	}
	return TxID(b[8:24]), nil
}

// AppendReply appends the reply to request id, from a client seen at from,
// to b.
func AppendReply(b []byte, id TxID, from netip.AddrPort) []byte {
	a := from.Addr()
	fam := byte(6)
	if a.Unmap().Is4() {
		fam, a = 4, a.Unmap()
	}
	b = append(b, magic[:]...)
	b = append(b, typeReply, fam)
	b = binary.BigEndian.AppendUint16(b, from.Port())
	b = append(b, id[:]...)
	a16 := a.As16()
	if fam == 4 {
		a4 := a.As4()
		a16 = [16]byte{}
		copy(a16[:], a4[:])
	}
	return append(b, a16[:]...)
}

// ParseReply returns the transaction ID and the observed address of reply
// b. An IPv4 address comes with family 4, never mapped into IPv6.
func ParseReply(b []byte) (TxID, netip.AddrPort, error) {
	if err := check(b, typeReply); err != nil {
		return TxID{}, netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(b[6:8])
	var a netip.Addr
	switch b[5] {
	case 4:
		a = netip.AddrFrom4([4]byte(b[24:28]))
	case 6:
		a = netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return TxID{}, netip.AddrPort{}, ErrAddress
	}
	if port == 0 || a.IsUnspecified() || a.Is4In6() {
		return TxID{}, netip.AddrPort{}, ErrAddress
	}
	return TxID(b[8:24]), netip.AddrPortFrom(a, port), nil
}

func check(b []byte, typ byte) error {
	if len(b) < len(magic) || [4]byte(b[:4]) != magic {
		return ErrMagic
	}
	if len(b) < Size {
		return ErrShort
	}
	if b[4] != typ {
		return ErrType
	}
	return nil
}
