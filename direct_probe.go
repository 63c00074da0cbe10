package quicpipe

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/quic-go/quic-go"
)

// Path control datagrams carry the direct-path protocol beside QUIC on the
// peers' sockets: candidates (through the relay) and probes (on candidate
// paths). Their first byte has the two high bits clear, which no QUIC v1
// packet has, so a peer's socket layer takes them out before quic-go sees
// them, and the relay forwards them like short-header packets by the
// destination CID in bytes 1..12. docs/PROTOCOL.md specifies the format.
//
//	0      1 byte   ctrlMarker (0x10)
//	1     12 bytes  routing CID: a CID of the receiving peer (through the
//	                relay), zero on a direct path
//	13     8 bytes  connection tag (from the TLS exporter)
//	21    12 bytes  AES-GCM nonce (random)
//	33     n bytes  AES-256-GCM ciphertext of the body and its 16-byte tag;
//	                the additional data is bytes 0..32
const (
	ctrlMarker    = 0x10
	ctrlCIDOff    = 1                       // routing CID
	ctrlTagOff    = ctrlCIDOff + CIDLen     // connection tag
	ctrlNonceOff  = ctrlTagOff + ctrlTagLen // AES-GCM nonce
	ctrlHeaderLen = ctrlNonceOff + ctrlNonceLen
	ctrlOverhead  = ctrlHeaderLen + ctrlSealLen
	ctrlTagLen    = 8
	ctrlNonceLen  = 12
	ctrlSealLen   = 16 // the AES-GCM tag
	// ctrlMaxLen bounds a control datagram; bigger ones are dropped.
	ctrlMaxLen = 1200
)

// exporterLabel is the TLS exporter label of the direct-path keys.
const exporterLabel = "EXPORTER-quicpipe-direct-v1"

// Body types.
const (
	msgPing       = 1
	msgPong       = 2
	msgCandidates = 3
)

// Body layouts: a probe is its type, an 8-byte transaction ID and an
// address; an announcement is its type, flags, round and ack (4 bytes
// each), the number of candidates, then each candidate's kind and address.
const (
	probeHeaderLen      = 1 + 8
	candidatesHeaderLen = 1 + 1 + 4 + 4 + 1
	flagNeedAck         = 1 // announcement flag: answer with yours
)

// maxCandidates bounds the candidates one side announces.
const maxCandidates = 16

// isCtrl reports whether a datagram is a path control datagram rather than
// QUIC: its two high bits are clear.
func isCtrl(b []byte) bool { return len(b) > 0 && b[0]&0xc0 == 0 }

// pathKeyLen is the length of each AES-256 key of a connection's direct
// path.
const pathKeyLen = 32

// pathKeys are the direct-path keys of one connection, exported from its TLS
// session: nobody but the two peers can compute them.
type pathKeys struct {
	tag  [ctrlTagLen]byte
	send cipher.AEAD // messages this side sends
	recv cipher.AEAD // messages the other side sends
}

// newPathKeys derives the keys of a connection. client says whether this
// side is the TLS client (the dialer).
func newPathKeys(qc *quic.Conn, client bool) (*pathKeys, error) {
	cs := qc.ConnectionState().TLS
	m, err := cs.ExportKeyingMaterial(exporterLabel, nil, 2*pathKeyLen+ctrlTagLen)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: exporting direct-path keys: %w", err)
	}
	return pathKeysFrom(m, client)
}

func pathKeysFrom(m []byte, client bool) (*pathKeys, error) {
	ck, sk := m[:pathKeyLen], m[pathKeyLen:2*pathKeyLen]
	if !client {
		ck, sk = sk, ck
	}
	k := &pathKeys{}
	copy(k.tag[:], m[2*pathKeyLen:])
	var err error
	if k.send, err = newGCM(ck); err != nil {
		return nil, err
	}
	if k.recv, err = newGCM(sk); err != nil {
		return nil, err
	}
	return k, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// seal builds a control datagram carrying body. dcid may be nil (direct
// paths).
func (k *pathKeys) seal(dcid []byte, body []byte) []byte {
	out := make([]byte, ctrlHeaderLen, ctrlOverhead+len(body))
	out[0] = ctrlMarker
	copy(out[ctrlCIDOff:ctrlTagOff], dcid)
	copy(out[ctrlTagOff:ctrlNonceOff], k.tag[:])
	nonce := out[ctrlNonceOff:ctrlHeaderLen]
	rand.Read(nonce)
	return k.send.Seal(out, nonce, body, out[:ctrlHeaderLen])
}

var errCtrl = errors.New("quicpipe: bad control datagram")

// ctrlTag returns the connection tag of a control datagram.
func ctrlTag(b []byte) ([8]byte, bool) {
	var t [8]byte
	if len(b) < ctrlOverhead || len(b) > ctrlMaxLen || b[0] != ctrlMarker {
		return t, false
	}
	copy(t[:], b[ctrlTagOff:ctrlNonceOff])
	return t, true
}

// open authenticates and decrypts a control datagram, returning its body.
func (k *pathKeys) open(b []byte) ([]byte, error) {
	if _, ok := ctrlTag(b); !ok {
		return nil, errCtrl
	}
	body, err := k.recv.Open(nil, b[ctrlNonceOff:ctrlHeaderLen], b[ctrlHeaderLen:], b[:ctrlHeaderLen])
	if err != nil || len(body) == 0 {
		return nil, errCtrl
	}
	return body, nil
}

// Candidate kinds, as announced.
const (
	candLocal    = 1 // an address of one of the peer's interfaces
	candObserved = 2 // the peer's public address as its relay observed it
)

type candidate struct {
	kind uint8
	addr netip.AddrPort
}

// pingMsg and pongMsg are probes. A ping names the address it was sent to; a
// pong echoes the ping's transaction ID and names the address the ping came
// from (what the pinged side sees of the pinger: a peer-reflexive address).
type probeMsg struct {
	typ  uint8
	txid [8]byte
	addr netip.AddrPort
}

// candidatesMsg announces one side's candidates. round counts the punch
// rounds the sender started; ack is the highest round of the receiver that
// the sender has seen; needAck asks the receiver to answer with its own
// announcement, because the sender has not seen an acknowledgment of its
// round yet.
type candidatesMsg struct {
	round, ack uint32
	needAck    bool
	cands      []candidate
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		v := ip.As4()
		b = append(b, v[:]...)
	} else {
		b = append(b, 16)
		v := ip.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

func readAddr(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, errCtrl
	}
	n := int(b[0])
	if (n != 4 && n != 16) || len(b) < 1+n+2 {
		return netip.AddrPort{}, nil, errCtrl
	}
	// An IPv4-mapped IPv6 address names the IPv4 address, as appendAddr
	// writes it: one address has one form after any number of round trips.
	ip, _ := netip.AddrFromSlice(b[1 : 1+n])
	ip = ip.Unmap()
	port := binary.BigEndian.Uint16(b[1+n:])
	return netip.AddrPortFrom(ip, port), b[1+n+2:], nil
}

func (m *probeMsg) marshal() []byte {
	b := make([]byte, 0, 1+8+1+16+2)
	b = append(b, m.typ)
	b = append(b, m.txid[:]...)
	return appendAddr(b, m.addr)
}

func (m *candidatesMsg) marshal() []byte {
	b := make([]byte, 0, 2+4+4+1+len(m.cands)*20)
	var flags byte
	if m.needAck {
		flags |= flagNeedAck
	}
	b = append(b, msgCandidates, flags)
	b = binary.BigEndian.AppendUint32(b, m.round)
	b = binary.BigEndian.AppendUint32(b, m.ack)
	n := min(len(m.cands), maxCandidates)
	b = append(b, byte(n))
	for _, c := range m.cands[:n] {
		b = append(b, c.kind)
		b = appendAddr(b, c.addr)
	}
	return b
}

// parseBody decodes a control body into a *probeMsg or a *candidatesMsg.
func parseBody(b []byte) (any, error) {
	if len(b) < 1 {
		return nil, errCtrl
	}
	switch b[0] {
	case msgPing, msgPong:
		if len(b) < probeHeaderLen {
			return nil, errCtrl
		}
		m := &probeMsg{typ: b[0]}
		copy(m.txid[:], b[1:probeHeaderLen])
		a, rest, err := readAddr(b[probeHeaderLen:])
		if err != nil || len(rest) != 0 {
			return nil, errCtrl
		}
		m.addr = a
		return m, nil
	case msgCandidates:
		if len(b) < candidatesHeaderLen {
			return nil, errCtrl
		}
		m := &candidatesMsg{
			needAck: b[1]&flagNeedAck != 0,
			round:   binary.BigEndian.Uint32(b[2:]),
			ack:     binary.BigEndian.Uint32(b[6:]),
		}
		n := int(b[candidatesHeaderLen-1])
		if n > maxCandidates {
			return nil, errCtrl
		}
		rest := b[candidatesHeaderLen:]
		for range n {
			if len(rest) < 1 {
				return nil, errCtrl
			}
			kind := rest[0]
			a, r, err := readAddr(rest[1:])
			if err != nil {
				return nil, errCtrl
			}
			rest = r
			m.cands = append(m.cands, candidate{kind: kind, addr: a})
		}
		if len(rest) != 0 {
			return nil, errCtrl
		}
		return m, nil
	}
	return nil, errCtrl
}
