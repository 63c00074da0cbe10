// Package wire parses QUIC version 1 packets (RFC 9000, RFC 9001).
//
// It provides allocation-free header parsing for relays that route packets
// by connection ID, and decryption of Initial packets for peers that must
// inspect a client's first flight, for example to read the ALPN protocols
// offered in its TLS ClientHello.
//
// None of the functions in this package panic, whatever their input.
// Slices returned by the header parsing functions alias their input.
package wire

import (
	"encoding/binary"
	"errors"
	"strconv"
)

// CIDLen is the length of the connection IDs that peers in this system
// choose for themselves. It determines where the destination connection ID
// of a short header packet ends.
const CIDLen = 12

// MaxCIDLen is the maximum length of a connection ID in QUIC version 1.
const MaxCIDLen = 20

// Version1 is the version number of QUIC version 1 (RFC 9000).
const Version1 = 0x00000001

// maxVarint is the largest value that can be encoded as a QUIC
// variable-length integer.
const maxVarint = 1<<62 - 1

// Errors returned by the header parsing functions.
var (
	// ErrTruncated is returned when the input ends before a complete
	// structure could be read, or a length field points past its end.
	ErrTruncated = errors.New("wire: truncated input")

	// ErrNotLongHeader is returned when a long header packet is required
	// but the packet has a short header.
	ErrNotLongHeader = errors.New("wire: not a long header packet")

	// ErrConnIDTooLong is returned for a connection ID longer than
	// MaxCIDLen bytes.
	ErrConnIDTooLong = errors.New("wire: connection ID too long")

	// ErrVersionNegotiation is returned by ParseLongHeader for a Version
	// Negotiation packet (version 0).
	ErrVersionNegotiation = errors.New("wire: version negotiation packet")

	// ErrUnsupportedVersion is returned by ParseLongHeader for a long
	// header packet of a version other than QUIC version 1.
	ErrUnsupportedVersion = errors.New("wire: unsupported QUIC version")
)

// IsLongHeader reports whether first, the first byte of a QUIC packet,
// indicates a long header.
func IsLongHeader(first byte) bool {
	return first&0x80 != 0
}

// DestCID returns the destination connection ID of the QUIC packet at the
// start of b. The result aliases b.
//
// For a short header packet the connection ID is assumed to be CIDLen bytes
// long. The fixed bit is not checked, so that packets of peers that grease
// it (RFC 9287) are accepted. For a long header packet the connection ID
// length is read from the packet and must not exceed MaxCIDLen; the version
// is not checked, since the location of the destination connection ID is
// version independent (RFC 8999).
func DestCID(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, ErrTruncated
	}
	if !IsLongHeader(b[0]) {
		if len(b) < 1+CIDLen {
			return nil, ErrTruncated
		}
		return b[1 : 1+CIDLen : 1+CIDLen], nil
	}
	if len(b) < 6 {
		return nil, ErrTruncated
	}
	n := int(b[5])
	if n > MaxCIDLen {
		return nil, ErrConnIDTooLong
	}
	if len(b) < 6+n {
		return nil, ErrTruncated
	}
	return b[6 : 6+n : 6+n], nil
}

// A PacketType is the type of a QUIC version 1 long header packet.
// Its values equal the type bits of the packet's first byte.
type PacketType uint8

// Long header packet types of QUIC version 1 (RFC 9000, Section 17.2).
const (
	Initial   PacketType = 0x0
	ZeroRTT   PacketType = 0x1
	Handshake PacketType = 0x2
	Retry     PacketType = 0x3
)

// String returns the name of the packet type as used in RFC 9000.
func (t PacketType) String() string {
	switch t {
	case Initial:
		return "Initial"
	case ZeroRTT:
		return "0-RTT"
	case Handshake:
		return "Handshake"
	case Retry:
		return "Retry"
	}
	return "PacketType(" + strconv.Itoa(int(t)) + ")"
}

// A LongHeader is the parsed header of a QUIC long header packet.
// Its slices alias the packet they were parsed from.
type LongHeader struct {
	// Type is the packet type.
	Type PacketType

	// Version is the QUIC version.
	Version uint32

	// DCID and SCID are the destination and source connection IDs.
	DCID, SCID []byte

	// Token is the token of an Initial packet, or the Retry Token of a
	// Retry packet (without the Retry Integrity Tag).
	Token []byte

	// Length is the value of the Length field: the combined length of the
	// packet number and the protected payload. It is zero for Retry
	// packets, which have no Length field.
	Length uint64

	// PNOffset is the offset of the packet number field from the start of
	// the packet. The packet ends at PNOffset+Length. It is zero for Retry
	// packets, which have no packet number.
	PNOffset int
}

// ParseLongHeader parses the header of the QUIC long header packet at the
// start of b. The packet may be followed by other, coalesced packets; they
// begin at hdr.PNOffset+int(hdr.Length).
//
// ParseLongHeader accepts only QUIC version 1. For a Version Negotiation
// packet it returns ErrVersionNegotiation and for any other version
// ErrUnsupportedVersion; in both cases the returned header has its Version,
// DCID and SCID fields set, as these are version independent. The fixed bit
// is not checked (RFC 9287). A packet whose Length field exceeds the
// remaining input is rejected with ErrTruncated.
func ParseLongHeader(b []byte) (LongHeader, error) {
	var h LongHeader
	if len(b) == 0 {
		return h, ErrTruncated
	}
	if !IsLongHeader(b[0]) {
		return h, ErrNotLongHeader
	}
	if len(b) < 6 {
		return h, ErrTruncated
	}
	h.Version = binary.BigEndian.Uint32(b[1:5])
	pos := 5
	var err error
	if h.DCID, pos, err = readCID(b, pos); err != nil {
		return LongHeader{}, err
	}
	if h.SCID, pos, err = readCID(b, pos); err != nil {
		return LongHeader{}, err
	}
	switch h.Version {
	case Version1:
	case 0:
		return h, ErrVersionNegotiation
	default:
		return h, ErrUnsupportedVersion
	}
	h.Type = PacketType((b[0] & 0x30) >> 4)
	switch h.Type {
	case Retry:
		const tagLen = 16
		if len(b)-pos < tagLen {
			return LongHeader{}, ErrTruncated
		}
		h.Token = b[pos : len(b)-tagLen : len(b)-tagLen]
		return h, nil
	case Initial:
		n, l, err := ReadVarint(b[pos:])
		if err != nil {
			return LongHeader{}, err
		}
		pos += l
		if n > uint64(len(b)-pos) {
			return LongHeader{}, ErrTruncated
		}
		h.Token = b[pos : pos+int(n) : pos+int(n)]
		pos += int(n)
	}
	n, l, err := ReadVarint(b[pos:])
	if err != nil {
		return LongHeader{}, err
	}
	pos += l
	if n > uint64(len(b)-pos) {
		return LongHeader{}, ErrTruncated
	}
	h.Length = n
	h.PNOffset = pos
	return h, nil
}

// readCID reads a connection ID preceded by its one-byte length at b[pos:].
// It returns the connection ID and the position following it.
func readCID(b []byte, pos int) (cid []byte, next int, err error) {
	if pos >= len(b) {
		return nil, pos, ErrTruncated
	}
	n := int(b[pos])
	pos++
	if n > MaxCIDLen {
		return nil, pos, ErrConnIDTooLong
	}
	if len(b)-pos < n {
		return nil, pos, ErrTruncated
	}
	return b[pos : pos+n : pos+n], pos + n, nil
}

// ReadVarint reads a QUIC variable-length integer (RFC 9000, Section 16)
// from the start of b. It returns the value and the number of bytes read,
// or ErrTruncated if b is too short to hold the encoded integer.
func ReadVarint(b []byte) (v uint64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, ErrTruncated
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrTruncated
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n, nil
}
