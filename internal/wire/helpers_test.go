package wire

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// fromHex decodes a hex string that may contain white space.
func fromHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		tb.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// appendVarint appends the shortest encoding of v as a QUIC variable-length
// integer.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x8000_0000)
	}
	return binary.BigEndian.AppendUint64(b, v|0xc000_0000_0000_0000)
}

// appendVarint2 appends v as a two-byte variable-length integer, as QUIC
// implementations commonly encode the Length field.
func appendVarint2(b []byte, v uint64) []byte {
	return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
}

// packetSpec describes a long header packet built by buildPacket.
type packetSpec struct {
	typ        PacketType
	first      byte // extra bits ORed into the first byte, e.g. reserved bits
	dcid, scid []byte
	token      []byte
	pn         uint32
	pnLen      int // 1 to 4; 0 means 4
	payload    []byte
}

// buildPacket builds and protects a version 1 long header packet with the
// keys k.
func buildPacket(k *initialKeys, p packetSpec) []byte {
	pnLen := p.pnLen
	if pnLen == 0 {
		pnLen = 4
	}
	b := []byte{0xc0 | byte(p.typ)<<4 | byte(pnLen-1) | p.first, 0, 0, 0, 1}
	b = append(b, byte(len(p.dcid)))
	b = append(b, p.dcid...)
	b = append(b, byte(len(p.scid)))
	b = append(b, p.scid...)
	if p.typ == Initial {
		b = appendVarint(b, uint64(len(p.token)))
		b = append(b, p.token...)
	}
	b = appendVarint2(b, uint64(pnLen+len(p.payload)+16))
	var pn [4]byte
	binary.BigEndian.PutUint32(pn[:], p.pn)
	b = append(b, pn[4-pnLen:]...)
	return protect(k, b, p.payload)
}

// protect encrypts payload and appends it to the unprotected header, then
// applies header protection (RFC 9001, Section 5) if the packet is long
// enough to be sampled.
func protect(k *initialKeys, header, payload []byte) []byte {
	pnLen := int(header[0]&0x03) + 1
	pnOff := len(header) - pnLen
	var pn uint64
	for _, c := range header[pnOff:] {
		pn = pn<<8 | uint64(c)
	}
	nonce := k.iv
	for i := range 8 {
		nonce[ivLen-1-i] ^= byte(pn >> (8 * i))
	}
	out := append([]byte(nil), header...)
	out = k.aead.Seal(out, nonce[:], payload, header)
	if len(out) < pnOff+sampleOff+sampleLen {
		return out // too short to sample; leave the header unprotected
	}
	var mask [aes.BlockSize]byte
	k.hp.Encrypt(mask[:], out[pnOff+sampleOff:pnOff+sampleOff+sampleLen])
	out[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		out[pnOff+i] ^= mask[1+i]
	}
	return out
}

// cryptoFrame returns a CRYPTO frame.
func cryptoFrame(offset uint64, data []byte) []byte {
	b := []byte{frameCrypto}
	b = appendVarint(b, offset)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

// pad appends PADDING frames to b until it is n bytes long.
func pad(b []byte, n int) []byte {
	for len(b) < n {
		b = append(b, framePadding)
	}
	return b
}

// concat returns the concatenation of bs.
func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// mustKeys returns the Initial keys for odcid.
func mustKeys(tb testing.TB, odcid []byte) *InitialKeys {
	tb.Helper()
	k, err := NewInitialKeys(odcid)
	if err != nil {
		tb.Fatalf("NewInitialKeys(%x): %v", odcid, err)
	}
	return k
}

// recordedFlight returns the two datagrams of a quic-go client's first
// flight recorded in testdata. It was captured with ALPN "quicpipe-test",
// server name "x" and Go's default key shares, including X25519MLKEM768.
func recordedFlight(tb testing.TB) [][]byte {
	tb.Helper()
	f, err := os.Open("testdata/quicgo_first_flight.hex")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var ds [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			ds = append(ds, fromHex(tb, line))
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(ds) != 2 {
		tb.Fatalf("recorded flight has %d datagrams, want 2", len(ds))
	}
	return ds
}

// goClientHello returns a ClientHello produced by crypto/tls for QUIC,
// offering the given ALPN protocols.
func goClientHello(tb testing.TB, alpn []string) []byte {
	tb.Helper()
	conf := &tls.Config{
		ServerName: "example.com",
		NextProtos: alpn,
		MinVersion: tls.VersionTLS13,
	}
	c := tls.QUICClient(&tls.QUICConfig{TLSConfig: conf})
	c.SetTransportParameters([]byte{0x01, 0x01, 0x00}) // max_idle_timeout 0
	if err := c.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var hello []byte
	for {
		e := c.NextEvent()
		switch e.Kind {
		case tls.QUICNoEvent:
			if hello == nil {
				tb.Fatal("crypto/tls produced no ClientHello")
			}
			return hello
		case tls.QUICWriteData:
			if e.Level == tls.QUICEncryptionLevelInitial {
				hello = append(hello, e.Data...)
			}
		}
	}
}

// helloSpec describes a ClientHello built by buildHello.
type helloSpec struct {
	typ         byte // handshake type; 0 means ClientHello
	sessionID   []byte
	suites      []byte // raw cipher_suites vector contents
	compression []byte // raw legacy_compression_methods contents
	noExts      bool   // omit the extensions block
	exts        [][]byte
	extsLenAdj  int // added to the extensions length field
	msgLenAdj   int // added to the handshake length field
}

// ext returns a TLS extension.
func ext(typ uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

// alpnExt returns an ALPN extension offering protos.
func alpnExt(protos ...string) []byte {
	var list []byte
	for _, p := range protos {
		list = append(list, byte(len(p)))
		list = append(list, p...)
	}
	return ext(extensionALPN, append(binary.BigEndian.AppendUint16(nil, uint16(len(list))), list...))
}

// buildHello builds a handshake message from s.
func buildHello(s helloSpec) []byte {
	body := []byte{0x03, 0x03}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, byte(len(s.sessionID)))
	body = append(body, s.sessionID...)
	suites := s.suites
	if suites == nil {
		suites = []byte{0x13, 0x01}
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(suites)))
	body = append(body, suites...)
	comp := s.compression
	if comp == nil {
		comp = []byte{0}
	}
	body = append(body, byte(len(comp)))
	body = append(body, comp...)
	if !s.noExts {
		exts := concat(s.exts...)
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)+s.extsLenAdj))
		body = append(body, exts...)
	}
	typ := s.typ
	if typ == 0 {
		typ = typeClientHello
	}
	n := len(body) + s.msgLenAdj
	return append([]byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}
