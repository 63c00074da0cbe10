package quicpipe

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"os"
	"strings"
	"testing"
)

// seqBytes returns n bytes counting up from first.
func seqBytes(first byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = first + byte(i)
	}
	return b
}

// ticketExamples are the examples of docs/PROTOCOL.md, computed
// independently with Python's base64 and zlib.crc32: accepter key 01..20,
// relay key 21..40 (hex, counting up), secret 41..50.
var ticketExamples = []struct {
	t      Ticket
	binary string
	text   string
}{
	{
		Ticket{Peer: seqBytes(0x01, 32), RelayKey: seqBytes(0x21, 32), Secret: seqBytes(0x41, 16), RelayAddr: "192.0.2.1:4433"},
		"01010102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f5001c00002011151b11582fd",
		"qp1aeaqcaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7ibaueq2eivdeoscjjjfuytkoj5iadqaaaiarcunrcwbp2",
	},
	{
		Ticket{Peer: seqBytes(0x01, 32), RelayKey: seqBytes(0x21, 32), RelayAddr: "[2001:db8::1]:443"},
		"01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f400220010db800000000000000000000000101bb7572b59b",
		"qp1aeaacaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7iabcaainxaaaaaaaaaaaaaaaaaaacan3ovzllgy",
	},
	{
		Ticket{Peer: seqBytes(0x01, 32), RelayKey: seqBytes(0x21, 32), RelayAddr: "relay.example.com:4433"},
		"01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40031172656c61792e6578616d706c652e636f6d1151c8251bfe",
		"qp1aeaacaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7iabrc4tfnrqxsltfpbqw24dmmuxgg33ncfi4qji37y",
	},
	{
		Ticket{Peer: seqBytes(0x01, 32), RelayKey: seqBytes(0x21, 32), RelayAddr: "relay.example.com:4433", TunnelURL: "wss://:8443/v1/tunnel"},
		"01020102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40031172656c61792e6578616d706c652e636f6d11510f3a383434332f76312f74756e6e656c98df2bca",
		"qp1aebacaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7iabrc4tfnrqxsltfpbqw24dmmuxgg33ncfiq6orygq2dgl3wgexxi5lonzswzgg7fpfa",
	},
}

// TestTicketExamples checks the examples against the code and
// docs/PROTOCOL.md, which must show each one.
func TestTicketExamples(t *testing.T) {
	doc, err := os.ReadFile("docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range ticketExamples {
		b, err := ex.t.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b); got != ex.binary {
			t.Errorf("%s: binary\n%s, want\n%s", ex.t.RelayAddr, got, ex.binary)
		}
		if got := ex.t.String(); got != ex.text {
			t.Errorf("%s: text\n%s, want\n%s", ex.t.RelayAddr, got, ex.text)
		}
		parsed, err := ParseTicket(ex.text)
		if err != nil {
			t.Fatal(err)
		}
		if !ticketsEqual(parsed, &ex.t) {
			t.Errorf("parsed %+v, want %+v", parsed, ex.t)
		}
		for _, s := range []string{ex.text, ex.binary} {
			if !bytes.Contains(doc, []byte(s)) {
				t.Errorf("docs/PROTOCOL.md does not show %s", s)
			}
		}
	}
	// The derived dialer identity of the first example, computed with
	// Python's hmac (HKDF) and the cryptography package (Ed25519).
	id := ticketExamples[0].t.DialerIdentity()
	const seed = "47b8433a5cb7938ade84aaacfac0adc3d56c03578534a887ffe38173866228cc"
	const pubHex = "8f40f58ba8bc014133226dadb6fcb9e131b45082e6ca95da5bff73a5e734fb7b"
	if hex.EncodeToString(id.Seed()) != seed || hex.EncodeToString(id.Public().(ed25519.PublicKey)) != pubHex {
		t.Errorf("dialer identity: seed %x public %x", id.Seed(), id.Public())
	}
	for _, s := range []string{seed, pubHex} {
		if !bytes.Contains(doc, []byte(s)) {
			t.Errorf("docs/PROTOCOL.md does not show %s", s)
		}
	}
	if ticketExamples[1].t.DialerIdentity() != nil {
		t.Error("a ticket without secret derived an identity")
	}
}

func ticketsEqual(a, b *Ticket) bool {
	return bytes.Equal(a.Peer, b.Peer) && bytes.Equal(a.RelayKey, b.RelayKey) &&
		bytes.Equal(a.Secret, b.Secret) && a.RelayAddr == b.RelayAddr && a.TunnelURL == b.TunnelURL
}

func TestTicketRoundTrip(t *testing.T) {
	peer, relay := pub(GenerateIdentity()), pub(GenerateIdentity())
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:1", "127.0.0.1:1"},
		{"[::1]:65535", "[::1]:65535"},
		{"[::ffff:10.0.0.1]:4433", "10.0.0.1:4433"},
		{"Relay.Example.COM.:4433", "relay.example.com:4433"},
		{"localhost:80", "localhost:80"},
		{strings.Repeat("a.", 126) + "b:9", strings.Repeat("a.", 126) + "b:9"},
	} {
		for i, secret := range [][]byte{nil, NewTicketSecret()} {
			in := &Ticket{Peer: peer, RelayKey: relay, RelayAddr: tc.addr, Secret: secret}
			if i == 1 {
				in.TunnelURL = "wss://tunnel.example.net/" + strings.Repeat("p", 224)
			}
			s := in.String()
			if !strings.HasPrefix(s, TicketPrefix) {
				t.Fatalf("%s: %s", tc.addr, s)
			}
			out, err := ParseTicket(s)
			if err != nil {
				t.Fatalf("%s: %v", tc.addr, err)
			}
			want := *in
			want.RelayAddr = tc.want
			if !ticketsEqual(out, &want) {
				t.Errorf("%s: got %+v, want %+v", tc.addr, out, want)
			}
			// Upper case (as in QR codes) and line breaks are accepted.
			wrapped := strings.ToUpper(s[:40]) + "\n  " + s[40:80] + "\r\n" + strings.ToUpper(s[80:]) + "\n"
			if out2, err := ParseTicket(wrapped); err != nil || !ticketsEqual(out2, out) {
				t.Errorf("%s: upper case and line breaks: %v", tc.addr, err)
			}
		}
	}
}

// ticketWith builds a binary ticket from raw parts with a correct checksum.
func ticketWith(parts ...[]byte) string {
	b := bytes.Join(parts, nil)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return TicketPrefix + ticketEncoding.EncodeToString(b)
}

func TestTicketParseErrors(t *testing.T) {
	good := ticketExamples[0].text
	keys := seqBytes(1, 64)
	v4 := []byte{ticketAddrIPv4, 192, 0, 2, 1, 0x11, 0x51}
	flipped := []byte(good)
	flipped[50] = map[bool]byte{true: 'b', false: 'a'}[flipped[50] == 'a']
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", `starts with "qp1"`},
		{"other-prefix", "xp1" + good[3:], `starts with "qp1"`},
		{"base64", "qp1AAAA+/==", `character '+' at position 8 is not base32`},
		{"digit-1", good[:20] + "1" + good[21:], `character '1' at position 21 is not base32`},
		{"odd-length", good[:len(good)-2], "cannot be base32"},
		{"truncated", good[:123], "truncated: 75 bytes"},
		{"mistyped", string(flipped), "checksum mismatch"},
		{"cut-at-valid-length", good[:len(good)-8], "checksum mismatch"},
		{"non-canonical", good[:len(good)-1] + "3", "not canonical"},
		{"version-2", ticketWith([]byte{2, 0}, keys, v4), "unsupported version 2"},
		{"unknown-flags", ticketWith([]byte{1, 0x80}, keys, v4), "unknown flags 0x80"},
		{"secret-missing", ticketWith([]byte{1, 1}, keys, v4), "truncated in the"},
		{"address-type", ticketWith([]byte{1, 0}, keys, []byte{9, 1, 2, 3, 4, 5, 6}), "unknown type 9"},
		{"ipv6-short", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrIPv6, 1, 2, 3, 4, 5, 6}), "truncated in the relay address"},
		{"port-zero", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrIPv4, 192, 0, 2, 1, 0, 0}), "port 0"},
		{"unspecified", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrIPv4, 0, 0, 0, 0, 1, 0}), "unspecified"},
		{"mapped", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrIPv6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 1, 0}), "IPv4-mapped"},
		{"trailing", ticketWith([]byte{1, 0}, keys, v4, []byte{0}), "1 unexpected bytes"},
		{"name-upper", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrName, 3, 'A', 'b', 'c', 1, 0}), "contains 'A'"},
		{"name-ip", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrName, 7, '1', '.', '2', '.', '3', '.', '4', 1, 0}), "is an IP address"},
		{"name-long", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrName, 200}, make([]byte, 10)), "truncated in the relay host name"},
		{"name-empty-label", ticketWith([]byte{1, 0}, keys, []byte{ticketAddrName, 4, 'a', '.', '.', 'b', 1, 0}), "label of 0 bytes"},
		{"huge", "qp1" + strings.Repeat("a", 5000), "far too long"},
		{"tunnel-missing", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4), "truncated in the tunnel URL"},
		{"tunnel-short", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{9, ':', '4'}), "truncated in the tunnel URL"},
		{"tunnel-empty", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{0}), "must be wss://"},
		{"tunnel-query", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{6, 'h', '/', 'p', '?', 'q', '1'}), "only host, port and path"},
		{"tunnel-user", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{5, 'u', '@', 'h', ':', '1'}), "only host, port and path"},
		{"tunnel-port", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{6, ':', '9', '9', '9', '9', '9'}), "port must be 1 to 65535"},
		{"tunnel-space", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{3, 'a', ' ', 'b'}), "outside printable ASCII"},
		{"tunnel-trailing", ticketWith([]byte{1, ticketFlagTunnel}, keys, v4, []byte{1, 'a', 0}), "1 unexpected bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTicket(tc.in)
			if !errors.Is(err, ErrBadTicket) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestTicketMarshalErrors(t *testing.T) {
	k := pub(GenerateIdentity())
	for _, tc := range []struct {
		name string
		t    Ticket
		want string
	}{
		{"peer", Ticket{Peer: k[:31], RelayKey: k, RelayAddr: "192.0.2.1:1"}, "accepter key is 31 bytes"},
		{"relay-key", Ticket{Peer: k, RelayAddr: "192.0.2.1:1"}, "relay key is 0 bytes"},
		{"secret", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:1", Secret: []byte{1}}, "secret is 1 bytes"},
		{"no-port", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1"}, "missing port"},
		{"port-0", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:0"}, "port must be 1 to 65535"},
		{"port-big", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:65536"}, "port must be 1 to 65535"},
		{"unspecified", Ticket{Peer: k, RelayKey: k, RelayAddr: "[::]:4433"}, "unspecified address"},
		{"zone", Ticket{Peer: k, RelayKey: k, RelayAddr: "[fe80::1%eth0]:4433"}, "has a zone"},
		{"bad-name", Ticket{Peer: k, RelayKey: k, RelayAddr: "a_b.example:4433"}, "contains '_'"},
		{"hyphen", Ticket{Peer: k, RelayKey: k, RelayAddr: "-a.example:4433"}, "starting or ending with '-'"},
		{"tunnel-scheme", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:1", TunnelURL: "https://h/v1/tunnel"}, "must be wss://"},
		{"tunnel-bare", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:1", TunnelURL: "wss://"}, "must be wss://"},
		{"tunnel-long", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:1", TunnelURL: "wss://h/" + strings.Repeat("p", 248)}, "at most 255"},
		{"tunnel-fragment", Ticket{Peer: k, RelayKey: k, RelayAddr: "192.0.2.1:1", TunnelURL: "wss://h/p#f"}, "only host, port and path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.t.MarshalText()
			if !errors.Is(err, ErrBadTicket) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if s := tc.t.String(); !strings.HasPrefix(s, "<") {
				t.Errorf("String of a bad ticket: %q", s)
			}
		})
	}
}

// FuzzParseTicket: ParseTicket never panics, every error wraps ErrBadTicket,
// and a parsed ticket prints back as the (normalized) input.
func FuzzParseTicket(f *testing.F) {
	for _, ex := range ticketExamples {
		f.Add(ex.text)
		f.Add(strings.ToUpper(ex.text))
	}
	f.Add("")
	f.Add("qp1")
	f.Add("qp1aaaa")
	f.Add(ticketWith([]byte{1, 0}, seqBytes(1, 64), []byte{ticketAddrName, 3, 'a', 'b', 'c', 1, 0}))
	f.Add(ticketWith([]byte{2, 0}, seqBytes(1, 64), []byte{ticketAddrIPv4, 1, 2, 3, 4, 1, 0}))
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseTicket(s)
		if err != nil {
			if !errors.Is(err, ErrBadTicket) {
				t.Fatalf("error %v does not wrap ErrBadTicket", err)
			}
			return
		}
		out, err := tk.MarshalText()
		if err != nil {
			t.Fatalf("parsed ticket does not marshal: %v", err)
		}
		if string(out) != normalizeTicket([]byte(s)) {
			t.Fatalf("round trip: %q became %q", s, out)
		}
		again, err := ParseTicket(string(out))
		if err != nil || !ticketsEqual(again, tk) {
			t.Fatalf("reparse: %v", err)
		}
	})
}

// FuzzTicketBinary fuzzes the fields behind the checksum, which random
// strings rarely reach: the input gets a correct CRC appended. A ticket that
// parses must marshal back to the same bytes.
func FuzzTicketBinary(f *testing.F) {
	for _, ex := range ticketExamples {
		b, _ := hex.DecodeString(ex.binary)
		f.Add(b[:len(b)-4])
	}
	f.Add([]byte{1, 0})
	f.Add(append(append([]byte{1, 1}, seqBytes(1, 80)...), ticketAddrName, 1, 'a', 0, 1))
	f.Add(append(append([]byte{1, ticketFlagTunnel}, seqBytes(1, 64)...), ticketAddrIPv4, 1, 2, 3, 4, 0, 1, 4, '[', ':', ':', ']'))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := binary.BigEndian.AppendUint32(bytes.Clone(body), crc32.ChecksumIEEE(body))
		var tk Ticket
		if err := tk.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrBadTicket) {
				t.Fatalf("error %v does not wrap ErrBadTicket", err)
			}
			return
		}
		out, err := tk.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed ticket does not marshal: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip: %x became %x", b, out)
		}
	})
}
