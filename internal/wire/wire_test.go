package wire

import (
	"bytes"
	"errors"
	"testing"
)

// Packets from RFC 9001, Appendix A.
const (
	// rfcODCID is the client's original destination connection ID.
	rfcODCID = "8394c8f03e515708"

	// rfcServerInitialHex is the protected server Initial packet of
	// Appendix A.3.
	rfcServerInitialHex = `
		cf000000010008f067a5502a4262b500 4075c0d95a482cd0991cd25b0aac406a
		5816b6394100f37a1c69797554780bb3 8cc5a99f5ede4cf73c3ec2493a1839b3
		dbcba3f6ea46c5b7684df3548e7ddeb9 c3bf9c73cc3f3bded74b562bfb19fb84
		022f8ef4cdd93795d77d06edbb7aaf2f 58891850abbdca3d20398c276456cbc4
		2158407dd074ee`

	// rfcRetryHex is the Retry packet of Appendix A.4.
	rfcRetryHex = `
		ff000000010008f067a5502a4262b574 6f6b656e04a265ba2eff4d829058fb3f
		0f2496ba`
)

func TestIsLongHeader(t *testing.T) {
	tests := []struct {
		first byte
		want  bool
	}{
		{0x00, false},
		{0x40, false},
		{0x7f, false},
		{0x80, true},
		{0xc0, true},
		{0xff, true},
	}
	for _, tt := range tests {
		if got := IsLongHeader(tt.first); got != tt.want {
			t.Errorf("IsLongHeader(%#02x) = %v, want %v", tt.first, got, tt.want)
		}
	}
}

func TestDestCID(t *testing.T) {
	cid12 := []byte("0123456789ab")
	cid20 := bytes.Repeat([]byte{0xaa}, 20)
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr error
	}{
		{"empty", nil, nil, ErrTruncated},
		{"short header", concat([]byte{0x41}, cid12, []byte{1, 2, 3}), cid12, nil},
		{"short header exact", concat([]byte{0x41}, cid12), cid12, nil},
		{"short header without fixed bit", concat([]byte{0x01}, cid12), cid12, nil},
		{"short header truncated", concat([]byte{0x41}, cid12[:11]), nil, ErrTruncated},
		{"long header", concat([]byte{0xc0, 0, 0, 0, 1, 12}, cid12, []byte{0}), cid12, nil},
		{"long header empty cid", []byte{0xc0, 0, 0, 0, 1, 0, 0}, []byte{}, nil},
		{"long header 20-byte cid", concat([]byte{0xc0, 0, 0, 0, 1, 20}, cid20), cid20, nil},
		{"long header 21-byte cid", concat([]byte{0xc0, 0, 0, 0, 1, 21}, cid20, []byte{0}), nil, ErrConnIDTooLong},
		{"long header other version", concat([]byte{0xc0, 0x6b, 0x33, 0x43, 0xcf, 12}, cid12), cid12, nil},
		{"long header truncated version", []byte{0xc0, 0, 0, 0}, nil, ErrTruncated},
		{"long header missing cid length", []byte{0xc0, 0, 0, 0, 1}, nil, ErrTruncated},
		{"long header truncated cid", concat([]byte{0xc0, 0, 0, 0, 1, 12}, cid12[:11]), nil, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DestCID(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("DestCID(%x) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			if !bytes.Equal(got, tt.want) || (err == nil && got == nil) {
				t.Errorf("DestCID(%x) = %x, want %x", tt.in, got, tt.want)
			}
		})
	}
}

func TestDestCIDAliases(t *testing.T) {
	b := concat([]byte{0x40}, []byte("0123456789ab"))
	cid, err := DestCID(b)
	if err != nil {
		t.Fatal(err)
	}
	if &cid[0] != &b[1] || cap(cid) != CIDLen {
		t.Errorf("DestCID does not return a capacity-limited subslice of its input")
	}
}

func TestReadVarint(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantN   int
		wantErr error
	}{
		// Examples from RFC 9000, Appendix A.1.
		{"8 bytes", "c2197c5eff14e88c", 151288809941952652, 8, nil},
		{"4 bytes", "9d7f3e7d", 494878333, 4, nil},
		{"2 bytes", "7bbd", 15293, 2, nil},
		{"1 byte", "25", 37, 1, nil},
		{"non-minimal", "4025", 37, 2, nil},
		{"trailing data", "25ff", 37, 1, nil},
		{"maximum", "ffffffffffffffff", maxVarint, 8, nil},
		{"empty", "", 0, 0, ErrTruncated},
		{"truncated 2", "40", 0, 0, ErrTruncated},
		{"truncated 4", "800000", 0, 0, ErrTruncated},
		{"truncated 8", "c0000000000000", 0, 0, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, n, err := ReadVarint(fromHex(t, tt.in))
			if v != tt.want || n != tt.wantN || !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadVarint(%s) = %d, %d, %v, want %d, %d, %v", tt.in, v, n, err, tt.want, tt.wantN, tt.wantErr)
			}
		})
	}
}

func TestPacketTypeString(t *testing.T) {
	tests := []struct {
		t    PacketType
		want string
	}{
		{Initial, "Initial"},
		{ZeroRTT, "0-RTT"},
		{Handshake, "Handshake"},
		{Retry, "Retry"},
		{7, "PacketType(7)"},
	}
	for _, tt := range tests {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("PacketType(%d).String() = %q, want %q", uint8(tt.t), got, tt.want)
		}
	}
}

func TestParseLongHeader(t *testing.T) {
	dcid := fromHex(t, rfcODCID)
	scid := fromHex(t, "f067a5502a4262b5")
	cid21 := bytes.Repeat([]byte{1}, 21)
	// header returns a version 1 long header up to the connection IDs.
	header := func(first byte, dcid, scid []byte) []byte {
		return concat([]byte{first, 0, 0, 0, 1, byte(len(dcid))}, dcid, []byte{byte(len(scid))}, scid)
	}
	tests := []struct {
		name    string
		in      []byte
		want    LongHeader
		wantErr error
	}{
		{
			name: "RFC 9001 A.2 client Initial",
			in:   fromHex(t, rfcClientInitialHex),
			want: LongHeader{Type: Initial, Version: 1, DCID: dcid, SCID: []byte{}, Token: []byte{}, Length: 1182, PNOffset: 18},
		},
		{
			name: "RFC 9001 A.3 server Initial",
			in:   fromHex(t, rfcServerInitialHex),
			want: LongHeader{Type: Initial, Version: 1, DCID: []byte{}, SCID: scid, Token: []byte{}, Length: 117, PNOffset: 18},
		},
		{
			name: "RFC 9001 A.4 Retry",
			in:   fromHex(t, rfcRetryHex),
			want: LongHeader{Type: Retry, Version: 1, DCID: []byte{}, SCID: scid, Token: []byte("token")},
		},
		{
			name: "Initial with token and coalesced data",
			in:   concat(header(0xc3, dcid, scid), []byte{3, 't', 'o', 'k', 0x40, 4, 1, 2, 3, 4, 0xff, 0xff}),
			want: LongHeader{Type: Initial, Version: 1, DCID: dcid, SCID: scid, Token: []byte("tok"), Length: 4, PNOffset: 29},
		},
		{
			name: "0-RTT",
			in:   concat(header(0xd0, dcid, nil), []byte{2, 0, 0}),
			want: LongHeader{Type: ZeroRTT, Version: 1, DCID: dcid, SCID: []byte{}, Length: 2, PNOffset: 16},
		},
		{
			name: "Handshake without fixed bit",
			in:   concat(header(0xa0, nil, scid), []byte{1, 0}),
			want: LongHeader{Type: Handshake, Version: 1, DCID: []byte{}, SCID: scid, Length: 1, PNOffset: 16},
		},
		{
			name:    "version negotiation",
			in:      concat([]byte{0x80, 0, 0, 0, 0, 8}, dcid, []byte{8}, scid, []byte{0, 0, 0, 1}),
			want:    LongHeader{DCID: dcid, SCID: scid},
			wantErr: ErrVersionNegotiation,
		},
		{
			name:    "QUIC version 2",
			in:      concat([]byte{0xc0, 0x6b, 0x33, 0x43, 0xcf, 8}, dcid, []byte{8}, scid, []byte{0, 0x40, 1, 0}),
			want:    LongHeader{Version: 0x6b3343cf, DCID: dcid, SCID: scid},
			wantErr: ErrUnsupportedVersion,
		},
		{name: "empty", in: nil, wantErr: ErrTruncated},
		{name: "short header", in: concat([]byte{0x40}, dcid, dcid), wantErr: ErrNotLongHeader},
		{name: "truncated version", in: []byte{0xc0, 0, 0, 0, 1}, wantErr: ErrTruncated},
		{name: "DCID too long", in: header(0xc0, cid21, nil), wantErr: ErrConnIDTooLong},
		{name: "SCID too long", in: header(0xc0, dcid, cid21), wantErr: ErrConnIDTooLong},
		{name: "truncated SCID", in: header(0xc0, dcid, scid)[:20], wantErr: ErrTruncated},
		{name: "missing token length", in: header(0xc0, dcid, scid), wantErr: ErrTruncated},
		{name: "token beyond end", in: concat(header(0xc0, dcid, scid), []byte{5, 1, 2, 3, 4}), wantErr: ErrTruncated},
		{name: "truncated length", in: concat(header(0xc0, dcid, scid), []byte{0, 0x40}), wantErr: ErrTruncated},
		{name: "length beyond end", in: concat(header(0xc0, dcid, scid), []byte{0, 4, 1, 2, 3}), wantErr: ErrTruncated},
		{name: "huge length", in: concat(header(0xe0, dcid, scid), fromHex(t, "ffffffffffffffff")), wantErr: ErrTruncated},
		{name: "Retry without tag", in: concat(header(0xf0, nil, scid), make([]byte, 15)), wantErr: ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLongHeader(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseLongHeader error = %v, want %v", err, tt.wantErr)
			}
			if !equalHeader(got, tt.want) {
				t.Errorf("ParseLongHeader = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// equalHeader reports whether a and b are equal, treating nil and empty
// slices alike.
func equalHeader(a, b LongHeader) bool {
	return a.Type == b.Type && a.Version == b.Version &&
		bytes.Equal(a.DCID, b.DCID) && bytes.Equal(a.SCID, b.SCID) && bytes.Equal(a.Token, b.Token) &&
		a.Length == b.Length && a.PNOffset == b.PNOffset
}

// TestHeaderPrefixes parses every prefix of real packets.
func TestHeaderPrefixes(t *testing.T) {
	packets := map[string][]byte{
		"RFC client Initial": fromHex(t, rfcClientInitialHex),
		"RFC server Initial": fromHex(t, rfcServerInitialHex),
		"RFC Retry":          fromHex(t, rfcRetryHex),
		"quic-go datagram 1": recordedFlight(t)[0],
		"quic-go datagram 2": recordedFlight(t)[1],
	}
	for name, p := range packets {
		t.Run(name, func(t *testing.T) {
			full, err := ParseLongHeader(p)
			if err != nil {
				t.Fatalf("ParseLongHeader(full packet): %v", err)
			}
			dcid, err := DestCID(p)
			if err != nil {
				t.Fatalf("DestCID(full packet): %v", err)
			}
			end := full.PNOffset + int(full.Length)
			if full.Type == Retry {
				// A Retry packet has no Length field: its token takes
				// up what precedes the 16-byte integrity tag.
				end = len(p) - len(full.Token)
			}
			for n := range len(p) {
				prefix := p[:n]
				h, err := ParseLongHeader(prefix)
				switch {
				case n < end && err == nil:
					t.Errorf("ParseLongHeader(%d-byte prefix) = %+v, want error", n, h)
				case n >= end && full.Type == Retry && err != nil:
					t.Errorf("ParseLongHeader(%d-byte prefix of Retry): %v", n, err)
				case n >= end && full.Type != Retry && (err != nil || !equalHeader(h, full)):
					t.Errorf("ParseLongHeader(%d-byte prefix) = %+v, %v, want %+v", n, h, err, full)
				}
				c, err := DestCID(prefix)
				switch {
				case n < 6+len(dcid) && err == nil:
					t.Errorf("DestCID(%d-byte prefix) = %x, want error", n, c)
				case n >= 6+len(dcid) && !bytes.Equal(c, dcid):
					t.Errorf("DestCID(%d-byte prefix) = %x, %v, want %x", n, c, err, dcid)
				}
			}
		})
	}
}

func TestHeaderAllocs(t *testing.T) {
	short := concat([]byte{0x40}, []byte("0123456789ab"), make([]byte, 100))
	long := recordedFlight(t)[0]
	tests := []struct {
		name string
		f    func()
	}{
		{"DestCID short", func() { DestCID(short) }},
		{"DestCID long", func() { DestCID(long) }},
		{"ParseLongHeader", func() { ParseLongHeader(long) }},
		{"ParseLongHeader error", func() { ParseLongHeader(short) }},
		{"ReadVarint", func() { ReadVarint(long[20:]) }},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(100, tt.f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tt.name, n)
		}
	}
}

func BenchmarkDestCID(b *testing.B) {
	short := concat([]byte{0x40}, []byte("0123456789ab"), make([]byte, 1200))
	long := recordedFlight(b)[0]
	b.Run("short", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DestCID(short); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("long", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DestCID(long); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkParseLongHeader(b *testing.B) {
	p := recordedFlight(b)[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLongHeader(p); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzDestCID(f *testing.F) {
	for _, d := range recordedFlight(f) {
		f.Add(d)
	}
	f.Add(fromHex(f, rfcClientInitialHex))
	f.Add(fromHex(f, rfcRetryHex))
	f.Add(concat([]byte{0x40}, []byte("0123456789ab")))
	f.Add([]byte{0x80, 0, 0, 0, 0, 21})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		cid, err := DestCID(b)
		if err != nil {
			if cid != nil {
				t.Errorf("DestCID returned %x with error %v", cid, err)
			}
			return
		}
		if len(cid) > MaxCIDLen {
			t.Errorf("DestCID returned %d bytes", len(cid))
		}
		if !IsLongHeader(b[0]) {
			if len(cid) != CIDLen || !bytes.Equal(cid, b[1:1+CIDLen]) {
				t.Errorf("DestCID(short header) = %x", cid)
			}
			return
		}
		if !bytes.Equal(cid, b[6:6+len(cid)]) {
			t.Errorf("DestCID(long header) = %x", cid)
		}
		if h, err := ParseLongHeader(b); (err == nil || h.DCID != nil) && !bytes.Equal(h.DCID, cid) {
			t.Errorf("ParseLongHeader DCID %x differs from DestCID %x", h.DCID, cid)
		}
	})
}

func FuzzParseLongHeader(f *testing.F) {
	for _, d := range recordedFlight(f) {
		f.Add(d)
	}
	f.Add(fromHex(f, rfcClientInitialHex))
	f.Add(fromHex(f, rfcServerInitialHex))
	f.Add(fromHex(f, rfcRetryHex))
	f.Add(fromHex(f, "d0000000010401020304000140"))
	f.Add(fromHex(f, "e00000000100000102"))
	f.Add(fromHex(f, "800000000004010203040000000001"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseLongHeader(b)
		if err != nil {
			if h.Version == Version1 {
				t.Errorf("error %v with version 1 header %+v", err, h)
			}
			return
		}
		if h.Version != Version1 || h.Type > Retry {
			t.Errorf("unexpected version or type in %+v", h)
		}
		if len(h.DCID) > MaxCIDLen || len(h.SCID) > MaxCIDLen {
			t.Errorf("connection ID too long in %+v", h)
		}
		if h.PNOffset < 0 || uint64(h.PNOffset)+h.Length > uint64(len(b)) {
			t.Errorf("packet end %d+%d beyond input length %d", h.PNOffset, h.Length, len(b))
		}
		if h.Type != Initial && h.Type != Retry && h.Token != nil {
			t.Errorf("token in %v packet", h.Type)
		}
		if !bytes.Equal(h.DCID, b[6:6+len(h.DCID)]) {
			t.Errorf("DCID %x does not match input", h.DCID)
		}
	})
}
