package wire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Errors returned by Initial packet decryption and frame parsing.
var (
	// ErrNotInitial is returned when an Initial packet is required but the
	// packet is of another type.
	ErrNotInitial = errors.New("wire: not an Initial packet")

	// ErrShortPacket is returned for a packet that is too short to hold a
	// header protection sample (RFC 9001, Section 5.4.2), that is, whose
	// Length field leaves fewer than 20 bytes for the packet number and
	// payload.
	ErrShortPacket = errors.New("wire: packet too short for header protection sample")

	// ErrDecrypt is returned when a packet fails authentication.
	ErrDecrypt = errors.New("wire: packet decryption failed")

	// ErrReservedBits is returned for a packet whose reserved header bits
	// are not zero after header protection has been removed.
	ErrReservedBits = errors.New("wire: reserved header bits set")

	// ErrNoFrames is returned for a packet whose payload is empty.
	ErrNoFrames = errors.New("wire: packet contains no frames")

	// ErrFrameNotAllowed is returned by CryptoFrames for a frame type that
	// must not appear in an Initial packet. It is wrapped in an error that
	// names the frame type.
	ErrFrameNotAllowed = errors.New("wire: frame type not allowed in Initial packet")

	// ErrFrameEncoding is returned by CryptoFrames for a malformed frame.
	// It is wrapped in an error that names the frame.
	ErrFrameEncoding = errors.New("wire: malformed frame")
)

// initialSalt is the salt for deriving Initial secrets in QUIC version 1
// (RFC 9001, Section 5.2).
var initialSalt = []byte{
	0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
	0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
}

const (
	keyLen     = 16 // AES-128 key length
	ivLen      = 12 // AEAD nonce length
	hpKeyLen   = 16 // header protection key length
	sampleOff  = 4  // offset of the header protection sample from the packet number
	sampleLen  = 16 // length of the header protection sample
	maxPNLen   = 4  // maximum length of an encoded packet number
	secretSize = sha256.Size
)

// InitialKeys holds the keys protecting the Initial packets of one
// connection in both directions, derived from the connection's original
// destination connection ID. Deriving the keys once and calling Open for
// every datagram of a flight avoids repeating the key derivation.
type InitialKeys struct {
	client initialKeys // client_in: protects packets sent by the client
	server initialKeys // server_in: protects packets sent by the server
}

// initialKeys holds the packet and header protection keys of one direction.
type initialKeys struct {
	aead cipher.AEAD
	iv   [ivLen]byte
	hp   cipher.Block
}

// NewInitialKeys derives the Initial keys of QUIC version 1
// (RFC 9001, Section 5.2) from odcid, the destination connection ID of the
// first Initial packet the client sent.
func NewInitialKeys(odcid []byte) (*InitialKeys, error) {
	if len(odcid) > MaxCIDLen {
		return nil, ErrConnIDTooLong
	}
	clientSecret, serverSecret, err := initialSecrets(odcid)
	if err != nil {
		return nil, err
	}
	k := new(InitialKeys)
	if err := k.client.init(clientSecret); err != nil {
		return nil, err
	}
	if err := k.server.init(serverSecret); err != nil {
		return nil, err
	}
	return k, nil
}

// initialSecrets returns the client and server Initial secrets for odcid.
func initialSecrets(odcid []byte) (client, server []byte, err error) {
	initial, err := hkdf.Extract(sha256.New, odcid, initialSalt)
	if err != nil {
		return nil, nil, err
	}
	if client, err = expandLabel(initial, "client in", secretSize); err != nil {
		return nil, nil, err
	}
	if server, err = expandLabel(initial, "server in", secretSize); err != nil {
		return nil, nil, err
	}
	return client, server, nil
}

// packetKeys derives the AEAD key, IV and header protection key from a
// QUIC secret (RFC 9001, Section 5.1).
func packetKeys(secret []byte) (key, iv, hp []byte, err error) {
	if key, err = expandLabel(secret, "quic key", keyLen); err != nil {
		return nil, nil, nil, err
	}
	if iv, err = expandLabel(secret, "quic iv", ivLen); err != nil {
		return nil, nil, nil, err
	}
	if hp, err = expandLabel(secret, "quic hp", hpKeyLen); err != nil {
		return nil, nil, nil, err
	}
	return key, iv, hp, nil
}

// init sets up the keys of one direction from its secret.
func (k *initialKeys) init(secret []byte) error {
	key, iv, hp, err := packetKeys(secret)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return err
	}
	if k.hp, err = aes.NewCipher(hp); err != nil {
		return err
	}
	copy(k.iv[:], iv)
	return nil
}

// expandLabel implements HKDF-Expand-Label of TLS 1.3 (RFC 8446,
// Section 7.1) with SHA-256 and an empty context.
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	const prefix = "tls13 "
	info := make([]byte, 0, 2+1+len(prefix)+len(label)+1)
	info = append(info, byte(length>>8), byte(length))
	info = append(info, byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, 0) // empty context
	return hkdf.Expand(sha256.New, secret, string(info), length)
}

// OpenInitial decrypts the first packet of datagram, which must be a QUIC
// version 1 Initial packet, with keys derived from odcid, the destination
// connection ID of the first Initial packet the client sent. For a client's
// first flight odcid equals hdr.DCID. If fromClient is true the packet is
// opened with the client's keys, otherwise with the server's.
//
// OpenInitial returns the decrypted payload, which holds the packet's
// frames and is newly allocated, the rest of the datagram following the
// packet, which may hold coalesced packets, and the packet's header, whose
// slices alias datagram. The datagram is not modified.
//
// The packet number is taken to be its truncated encoding, which is exact
// for the packet numbers below 2^31 used in a connection's first flights.
func OpenInitial(datagram, odcid []byte, fromClient bool) (payload, rest []byte, hdr LongHeader, err error) {
	k, err := NewInitialKeys(odcid)
	if err != nil {
		return nil, nil, LongHeader{}, err
	}
	return k.Open(datagram, fromClient)
}

// Open is like OpenInitial, using the keys k.
func (k *InitialKeys) Open(datagram []byte, fromClient bool) (payload, rest []byte, hdr LongHeader, err error) {
	hdr, err = ParseLongHeader(datagram)
	if err != nil {
		return nil, nil, LongHeader{}, err
	}
	if hdr.Type != Initial {
		return nil, nil, LongHeader{}, ErrNotInitial
	}
	keys := &k.server
	if fromClient {
		keys = &k.client
	}
	pnOff := hdr.PNOffset
	end := pnOff + int(hdr.Length) // ParseLongHeader ensures end <= len(datagram)
	if end-pnOff < sampleOff+sampleLen {
		return nil, nil, LongHeader{}, ErrShortPacket
	}

	// Remove header protection (RFC 9001, Section 5.4) on a private copy
	// of the packet, so that the datagram stays intact.
	var mask [aes.BlockSize]byte
	keys.hp.Encrypt(mask[:], datagram[pnOff+sampleOff:pnOff+sampleOff+sampleLen])
	buf := make([]byte, end)
	copy(buf, datagram)
	buf[0] ^= mask[0] & 0x0f
	pnLen := int(buf[0]&0x03) + 1
	var pn uint64
	for i := range pnLen {
		buf[pnOff+i] ^= mask[1+i]
		pn = pn<<8 | uint64(buf[pnOff+i])
	}

	nonce := keys.iv
	for i := range 8 {
		nonce[ivLen-1-i] ^= byte(pn >> (8 * i))
	}
	hdrEnd := pnOff + pnLen
	ciphertext := buf[hdrEnd:end]
	payload, err = keys.aead.Open(ciphertext[:0], nonce[:], ciphertext, buf[:hdrEnd])
	if err != nil {
		return nil, nil, LongHeader{}, ErrDecrypt
	}
	// Reserved bits are checked only after the packet has been
	// authenticated (RFC 9000, Section 17.2).
	if buf[0]&0x0c != 0 {
		return nil, nil, LongHeader{}, ErrReservedBits
	}
	if len(payload) == 0 {
		return nil, nil, LongHeader{}, ErrNoFrames
	}
	return payload[:len(payload):len(payload)], datagram[end:], hdr, nil
}

// Frame types that may appear in Initial packets (RFC 9000, Section 12.4).
const (
	framePadding         = 0x00
	framePing            = 0x01
	frameAck             = 0x02
	frameAckECN          = 0x03
	frameCrypto          = 0x06
	frameConnectionClose = 0x1c
)

// CryptoFrames walks the frames of payload, the decrypted payload of an
// Initial packet, and calls fn for the offset and data of each CRYPTO frame,
// in the order they appear. The data aliases payload.
//
// Only the frames permitted in Initial packets are accepted: PADDING, PING,
// ACK, CRYPTO and CONNECTION_CLOSE of type 0x1c. Any other frame type yields
// an error wrapping ErrFrameNotAllowed, and a malformed frame an error
// wrapping ErrFrameEncoding. If fn returns an error, CryptoFrames stops and
// returns that error unchanged.
func CryptoFrames(payload []byte, fn func(offset uint64, data []byte) error) error {
	b := payload
	for len(b) > 0 {
		typ, n, err := ReadVarint(b)
		if err != nil {
			return frameError("frame type")
		}
		if n != 1 {
			return fmt.Errorf("%w: type 0x%x in %d-byte encoding", ErrFrameNotAllowed, typ, n)
		}
		b = b[1:]
		switch typ {
		case framePadding:
			for len(b) > 0 && b[0] == framePadding {
				b = b[1:]
			}
		case framePing:
		case frameAck, frameAckECN:
			if b, err = skipAck(b, typ == frameAckECN); err != nil {
				return err
			}
		case frameCrypto:
			var offset uint64
			var data []byte
			if offset, data, b, err = parseCrypto(b); err != nil {
				return err
			}
			if err := fn(offset, data); err != nil {
				return err
			}
		case frameConnectionClose:
			if b, err = skipConnectionClose(b); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: type 0x%x", ErrFrameNotAllowed, typ)
		}
	}
	return nil
}

// frameError returns an error wrapping ErrFrameEncoding for the named frame.
func frameError(what string) error {
	return fmt.Errorf("%w: %s", ErrFrameEncoding, what)
}

// varints reads len(v) consecutive variable-length integers from b into v
// and returns the remaining input.
func varints(b []byte, v ...*uint64) ([]byte, bool) {
	for _, p := range v {
		x, n, err := ReadVarint(b)
		if err != nil {
			return nil, false
		}
		*p = x
		b = b[n:]
	}
	return b, true
}

// skipAck validates the body of an ACK frame (RFC 9000, Section 19.3)
// at the start of b and returns the input following it.
func skipAck(b []byte, ecn bool) ([]byte, error) {
	var largest, delay, count, first uint64
	b, ok := varints(b, &largest, &delay, &count, &first)
	if !ok {
		return nil, frameError("truncated ACK frame")
	}
	if first > largest {
		return nil, frameError("ACK range below packet number 0")
	}
	smallest := largest - first
	// Every range takes at least two bytes, so count is bounded by the
	// input before the loop ends.
	for range count {
		var gap, length uint64
		if b, ok = varints(b, &gap, &length); !ok {
			return nil, frameError("truncated ACK frame")
		}
		if gap+2 > smallest || length > smallest-gap-2 {
			return nil, frameError("ACK range below packet number 0")
		}
		smallest = smallest - gap - 2 - length
	}
	if ecn {
		var ect0, ect1, ce uint64
		if b, ok = varints(b, &ect0, &ect1, &ce); !ok {
			return nil, frameError("truncated ACK frame")
		}
	}
	return b, nil
}

// parseCrypto parses the body of a CRYPTO frame (RFC 9000, Section 19.6)
// at the start of b.
func parseCrypto(b []byte) (offset uint64, data, rest []byte, err error) {
	var length uint64
	b, ok := varints(b, &offset, &length)
	if !ok {
		return 0, nil, nil, frameError("truncated CRYPTO frame")
	}
	if length > uint64(len(b)) {
		return 0, nil, nil, frameError("truncated CRYPTO frame")
	}
	if offset+length > maxVarint {
		return 0, nil, nil, frameError("CRYPTO frame exceeds maximum stream offset")
	}
	return offset, b[:length:length], b[length:], nil
}

// skipConnectionClose validates the body of a CONNECTION_CLOSE frame of
// type 0x1c (RFC 9000, Section 19.19) at the start of b and returns the
// input following it.
func skipConnectionClose(b []byte) ([]byte, error) {
	var code, frameType, length uint64
	b, ok := varints(b, &code, &frameType, &length)
	if !ok || length > uint64(len(b)) {
		return nil, frameError("truncated CONNECTION_CLOSE frame")
	}
	return b[length:], nil
}
