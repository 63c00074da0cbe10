package wire

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"slices"
	"testing"
)

// Values from RFC 9001, Appendix A.
const (
	// rfcClientInitialHex is the protected client Initial packet of
	// Appendix A.2.
	rfcClientInitialHex = `
		c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11
		d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399
		1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c
		8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212
		30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5
		457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208
		4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec
		4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3
		485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db
		059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c
		7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8
		9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556
		be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74
		68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a
		c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00
		f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632
		291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964
		25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd
		14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff
		ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198
		e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd
		c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73
		203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f
		cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e
		fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade
		a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047
		90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2
		162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4
		40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0
		6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e
		8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0
		be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400
		54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab
		760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9
		f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4
		056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064
		7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241
		e221af44860018ab0856972e194cd934`

	// rfcClientCryptoHex is the CRYPTO frame of Appendix A.2, which is
	// followed by PADDING frames to a payload of 1162 bytes.
	rfcClientCryptoHex = `
		060040f1010000ed0303ebf8fa56f129 39b9584a3896472ec40bb863cfd3e868
		04fe3a47f06a2b69484c000004130113 02010000c000000010000e00000b6578
		616d706c652e636f6dff01000100000a 00080006001d00170018001000070005
		04616c706e0005000501000000000033 00260024001d00209370b2c9caa47fba
		baf4559fedba753de171fa71f50f1ce1 5d43e994ec74d748002b000302030400
		0d0010000e0403050306030203080408 050806002d00020101001c0002400100
		3900320408ffffffffffffffff050480 00ffff07048000ffff08011001048000
		75300901100f088394c8f03e51570806 048000ffff`

	// rfcServerPayloadHex is the unprotected payload of the server Initial
	// packet of Appendix A.3: an ACK frame and a CRYPTO frame.
	rfcServerPayloadHex = `
		02000000000600405a020000560303ee fce7f7b37ba1d1632e96677825ddf739
		88cfc79825df566dc5430b9a045a1200 130100002e00330024001d00209d3c94
		0d89690b84d08a60993c144eca684d10 81287c834d5311bcf32bb9da1a002b00
		020304`
)

// rfcClientPayload returns the unprotected payload of Appendix A.2.
func rfcClientPayload(tb testing.TB) []byte {
	return pad(fromHex(tb, rfcClientCryptoHex), 1162)
}

func TestInitialKeysRFC9001(t *testing.T) {
	odcid := fromHex(t, rfcODCID)
	initial, err := hkdf.Extract(sha256.New, odcid, initialSalt)
	if err != nil {
		t.Fatal(err)
	}
	if want := fromHex(t, "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"); !bytes.Equal(initial, want) {
		t.Errorf("initial_secret = %x, want %x", initial, want)
	}
	client, server, err := initialSecrets(odcid)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                    string
		secret                  []byte
		wantSecret              string
		wantKey, wantIV, wantHP string
	}{
		{
			name:       "client",
			secret:     client,
			wantSecret: "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
			wantKey:    "1f369613dd76d5467730efcbe3b1a22d",
			wantIV:     "fa044b2f42a3fd3b46fb255c",
			wantHP:     "9f50449e04a0e810283a1e9933adedd2",
		},
		{
			name:       "server",
			secret:     server,
			wantSecret: "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b",
			wantKey:    "cf3a5331653c364c88f0f379b6067e37",
			wantIV:     "0ac1493ca1905853b0bba03e",
			wantHP:     "c206b8d9b9f0f37644430b490eeaa314",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if want := fromHex(t, tt.wantSecret); !bytes.Equal(tt.secret, want) {
				t.Errorf("%s_initial_secret = %x, want %x", tt.name, tt.secret, want)
			}
			key, iv, hp, err := packetKeys(tt.secret)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				what      string
				got, want []byte
			}{
				{"key", key, fromHex(t, tt.wantKey)},
				{"iv", iv, fromHex(t, tt.wantIV)},
				{"hp", hp, fromHex(t, tt.wantHP)},
			} {
				if !bytes.Equal(c.got, c.want) {
					t.Errorf("%s = %x, want %x", c.what, c.got, c.want)
				}
			}
		})
	}
}

// TestProtectRFC9001 checks the test helper that protects packets against
// Appendix A.2, so that packets built with it are trustworthy.
func TestProtectRFC9001(t *testing.T) {
	k := mustKeys(t, fromHex(t, rfcODCID))
	header := fromHex(t, "c300000001088394c8f03e5157080000449e00000002")
	got := protect(&k.client, header, rfcClientPayload(t))
	if want := fromHex(t, rfcClientInitialHex); !bytes.Equal(got, want) {
		t.Errorf("protected packet differs from RFC 9001 A.2:\ngot  %x\nwant %x", got, want)
	}
}

func TestOpenInitialRFC9001(t *testing.T) {
	odcid := fromHex(t, rfcODCID)
	tests := []struct {
		name        string
		packet      []byte
		fromClient  bool
		wantHeader  LongHeader
		wantPayload []byte
	}{
		{
			name:        "A.2 client Initial",
			packet:      fromHex(t, rfcClientInitialHex),
			fromClient:  true,
			wantHeader:  LongHeader{Type: Initial, Version: 1, DCID: odcid, Length: 1182, PNOffset: 18},
			wantPayload: rfcClientPayload(t),
		},
		{
			name:        "A.3 server Initial",
			packet:      fromHex(t, rfcServerInitialHex),
			fromClient:  false,
			wantHeader:  LongHeader{Type: Initial, Version: 1, SCID: fromHex(t, "f067a5502a4262b5"), Length: 117, PNOffset: 18},
			wantPayload: fromHex(t, rfcServerPayloadHex),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := bytes.Clone(tt.packet)
			payload, rest, hdr, err := OpenInitial(tt.packet, odcid, tt.fromClient)
			if err != nil {
				t.Fatalf("OpenInitial: %v", err)
			}
			if !bytes.Equal(payload, tt.wantPayload) {
				t.Errorf("payload = %x, want %x", payload, tt.wantPayload)
			}
			if len(rest) != 0 {
				t.Errorf("rest = %x, want empty", rest)
			}
			if !equalHeader(hdr, tt.wantHeader) {
				t.Errorf("header = %+v, want %+v", hdr, tt.wantHeader)
			}
			if !bytes.Equal(tt.packet, orig) {
				t.Errorf("OpenInitial modified its input")
			}
		})
	}
}

func TestOpenInitialErrors(t *testing.T) {
	odcid := fromHex(t, rfcODCID)
	k := mustKeys(t, odcid)
	rfcPacket := fromHex(t, rfcClientInitialHex)
	frames := pad(cryptoFrame(0, []byte("hello")), 100)
	spec := packetSpec{typ: Initial, dcid: odcid, scid: []byte{1, 2, 3}, payload: frames}
	with := func(f func(*packetSpec)) []byte {
		s := spec
		f(&s)
		return buildPacket(&k.client, s)
	}
	flipped := bytes.Clone(rfcPacket)
	flipped[100] ^= 1
	tests := []struct {
		name       string
		datagram   []byte
		odcid      []byte
		fromClient bool
		wantErr    error
	}{
		{"empty", nil, odcid, true, ErrTruncated},
		{"short header", concat([]byte{0x40}, odcid, make([]byte, 40)), odcid, true, ErrNotLongHeader},
		{"Handshake packet", with(func(s *packetSpec) { s.typ = Handshake }), odcid, true, ErrNotInitial},
		{"0-RTT packet", with(func(s *packetSpec) { s.typ = ZeroRTT }), odcid, true, ErrNotInitial},
		{"version 2", concat([]byte{0xc0, 0x6b, 0x33, 0x43, 0xcf}, rfcPacket[5:]), odcid, true, ErrUnsupportedVersion},
		{"truncated", rfcPacket[:len(rfcPacket)-1], odcid, true, ErrTruncated},
		{"wrong odcid", rfcPacket, odcid[1:], true, ErrDecrypt},
		{"wrong direction", rfcPacket, odcid, false, ErrDecrypt},
		{"corrupted", flipped, odcid, true, ErrDecrypt},
		{"odcid too long", rfcPacket, make([]byte, 21), true, ErrConnIDTooLong},
		{"too short for sample", with(func(s *packetSpec) { s.pnLen = 1; s.payload = []byte{1, 0} }), odcid, true, ErrShortPacket},
		{"reserved bits", with(func(s *packetSpec) { s.first = 0x08 }), odcid, true, ErrReservedBits},
		{"no frames", with(func(s *packetSpec) { s.payload = nil }), odcid, true, ErrNoFrames},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload, rest, hdr, err := OpenInitial(tt.datagram, tt.odcid, tt.fromClient)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("OpenInitial error = %v, want %v", err, tt.wantErr)
			}
			if payload != nil || rest != nil || !equalHeader(hdr, LongHeader{}) {
				t.Errorf("OpenInitial returned %x, %x, %+v with error", payload, rest, hdr)
			}
		})
	}
}

func TestOpenInitialPacketNumbers(t *testing.T) {
	odcid := []byte("original-dcid")
	k := mustKeys(t, odcid)
	payload := pad(cryptoFrame(7, []byte("data")), 40)
	tests := []struct {
		pn    uint32
		pnLen int
	}{
		{0, 1}, {0xff, 1}, {0x1234, 2}, {0xabcdef, 3}, {0x7fffffff, 4}, {0xffffffff, 4},
	}
	for _, tt := range tests {
		for _, fromClient := range []bool{true, false} {
			keys := &k.server
			if fromClient {
				keys = &k.client
			}
			p := buildPacket(keys, packetSpec{typ: Initial, dcid: odcid, pn: tt.pn, pnLen: tt.pnLen, payload: payload})
			got, _, _, err := k.Open(p, fromClient)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("Open(packet number %#x in %d bytes, fromClient %v) = %x, %v, want %x", tt.pn, tt.pnLen, fromClient, got, err, payload)
			}
		}
	}
}

func TestOpenInitialCoalesced(t *testing.T) {
	odcid := []byte("01234567")
	k := mustKeys(t, odcid)
	p1 := buildPacket(&k.client, packetSpec{typ: Initial, dcid: odcid, payload: pad(cryptoFrame(0, []byte("abc")), 30)})
	p2 := buildPacket(&k.client, packetSpec{typ: Handshake, dcid: odcid, payload: make([]byte, 30)})
	p3 := buildPacket(&k.client, packetSpec{typ: Initial, dcid: odcid, pn: 1, payload: pad(cryptoFrame(3, []byte("def")), 30)})
	datagram := concat(p1, p2, p3, make([]byte, 20))

	payload, rest, _, err := k.Open(datagram, true)
	if err != nil {
		t.Fatalf("Open(first packet): %v", err)
	}
	if want := pad(cryptoFrame(0, []byte("abc")), 30); !bytes.Equal(payload, want) {
		t.Errorf("first payload = %x, want %x", payload, want)
	}
	if !bytes.Equal(rest, datagram[len(p1):]) {
		t.Fatalf("rest after first packet has %d bytes, want %d", len(rest), len(datagram)-len(p1))
	}
	hdr, err := ParseLongHeader(rest)
	if err != nil || hdr.Type != Handshake {
		t.Fatalf("ParseLongHeader(second packet) = %+v, %v, want Handshake packet", hdr, err)
	}
	rest = rest[hdr.PNOffset+int(hdr.Length):]
	payload, rest, _, err = k.Open(rest, true)
	if err != nil {
		t.Fatalf("Open(third packet): %v", err)
	}
	if want := pad(cryptoFrame(3, []byte("def")), 30); !bytes.Equal(payload, want) {
		t.Errorf("third payload = %x, want %x", payload, want)
	}
	if len(rest) != 20 {
		t.Errorf("rest after third packet has %d bytes, want 20", len(rest))
	}
}

// TestOpenInitialPrefixes opens every prefix of real packets.
func TestOpenInitialPrefixes(t *testing.T) {
	flight := recordedFlight(t)
	odcid, err := DestCID(flight[0])
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		packet     []byte
		odcid      []byte
		fromClient bool
	}{
		{"RFC client Initial", fromHex(t, rfcClientInitialHex), fromHex(t, rfcODCID), true},
		{"RFC server Initial", fromHex(t, rfcServerInitialHex), fromHex(t, rfcODCID), false},
		{"quic-go datagram 1", flight[0], odcid, true},
		{"quic-go datagram 2", flight[1], odcid, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKeys(t, tt.odcid)
			if _, _, _, err := k.Open(tt.packet, tt.fromClient); err != nil {
				t.Fatalf("Open(full packet): %v", err)
			}
			for n := range len(tt.packet) {
				if payload, _, _, err := k.Open(tt.packet[:n], tt.fromClient); err == nil {
					t.Errorf("Open(%d-byte prefix) = %x, want error", n, payload)
				}
			}
		})
	}
}

// cryptoCall records a call of the CryptoFrames callback.
type cryptoCall struct {
	offset uint64
	data   string
}

func TestCryptoFrames(t *testing.T) {
	errStop := errors.New("stop")
	rfcClient := rfcClientPayload(t)
	tests := []struct {
		name    string
		payload []byte
		stopAt  int // if > 0, the callback fails on this call
		want    []cryptoCall
		wantErr error
	}{
		{name: "empty"},
		{name: "padding", payload: make([]byte, 100)},
		{
			name:    "RFC 9001 A.2",
			payload: rfcClient,
			want:    []cryptoCall{{0, string(fromHex(t, rfcClientCryptoHex)[4:])}},
		},
		{
			name:    "RFC 9001 A.3",
			payload: fromHex(t, rfcServerPayloadHex),
			want:    []cryptoCall{{0, string(fromHex(t, rfcServerPayloadHex)[9:])}},
		},
		{
			name: "all permitted frames",
			payload: concat(
				[]byte{framePadding, framePing},
				cryptoFrame(100, []byte("second")),
				[]byte{frameAck, 10, 0, 2, 1, 2, 1, 0, 0}, // 10-9, 6-5, 3
				[]byte{frameAckECN, 0x40, 0x80, 0x43, 0x21, 0, 0x40, 0x80, 1, 2, 3},
				cryptoFrame(0, []byte("first")),
				[]byte{frameConnectionClose, 0x0a, 0x06, 3, 'b', 'y', 'e'},
				cryptoFrame(1<<20, nil),
				make([]byte, 10),
			),
			want: []cryptoCall{{100, "second"}, {0, "first"}, {1 << 20, ""}},
		},
		{
			name:    "callback error",
			payload: concat(cryptoFrame(0, []byte("a")), cryptoFrame(1, []byte("b")), cryptoFrame(2, []byte("c"))),
			stopAt:  2,
			want:    []cryptoCall{{0, "a"}, {1, "b"}},
			wantErr: errStop,
		},
		{name: "STREAM frame", payload: []byte{0x08, 0, 0}, wantErr: ErrFrameNotAllowed},
		{name: "application CONNECTION_CLOSE", payload: []byte{0x1d, 0, 0}, wantErr: ErrFrameNotAllowed},
		{name: "HANDSHAKE_DONE", payload: []byte{0x1e}, wantErr: ErrFrameNotAllowed},
		{name: "NEW_TOKEN", payload: []byte{0x07, 1, 0}, wantErr: ErrFrameNotAllowed},
		{name: "non-minimal frame type", payload: []byte{0x40, 0x06, 0, 1, 'x'}, wantErr: ErrFrameNotAllowed},
		{name: "truncated frame type", payload: []byte{0x40}, wantErr: ErrFrameEncoding},
		{name: "truncated CRYPTO header", payload: []byte{frameCrypto, 0x40}, wantErr: ErrFrameEncoding},
		{name: "truncated CRYPTO data", payload: []byte{frameCrypto, 0, 5, 'a', 'b'}, wantErr: ErrFrameEncoding},
		{
			name:    "CRYPTO beyond maximum offset",
			payload: concat([]byte{frameCrypto}, fromHex(t, "ffffffffffffffff"), []byte{1, 'x'}),
			wantErr: ErrFrameEncoding,
		},
		{name: "truncated ACK", payload: []byte{frameAck, 1, 0, 1, 0, 0}, wantErr: ErrFrameEncoding},
		{name: "ACK missing ECN counts", payload: []byte{frameAckECN, 1, 0, 0, 0, 1, 1}, wantErr: ErrFrameEncoding},
		{name: "ACK first range too large", payload: []byte{frameAck, 1, 0, 0, 2}, wantErr: ErrFrameEncoding},
		{name: "ACK gap too large", payload: []byte{frameAck, 5, 0, 1, 0, 4, 0}, wantErr: ErrFrameEncoding},
		{name: "ACK range too large", payload: []byte{frameAck, 5, 0, 1, 0, 0, 4}, wantErr: ErrFrameEncoding},
		{name: "ACK huge range count", payload: []byte{frameAck, 5, 0, 0xbf, 0xff, 0xff, 0xff, 0}, wantErr: ErrFrameEncoding},
		{name: "truncated CONNECTION_CLOSE", payload: []byte{frameConnectionClose, 0, 0, 5, 'a'}, wantErr: ErrFrameEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []cryptoCall
			err := CryptoFrames(tt.payload, func(offset uint64, data []byte) error {
				got = append(got, cryptoCall{offset, string(data)})
				if len(got) == tt.stopAt {
					return errStop
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CryptoFrames error = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("CryptoFrames calls = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestCryptoFramesPrefixes walks every prefix of real payloads.
func TestCryptoFramesPrefixes(t *testing.T) {
	flight := recordedFlight(t)
	odcid, _ := DestCID(flight[0])
	payloads := [][]byte{rfcClientPayload(t), fromHex(t, rfcServerPayloadHex)}
	for _, d := range flight {
		p, _, _, err := OpenInitial(d, odcid, true)
		if err != nil {
			t.Fatal(err)
		}
		payloads = append(payloads, p)
	}
	for i, p := range payloads {
		for n := range len(p) + 1 {
			var sum int
			err := CryptoFrames(p[:n], func(_ uint64, data []byte) error {
				sum += len(data)
				return nil
			})
			if err == nil && sum > n {
				t.Errorf("payload %d, %d-byte prefix: CRYPTO data of %d bytes", i, n, sum)
			}
		}
		if err := CryptoFrames(p, func(uint64, []byte) error { return nil }); err != nil {
			t.Errorf("payload %d: CryptoFrames: %v", i, err)
		}
	}
}

func BenchmarkOpenInitial(b *testing.B) {
	d := recordedFlight(b)[0]
	odcid, _ := DestCID(d)
	b.Run("derive keys", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(d)))
		for b.Loop() {
			if _, _, _, err := OpenInitial(d, odcid, true); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reuse keys", func(b *testing.B) {
		k := mustKeys(b, odcid)
		b.ReportAllocs()
		b.SetBytes(int64(len(d)))
		for b.Loop() {
			if _, _, _, err := k.Open(d, true); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func FuzzOpenInitial(f *testing.F) {
	for _, d := range recordedFlight(f) {
		f.Add(d, false)
	}
	f.Add(fromHex(f, rfcClientInitialHex), false)
	f.Add(fromHex(f, rfcServerInitialHex), false)
	f.Add(rfcClientPayload(f), true)
	f.Add(fromHex(f, rfcServerPayloadHex), true)
	f.Add([]byte{frameAck, 10, 0, 2, 1, 2, 1, 0, 0, frameConnectionClose, 0, 0, 0}, true)
	fuzzKeys := mustKeys(f, []byte("fuzz-odcid"))
	f.Fuzz(func(t *testing.T, data []byte, asPayload bool) {
		if asPayload {
			// Protect data as the payload of an Initial packet, so that
			// the frame parser is reached with arbitrary plaintext.
			if len(data) == 0 || len(data) > 4000 {
				return
			}
			p := buildPacket(&fuzzKeys.client, packetSpec{typ: Initial, dcid: []byte("dcid"), payload: data})
			payload, rest, _, err := fuzzKeys.Open(p, true)
			if err != nil || !bytes.Equal(payload, data) || len(rest) != 0 {
				t.Fatalf("Open(protected payload) = %x, %x, %v, want %x", payload, rest, err, data)
			}
			data = payload
		} else {
			odcid, err := DestCID(data)
			if err != nil {
				return
			}
			var opened []byte
			for _, fromClient := range []bool{true, false} {
				payload, rest, hdr, err := OpenInitial(data, odcid, fromClient)
				if err != nil {
					continue
				}
				if len(payload) == 0 || hdr.Type != Initial || len(rest) > len(data)-hdr.PNOffset {
					t.Fatalf("OpenInitial = %x, %x, %+v", payload, rest, hdr)
				}
				opened = payload
			}
			if opened == nil {
				return
			}
			data = opened
		}
		var s CryptoStream
		if err := CryptoFrames(data, s.Insert); err != nil {
			return
		}
		s.ALPN()
		if msg := s.Message(); msg != nil {
			ParseClientHelloALPN(msg)
		}
	})
}
