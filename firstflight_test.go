package quicpipe

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicpipe/quicpipe/internal/wire"
)

var updateFlight = flag.Bool("update-flight", false, "rewrite testdata/flight.json from a live first flight")

// flightTestdata is a real first flight of a Dialer, recorded with
// -update-flight. It stays valid: checking a flight involves no clock and
// no key but the public Initial keys.
const flightTestdata = "testdata/flight.json"

// liveFlight runs a relay, a Dialer and an Accepter on loopback and returns
// the first flight of one successful dial.
func liveFlight(t testing.TB) *FirstFlight {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	d, a := e.endpoints(t, ctx)
	res := runDial(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	if res.dialErr != nil || res.acceptEr != nil {
		t.Fatalf("dial: got errors %v / %v, want none", res.dialErr, res.acceptEr)
	}
	return res.flight
}

// recordedFlight returns the flight in testdata.
func recordedFlight(t testing.TB) *FirstFlight {
	t.Helper()
	b, err := os.ReadFile(flightTestdata)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFirstFlight(b)
	if err != nil {
		t.Fatalf("%s: %v", flightTestdata, err)
	}
	return f
}

func TestFirstFlightTestdata(t *testing.T) {
	if *updateFlight {
		f := liveFlight(t)
		if err := os.MkdirAll(filepath.Dir(flightTestdata), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(flightTestdata, []byte(f.String()+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := recordedFlight(t)
	if len(f.Datagrams) != 2 {
		t.Errorf("datagrams: got %d, want 2 (X25519MLKEM768 key share)", len(f.Datagrams))
	}
	info, err := f.check()
	if err != nil {
		t.Fatal(err)
	}
	if len(info.SCID) != CIDLen || !info.Complete || !slices.Contains(info.ALPN, PeerALPN) {
		t.Errorf("flight info: got SCID %x, complete %v, ALPN %q; want a 12-byte SCID, complete, %q",
			info.SCID, info.Complete, info.ALPN, PeerALPN)
	}
}

// binaryForm builds a binary form by hand, so that it may be wrong.
func binaryForm(magic string, version, count byte, ds [][]byte) []byte {
	b := append([]byte(magic), version, count)
	for _, d := range ds {
		b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
		b = append(b, d...)
	}
	return b
}

// jsonForm builds a JSON form by hand.
func jsonForm(v int, ds [][]byte) []byte {
	j := map[string]any{"v": v, "datagrams": ds} // []byte encodes as base64
	b, _ := json.Marshal(j)
	return b
}

func TestFirstFlightRoundTrip(t *testing.T) {
	live := liveFlight(t)
	for _, tc := range []struct {
		name string
		f    *FirstFlight
	}{
		{"live", live},
		{"recorded", recordedFlight(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			js, err := f.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.ContainsAny(js, "\r\n") {
				t.Errorf("JSON form: got %d lines, want one", bytes.Count(js, []byte("\n"))+1)
			}
			if s := f.String(); s != string(js) {
				t.Errorf("String: got %q, want the JSON form %q", s, js)
			}
			if !strings.HasPrefix(string(js), `{"v":1,"datagrams":["`) {
				t.Errorf("JSON form: got %.40q..., want it to start with %q", js, `{"v":1,"datagrams":["`)
			}
			bin, err := f.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if want := 5 + 2*len(f.Datagrams) + len(bytes.Join(f.Datagrams, nil)); len(bin) != want {
				t.Errorf("binary form: got %d bytes, want %d", len(bin), want)
			}
			for _, in := range []struct {
				name string
				b    []byte
			}{
				{"JSON", js},
				{"JSON with white space", []byte("\r\n  " + string(js) + "\n\n")},
				// ParseFirstFlight trims outer white space before
				// applying MaxFlightJSONSize.
				{"JSON with much outer white space", []byte(strings.Repeat(" ", MaxFlightJSONSize) + string(js) + strings.Repeat("\n", MaxFlightJSONSize))},
				{"binary", bin},
			} {
				t.Run(in.name, func(t *testing.T) {
					g, err := ParseFirstFlight(in.b)
					if err != nil {
						t.Fatalf("ParseFirstFlight: got %v, want success", err)
					}
					if !slices.EqualFunc(g.Datagrams, f.Datagrams, bytes.Equal) {
						t.Fatalf("datagrams: got %d differing, want the original %d", len(g.Datagrams), len(f.Datagrams))
					}
				})
			}
			// Through encoding/json and encoding.BinaryUnmarshaler.
			type envelope struct {
				Flight *FirstFlight `json:"flight"`
			}
			env, err := json.Marshal(envelope{f})
			if err != nil {
				t.Fatal(err)
			}
			var back envelope
			if err := json.Unmarshal(env, &back); err != nil {
				t.Fatalf("json.Unmarshal(%.60s...): %v", env, err)
			}
			if !slices.EqualFunc(back.Flight.Datagrams, f.Datagrams, bytes.Equal) {
				t.Errorf("datagrams after json round trip: got different, want equal")
			}
			var g FirstFlight
			if err := g.UnmarshalBinary(bin); err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(g.Datagrams, f.Datagrams, bytes.Equal) {
				t.Errorf("datagrams after binary round trip: got different, want equal")
			}
			// The parsed flight does not alias the input.
			bin2 := bytes.Clone(bin)
			h, _ := ParseFirstFlight(bin2)
			clear(bin2)
			if h == nil || h.Check() != nil {
				t.Errorf("flight parsed from a buffer that was then cleared: got invalid, want it to own its bytes")
			}
		})
	}
}

// TestFirstFlightValueMarshal documents a trap: MarshalJSON and String have
// pointer receivers, so a FirstFlight stored by value in a struct that is
// itself marshaled by value gets encoding/json's default encoding (the
// field name and base64 datagrams), not the flight's JSON form.
func TestFirstFlightValueMarshal(t *testing.T) {
	f := recordedFlight(t)
	type byValue struct{ F FirstFlight }
	b, err := json.Marshal(byValue{*f})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"Datagrams":`)) {
		t.Errorf("by value: got %.60s..., want encoding/json's default form (this trap was fixed? update the test)", b)
	}
	b, err = json.Marshal(&byValue{*f})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`{"F":{"v":1,"datagrams":`)) {
		t.Errorf("by pointer: got %.60s..., want the flight's JSON form", b)
	}
}

// quicGoFlight records the first flight of a plain quic-go dial that offers
// alpn from a transport issuing cidLen-byte connection IDs.
func quicGoFlight(t testing.TB, alpn string, cidLen int, conf *quic.Config) *FirstFlight {
	t.Helper()
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	rc := &recordConn{PacketConn: udp}
	tr := &quic.Transport{Conn: rc, ConnectionIDLength: cidLen}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tlsConf := &tls.Config{ServerName: "x", NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
		tr.Dial(ctx, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}, tlsConf, conf)
	}()
	defer func() { cancel(); <-done }()
	for ctx.Err() == nil {
		rc.mu.Lock()
		ds := cloneDatagrams(rc.out)
		rc.mu.Unlock()
		if len(ds) > 0 {
			if info, err := wire.InspectClientInitials(ds); err == nil && info.Complete {
				return &FirstFlight{Datagrams: ds}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("quic-go sent no complete first flight")
	return nil
}

// recordConn swallows and records every datagram written. It is not a
// *net.UDPConn, so quic-go writes through WriteTo.
type recordConn struct {
	net.PacketConn
	mu  sync.Mutex
	out [][]byte
}

// SetReadBuffer and SetWriteBuffer keep quic-go from warning about buffer
// sizes.
func (c *recordConn) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}
func (c *recordConn) SetWriteBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetWriteBuffer(n)
}

func (c *recordConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.mu.Lock()
	c.out = append(c.out, bytes.Clone(b))
	c.mu.Unlock()
	return len(b), nil
}

func TestParseFirstFlightErrors(t *testing.T) {
	f := liveFlight(t)
	if len(f.Datagrams) != 2 {
		t.Fatalf("live flight: got %d datagrams, want 2 (X25519MLKEM768)", len(f.Datagrams))
	}
	d0, d1 := f.Datagrams[0], f.Datagrams[1]
	bin := mustBinary(t, f)
	js, err := f.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	nine := slices.Repeat([][]byte{d0}, 9)
	short := d0[:1199]
	// Zero bytes after the Initial packet are ignored (see
	// TestFirstFlightSizeBounds), so padding d0 makes a datagram of any size.
	long := append(bytes.Clone(d0), make([]byte, 1453-len(d0))...)
	flip := func(d []byte, i int) []byte { d = bytes.Clone(d); d[i] ^= 0x01; return d }
	var jsonMap map[string]any
	if err := json.Unmarshal(js, &jsonMap); err != nil {
		t.Fatal(err)
	}
	withField := func(k string, v any) []byte {
		m := map[string]any{}
		for kk, vv := range jsonMap {
			m[kk] = vv
		}
		m[k] = v
		b, _ := json.Marshal(m)
		return b
	}
	info, err := f.check()
	if err != nil {
		t.Fatal(err)
	}
	hello := clientHelloOf(t, f)
	tooBig := append([]byte(`{"v":1,`+strings.Repeat(" ", MaxFlightJSONSize)), js[len(`{"v":1,`):]...)

	for _, tc := range []struct {
		name string
		in   []byte
		want string // in the message
	}{
		{"empty", nil, `must start with "QPF"`},
		{"white space", []byte(" \n\t"), `must start with "QPF"`},
		{"garbage", []byte("hello, world: this is not a flight"), `must start with "QPF"`},
		{"JSON garbage", []byte("{not json"), "malformed JSON"},
		{"JSON array", []byte(`["a"]`), `must start with "QPF"`},
		{"wrong magic", binaryForm("QPX", 1, 2, f.Datagrams), `must start with "QPF"`},
		{"lower-case magic", binaryForm("qpf", 1, 2, f.Datagrams), `must start with "QPF"`},
		{"binary version 0", binaryForm("QPF", 0, 2, f.Datagrams), "unsupported version 0"},
		{"binary version 2", binaryForm("QPF", 2, 2, f.Datagrams), "unsupported version 2"},
		{"binary zero datagrams", binaryForm("QPF", 1, 0, nil), "0 datagrams"},
		{"binary 9 datagrams", binaryForm("QPF", 1, 9, nine), "9 datagrams"},
		{"binary count above datagrams", binaryForm("QPF", 1, 3, f.Datagrams), "truncated before datagram 2"},
		{"binary count below datagrams", binaryForm("QPF", 1, 1, f.Datagrams), "trailing bytes"},
		{"binary length past the end", append(binaryForm("QPF", 1, 1, nil), 0x05, 0xdc, 1, 2, 3), "datagram 0 claims 1500 bytes, 3 left"},
		{"binary trailing byte", append(bytes.Clone(bin), 0), "1 trailing bytes"},
		{"binary 1199-byte datagram", binaryForm("QPF", 1, 2, [][]byte{short, d1}), "datagram 0 is 1199 bytes"},
		{"binary 1453-byte datagram", binaryForm("QPF", 1, 2, [][]byte{d0, long}), "datagram 1 is 1453 bytes"},
		{"binary empty datagram", binaryForm("QPF", 1, 2, [][]byte{d0, nil}), "datagram 1 is 0 bytes"},
		{"JSON version 2", jsonForm(2, f.Datagrams), "unsupported version 2"},
		{"JSON version missing", []byte(`{"datagrams":[]}`), "unsupported version 0"},
		{"JSON zero datagrams", jsonForm(1, [][]byte{}), "0 datagrams"},
		{"JSON datagrams null", []byte(`{"v":1,"datagrams":null}`), "0 datagrams"},
		{"JSON 9 datagrams", jsonForm(1, nine), "9 datagrams"},
		{"JSON 1199-byte datagram", jsonForm(1, [][]byte{short, d1}), "datagram 0 is 1199 bytes"},
		{"JSON 1453-byte datagram", jsonForm(1, [][]byte{d0, long}), "datagram 1 is 1453 bytes"},
		{"JSON huge datagram", jsonForm(1, [][]byte{make([]byte, 5000)}), "datagram 0 is longer than 1452 bytes"},
		{"JSON bad base64", []byte(`{"v":1,"datagrams":["***"]}`), "datagram 0: bad base64"},
		{"JSON URL-safe base64", []byte(`{"v":1,"datagrams":["-_-_"]}`), "datagram 0: bad base64"},
		{"JSON datagram not a string", []byte(`{"v":1,"datagrams":[1]}`), "malformed JSON"},
		{"JSON v a string", []byte(`{"v":"1","datagrams":[]}`), "malformed JSON"},
		{"JSON unknown field", withField("extra", 1), `unknown field "extra"`},
		{"JSON trailing garbage", append(bytes.Clone(js), "xyz"...), "trailing data"},
		{"JSON two objects", append(bytes.Clone(js), js...), "trailing data"},
		{"JSON over MaxFlightJSONSize", tooBig, fmt.Sprintf("more than %d", MaxFlightJSONSize)},
		{"missing second datagram", binaryForm("QPF", 1, 1, [][]byte{d0}), "ClientHello is incomplete"},
		{"missing first datagram", binaryForm("QPF", 1, 1, [][]byte{d1}), "ClientHello is incomplete"},
		{"bit flipped in payload", binaryForm("QPF", 1, 2, [][]byte{d0, flip(d1, 600)}), "decryption failed"},
		{"bit flipped in last byte", binaryForm("QPF", 1, 2, [][]byte{flip(d0, len(d0)-1), d1}), "decryption failed"},
		{"bit flipped in DCID", binaryForm("QPF", 1, 2, [][]byte{d0, flip(d1, 7)}), "connection IDs differ"},
		{"short header datagram", binaryForm("QPF", 1, 1, [][]byte{append([]byte{0x40}, d0[1:]...)}), "not a long header"},
		{"zero datagram", binaryForm("QPF", 1, 1, [][]byte{make([]byte, 1200)}), "not a long header"},
		{"wrong ALPN", mustBinary(t, quicGoFlight(t, "h3", CIDLen, nil)), `does not offer ALPN "quicpipe/1"`},
		{"4-byte source CID", mustBinary(t, quicGoFlight(t, PeerALPN, 4, nil)), "source connection ID is 4 bytes"},
		// Valid Initial packets, but quic-go drops an Initial whose
		// destination CID is shorter than 8 bytes (RFC 9000, Section 7.2).
		{"4-byte original destination CID", mustBinary(t, sealFlight(t, []byte{1, 2, 3, 4}, info.SCID, hello, 1200)), "original destination connection ID is 4 bytes"},
		{"empty original destination CID", mustBinary(t, sealFlight(t, nil, info.SCID, hello, 1200)), "original destination connection ID is 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseFirstFlight(tc.in)
			if err == nil {
				t.Fatalf("ParseFirstFlight: got a flight of %d datagrams, want an error containing %q", len(g.Datagrams), tc.want)
			}
			if g != nil {
				t.Errorf("ParseFirstFlight: got a flight and an error, want nil flight")
			}
			if !errors.Is(err, ErrBadFlight) {
				t.Errorf("error %q: got errors.Is(ErrBadFlight) false, want true", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tc.want)
			}
		})
	}

	t.Run("truncated binary", func(t *testing.T) {
		for n := range len(bin) {
			_, err := ParseFirstFlight(bin[:n])
			if !errors.Is(err, ErrBadFlight) {
				t.Fatalf("first %d of %d bytes: got %v, want an ErrBadFlight", n, len(bin), err)
			}
		}
	})
	t.Run("truncated JSON", func(t *testing.T) {
		for n := 1; n < len(js); n++ {
			_, err := ParseFirstFlight(js[:n])
			if !errors.Is(err, ErrBadFlight) {
				t.Fatalf("first %d of %d bytes: got %v, want an ErrBadFlight", n, len(js), err)
			}
		}
	})
	// Every byte of both datagrams is covered by AEAD authentication (as
	// header or payload) or changes the header so that the flight no
	// longer parses: no flipped bit goes unnoticed.
	t.Run("every bit flip", func(t *testing.T) {
		for i, d := range f.Datagrams {
			for p := range len(d) {
				for _, bit := range []byte{0x01, 0x80} {
					ds := cloneDatagrams(f.Datagrams)
					ds[i][p] ^= bit
					g := &FirstFlight{Datagrams: ds}
					if err := g.Check(); !errors.Is(err, ErrBadFlight) {
						t.Fatalf("datagram %d, byte %d ^ %#x: got %v, want an ErrBadFlight", i, p, bit, err)
					}
				}
			}
		}
	})
}

func mustBinary(t testing.TB, f *FirstFlight) []byte {
	t.Helper()
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFirstFlightSizeBounds checks the exact datagram size limits, 1200 and
// 1452 bytes.
func TestFirstFlightSizeBounds(t *testing.T) {
	// quic-go's smallest Initial datagrams are 1200 bytes.
	small := quicGoFlight(t, PeerALPN, CIDLen, &quic.Config{InitialPacketSize: 1200})
	for i, d := range small.Datagrams {
		if len(d) != MinFlightDatagramSize {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, len(d), MinFlightDatagramSize)
		}
	}
	rec := recordedFlight(t)
	d0, d1 := rec.Datagrams[0], rec.Datagrams[1]
	pad := func(d []byte, n int) []byte { return append(bytes.Clone(d), make([]byte, n-len(d))...) }
	for _, tc := range []struct {
		name string
		ds   [][]byte
		ok   bool
	}{
		{"1200-byte datagrams", small.Datagrams, true},
		{"1199-byte datagram", [][]byte{small.Datagrams[0][:1199], small.Datagrams[1]}, false},
		// Zero bytes after the Initial packet are ignored: any padding up
		// to the size limit is accepted.
		{"zero-padded to 1452", [][]byte{pad(d0, 1452), d1}, true},
		{"zero-padded to 1453", [][]byte{d0, pad(d1, 1453)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFirstFlight(binaryForm("QPF", 1, byte(len(tc.ds)), tc.ds))
			if tc.ok && err != nil {
				t.Errorf("ParseFirstFlight: got %v, want success", err)
			}
			if !tc.ok && (!errors.Is(err, ErrBadFlight) || !strings.Contains(err.Error(), "bytes; want 1200 to 1452")) {
				t.Errorf("ParseFirstFlight: got %v, want an ErrBadFlight about the size", err)
			}
		})
	}
}

// TestFirstFlightCoalesced: packets coalesced after a datagram's Initial
// packet are skipped unless they are Initial packets, and none makes
// parsing loop (a Retry packet has no Length field).
func TestFirstFlightCoalesced(t *testing.T) {
	rec := recordedFlight(t)
	d0, d1 := rec.Datagrams[0], rec.Datagrams[1]
	with := func(tail ...byte) []byte { return append(bytes.Clone(d0), tail...) }
	tag := make([]byte, 16)
	for _, tc := range []struct {
		name string
		d0   []byte
	}{
		{"Retry", with(append([]byte{0xf0, 0, 0, 0, 1, 0, 0}, tag...)...)},
		{"Retry without tag", with(0xf0, 0, 0, 0, 1, 0, 0)},
		{"Handshake", with(append([]byte{0xe0, 0, 0, 0, 1, 0, 0, 20}, make([]byte, 20)...)...)},
		{"Handshake, zero length", with(0xe0, 0, 0, 0, 1, 0, 0, 0, 0xe0, 0, 0, 0, 1, 0, 0, 0)},
		{"0-RTT", with(append([]byte{0xd0, 0, 0, 0, 1, 0, 0, 4}, 1, 2, 3, 4)...)},
		{"other version", with(0xc0, 0, 0, 0, 2, 0, 0, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := ParseFirstFlight(binaryForm("QPF", 1, 2, [][]byte{tc.d0, d1}))
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("ParseFirstFlight: got %v, want success (coalesced packet skipped)", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("ParseFirstFlight did not return within 5s")
			}
		})
	}
}

// TestSealedFlight checks the test's own Initial sealer against the
// parser: the ClientHello of a real flight, sealed again under other
// connection IDs, makes a valid flight.
func TestSealedFlight(t *testing.T) {
	rec := recordedFlight(t)
	info, err := rec.check()
	if err != nil {
		t.Fatal(err)
	}
	hello := clientHelloOf(t, rec)
	for _, tc := range []struct {
		name string
		dcid []byte
		size int
	}{
		{"same CIDs", info.ODCID, 1200},
		{"8-byte destination CID", []byte("8 bytes!"), 1200},
		{"20-byte destination CID", bytes.Repeat([]byte{0xaa}, 20), 1300},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := sealFlight(t, tc.dcid, info.SCID, hello, tc.size)
			h, err := ParseFirstFlight(mustBinary(t, g))
			if err != nil {
				t.Fatalf("ParseFirstFlight: got %v, want success", err)
			}
			got, err := h.check()
			if err != nil {
				t.Fatalf("check: got %v, want success", err)
			}
			if !bytes.Equal(got.ODCID, tc.dcid) || !bytes.Equal(got.SCID, info.SCID) {
				t.Errorf("CIDs: got %x/%x, want %x/%x", got.ODCID, got.SCID, tc.dcid, info.SCID)
			}
			if !bytes.Equal(clientHelloOf(t, h), hello) {
				t.Errorf("ClientHello: got different, want the original")
			}
		})
	}
}

// TestFirstFlightDuplicates: a flight may carry a datagram twice (a
// retransmission) or in another order; ParseFirstFlight accepts it, and the
// handshake completes.
func TestFirstFlightDuplicates(t *testing.T) {
	rec := recordedFlight(t)
	d0, d1 := rec.Datagrams[0], rec.Datagrams[1]
	for _, tc := range []struct {
		name string
		ds   [][]byte
	}{
		{"first twice", [][]byte{d0, d0, d1}},
		{"second twice", [][]byte{d0, d1, d1}},
		{"reordered", [][]byte{d1, d0}},
		{"eight copies", [][]byte{d0, d1, d0, d1, d0, d1, d0, d1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseFirstFlight(binaryForm("QPF", 1, byte(len(tc.ds)), tc.ds))
			if err != nil {
				t.Fatalf("ParseFirstFlight: got %v, want success", err)
			}
			if len(g.Datagrams) != len(tc.ds) {
				t.Errorf("datagrams: got %d, want %d (kept as given)", len(g.Datagrams), len(tc.ds))
			}
		})
	}
	t.Run("live handshake with duplicates", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e := newTestEnv(t, "127.0.0.1:0", nil)
		d, a := e.endpoints(t, ctx)
		res := runDial(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), func(f *FirstFlight) (*FirstFlight, error) {
			ds := f.Datagrams
			return &FirstFlight{Datagrams: [][]byte{ds[1], ds[0], ds[1], ds[0]}}, nil
		}, 0)
		if res.dialErr != nil || res.acceptEr != nil {
			t.Fatalf("dial with a duplicated, reordered flight: got errors %v / %v, want none", res.dialErr, res.acceptEr)
		}
	})
}

func TestFirstFlightMarshalInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    *FirstFlight
	}{
		{"nil", nil},
		{"empty", &FirstFlight{}},
		{"short datagram", &FirstFlight{Datagrams: [][]byte{make([]byte, 100)}}},
		{"too many", &FirstFlight{Datagrams: slices.Repeat([][]byte{make([]byte, 1200)}, 9)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.f.MarshalJSON(); !errors.Is(err, ErrBadFlight) {
				t.Errorf("MarshalJSON: got %v, want an ErrBadFlight", err)
			}
			if _, err := tc.f.MarshalBinary(); !errors.Is(err, ErrBadFlight) {
				t.Errorf("MarshalBinary: got %v, want an ErrBadFlight", err)
			}
			if s := tc.f.String(); !strings.HasPrefix(s, "<quicpipe: bad first flight") {
				t.Errorf("String: got %q, want %q...", s, "<quicpipe: bad first flight")
			}
			if err := tc.f.Check(); !errors.Is(err, ErrBadFlight) {
				t.Errorf("Check: got %v, want an ErrBadFlight", err)
			}
		})
	}
	t.Run("unmarshal error keeps the flight", func(t *testing.T) {
		rec := recordedFlight(t)
		g := &FirstFlight{Datagrams: cloneDatagrams(rec.Datagrams)}
		if err := g.UnmarshalJSON([]byte(`{"v":1,"datagrams":[]}`)); err == nil {
			t.Fatal("UnmarshalJSON: got success, want an error")
		}
		if err := g.UnmarshalBinary([]byte("QPF")); err == nil {
			t.Fatal("UnmarshalBinary: got success, want an error")
		}
		if !slices.EqualFunc(g.Datagrams, rec.Datagrams, bytes.Equal) {
			t.Errorf("flight after failed unmarshaling: got changed, want unchanged")
		}
	})
}

// TestAcceptBadFlight: Accept refuses a bad flight at once, before
// touching the relay or the QUIC stack.
func TestAcceptBadFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	a, err := NewAccepter(ctx, e.config(e.bID, e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec := recordedFlight(t)
	info, err := rec.check()
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 1300)
	for i := range garbage {
		garbage[i] = byte(i*31 + 7)
	}
	for _, tc := range []struct {
		name string
		f    *FirstFlight
		want string
	}{
		{"nil", nil, "0 datagrams"},
		{"empty", &FirstFlight{}, "0 datagrams"},
		{"garbage", &FirstFlight{Datagrams: [][]byte{garbage}}, "bad first flight"},
		{"garbage long header", &FirstFlight{Datagrams: [][]byte{append([]byte{0xc0, 0, 0, 0, 1}, garbage[5:]...)}}, "bad first flight"},
		{"incomplete", &FirstFlight{Datagrams: rec.Datagrams[:1]}, "incomplete"},
		{"short datagram", &FirstFlight{Datagrams: [][]byte{rec.Datagrams[0][:1000], rec.Datagrams[1]}}, "1000 bytes"},
		{"short original destination CID", sealFlight(t, []byte{1, 2, 3, 4}, info.SCID, clientHelloOf(t, rec), 1200), "original destination connection ID is 4 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c, err := a.Accept(ctx, tc.f)
			if err == nil {
				c.CloseWithError(0, "")
				t.Fatal("Accept: got a connection, want an error")
			}
			if el := time.Since(start); el > time.Second {
				t.Errorf("Accept took %v, want an error at once", el)
			}
			if !errors.Is(err, ErrBadFlight) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Accept: got %v, want an ErrBadFlight containing %q", err, tc.want)
			}
		})
	}
	// The same (valid but stale) flight twice: the second Accept is refused
	// at once while the first waits for a handshake that cannot complete.
	t.Run("same flight twice", func(t *testing.T) {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		defer acancel()
		first := make(chan error, 1)
		go func() {
			_, err := a.Accept(actx, rec)
			first <- err
		}()
		for pending := false; !pending; time.Sleep(5 * time.Millisecond) {
			if actx.Err() != nil {
				t.Fatal("the first Accept never became pending")
			}
			a.mu.Lock()
			_, pending = a.waiting[string(info.ODCID)]
			a.mu.Unlock()
		}
		start := time.Now()
		_, err := a.Accept(actx, rec)
		if !errors.Is(err, ErrBadFlight) || !strings.Contains(err.Error(), "already being accepted") {
			t.Errorf("second Accept: got %v, want an ErrBadFlight saying it is already being accepted", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("second Accept took %v, want an error at once", el)
		}
		acancel()
		select {
		case err := <-first:
			if err == nil {
				t.Errorf("first Accept of a stale flight: got a connection, want an error")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("first Accept did not return after its context was canceled")
		}
	})
}

// clientHelloOf returns the ClientHello (the Initial crypto stream) of a
// flight, by decrypting its packets with the public Initial keys.
func clientHelloOf(t testing.TB, f *FirstFlight) []byte {
	t.Helper()
	info, err := wire.InspectClientInitials(f.Datagrams)
	if err != nil {
		t.Fatal(err)
	}
	var stream wire.CryptoStream
	for _, d := range f.Datagrams {
		payload, _, _, err := wire.OpenInitial(d, info.ODCID, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.CryptoFrames(payload, stream.Insert); err != nil {
			t.Fatal(err)
		}
	}
	msg := stream.Message()
	if msg == nil {
		t.Fatal("flight holds no complete ClientHello")
	}
	return bytes.Clone(msg)
}

// sealFlight builds a client first flight carrying hello, with the given
// connection IDs, as QUIC version 1 Initial packets (RFC 9001, Section 5),
// each filling a datagram of size bytes.
func sealFlight(t testing.TB, dcid, scid, hello []byte, size int) *FirstFlight {
	t.Helper()
	return sealFlightChunks(t, dcid, scid, hello, size, 0)
}

// sealFlightChunks is sealFlight with at most chunk bytes of hello in each
// datagram; 0 fills each datagram. size must leave room for the header.
func sealFlightChunks(t testing.TB, dcid, scid, hello []byte, size, chunk int) *FirstFlight {
	t.Helper()
	expand := func(secret []byte, label string, n int) []byte {
		full := "tls13 " + label
		info := append([]byte{byte(n >> 8), byte(n), byte(len(full))}, full...)
		info = append(info, 0)
		out, err := hkdf.Expand(sha256.New, secret, string(info), n)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	salt := []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
		0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		t.Fatal(err)
	}
	secret := expand(initial, "client in", 32)
	block, _ := aes.NewCipher(expand(secret, "quic key", 16))
	aead, _ := cipher.NewGCM(block)
	iv := expand(secret, "quic iv", 12)
	hp, _ := aes.NewCipher(expand(secret, "quic hp", 16))

	const pnLen = 4
	datagram := size
	var f FirstFlight
	for pn, off := 0, 0; off < len(hello); pn++ {
		hdr := []byte{0xc0 | (pnLen - 1), 0, 0, 0, 1, byte(len(dcid))}
		hdr = append(hdr, dcid...)
		hdr = append(hdr, byte(len(scid)))
		hdr = append(hdr, scid...)
		hdr = append(hdr, 0) // token length
		lengthAt := len(hdr) // 2-byte varint Length
		payloadLen := datagram - lengthAt - 2 - pnLen - aead.Overhead()
		hdr = append(hdr, 0, 0, 0, 0, 0, byte(pn))
		binary.BigEndian.PutUint16(hdr[lengthAt:], 0x4000|uint16(pnLen+payloadLen+aead.Overhead()))
		// One CRYPTO frame (offset and length as 4-byte varints), then
		// PADDING.
		n := min(len(hello)-off, payloadLen-9)
		if chunk > 0 {
			n = min(n, chunk)
		}
		payload := []byte{0x06}
		payload = binary.BigEndian.AppendUint32(payload, 0x80000000|uint32(off))
		payload = binary.BigEndian.AppendUint32(payload, 0x80000000|uint32(n))
		payload = append(payload, hello[off:off+n]...)
		payload = append(payload, make([]byte, payloadLen-len(payload))...)
		off += n
		nonce := bytes.Clone(iv)
		nonce[len(nonce)-1] ^= byte(pn)
		pkt := aead.Seal(hdr, nonce, payload, hdr)
		pnOff := lengthAt + 2
		var mask [16]byte
		hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+20])
		pkt[0] ^= mask[0] & 0x0f
		for i := range pnLen {
			pkt[pnOff+i] ^= mask[1+i]
		}
		f.Datagrams = append(f.Datagrams, pkt)
	}
	return &f
}
