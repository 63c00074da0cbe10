package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// FuzzParseFirstFlight feeds ParseFirstFlight arbitrary bytes, to exercise
// the two framings and the shape checks. Its seeds are small on purpose: a
// valid flight is at least 1200 bytes, and the fuzzer's minimizer is
// quadratic in an input's length (60 s for each new input of that size), so
// large seeds stall the run. Valid flights are the business of
// FuzzSealedFirstFlight, which builds them from small inputs.
func FuzzParseFirstFlight(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		[]byte("{}"),
		[]byte(" {\"v\":1}"),
		[]byte(`{"v":1,"datagrams":[]}`),
		[]byte(`{"v":1,"datagrams":["AAAA"]}`),
		[]byte(`{"v":2,"datagrams":["AAAA","AAAA"]}`),
		[]byte(`{"v":1,"datagrams":["AAAA"],"x":1}`),
		[]byte("QPF"),
		[]byte("QPF\x01\x00"),
		[]byte("QPF\x01\x01\x04\xb0"),
		[]byte("QPF\x02\x01\x00\x00"),
		binaryForm("QPF", 1, 1, [][]byte{make([]byte, 40)}),
		binaryForm("QPF", 1, 3, [][]byte{{0xc0, 0, 0, 0, 1}, {0xc0}, nil}),
		jsonForm(1, [][]byte{{0xc0, 0, 0, 0, 1, 8}}),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkParsedFlight(t, b) })
}

// FuzzSealedFirstFlight builds a first flight whose Initial packets are
// protected as a client's are, from a ClientHello, connection IDs and a
// split chosen by the fuzzer, so that mutations reach the CRYPTO frame
// reassembly and the ClientHello parser behind the packet protection, which
// random bytes never get past. The flight is then parsed in both framings
// with the properties of checkParsedFlight.
func FuzzSealedFirstFlight(f *testing.F) {
	scid := bytes.Repeat([]byte{0x2a}, CIDLen)
	odcid := []byte("8 bytes!")
	for _, seed := range []struct {
		hello, odcid, scid []byte
		size               uint16
		chunk              uint16
	}{
		{synthHello(PeerALPN), odcid, scid, 1200, 0},
		{synthHello(PeerALPN), odcid, scid, 1452, 20},
		{synthHello("h3", PeerALPN), odcid, scid, 1300, 7},
		{synthHello("h3"), odcid, scid, 1200, 0},
		{synthHello(PeerALPN)[:30], odcid, scid, 1200, 0},
		{synthHello(PeerALPN), []byte{1, 2, 3, 4}, scid, 1200, 0},
		{synthHello(PeerALPN), odcid, scid[:8], 1200, 0},
		{synthHello(PeerALPN), odcid, scid, 1199, 0},
		{synthHello(PeerALPN), bytes.Repeat([]byte{7}, 20), scid, 1200, 1},
	} {
		f.Add(seed.hello, seed.odcid, seed.scid, seed.size, seed.chunk)
	}
	f.Fuzz(func(t *testing.T, hello, odcid, scid []byte, size, chunk uint16) {
		// Keep the header within what sealFlightChunks can encode and the
		// datagram count within reach of the parser's limit.
		if len(odcid) > 20 || len(scid) > 20 || len(hello) == 0 || len(hello) > 4096 {
			return
		}
		sz := 1100 + int(size)%400
		if c := int(chunk) % 1200; c == 0 && len(hello) > 1000 || c > 0 && len(hello)/c > 2*MaxFlightDatagrams {
			return
		}
		fl := sealFlightChunks(t, odcid, scid, hello, sz, int(chunk)%1200)
		bin, err := fl.MarshalBinary()
		if err != nil {
			// Only shapes MarshalBinary refuses (too many or too large
			// datagrams) get here; the parser must refuse them too.
			if _, perr := ParseFirstFlight(binaryFormLoose(fl.Datagrams)); perr == nil {
				t.Fatalf("MarshalBinary refused a flight (%v) that ParseFirstFlight accepts", err)
			}
			return
		}
		checkParsedFlight(t, bin)
		checkParsedFlight(t, jsonForm(1, fl.Datagrams))
	})
}

// binaryForm's version for any count: the count byte wraps, and that must
// not make a bad flight parse.
func binaryFormLoose(ds [][]byte) []byte { return binaryForm("QPF", 1, byte(len(ds)), ds) }

// checkParsedFlight checks ParseFirstFlight's properties on b: it never
// panics, every error wraps ErrBadFlight, and a parsed flight is valid and
// survives both forms.
func checkParsedFlight(t *testing.T, b []byte) {
	t.Helper()
	g, err := ParseFirstFlight(b)
	if err != nil {
		if !errors.Is(err, ErrBadFlight) {
			t.Fatalf("error %q: got errors.Is(ErrBadFlight) false, want true", err)
		}
		if g != nil {
			t.Fatalf("got a flight and an error, want nil flight")
		}
		return
	}
	if err := g.Check(); err != nil {
		t.Fatalf("Check of a parsed flight: got %v, want nil", err)
	}
	js, err := g.MarshalJSON()
	if err != nil {
		t.Fatalf("MarshalJSON of a parsed flight: %v", err)
	}
	if bytes.ContainsAny(js, "\r\n") || g.String() != string(js) {
		t.Fatalf("JSON form: got %q and String %q, want the same single line", js, g.String())
	}
	bin, err := g.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary of a parsed flight: %v", err)
	}
	for _, form := range [][]byte{js, bin} {
		h, err := ParseFirstFlight(form)
		if err != nil {
			t.Fatalf("re-parsing %.20q...: got %v, want success", form, err)
		}
		if !slices.EqualFunc(h.Datagrams, g.Datagrams, bytes.Equal) {
			t.Fatalf("re-parsed datagrams: got different, want equal")
		}
	}
}

// synthHello is a minimal TLS 1.3 ClientHello (RFC 8446, Section 4.1.2)
// offering the given ALPN protocols: small enough for the fuzzer to mutate
// and minimize quickly, unlike a real one with its post-quantum key share.
func synthHello(alpn ...string) []byte {
	var list []byte
	for _, p := range alpn {
		list = append(list, byte(len(p)))
		list = append(list, p...)
	}
	ext := binary.BigEndian.AppendUint16(nil, 16) // application_layer_protocol_negotiation
	ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)+2))
	ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)))
	ext = append(ext, list...)
	body := []byte{3, 3}                     // legacy_version
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // legacy_session_id
	body = append(body, 0, 2, 0x13, 0x01)    // cipher_suites: TLS_AES_128_GCM_SHA256
	body = append(body, 1, 0)                // legacy_compression_methods
	body = binary.BigEndian.AppendUint16(body, uint16(len(ext)))
	body = append(body, ext...)
	msg := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	return append(msg, body...)
}

func TestSynthHelloParses(t *testing.T) {
	fl := sealFlight(t, []byte("8 bytes!"), bytes.Repeat([]byte{0x2a}, CIDLen), synthHello(PeerALPN), 1200)
	if err := fl.Check(); err != nil {
		t.Fatalf("a flight with synthHello: got %v, want a valid flight", err)
	}
}

// loopbackQUICConn returns the server side of a QUIC connection on
// loopback: a real *quic.Conn whose RemoteAddr is a 127.0.0.1 address.
func loopbackQUICConn(t testing.TB) *quic.Conn {
	t.Helper()
	id := GenerateIdentity()
	srvTLS, err := ServerTLSConfig(id, nil, "fuzz")
	if err != nil {
		t.Fatal(err)
	}
	cliTLS, err := ClientTLSConfig(nil, id.Public().(ed25519.PublicKey), "fuzz")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", srvTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := quic.DialAddr(ctx, ln.Addr().String(), cliTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.CloseWithError(0, "") })
	sc, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ra := sc.RemoteAddr().(*net.UDPAddr); !ra.IP.IsLoopback() {
		t.Fatalf("RemoteAddr: got %v, want a loopback address", ra)
	}
	return sc
}

// FuzzRegisterBody drives the registration handler with arbitrary bodies.
// Without a QUIC connection in the request's context (withConn false) a
// request can never register anything: a valid body answers 500 no_address.
// With one (a real loopback connection, as the relay's HTTP/3 server would
// provide), a valid body registers and the table must hold exactly the
// window answered; the registration is then removed.
//
// Properties: no panic; a non-2xx answer is a JSON ErrorResponse with a
// known code, counted in Stats().Rejected; nothing stays in the table.
func FuzzRegisterBody(f *testing.F) {
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity(), MaxCIDsPerRegistration: 1024})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	qc := loopbackQUICConn(f)
	key := fixedKey(9)
	for _, seed := range []struct {
		body     string
		method   byte
		withConn bool
	}{
		{string(regBody(key, 0, 64)), 0, true},
		{string(regBody(key, 0, 64)), 0, false},
		{string(regBody(key, 65, 10)), 0, true},
		{string(regBody(key, 1<<32-1, 1)), 0, true},
		{string(regBody(key, 1<<32-1, 2)), 0, true},
		{string(regBody(key, -1, 2)), 0, true},
		// Once answered 200 with a window wrapping past 2^32-1 (first+num-1
		// overflowed int64 in the range check).
		{string(regBody(key, 1<<63-1, 2)), 0, true},
		{string(regBody(key, 0, 1025)), 0, true},
		{string(regBody(key, 0, 0)), 1, true},
		{string(regBody(key, 0, 0)), 2, true},
		{string(regBody(make([]byte, 15), 0, 1)), 0, true},
		{string(regBody(make([]byte, 65), 0, 1)), 0, true},
		{`{"key":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],"num":3}`, 0, true},
		{`{"KEY":"AAAAAAAAAAAAAAAAAAAAAA==","NUM":1,"First":7}`, 0, true},
		{`{"key":"AAAAAAAAAAAAAAAAAAAAAA==","num":1} x`, 0, true},
		{`{"key":"AAAAAAAAAAAAAAAAAAAAAA==","num":1e3}`, 0, true},
		{`{"key":"AAAAAAAAAAAAAAAAAAAAAA==","num":1}` + strings.Repeat(" ", 5000), 0, true},
		{`{"key":"` + strings.Repeat("A", 5000) + `"}`, 0, true},
		{`{"key":"!!"}`, 0, true},
		{``, 0, true},
		{`null`, 0, true},
		{`[]`, 0, true},
		{`{"key":null,"num":null,"first":null}`, 0, true},
	} {
		f.Add([]byte(seed.body), seed.method, seed.withConn)
	}
	methods := []string{http.MethodPost, http.MethodDelete, http.MethodGet, http.MethodPut}
	f.Fuzz(func(t *testing.T, body []byte, m byte, withConn bool) {
		method := methods[int(m)%len(methods)]
		req := httptest.NewRequest(method, registerPath, bytes.NewReader(body))
		if withConn {
			req = req.WithContext(context.WithValue(req.Context(), quicConnKey{}, qc))
		}
		before := r.Stats()
		w := httptest.NewRecorder()
		r.handleRegister(w, req)
		res := w.Result()
		data := w.Body.Bytes()
		defer func() {
			// Remove whatever was registered, then nothing may remain.
			r.regMu.Lock()
			r.regs.entries(func(reg *regEntry) bool {
				r.regs.remove(reg)
				return true
			})
			r.regMu.Unlock()
			if st := r.Stats(); st.CIDs != 0 || st.Registrations != 0 {
				t.Fatalf("after cleanup: got CIDs %d, Registrations %d; want 0, 0", st.CIDs, st.Registrations)
			}
		}()
		switch {
		case res.StatusCode == http.StatusNoContent:
			if method != http.MethodDelete {
				t.Fatalf("%s: got 204, want it only for DELETE", method)
			}
		case res.StatusCode == http.StatusOK:
			if method != http.MethodPost || !withConn {
				t.Fatalf("%s (connection %v): got 200, want it only for POST with a connection", method, withConn)
			}
			var resp registerResponse
			if err := json.Unmarshal(data, &resp); err != nil {
				t.Fatalf("200 answer %q: %v", data, err)
			}
			if want := qc.RemoteAddr().String(); resp.Addr != want {
				t.Fatalf("Addr: got %q, want %q", resp.Addr, want)
			}
			st := r.Stats()
			if st.Registrations != 1 || st.CIDs != int(resp.Num) || resp.Num == 0 {
				t.Fatalf("after 200 %+v: got Registrations %d, CIDs %d; want 1, %d", resp, st.Registrations, st.CIDs, resp.Num)
			}
			if uint64(resp.First)+uint64(resp.Num)-1 > 1<<32-1 || resp.First == 0 {
				t.Fatalf("window %d+%d: got beyond 1..2^32-1", resp.First, resp.Num)
			}
			r.regMu.Lock()
			var reg *regEntry
			r.regs.entries(func(v *regEntry) bool {
				reg = v
				return true
			})
			r.regMu.Unlock()
			for _, i := range []uint32{resp.First, resp.First + resp.Num - 1} {
				c, _ := DeriveCID([]byte(reg.key), i)
				if lookupReg(r, c[:]) != reg {
					t.Fatalf("CID %d of the answered window: got no entry, want one", i)
				}
			}
		default:
			if res.StatusCode < 400 {
				t.Fatalf("status: got %d, want 200, 204 or an error", res.StatusCode)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type: got %q, want application/json", ct)
			}
			var e errorResponse
			if err := json.Unmarshal(data, &e); err != nil {
				t.Fatalf("error answer %q is not JSON: %v", data, err)
			}
			if !slices.Contains(rejectCodes, e.Code) || e.Error == "" {
				t.Fatalf("error answer: got code %q message %q, want a known code and a message", e.Code, e.Error)
			}
			if got, want := r.Stats().Rejected[e.Code], before.Rejected[e.Code]+1; got != want {
				t.Fatalf("Rejected[%q]: got %d, want %d", e.Code, got, want)
			}
			if e.Code == "no_address" && withConn {
				t.Fatalf("no_address with a connection in the context")
			}
			if st := r.Stats(); st.CIDs != 0 || st.Registrations != 0 {
				t.Fatalf("after an error: got CIDs %d, Registrations %d; want 0, 0", st.CIDs, st.Registrations)
			}
		}
	})
}

// TestRecordedFlightProperties runs checkParsedFlight on a real quic-go
// first flight in both framings (the fuzz targets' seeds are synthetic).
func TestRecordedFlightProperties(t *testing.T) {
	js, err := os.ReadFile(flightTestdata)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ParseFirstFlight(js)
	if err != nil {
		t.Fatal(err)
	}
	checkParsedFlight(t, js)
	checkParsedFlight(t, mustBinary(t, rec))
}
