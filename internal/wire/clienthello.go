package wire

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

// MaxCryptoData is the number of bytes of the crypto stream a CryptoStream
// buffers at most: no fragment may extend beyond this offset.
const MaxCryptoData = 64 << 10

// maxCryptoFragments bounds the number of disjoint byte ranges a
// CryptoStream keeps, so that a peer cannot make it do quadratic work.
const maxCryptoFragments = 256

// minClientDatagram is the minimum size of a UDP datagram carrying a
// client's Initial packet (RFC 9000, Section 14.1).
const minClientDatagram = 1200

// Errors returned by CryptoStream and the ClientHello parsers.
var (
	// ErrTooLarge is returned when crypto stream data or a handshake
	// message would exceed MaxCryptoData bytes.
	ErrTooLarge = errors.New("wire: crypto data exceeds buffer limit")

	// ErrTooFragmented is returned when crypto stream data arrives in too
	// many disjoint fragments.
	ErrTooFragmented = errors.New("wire: crypto data too fragmented")

	// ErrNotClientHello is returned when the handshake message is not a
	// TLS ClientHello.
	ErrNotClientHello = errors.New("wire: handshake message is not a ClientHello")

	// ErrMalformedClientHello is returned for a ClientHello that does not
	// conform to RFC 8446. It is wrapped in an error that describes the
	// problem.
	ErrMalformedClientHello = errors.New("wire: malformed ClientHello")

	// ErrShortDatagram is returned by InspectClientInitials for a datagram
	// smaller than the 1200 bytes required of datagrams carrying a
	// client's Initial packets (RFC 9000, Section 14.1).
	ErrShortDatagram = errors.New("wire: client Initial datagram shorter than 1200 bytes")

	// ErrMismatchedConnID is returned by InspectClientInitials when the
	// connection IDs of a packet differ from those of the first packet.
	ErrMismatchedConnID = errors.New("wire: connection IDs differ from first Initial packet")
)

// A span is a range [start, end) of crypto stream offsets.
type span struct {
	start, end int
}

// A CryptoStream reassembles the data of a crypto stream, such as the
// Initial crypto stream carrying a TLS ClientHello, from CRYPTO frame
// fragments. Fragments may arrive in any order and may duplicate or overlap
// each other; where they overlap, the data received first is kept.
//
// The zero value is an empty stream ready to use.
type CryptoStream struct {
	buf   []byte
	spans []span // received ranges, sorted, neither overlapping nor adjacent
}

// Insert adds data received at offset of the stream.
//
// It returns ErrTooLarge if the data extends beyond MaxCryptoData, or if the
// handshake message at the start of the stream declares a length that
// exceeds that limit, and ErrTooFragmented if the stream would consist of
// too many disjoint ranges. The stream is unchanged after an error, except
// that data revealing an oversized handshake message is kept.
func (s *CryptoStream) Insert(offset uint64, data []byte) error {
	if offset > MaxCryptoData || uint64(len(data)) > MaxCryptoData-offset {
		return ErrTooLarge
	}
	if len(data) == 0 {
		return nil
	}
	start, end := int(offset), int(offset)+len(data)

	// Spans i through j-1 overlap or touch [start, end) and are merged
	// with it.
	i, _ := slices.BinarySearchFunc(s.spans, start, func(sp span, off int) int { return sp.end - off })
	j := i
	for j < len(s.spans) && s.spans[j].start <= end {
		j++
	}
	if len(s.spans)-(j-i)+1 > maxCryptoFragments {
		return ErrTooFragmented
	}

	if end > len(s.buf) {
		s.buf = append(s.buf, make([]byte, end-len(s.buf))...)
	}
	merged := span{start, end}
	pos := start // copy data into the gaps between spans i through j-1
	for _, sp := range s.spans[i:j] {
		if sp.start > pos {
			copy(s.buf[pos:sp.start], data[pos-start:])
		}
		pos = max(pos, sp.end)
		merged.start = min(merged.start, sp.start)
		merged.end = max(merged.end, sp.end)
	}
	if pos < end {
		copy(s.buf[pos:end], data[pos-start:])
	}
	s.spans = slices.Replace(s.spans, i, j, merged)

	if n, ok := s.messageLen(); ok && n > MaxCryptoData {
		return ErrTooLarge
	}
	return nil
}

// messageLen returns the total length, including its 4-byte header, of the
// handshake message at the start of the stream, if its header has arrived.
func (s *CryptoStream) messageLen() (int, bool) {
	p := s.Prefix()
	if len(p) < 4 {
		return 0, false
	}
	return 4 + (int(p[1])<<16 | int(p[2])<<8 | int(p[3])), true
}

// Prefix returns the contiguous data received from offset 0 onwards.
// The result aliases the stream's buffer and remains valid until the next
// call to Insert.
func (s *CryptoStream) Prefix() []byte {
	if len(s.spans) == 0 || s.spans[0].start != 0 {
		return nil
	}
	n := s.spans[0].end
	return s.buf[:n:n]
}

// Complete reports whether the contiguous data from offset 0 holds a full
// TLS handshake message: a 4-byte header consisting of the message type
// and a 3-byte length, followed by that many bytes.
func (s *CryptoStream) Complete() bool {
	n, ok := s.messageLen()
	return ok && n <= len(s.Prefix())
}

// Message returns the handshake message at the start of the stream,
// including its 4-byte header, or nil if it is not complete.
// The result aliases the stream's buffer and remains valid until the next
// call to Insert.
func (s *CryptoStream) Message() []byte {
	if !s.Complete() {
		return nil
	}
	n, _ := s.messageLen()
	return s.buf[:n:n]
}

// ALPN is like ALPNFromPartialClientHello, but uses all data received so
// far, even where it is not contiguous: the ALPN extension is found as soon
// as the bytes that locate it and the extension itself have arrived.
func (s *CryptoStream) ALPN() (alpn []string, found bool, err error) {
	p := helloParser{b: s.buf, spans: s.spans}
	return p.parse()
}

// ParseClientHelloALPN parses msg, a complete TLS ClientHello handshake
// message including its 4-byte header, and returns the protocol names of
// its application_layer_protocol_negotiation extension (RFC 7301). If the
// ClientHello has no such extension, it returns nil and a nil error.
//
// The message is parsed only as far as needed to locate the extensions,
// and each extension only as far as needed to skip it; the ALPN extension
// is validated fully.
func ParseClientHelloALPN(msg []byte) ([]string, error) {
	if len(msg) < 4 {
		return nil, ErrTruncated
	}
	if msg[0] != typeClientHello {
		return nil, ErrNotClientHello
	}
	switch n := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])); {
	case len(msg) < n:
		return nil, ErrTruncated
	case len(msg) > n:
		return nil, malformed("trailing data after message")
	}
	p := helloParser{b: msg, spans: []span{{0, len(msg)}}}
	alpn, found, err := p.parse()
	if err == nil && !found {
		return nil, ErrTruncated // unreachable: the whole message is known
	}
	return alpn, err
}

// ALPNFromPartialClientHello is like ParseClientHelloALPN, but data may be
// only a prefix of the ClientHello handshake message; bytes following the
// message are ignored.
//
// It returns found=true when the result is determined by data: either the
// ALPN extension lies fully inside data, or the headers of all extensions
// do and none is an ALPN extension, in which case alpn is nil. It returns
// found=false and a nil error when data ends too early, and an error when
// data is not the start of a well-formed ClientHello. Only the parts of the
// ClientHello that locate the extensions and the ALPN extension itself are
// examined, so an error may still be found in bytes following data.
func ALPNFromPartialClientHello(data []byte) (alpn []string, found bool, err error) {
	p := helloParser{b: data, spans: []span{{0, len(data)}}}
	return p.parse()
}

// malformed returns an error wrapping ErrMalformedClientHello.
func malformed(what string) error {
	return fmt.Errorf("%w: %s", ErrMalformedClientHello, what)
}

// TLS constants (RFC 8446, RFC 7301).
const (
	typeClientHello = 1
	extensionALPN   = 16
)

// A helloParser locates the ALPN extension of a ClientHello of which only
// some byte ranges may be known.
type helloParser struct {
	b     []byte // message bytes, indexed from the start of the header
	spans []span // known ranges of b, sorted
	end   int    // end of the message, once its header has been read
}

// status is the outcome of a read by a helloParser.
type status int

const (
	statusOK      status = iota
	statusMissing        // the bytes have not been received
	statusBeyond         // the bytes lie beyond the end of the message
)

// read returns the n bytes at off.
func (p *helloParser) read(off, n int) ([]byte, status) {
	if p.end > 0 && n > p.end-off {
		return nil, statusBeyond
	}
	if n == 0 {
		return nil, statusOK
	}
	i, found := slices.BinarySearchFunc(p.spans, off, func(sp span, off int) int {
		if sp.end <= off {
			return -1
		}
		if sp.start > off {
			return 1
		}
		return 0
	})
	if !found || n > min(p.spans[i].end, len(p.b))-off {
		return nil, statusMissing
	}
	return p.b[off : off+n], statusOK
}

// skip returns off+n if it does not lie beyond the end of the message.
func (p *helloParser) skip(off, n int) (int, bool) {
	return off + n, n <= p.end-off
}

// errIncomplete signals that the parser needs bytes that are missing.
var errIncomplete = errors.New("wire: incomplete ClientHello")

// parse returns the ALPN protocols of the ClientHello, reporting whether
// they are determined by the known bytes.
func (p *helloParser) parse() (alpn []string, found bool, err error) {
	alpn, err = p.parseHello()
	switch err {
	case nil:
		return alpn, true, nil
	case errIncomplete:
		return nil, false, nil
	}
	return nil, false, err
}

// parseHello implements parse. It returns errIncomplete when it needs bytes
// that are missing.
func (p *helloParser) parseHello() ([]string, error) {
	h, st := p.read(0, 4)
	if st != statusOK {
		return nil, errIncomplete
	}
	if h[0] != typeClientHello {
		return nil, ErrNotClientHello
	}
	p.end = 4 + (int(h[1])<<16 | int(h[2])<<8 | int(h[3]))

	// legacy_version (2 bytes) and random (32 bytes).
	pos, ok := p.skip(4, 2+32)
	if !ok {
		return nil, malformed("truncated random")
	}
	// legacy_session_id, cipher_suites and legacy_compression_methods.
	n, err := p.length(pos, 1, "session ID")
	if err != nil {
		return nil, err
	}
	if n > 32 {
		return nil, malformed("session ID too long")
	}
	if pos, ok = p.skip(pos+1, n); !ok {
		return nil, malformed("truncated session ID")
	}
	if n, err = p.length(pos, 2, "cipher suites"); err != nil {
		return nil, err
	}
	if n < 2 || n%2 != 0 {
		return nil, malformed("invalid cipher suites length")
	}
	if pos, ok = p.skip(pos+2, n); !ok {
		return nil, malformed("truncated cipher suites")
	}
	if n, err = p.length(pos, 1, "compression methods"); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, malformed("no compression methods")
	}
	if pos, ok = p.skip(pos+1, n); !ok {
		return nil, malformed("truncated compression methods")
	}
	if pos == p.end {
		return nil, nil // no extensions
	}

	if n, err = p.length(pos, 2, "extensions"); err != nil {
		return nil, err
	}
	pos += 2
	if n != p.end-pos {
		return nil, malformed("extensions length does not match message length")
	}
	var alpn []string
	var haveALPN bool
	for pos < p.end {
		h, st := p.read(pos, 4)
		switch st {
		case statusBeyond:
			return nil, malformed("truncated extension header")
		case statusMissing:
			if haveALPN {
				return alpn, nil
			}
			return nil, errIncomplete
		}
		typ := int(h[0])<<8 | int(h[1])
		n := int(h[2])<<8 | int(h[3])
		pos += 4
		if n > p.end-pos {
			return nil, malformed("truncated extension")
		}
		if typ == extensionALPN {
			if haveALPN {
				return nil, malformed("duplicate ALPN extension")
			}
			data, st := p.read(pos, n)
			if st != statusOK {
				return nil, errIncomplete
			}
			if alpn, err = parseALPN(data); err != nil {
				return nil, err
			}
			haveALPN = true
		}
		pos += n
	}
	return alpn, nil
}

// length reads the size-byte length field at off.
func (p *helloParser) length(off, size int, what string) (int, error) {
	b, st := p.read(off, size)
	switch st {
	case statusMissing:
		return 0, errIncomplete
	case statusBeyond:
		return 0, malformed("truncated " + what + " length")
	}
	n := 0
	for _, c := range b {
		n = n<<8 | int(c)
	}
	return n, nil
}

// parseALPN parses the data of an ALPN extension: a non-empty list of
// non-empty protocol names (RFC 7301, Section 3.1).
func parseALPN(b []byte) ([]string, error) {
	if len(b) < 2 || int(b[0])<<8|int(b[1]) != len(b)-2 {
		return nil, malformed("invalid ALPN extension length")
	}
	b = b[2:]
	if len(b) == 0 {
		return nil, malformed("empty ALPN protocol list")
	}
	var protos []string
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || n > len(b)-1 {
			return nil, malformed("invalid ALPN protocol name length")
		}
		protos = append(protos, string(b[1:1+n]))
		b = b[1+n:]
	}
	return protos, nil
}

// ClientInitialInfo describes the first flight of a QUIC client, as
// reported by InspectClientInitials.
type ClientInitialInfo struct {
	// ODCID is the original destination connection ID, chosen by the
	// client, from which the Initial keys are derived.
	ODCID []byte

	// SCID is the client's source connection ID.
	SCID []byte

	// ALPN lists the protocols the client offers, if the ALPN extension
	// of the ClientHello was found.
	ALPN []string

	// Complete reports whether the whole ClientHello was received.
	Complete bool

	// Datagrams is the number of datagrams inspected.
	Datagrams int
}

// InspectClientInitials decrypts the Initial packets of a client's first
// flight, given as the UDP datagrams carrying it, and reassembles the
// ClientHello from their CRYPTO frames.
//
// Each datagram must be at least 1200 bytes long and begin with a QUIC
// version 1 Initial packet; the connection IDs of the first packet of the
// first datagram must be repeated by all Initial packets. Initial packets
// coalesced after the first in a datagram are inspected too; other
// coalesced packets are skipped. Datagrams may be passed in any order and
// may contain retransmissions.
//
// The result reports whether the ClientHello is complete and, if the ALPN
// extension has been received, the offered protocols, which are found even
// if other parts of the ClientHello are missing. An error is returned for
// packets that cannot be decrypted, malformed frames, and data that is not
// a well-formed ClientHello. The slices of the result do not alias
// datagrams.
func InspectClientInitials(datagrams [][]byte) (ClientInitialInfo, error) {
	if len(datagrams) == 0 {
		return ClientInitialInfo{}, ErrTruncated
	}
	first, err := ParseLongHeader(datagrams[0])
	if err != nil {
		return ClientInitialInfo{}, err
	}
	if first.Type != Initial {
		return ClientInitialInfo{}, ErrNotInitial
	}
	keys, err := NewInitialKeys(first.DCID)
	if err != nil {
		return ClientInitialInfo{}, err
	}

	var (
		info   ClientInitialInfo
		stream CryptoStream
	)
	for _, d := range datagrams {
		if len(d) < minClientDatagram {
			return ClientInitialInfo{}, ErrShortDatagram
		}
		if !IsLongHeader(d[0]) {
			return ClientInitialInfo{}, ErrNotLongHeader
		}
		for i := 0; len(d) > 0 && IsLongHeader(d[0]); i++ {
			hdr, err := ParseLongHeader(d)
			if err != nil {
				if i == 0 {
					return ClientInitialInfo{}, err
				}
				break // not parseable: ignore the rest of the datagram
			}
			if hdr.Type != Initial {
				if i == 0 {
					return ClientInitialInfo{}, ErrNotInitial
				}
				if hdr.Type == Retry {
					break // a Retry packet has no length and ends the datagram
				}
				d = d[hdr.PNOffset+int(hdr.Length):]
				continue
			}
			if !bytes.Equal(hdr.DCID, first.DCID) || !bytes.Equal(hdr.SCID, first.SCID) {
				return ClientInitialInfo{}, ErrMismatchedConnID
			}
			payload, rest, _, err := keys.Open(d, true)
			if err != nil {
				return ClientInitialInfo{}, err
			}
			if err := CryptoFrames(payload, stream.Insert); err != nil {
				return ClientInitialInfo{}, err
			}
			d = rest
		}
		info.Datagrams++
	}

	info.ODCID = bytes.Clone(first.DCID)
	info.SCID = bytes.Clone(first.SCID)
	if msg := stream.Message(); msg != nil {
		info.Complete = true
		info.ALPN, err = ParseClientHelloALPN(msg)
	} else {
		info.ALPN, _, err = stream.ALPN()
	}
	if err != nil {
		return ClientInitialInfo{}, err
	}
	return info, nil
}
