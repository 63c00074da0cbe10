package quicpipe

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// Sleep datagrams carry a sleeping listener's side of the relay protocol
// (docs/PROTOCOL.md, "Sleeping listeners"; decision 0029): between the
// listener's socket and the relay's port, beside QUIC.
//
//	0      1 byte   sleepMarker (0x12)
//	1      1 byte   type (high bit set, see below)
//	2      8 bytes  sleeper ID: the first 8 bytes of the mailbox's public key
//	10     8 bytes  counter, big endian: above every earlier one of its sender
//	18     n bytes  body (by type)
//	18+n  16 bytes  HMAC-SHA256 of bytes 0..18+n under the sleep key,
//	                truncated
//
// The type's high bit makes bytes 1..12 read as a relay CID, so the XDP
// program passes the datagram up without a map lookup.
const (
	sleepMarker    = forward.SleepMarker
	sleepTypeOff   = 1
	sleepIDOff     = 2
	sleepIDLen     = 8
	sleepCtrOff    = sleepIDOff + sleepIDLen
	sleepHeaderLen = sleepCtrOff + 8
	sleepMACLen    = 16
	sleepOverhead  = sleepHeaderLen + sleepMACLen
	// sleepMaxLen bounds a sleep datagram: a wake carrying a datagram of
	// a flight, on a 1500-byte IPv6 path.
	sleepMaxLen = 1452
)

// Types: the listener sends keep-alives, responses and wake-acks; the relay
// sends keep-alive acks, challenges and wakes.
const (
	sleepKeepAlive    = 0x81 // body: none
	sleepKeepAliveAck = 0x82 // body: the acknowledged keep-alive's counter (8 bytes)
	sleepChallenge    = 0x83 // body: a nonce (16 random bytes)
	sleepResponse     = 0x84 // body: the challenge's nonce
	sleepWake         = 0x85 // body: wake ID (8), part index (1), part count (1), a datagram of the flight
	sleepWakeAck      = 0x86 // body: wake ID (8), bitmap of the parts received (1)
	sleepLeave        = 0x87 // body: none; the listener closes: forget it now
)

// Body sizes.
const (
	sleepNonceLen   = 16
	sleepWakeIDLen  = 8
	sleepWakeHdrLen = sleepWakeIDLen + 2
	sleepWakeAckLen = sleepWakeIDLen + 1
	// sleepMaxParts is the most parts a wake has: the datagrams of a first
	// flight (MaxFlightDatagrams), one bit each in a wake-ack.
	sleepMaxParts = 8
	// sleepMaxPart is the largest flight datagram a wake carries.
	sleepMaxPart = sleepMaxLen - sleepOverhead - sleepWakeHdrLen
)

// sleepKeyInfo starts the HKDF info of a sleep key; the mailbox's public key
// follows.
const sleepKeyInfo = "quicpipe sleep v1"

// sleepKeyLen is the length of a sleep key (HMAC-SHA256).
const sleepKeyLen = 32

// deriveSleepKey returns the sleep key of a listener whose CID key is
// cidKey and whose mailbox is mailbox: HKDF-SHA256 (RFC 5869) with the CID
// key as the secret, no salt, and info "quicpipe sleep v1" followed by the
// 32-byte public key. Only the listener and the relays that hold its
// registration know the CID key.
func deriveSleepKey(cidKey []byte, mailbox ed25519.PublicKey) ([sleepKeyLen]byte, error) {
	var k [sleepKeyLen]byte
	b, err := hkdf.Key(sha256.New, cidKey, nil, sleepKeyInfo+string(mailbox), sleepKeyLen)
	if err != nil {
		return k, fmt.Errorf("quicpipe: deriving the sleep key: %w", err)
	}
	copy(k[:], b)
	return k, nil
}

// sleepIDOf returns the sleeper ID of a mailbox.
func sleepIDOf(mailbox []byte) (id [sleepIDLen]byte) {
	copy(id[:], mailbox)
	return id
}

// sleepMsg is a parsed sleep datagram. body and mac alias the datagram.
type sleepMsg struct {
	typ     byte
	id      [sleepIDLen]byte
	counter uint64
	body    []byte
	signed  []byte // bytes 0..18+n, what the MAC covers
	mac     []byte
}

// Errors of parseSleep; the relay counts them apart.
var (
	errSleepShort = errors.New("quicpipe: sleep datagram: too short or too long")
	errSleepType  = errors.New("quicpipe: sleep datagram: unknown type or bad body")
)

// parseSleep parses the layout of a sleep datagram and the shape of its
// body; it checks neither the MAC nor the counter.
func parseSleep(b []byte) (sleepMsg, error) {
	var m sleepMsg
	if len(b) < sleepOverhead || len(b) > sleepMaxLen || b[0] != sleepMarker {
		return m, errSleepShort
	}
	m.typ = b[sleepTypeOff]
	copy(m.id[:], b[sleepIDOff:])
	m.counter = binary.BigEndian.Uint64(b[sleepCtrOff:])
	end := len(b) - sleepMACLen
	m.body = b[sleepHeaderLen:end]
	m.signed = b[:end]
	m.mac = b[end:]
	n := len(m.body)
	switch m.typ {
	case sleepKeepAlive, sleepLeave:
		if n != 0 {
			return m, errSleepType
		}
	case sleepKeepAliveAck:
		if n != 8 {
			return m, errSleepType
		}
	case sleepChallenge, sleepResponse:
		if n != sleepNonceLen {
			return m, errSleepType
		}
	case sleepWake:
		if n < sleepWakeHdrLen {
			return m, errSleepType
		}
		idx, count := m.body[sleepWakeIDLen], m.body[sleepWakeIDLen+1]
		part := n - sleepWakeHdrLen
		// A plain wake (count 0) carries no datagram; a part of a flight
		// carries one.
		if count > sleepMaxParts || (count == 0 && (idx != 0 || part != 0)) || (count > 0 && (idx >= count || part == 0)) {
			return m, errSleepType
		}
	case sleepWakeAck:
		if n != sleepWakeAckLen {
			return m, errSleepType
		}
	default:
		return m, errSleepType
	}
	return m, nil
}

// verify reports whether m's MAC is right under key.
func (m *sleepMsg) verify(key *[sleepKeyLen]byte) bool {
	h := hmac.New(sha256.New, key[:])
	h.Write(m.signed)
	var sum [sha256.Size]byte
	return hmac.Equal(h.Sum(sum[:0])[:sleepMACLen], m.mac)
}

// appendSleep appends a sleep datagram to dst.
func appendSleep(dst []byte, key *[sleepKeyLen]byte, typ byte, id [sleepIDLen]byte, counter uint64, body ...[]byte) []byte {
	start := len(dst)
	dst = append(dst, sleepMarker, typ)
	dst = append(dst, id[:]...)
	dst = binary.BigEndian.AppendUint64(dst, counter)
	for _, b := range body {
		dst = append(dst, b...)
	}
	h := hmac.New(sha256.New, key[:])
	h.Write(dst[start:])
	var sum [sha256.Size]byte
	return append(dst, h.Sum(sum[:0])[:sleepMACLen]...)
}

// wakeBody returns the fields of a wake's body: the wake ID, the part's
// index and the count of parts (0 for a plain wake), and the datagram.
func wakeBody(body []byte) (id [sleepWakeIDLen]byte, idx, count int, part []byte) {
	copy(id[:], body)
	return id, int(body[sleepWakeIDLen]), int(body[sleepWakeIDLen+1]), body[sleepWakeHdrLen:]
}

// nextCounter returns a counter above last: the current time in nanoseconds
// when that is larger, so that a sender that restarts keeps counting up.
func nextCounter(last uint64, nowNano int64) uint64 {
	return max(last+1, uint64(max(nowNano, 0)))
}
