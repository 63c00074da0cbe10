package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// fragment is a piece of crypto stream data.
type fragment struct {
	offset uint64
	data   string
}

func TestCryptoStream(t *testing.T) {
	// msg is a handshake message with a 6-byte body.
	const msg = "\x01\x00\x00\x06abcdef"
	tests := []struct {
		name         string
		fragments    []fragment
		wantComplete bool
		wantPrefix   string
	}{
		{name: "empty"},
		{name: "empty fragment", fragments: []fragment{{0, ""}}},
		{name: "in order", fragments: []fragment{{0, msg[:4]}, {4, msg[4:]}}, wantComplete: true, wantPrefix: msg},
		{name: "single fragment", fragments: []fragment{{0, msg}}, wantComplete: true, wantPrefix: msg},
		{name: "header only", fragments: []fragment{{0, msg[:4]}}, wantPrefix: msg[:4]},
		{name: "partial header", fragments: []fragment{{0, msg[:2]}}, wantPrefix: msg[:2]},
		{name: "missing start", fragments: []fragment{{1, msg[1:]}}},
		{name: "reversed", fragments: []fragment{{6, msg[6:]}, {3, msg[3:6]}, {0, msg[:3]}}, wantComplete: true, wantPrefix: msg},
		{
			name:         "hole filled last",
			fragments:    []fragment{{0, msg[:5]}, {6, msg[6:]}, {5, msg[5:6]}},
			wantComplete: true,
			wantPrefix:   msg,
		},
		{name: "hole", fragments: []fragment{{0, msg[:5]}, {6, msg[6:]}}, wantPrefix: msg[:5]},
		{
			name:         "duplicates and overlaps",
			fragments:    []fragment{{2, msg[2:8]}, {2, msg[2:8]}, {0, msg[:3]}, {5, msg[5:]}, {1, msg[1:9]}, {0, msg}},
			wantComplete: true,
			wantPrefix:   msg,
		},
		{
			name:         "fragment covering several",
			fragments:    []fragment{{1, msg[1:2]}, {3, msg[3:4]}, {5, msg[5:6]}, {0, msg}},
			wantComplete: true,
			wantPrefix:   msg,
		},
		{
			name:         "data after message",
			fragments:    []fragment{{0, msg + "\x02\x00"}},
			wantComplete: true,
			wantPrefix:   msg + "\x02\x00",
		},
		{name: "empty message", fragments: []fragment{{0, "\x01\x00\x00\x00"}}, wantComplete: true, wantPrefix: "\x01\x00\x00\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s CryptoStream
			for _, f := range tt.fragments {
				if err := s.Insert(f.offset, []byte(f.data)); err != nil {
					t.Fatalf("Insert(%d, %q): %v", f.offset, f.data, err)
				}
			}
			if got := s.Complete(); got != tt.wantComplete {
				t.Errorf("Complete() = %v, want %v", got, tt.wantComplete)
			}
			if got := string(s.Prefix()); got != tt.wantPrefix {
				t.Errorf("Prefix() = %q, want %q", got, tt.wantPrefix)
			}
			var wantMsg []byte
			if tt.wantComplete {
				n := 4 + int(tt.wantPrefix[3])
				wantMsg = []byte(tt.wantPrefix[:n])
			}
			if got := s.Message(); !bytes.Equal(got, wantMsg) || (got == nil) != (wantMsg == nil) {
				t.Errorf("Message() = %q, want %q", got, wantMsg)
			}
		})
	}
}

func TestCryptoStreamKeepsFirstData(t *testing.T) {
	var s CryptoStream
	inserts := []fragment{{6, "cc"}, {4, "aaaaaa"}, {9, "bbbb"}, {0, "\x01\x00\x00\x09"}}
	for _, f := range inserts {
		if err := s.Insert(f.offset, []byte(f.data)); err != nil {
			t.Fatalf("Insert(%d, %q): %v", f.offset, f.data, err)
		}
	}
	if got, want := string(s.Prefix()), "\x01\x00\x00\x09aaccaabbb"; got != want {
		t.Errorf("Prefix() = %q, want %q", got, want)
	}
}

func TestCryptoStreamLimits(t *testing.T) {
	tests := []struct {
		name      string
		fragments []fragment
		wantErr   error // of the last insertion
	}{
		{name: "up to limit", fragments: []fragment{{MaxCryptoData - 1, "x"}}},
		{name: "empty at limit", fragments: []fragment{{MaxCryptoData, ""}}},
		{name: "beyond limit", fragments: []fragment{{MaxCryptoData - 1, "xy"}}, wantErr: ErrTooLarge},
		{name: "empty beyond limit", fragments: []fragment{{MaxCryptoData + 1, ""}}, wantErr: ErrTooLarge},
		{name: "huge offset", fragments: []fragment{{1<<64 - 1, "x"}}, wantErr: ErrTooLarge},
		{name: "message at limit", fragments: []fragment{{0, "\x01\x00\xff\xfc"}}},
		{name: "message beyond limit", fragments: []fragment{{0, "\x01\x00\xff\xfd"}}, wantErr: ErrTooLarge},
		{name: "message header completed beyond limit", fragments: []fragment{{2, "\xff\xff"}, {0, "\x01\xff"}}, wantErr: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s CryptoStream
			var err error
			for _, f := range tt.fragments {
				err = s.Insert(f.offset, []byte(f.data))
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Insert error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestCryptoStreamFragmentation(t *testing.T) {
	var s CryptoStream
	for i := range maxCryptoFragments {
		if err := s.Insert(uint64(2*i+1), []byte{0}); err != nil {
			t.Fatalf("Insert(fragment %d): %v", i, err)
		}
	}
	if err := s.Insert(2*maxCryptoFragments+1, []byte{0}); !errors.Is(err, ErrTooFragmented) {
		t.Fatalf("Insert(one fragment too many) error = %v, want %v", err, ErrTooFragmented)
	}
	// Adjacent data and data filling gaps are still accepted.
	if err := s.Insert(2*maxCryptoFragments, []byte{0}); err != nil {
		t.Errorf("Insert(adjacent fragment): %v", err)
	}
	if err := s.Insert(0, make([]byte, 2*maxCryptoFragments)); err != nil {
		t.Errorf("Insert(filling fragment): %v", err)
	}
	if got, want := len(s.Prefix()), 2*maxCryptoFragments+1; got != want {
		t.Errorf("len(Prefix()) = %d, want %d", got, want)
	}
	if got, want := len(s.spans), 1; got != want {
		t.Errorf("stream has %d ranges, want %d", got, want)
	}
}

// recordedHello returns the ClientHello of the recorded quic-go flight.
func recordedHello(tb testing.TB) []byte {
	tb.Helper()
	flight := recordedFlight(tb)
	odcid, _ := DestCID(flight[0])
	var s CryptoStream
	for _, d := range flight {
		payload, _, _, err := OpenInitial(d, odcid, true)
		if err != nil {
			tb.Fatal(err)
		}
		if err := CryptoFrames(payload, s.Insert); err != nil {
			tb.Fatal(err)
		}
	}
	if !s.Complete() {
		tb.Fatal("recorded flight holds no complete ClientHello")
	}
	return s.Message()
}

func TestParseClientHelloALPN(t *testing.T) {
	sni := ext(0, []byte("\x00\x0e\x00\x00\x0bexample.com"))
	tests := []struct {
		name    string
		msg     []byte
		want    []string
		wantErr error
	}{
		{name: "RFC 9001 A.2", msg: fromHex(t, rfcClientCryptoHex)[4:], want: []string{"alpn"}},
		{name: "quic-go", msg: recordedHello(t), want: []string{"quicpipe-test"}},
		{name: "crypto/tls", msg: goClientHello(t, []string{"h3", "quicpipe/1"}), want: []string{"h3", "quicpipe/1"}},
		{name: "crypto/tls without ALPN", msg: goClientHello(t, nil)},
		{name: "minimal", msg: buildHello(helloSpec{exts: [][]byte{alpnExt("a")}}), want: []string{"a"}},
		{
			name: "ALPN among others",
			msg:  buildHello(helloSpec{sessionID: make([]byte, 32), exts: [][]byte{sni, ext(43, []byte{2, 3, 4}), alpnExt("h3", "h3-29"), ext(0xfe0d, nil)}}),
			want: []string{"h3", "h3-29"},
		},
		{name: "long protocol name", msg: buildHello(helloSpec{exts: [][]byte{alpnExt(string(bytes.Repeat([]byte{'p'}, 255)))}}), want: []string{string(bytes.Repeat([]byte{'p'}, 255))}},
		{name: "no extensions block", msg: buildHello(helloSpec{noExts: true})},
		{name: "empty extensions block", msg: buildHello(helloSpec{})},
		{name: "other extensions", msg: buildHello(helloSpec{exts: [][]byte{sni}})},

		{name: "empty", msg: nil, wantErr: ErrTruncated},
		{name: "header only", msg: []byte{1, 0, 0, 10}, wantErr: ErrTruncated},
		{name: "truncated", msg: buildHello(helloSpec{exts: [][]byte{alpnExt("a")}, msgLenAdj: 1}), wantErr: ErrTruncated},
		{name: "ServerHello", msg: buildHello(helloSpec{typ: 2}), wantErr: ErrNotClientHello},
		{name: "trailing data", msg: concat(buildHello(helloSpec{exts: [][]byte{alpnExt("a")}}), []byte{0}), wantErr: ErrMalformedClientHello},
		{name: "message too short for random", msg: []byte{1, 0, 0, 3, 3, 3, 0}, wantErr: ErrMalformedClientHello},
		{name: "session ID too long", msg: buildHello(helloSpec{sessionID: make([]byte, 33)}), wantErr: ErrMalformedClientHello},
		{name: "odd cipher suites length", msg: buildHello(helloSpec{suites: []byte{0x13, 0x01, 0x13}}), wantErr: ErrMalformedClientHello},
		{name: "no cipher suites", msg: buildHello(helloSpec{suites: []byte{}}), wantErr: ErrMalformedClientHello},
		{name: "no compression methods", msg: buildHello(helloSpec{compression: []byte{}}), wantErr: ErrMalformedClientHello},
		{name: "session ID beyond message", msg: buildHello(helloSpec{sessionID: make([]byte, 5), noExts: true, msgLenAdj: -10}), wantErr: ErrMalformedClientHello},
		{name: "extensions length too long", msg: buildHello(helloSpec{exts: [][]byte{alpnExt("a")}, extsLenAdj: 1}), wantErr: ErrMalformedClientHello},
		{name: "extensions length too short", msg: buildHello(helloSpec{exts: [][]byte{alpnExt("a")}, extsLenAdj: -1}), wantErr: ErrMalformedClientHello},
		{name: "truncated extension header", msg: buildHello(helloSpec{exts: [][]byte{{0, 16}}}), wantErr: ErrMalformedClientHello},
		{name: "extension beyond message", msg: buildHello(helloSpec{exts: [][]byte{{0, 0, 0, 5, 1}}}), wantErr: ErrMalformedClientHello},
		{name: "truncated extensions length", msg: concat(buildHello(helloSpec{noExts: true, msgLenAdj: 1}), []byte{0}), wantErr: ErrMalformedClientHello},
		{name: "duplicate ALPN", msg: buildHello(helloSpec{exts: [][]byte{alpnExt("a"), alpnExt("b")}}), wantErr: ErrMalformedClientHello},
		{name: "empty ALPN extension", msg: buildHello(helloSpec{exts: [][]byte{ext(16, nil)}}), wantErr: ErrMalformedClientHello},
		{name: "empty ALPN list", msg: buildHello(helloSpec{exts: [][]byte{ext(16, []byte{0, 0})}}), wantErr: ErrMalformedClientHello},
		{name: "ALPN list length mismatch", msg: buildHello(helloSpec{exts: [][]byte{ext(16, []byte{0, 3, 1, 'a'})}}), wantErr: ErrMalformedClientHello},
		{name: "empty protocol name", msg: buildHello(helloSpec{exts: [][]byte{ext(16, []byte{0, 3, 1, 'a', 0})}}), wantErr: ErrMalformedClientHello},
		{name: "protocol name beyond list", msg: buildHello(helloSpec{exts: [][]byte{ext(16, []byte{0, 2, 2, 'a'})}}), wantErr: ErrMalformedClientHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClientHelloALPN(tt.msg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseClientHelloALPN error = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ParseClientHelloALPN = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestALPNFromPartialClientHello checks every prefix of ClientHellos.
func TestALPNFromPartialClientHello(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		want []string
	}{
		{"RFC 9001 A.2", fromHex(t, rfcClientCryptoHex)[4:], []string{"alpn"}},
		{"quic-go", recordedHello(t), []string{"quicpipe-test"}},
		{"crypto/tls", goClientHello(t, []string{"h3", "quicpipe/1"}), []string{"h3", "quicpipe/1"}},
		{"crypto/tls without ALPN", goClientHello(t, nil), nil},
		{"no extensions", buildHello(helloSpec{noExts: true}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			foundAt := determinedAt(t, tt.msg)
			for n := range len(tt.msg) + 1 {
				alpn, found, err := ALPNFromPartialClientHello(tt.msg[:n])
				if err != nil || found != (n >= foundAt) || (found && !slices.Equal(alpn, tt.want)) || (!found && alpn != nil) {
					t.Fatalf("ALPNFromPartialClientHello(%d of %d bytes) = %q, %v, %v, want %q, %v, nil",
						n, len(tt.msg), alpn, found, err, tt.want, n >= foundAt)
				}
			}
			// Data following the message is ignored.
			alpn, found, err := ALPNFromPartialClientHello(concat(tt.msg, []byte{0xff, 0xff}))
			if err != nil || !found || !slices.Equal(alpn, tt.want) {
				t.Errorf("ALPNFromPartialClientHello(message and more) = %q, %v, %v, want %q, true, nil", alpn, found, err, tt.want)
			}
		})
	}
}

// alpnEnd returns the offset following the ALPN extension in msg, a
// well-formed ClientHello.
func alpnEnd(tb testing.TB, msg []byte) int {
	tb.Helper()
	end, ok := walkHello(msg)
	if !ok {
		tb.Fatal("no ALPN extension found")
	}
	return end
}

// determinedAt returns the length of the shortest prefix of msg, a
// well-formed ClientHello, that determines its ALPN protocols: the end of
// the ALPN extension or, if there is none, the end of the last length
// field before the end of the message.
func determinedAt(tb testing.TB, msg []byte) int {
	tb.Helper()
	end, _ := walkHello(msg)
	return end
}

// walkHello walks the extensions of msg, a well-formed ClientHello, and
// returns the end of its ALPN extension, if it has one, or else the end of
// its last length field.
func walkHello(msg []byte) (end int, isALPN bool) {
	pos := 4 + 2 + 32
	pos += 1 + int(msg[pos])
	pos += 2 + int(binary.BigEndian.Uint16(msg[pos:]))
	end = pos + 1 // compression methods length
	pos += 1 + int(msg[pos])
	if pos == len(msg) {
		return end, false
	}
	end = pos + 2 // extensions length
	for pos += 2; pos < len(msg); {
		typ := binary.BigEndian.Uint16(msg[pos:])
		end = pos + 4
		pos += 4 + int(binary.BigEndian.Uint16(msg[pos+2:]))
		if typ == extensionALPN {
			return pos, true
		}
	}
	return end, false
}

func TestALPNFromPartialClientHelloErrors(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		{"header incomplete", []byte{2, 0}, nil},
		{"ServerHello header", []byte{2, 0, 0, 40}, ErrNotClientHello},
		{"session ID too long", []byte{1, 0, 1, 0, 3, 3, 38: 33}, ErrMalformedClientHello},
		{"message too short", []byte{1, 0, 0, 10, 3, 3}, ErrMalformedClientHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alpn, found, err := ALPNFromPartialClientHello(tt.data)
			if !errors.Is(err, tt.wantErr) || found || alpn != nil {
				t.Errorf("ALPNFromPartialClientHello = %q, %v, %v, want nil, false, %v", alpn, found, err, tt.wantErr)
			}
		})
	}
}

// TestCryptoStreamALPN checks that the ALPN extension is found although
// other parts of the ClientHello are missing, as happens with quic-go,
// which sends part of the server name last.
func TestCryptoStreamALPN(t *testing.T) {
	hello := recordedHello(t)
	want := []string{"quicpipe-test"}
	end := alpnEnd(t, hello)
	start := end - 4 - len("\x00\x0e\x0dquicpipe-test")
	sni := bytes.Index(hello, []byte{0, 0, 0, 6, 0, 4, 0, 0, 1, 'x'}) // server_name extension for "x"
	if sni < 0 {
		t.Fatal("server_name extension not found")
	}
	tests := []struct {
		name      string
		fragments [][2]int // ranges of hello
		wantFound bool
	}{
		{"everything", [][2]int{{0, len(hello)}}, true},
		{"up to ALPN", [][2]int{{0, end}}, true},
		{"server name missing", [][2]int{{0, sni + 9}, {sni + 10, len(hello)}}, true},
		{"server name missing, up to ALPN", [][2]int{{end - 5, end}, {0, sni + 9}, {sni + 10, end - 5}}, true},
		{"ALPN incomplete", [][2]int{{0, sni + 9}, {sni + 10, end - 1}}, false},
		{"ALPN header missing", [][2]int{{0, start}, {start + 4, len(hello)}}, false},
		{"extension header missing", [][2]int{{0, sni}, {sni + 4, len(hello)}}, false},
		{"only ALPN", [][2]int{{start, end}}, false},
		{"after ALPN", [][2]int{{end, len(hello)}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s CryptoStream
			for _, f := range tt.fragments {
				if err := s.Insert(uint64(f[0]), hello[f[0]:f[1]]); err != nil {
					t.Fatalf("Insert: %v", err)
				}
			}
			alpn, found, err := s.ALPN()
			var wantALPN []string
			if tt.wantFound {
				wantALPN = want
			}
			if err != nil || found != tt.wantFound || !slices.Equal(alpn, wantALPN) {
				t.Errorf("ALPN() = %q, %v, %v, want %q, %v, nil", alpn, found, err, wantALPN, tt.wantFound)
			}
		})
	}
}

// flightBuilder builds client Initial datagrams for tests.
type flightBuilder struct {
	keys       *InitialKeys
	dcid, scid []byte
	pn         uint32
}

func newFlightBuilder(tb testing.TB) *flightBuilder {
	dcid := []byte("test-original-dcid")
	return &flightBuilder{keys: mustKeys(tb, dcid), dcid: dcid, scid: []byte("client-scid!")}
}

// packet returns an Initial packet carrying frames.
func (b *flightBuilder) packet(frames ...[]byte) []byte {
	return b.packetTo(b.dcid, b.scid, frames...)
}

// packetTo is like packet, with the given connection IDs.
func (b *flightBuilder) packetTo(dcid, scid []byte, frames ...[]byte) []byte {
	b.pn++
	return buildPacket(&b.keys.client, packetSpec{typ: Initial, dcid: dcid, scid: scid, pn: b.pn, payload: concat(frames...)})
}

// datagram returns a datagram holding a single padded Initial packet.
func (b *flightBuilder) datagram(frames ...[]byte) []byte {
	return b.packet(pad(concat(frames...), minClientDatagram))
}

func TestInspectClientInitials(t *testing.T) {
	b := newFlightBuilder(t)
	hello := buildHello(helloSpec{exts: [][]byte{ext(0, make([]byte, 300)), alpnExt("h3", "quicpipe"), ext(51, make([]byte, 1500))}})
	wantALPN := []string{"h3", "quicpipe"}
	end := alpnEnd(t, hello)
	handshake := buildPacket(&b.keys.client, packetSpec{typ: Handshake, dcid: b.dcid, scid: b.scid, payload: make([]byte, 50)})
	otherDCID := []byte("other-dcid")
	corrupt := func(d []byte) []byte {
		d[len(d)-1] ^= 1
		return d
	}

	tests := []struct {
		name      string
		datagrams [][]byte
		want      ClientInitialInfo // ODCID and SCID are checked if no error
		wantErr   error
	}{
		{
			name:      "complete in one datagram",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello))},
			want:      ClientInitialInfo{ALPN: wantALPN, Complete: true, Datagrams: 1},
		},
		{
			name:      "ALPN only",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello[:end]))},
			want:      ClientInitialInfo{ALPN: wantALPN, Datagrams: 1},
		},
		{
			name:      "ALPN not yet",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello[:end-1]))},
			want:      ClientInitialInfo{Datagrams: 1},
		},
		{
			name: "split, reordered and repeated",
			datagrams: [][]byte{
				b.datagram(cryptoFrame(1000, hello[1000:]), cryptoFrame(0, hello[:10])),
				b.datagram(cryptoFrame(500, hello[500:1000])),
				b.datagram(cryptoFrame(10, hello[10:500]), cryptoFrame(0, hello[:10])),
			},
			want: ClientInitialInfo{ALPN: wantALPN, Complete: true, Datagrams: 3},
		},
		{
			name: "coalesced packets",
			datagrams: [][]byte{
				concat(
					b.packet(cryptoFrame(0, hello[:700]), []byte{framePing}),
					handshake,
					b.packet([]byte{frameAck, 0, 0, 0, 0}, cryptoFrame(700, hello[700:]), make([]byte, 100)),
					make([]byte, 200), // trailing padding
				),
			},
			want: ClientInitialInfo{ALPN: wantALPN, Complete: true, Datagrams: 1},
		},
		{
			name: "unparseable coalesced packet",
			datagrams: [][]byte{
				concat(b.packet(cryptoFrame(0, hello[:700])), []byte{0xc0, 0, 0, 0, 1, 30}, make([]byte, 600)),
			},
			want: ClientInitialInfo{ALPN: wantALPN, Datagrams: 1},
		},
		{
			name: "coalesced Retry packet",
			datagrams: [][]byte{
				concat(b.packet(cryptoFrame(0, hello[:700])), fromHex(t, rfcRetryHex), make([]byte, 600)),
			},
			want: ClientInitialInfo{ALPN: wantALPN, Datagrams: 1},
		},
		{
			name: "complete without ALPN",
			datagrams: [][]byte{
				b.datagram(cryptoFrame(0, buildHello(helloSpec{exts: [][]byte{ext(0, nil)}}))),
			},
			want: ClientInitialInfo{Complete: true, Datagrams: 1},
		},
		{name: "no datagrams", wantErr: ErrTruncated},
		{name: "short datagram", datagrams: [][]byte{b.packet(pad(cryptoFrame(0, hello[:10]), 1100))}, wantErr: ErrShortDatagram},
		{name: "short header", datagrams: [][]byte{make([]byte, 1200)}, wantErr: ErrNotLongHeader},
		{
			name:      "Handshake packet",
			datagrams: [][]byte{buildPacket(&b.keys.client, packetSpec{typ: Handshake, dcid: b.dcid, payload: make([]byte, 1200)})},
			wantErr:   ErrNotInitial,
		},
		{
			name:      "short header in second datagram",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello[:10])), make([]byte, 1200)},
			wantErr:   ErrNotLongHeader,
		},
		{
			name:      "coalesced Handshake packet first in second datagram",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello[:10])), concat(handshake, b.datagram())},
			wantErr:   ErrNotInitial,
		},
		{
			name:      "truncated second datagram",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, hello[:10])), b.datagram()[:1250]},
			wantErr:   ErrTruncated,
		},
		{
			name: "different DCID",
			datagrams: [][]byte{
				b.datagram(cryptoFrame(0, hello[:10])),
				b.packetTo(otherDCID, b.scid, pad(nil, 1200)),
			},
			wantErr: ErrMismatchedConnID,
		},
		{
			name: "different SCID",
			datagrams: [][]byte{
				b.datagram(cryptoFrame(0, hello[:10])),
				b.packetTo(b.dcid, otherDCID, pad(nil, 1200)),
			},
			wantErr: ErrMismatchedConnID,
		},
		{
			name: "different DCID in coalesced packet",
			datagrams: [][]byte{
				concat(b.packet(cryptoFrame(0, hello[:10])), b.packetTo(otherDCID, b.scid, pad(nil, 1200))),
			},
			wantErr: ErrMismatchedConnID,
		},
		{
			name:      "undecryptable",
			datagrams: [][]byte{corrupt(b.datagram(cryptoFrame(0, hello[:10])))},
			wantErr:   ErrDecrypt,
		},
		{
			name:      "STREAM frame",
			datagrams: [][]byte{b.datagram([]byte{0x08, 0, 1, 'x'})},
			wantErr:   ErrFrameNotAllowed,
		},
		{
			name:      "not a ClientHello",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, buildHello(helloSpec{typ: 2})))},
			wantErr:   ErrNotClientHello,
		},
		{
			name:      "malformed ClientHello",
			datagrams: [][]byte{b.datagram(cryptoFrame(0, buildHello(helloSpec{exts: [][]byte{alpnExt("")}})))},
			wantErr:   ErrMalformedClientHello,
		},
		{
			name:      "crypto data beyond limit",
			datagrams: [][]byte{b.datagram(cryptoFrame(MaxCryptoData, []byte{1}))},
			wantErr:   ErrTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := InspectClientInitials(tt.datagrams)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("InspectClientInitials error = %v, want %v", err, tt.wantErr)
			}
			want := tt.want
			if err == nil {
				want.ODCID, want.SCID = b.dcid, b.scid
			}
			if !equalInfo(got, want) {
				t.Errorf("InspectClientInitials = %+v, want %+v", got, want)
			}
		})
	}
}

// equalInfo reports whether a and b are equal.
func equalInfo(a, b ClientInitialInfo) bool {
	return bytes.Equal(a.ODCID, b.ODCID) && bytes.Equal(a.SCID, b.SCID) &&
		slices.Equal(a.ALPN, b.ALPN) && a.Complete == b.Complete && a.Datagrams == b.Datagrams
}

func TestInspectClientInitialsDoesNotAlias(t *testing.T) {
	flight := recordedFlight(t)
	orig := [][]byte{bytes.Clone(flight[0]), bytes.Clone(flight[1])}
	info, err := InspectClientInitials(flight)
	if err != nil {
		t.Fatal(err)
	}
	for i := range flight {
		if !bytes.Equal(flight[i], orig[i]) {
			t.Errorf("datagram %d was modified", i)
		}
		clear(flight[i])
	}
	if want, _ := DestCID(orig[0]); !bytes.Equal(info.ODCID, want) {
		t.Errorf("ODCID = %x after clearing the datagrams, want %x", info.ODCID, want)
	}
}

// TestInspectClientInitialsPrefixes inspects every prefix of each datagram
// of a real flight.
func TestInspectClientInitialsPrefixes(t *testing.T) {
	flight := recordedFlight(t)
	for i := range flight {
		for n := range len(flight[i]) {
			ds := slices.Clone(flight)
			ds[i] = ds[i][:n]
			if info, err := InspectClientInitials(ds); err == nil {
				t.Errorf("InspectClientInitials(datagram %d cut to %d bytes) = %+v, want error", i, n, info)
			}
		}
	}
}

func BenchmarkInspectClientInitials(b *testing.B) {
	flight := recordedFlight(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(flight[0]) + len(flight[1])))
	for b.Loop() {
		info, err := InspectClientInitials(flight)
		if err != nil || !info.Complete {
			b.Fatalf("InspectClientInitials = %+v, %v", info, err)
		}
	}
}

func FuzzCryptoStream(f *testing.F) {
	// The input is a sequence of fragments, each encoded as a 2-byte
	// offset, a 1-byte length and that many bytes of data. Offsets with the
	// high bit clear are taken modulo 1024, offsets with the high bit set
	// count back from MaxCryptoData.
	encode := func(frags ...fragment) []byte {
		var b []byte
		for _, fr := range frags {
			off := uint16(fr.offset)
			if fr.offset >= 1024 {
				off = uint16(MaxCryptoData-fr.offset) | 0x8000
			}
			b = binary.BigEndian.AppendUint16(b, off)
			b = append(b, byte(len(fr.data)))
			b = append(b, fr.data...)
		}
		return b
	}
	hello := buildHello(helloSpec{exts: [][]byte{ext(0, []byte("\x00\x04\x00\x00\x01x")), alpnExt("h3", "quicpipe")}})
	var frags []fragment
	for off := 0; off < len(hello); off += 7 {
		frags = append(frags, fragment{uint64(off), string(hello[off:min(off+7, len(hello))])})
	}
	f.Add(encode(frags...))
	slices.Reverse(frags)
	f.Add(encode(frags...))
	f.Add(encode(fragment{0, string(hello[:50])}, fragment{51, string(hello[51:])}, fragment{50, string(hello[50:51])}))
	f.Add(encode(fragment{0, "\x01\x00\x00\x06abc"}, fragment{2, "\x00\x06abcdef"}, fragment{0, "\x01"}))
	f.Add(encode(fragment{MaxCryptoData - 1, "xy"}, fragment{0, "\x01\x01\x00\x00"}, fragment{MaxCryptoData - 2, "z"}))

	f.Fuzz(func(t *testing.T, in []byte) {
		var (
			s     CryptoStream
			model []byte // received bytes, first received wins
			known []bool
		)
		for len(in) >= 3 {
			off := int(binary.BigEndian.Uint16(in))
			if off&0x8000 == 0 {
				off %= 1024
			} else {
				off = MaxCryptoData - off&0x7fff
			}
			n := min(int(in[2]), len(in)-3)
			data := in[3 : 3+n]
			in = in[3+n:]
			saved := append([]span(nil), s.spans...)
			err := s.Insert(uint64(off), data)
			if errors.Is(err, ErrTooFragmented) || (errors.Is(err, ErrTooLarge) && off+n > MaxCryptoData) {
				if !slices.Equal(s.spans, saved) {
					t.Fatalf("Insert(%d, %d bytes) failed with %v but changed the stream", off, n, err)
				}
				continue
			}
			if err != nil && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Insert(%d, %d bytes): %v", off, n, err)
			}
			if grow := off + n - len(model); grow > 0 {
				model = append(model, make([]byte, grow)...)
				known = append(known, make([]bool, grow)...)
			}
			for i, c := range data {
				if !known[off+i] {
					model[off+i], known[off+i] = c, true
				}
			}
		}

		prefix := 0
		for prefix < len(known) && known[prefix] {
			prefix++
		}
		if got := s.Prefix(); !bytes.Equal(got, model[:prefix]) {
			t.Fatalf("Prefix() = %x, want %x", got, model[:prefix])
		}
		for i, sp := range s.spans {
			if sp.start >= sp.end || (i > 0 && s.spans[i-1].end >= sp.start) {
				t.Fatalf("invalid ranges %v", s.spans)
			}
			for j := sp.start; j < sp.end; j++ {
				if !known[j] || s.buf[j] != model[j] {
					t.Fatalf("byte %d differs from model", j)
				}
			}
		}
		complete := prefix >= 4 && prefix >= 4+(int(model[1])<<16|int(model[2])<<8|int(model[3]))
		if s.Complete() != complete || (s.Message() != nil) != complete {
			t.Fatalf("Complete() = %v, Message() = %x, want complete %v", s.Complete(), s.Message(), complete)
		}

		// The sparse parser knows at least as much as the prefix parser.
		alpn, found, err := s.ALPN()
		palpn, pfound, perr := ALPNFromPartialClientHello(s.Prefix())
		switch {
		case perr != nil && err == nil:
			t.Fatalf("ALPN() = %q, %v, nil; prefix gives error %v", alpn, found, perr)
		case pfound && err == nil && (!found || !slices.Equal(alpn, palpn)):
			t.Fatalf("ALPN() = %q, %v; prefix gives %q", alpn, found, palpn)
		}
		if complete {
			malpn, merr := ParseClientHelloALPN(s.Message())
			if (merr == nil) != (err == nil) || (merr == nil && (!found || !slices.Equal(malpn, alpn))) {
				t.Fatalf("ALPN() = %q, %v, %v; ParseClientHelloALPN(Message()) = %q, %v", alpn, found, err, malpn, merr)
			}
		}
	})
}

func FuzzParseClientHelloALPN(f *testing.F) {
	f.Add(fromHex(f, rfcClientCryptoHex)[4:])
	f.Add(recordedHello(f))
	f.Add(goClientHello(f, []string{"h3", "quicpipe/1"}))
	f.Add(buildHello(helloSpec{noExts: true}))
	f.Add(buildHello(helloSpec{exts: [][]byte{alpnExt("a"), alpnExt("b")}}))
	f.Add(buildHello(helloSpec{sessionID: make([]byte, 32), exts: [][]byte{ext(0, nil), alpnExt("h3", "h2"), ext(51, []byte{0, 0})}}))
	f.Fuzz(func(t *testing.T, msg []byte) {
		alpn, err := ParseClientHelloALPN(msg)
		palpn, pfound, perr := ALPNFromPartialClientHello(msg)
		if err == nil && (perr != nil || !pfound || !slices.Equal(alpn, palpn)) {
			t.Fatalf("ParseClientHelloALPN = %q; ALPNFromPartialClientHello = %q, %v, %v", alpn, palpn, pfound, perr)
		}
		for _, name := range alpn {
			if name == "" {
				t.Fatalf("empty protocol name in %q", alpn)
			}
		}
		// A prefix never contradicts the whole message.
		step := max(1, len(msg)/64)
		for n := 0; n < len(msg); n += step {
			a, found, err := ALPNFromPartialClientHello(msg[:n])
			switch {
			case perr == nil && err != nil:
				t.Fatalf("%d-byte prefix gives error %v, whole message does not", n, err)
			case found && perr == nil && (!pfound || !slices.Equal(a, palpn)):
				t.Fatalf("%d-byte prefix gives %q, whole message %q, %v", n, a, palpn, pfound)
			case !found && a != nil:
				t.Fatalf("%d-byte prefix gives %q without found", n, a)
			}
		}
	})
}
