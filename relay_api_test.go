package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// apiClient speaks the registration API over real HTTP/3, from its own UDP
// socket on 127.0.0.1, to the relay of a testEnv.
type apiClient struct {
	udp  *net.UDPConn
	rt   *http3.Transport
	http *http.Client
}

func newAPIClient(t testing.TB, e *testEnv) *apiClient {
	t.Helper()
	return newAPIClientFrom(t, e, "127.0.0.1")
}

// newAPIClientFrom is newAPIClient on a socket bound to ip (any 127.0.0.0/8
// address is on the loopback interface).
func newAPIClientFrom(t testing.TB, e *testEnv, ip string) *apiClient {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	return newAPIClientOn(t, e.relayID.Public().(ed25519.PublicKey), e.relay.udpAddr(), udp)
}

// newAPIClientOn is an apiClient on udp, which it closes at the end of the
// test, talking to the relay at relayAddr with public key relayKey.
func newAPIClientOn(t testing.TB, relayKey ed25519.PublicKey, relayAddr *net.UDPAddr, udp *net.UDPConn) *apiClient {
	t.Helper()
	tr := &quic.Transport{Conn: udp}
	tlsConf, err := ClientTLSConfig(nil, relayKey, http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	rt := &http3.Transport{
		TLSClientConfig: http3.ConfigureTLSConfig(tlsConf),
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: 5 * time.Second},
		// The URL's host is irrelevant: every request goes to the relay.
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return tr.Dial(ctx, relayAddr, tlsCfg, cfg)
		},
	}
	t.Cleanup(func() {
		rt.Close()
		tr.Close()
		udp.Close()
	})
	return &apiClient{udp: udp, rt: rt, http: &http.Client{Transport: rt, Timeout: 10 * time.Second}}
}

// addr is the client's address as the relay should observe it.
func (c *apiClient) addr() string { return c.udp.LocalAddr().String() }

type apiAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (c *apiClient) do(t testing.TB, method, path string, body []byte) apiAnswer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "https://quicpipe"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return apiAnswer{status: resp.StatusCode, header: resp.Header, body: data}
}

// register POSTs a registration and requires a 200 answer.
func (c *apiClient) register(t testing.TB, key []byte, first, num int64) registerResponse {
	t.Helper()
	a := c.do(t, http.MethodPost, registerPath, regBody(key, first, num))
	if a.status != http.StatusOK {
		t.Fatalf("POST %s: got status %d (%s), want 200", registerPath, a.status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want %q", ct, "application/json")
	}
	var resp registerResponse
	if err := json.Unmarshal(a.body, &resp); err != nil {
		t.Fatalf("answer %q: %v", a.body, err)
	}
	return resp
}

// regBody is a registration request body; first 0 is left out.
func regBody(key []byte, first, num int64) []byte {
	k := base64.StdEncoding.EncodeToString(key)
	if first == 0 {
		return fmt.Appendf(nil, `{"key":%q,"num":%d}`, k, num)
	}
	return fmt.Appendf(nil, `{"key":%q,"first":%d,"num":%d}`, k, first, num)
}

// checkAPIError checks that a is a JSON error answer with status and code.
func checkAPIError(t testing.TB, a apiAnswer, status int, code string) {
	t.Helper()
	if a.status != status {
		t.Errorf("status: got %d, want %d (body %s)", a.status, status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want %q", ct, "application/json")
	}
	var e errorResponse
	dec := json.NewDecoder(bytes.NewReader(a.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q is not an ErrorResponse: %v", a.body, err)
	}
	if e.Code != code {
		t.Errorf("code: got %q, want %q (message %q)", e.Code, code, e.Error)
	}
	if e.Error == "" {
		t.Errorf("error message: got empty, want a description")
	}
}

// snapReg is what the relay holds for one registration.
type snapReg struct {
	first, num uint32
	src        netip.Prefix
	dest       string
	expires    int64
}

// relaySnap is a copy of the relay's table and registrations.
type relaySnap struct {
	cids      map[CID]*regEntry
	regs      map[string]snapReg
	perSource map[netip.Prefix]sourceUsage
}

func relaySnapshot(r *Relay) relaySnap {
	s := relaySnap{cids: make(map[CID]*regEntry), regs: make(map[string]snapReg)}
	r.regMu.Lock()
	for k, reg := range r.regs.(*memRegistry).regs {
		s.regs[k] = snapReg{first: reg.first, num: reg.num, src: reg.src,
			dest: reg.Dest().AP.String(), expires: reg.Expires()}
	}
	s.perSource = maps.Clone(r.regs.(*memRegistry).perSource)
	r.table.Range(func(c [CIDLen]byte, e *forward.Entry) bool {
		s.cids[c] = e.Owner.(*regEntry)
		return true
	})
	r.regMu.Unlock()
	return s
}

func checkUnchanged(t testing.TB, before, after relaySnap) {
	t.Helper()
	if !maps.Equal(before.cids, after.cids) {
		t.Errorf("CID table: got %d entries (changed), want the %d entries from before", len(after.cids), len(before.cids))
	}
	if !maps.Equal(before.regs, after.regs) {
		t.Errorf("registrations: got %v, want %v", after.regs, before.regs)
	}
	if !maps.Equal(before.perSource, after.perSource) {
		t.Errorf("per-source counts: got %v, want %v", after.perSource, before.perSource)
	}
}

// lookupReg returns the registration that the CID c maps to in r's table,
// or nil.
func lookupReg(r *Relay, c []byte) *regEntry {
	if e := r.table.Lookup(c); e != nil {
		return e.Owner.(*regEntry)
	}
	return nil
}

// checkWindow checks that exactly the CIDs first..first+num-1 of key are in
// the table, forwarding to addr.
func checkCIDWindow(t testing.TB, r *Relay, key []byte, first, num uint32, addr string) {
	t.Helper()
	for j := uint64(first); j < uint64(first)+uint64(num); j++ {
		i := uint32(j)
		c, _ := DeriveCID(key, i)
		reg := lookupReg(r, c[:])
		if reg == nil {
			t.Fatalf("CID %d of the key: got no entry, want one", i)
		}
		if reg.key != string(key) {
			t.Fatalf("CID %d: got a registration for another key, want this key's", i)
		}
		if got := reg.Dest().AP.String(); got != addr {
			t.Fatalf("CID %d forwards to %s, want %s", i, got, addr)
		}
	}
	for _, i := range []uint32{first - 1, first + num, first + num + 1} {
		if i == 0 {
			continue
		}
		c, _ := DeriveCID(key, i)
		if lookupReg(r, c[:]) != nil {
			t.Errorf("CID %d (outside the window %d..%d): got an entry, want none", i, first, first+num-1)
		}
	}
	n := 0
	for _, reg := range relaySnapshot(r).cids {
		if reg.key == string(key) {
			n++
		}
	}
	if n != int(num) {
		t.Errorf("table entries of the key: got %d, want %d", n, num)
	}
}

// checkResponseWindow checks the window a registration returned.
func checkResponseWindow(t testing.TB, resp registerResponse, first, num uint32) {
	t.Helper()
	if resp.First != first || resp.Num != num {
		t.Errorf("window: got first %d num %d, want first %d num %d", resp.First, resp.Num, first, num)
	}
}

func fixedKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestRelayAPIRegister(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	r := e.relay
	c := newAPIClient(t, e)
	key := newCIDKey()

	t.Run("register", func(t *testing.T) {
		before := time.Now()
		resp := c.register(t, key, 0, 64)
		if resp.Addr != c.addr() {
			t.Errorf("Addr: got %q, want %q", resp.Addr, c.addr())
		}
		checkResponseWindow(t, resp, 1, 64)
		if resp.TTL != 60 {
			t.Errorf("TTL: got %d, want 60", resp.TTL)
		}
		if !resp.Expires.After(before) || resp.Expires.After(before.Add(61*time.Second)) {
			t.Errorf("Expires: got %v, want about %v", resp.Expires, before.Add(60*time.Second))
		}
		st := r.Stats()
		if st.CIDs != 64 || st.Registrations != 1 || st.Registered != 1 {
			t.Errorf("stats: got CIDs %d, Registrations %d, Registered %d; want 64, 1, 1", st.CIDs, st.Registrations, st.Registered)
		}
		checkCIDWindow(t, r, key, 1, 64, c.addr())
	})
	t.Run("grow", func(t *testing.T) {
		resp := c.register(t, key, 0, 128)
		checkResponseWindow(t, resp, 1, 128)
		st := r.Stats()
		if st.CIDs != 128 || st.Registrations != 1 || st.Registered != 2 {
			t.Errorf("stats: got CIDs %d, Registrations %d, Registered %d; want 128, 1, 2", st.CIDs, st.Registrations, st.Registered)
		}
		checkCIDWindow(t, r, key, 1, 128, c.addr())
	})
	t.Run("shrink", func(t *testing.T) {
		resp := c.register(t, key, 65, 10)
		checkResponseWindow(t, resp, 65, 10)
		if st := r.Stats(); st.CIDs != 10 || st.Registrations != 1 {
			t.Errorf("stats: got CIDs %d, Registrations %d; want 10, 1", st.CIDs, st.Registrations)
		}
		checkCIDWindow(t, r, key, 65, 10, c.addr())
		for i := uint32(1); i <= 128; i++ {
			if i >= 65 && i < 75 {
				continue
			}
			cid, _ := DeriveCID(key, i)
			if lookupReg(r, cid[:]) != nil {
				t.Fatalf("CID %d: got an entry after shrinking to 65..74, want none", i)
			}
		}
	})
	t.Run("move window", func(t *testing.T) {
		// Overlapping on the left, then disjoint.
		c.register(t, key, 60, 10)
		checkCIDWindow(t, r, key, 60, 10, c.addr())
		c.register(t, key, 1000, 5)
		checkCIDWindow(t, r, key, 1000, 5, c.addr())
		if st := r.Stats(); st.CIDs != 5 {
			t.Errorf("CIDs: got %d, want 5", st.CIDs)
		}
	})
	t.Run("last index", func(t *testing.T) {
		resp := c.register(t, key, 1<<32-1, 1)
		checkResponseWindow(t, resp, 1<<32-1, 1)
		checkCIDWindow(t, r, key, 1<<32-1, 1, c.addr())
	})
	t.Run("new address", func(t *testing.T) {
		// A refresh from another socket moves the registration there.
		c2 := newAPIClient(t, e)
		resp := c2.register(t, key, 0, 64)
		if resp.Addr != c2.addr() {
			t.Errorf("Addr: got %q, want %q", resp.Addr, c2.addr())
		}
		checkCIDWindow(t, r, key, 1, 64, c2.addr())
		s := relaySnapshot(r)
		if u := s.perSource[netip.MustParsePrefix("127.0.0.1/32")]; u != (sourceUsage{regs: 1, cids: 64}) {
			t.Errorf("usage of 127.0.0.1: got %+v, want 1 registration, 64 CIDs", u)
		}
	})
	t.Run("delete", func(t *testing.T) {
		other := newCIDKey()
		c.register(t, other, 0, 8)
		a := c.do(t, http.MethodDelete, registerPath, regBody(key, 0, 0))
		if a.status != http.StatusNoContent {
			t.Fatalf("DELETE: got status %d (%s), want 204", a.status, a.body)
		}
		st := r.Stats()
		if st.CIDs != 8 || st.Registrations != 1 {
			t.Errorf("stats after DELETE: got CIDs %d, Registrations %d; want 8, 1", st.CIDs, st.Registrations)
		}
		for i := uint32(1); i <= 64; i++ {
			cid, _ := DeriveCID(key, i)
			if lookupReg(r, cid[:]) != nil {
				t.Fatalf("CID %d of the deleted key: got an entry, want none", i)
			}
		}
		checkCIDWindow(t, r, other, 1, 8, c.addr())
		// Deleting again, or deleting an unknown key, is not an error.
		if a := c.do(t, http.MethodDelete, registerPath, regBody(key, 0, 0)); a.status != http.StatusNoContent {
			t.Errorf("second DELETE: got status %d, want 204", a.status)
		}
		a = c.do(t, http.MethodDelete, registerPath, regBody(other, 0, 0))
		if a.status != http.StatusNoContent {
			t.Errorf("DELETE: got status %d, want 204", a.status)
		}
		if st := r.Stats(); st.CIDs != 0 || st.Registrations != 0 {
			t.Errorf("stats after deleting everything: got CIDs %d, Registrations %d; want 0, 0", st.CIDs, st.Registrations)
		}
		if s := relaySnapshot(r); len(s.perSource) != 0 {
			t.Errorf("per-source counts after deleting everything: got %v, want none", s.perSource)
		}
	})
}

func TestRelayAPIErrors(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	r := e.relay
	c := newAPIClient(t, e)
	// A registration that no refused request may touch.
	key := fixedKey(7)
	c.register(t, key, 0, 64)

	k := base64.StdEncoding.EncodeToString(key)
	big := make([]byte, 5000)
	for i := range big {
		big[i] = 'A'
	}
	for _, tc := range []struct {
		name, method, path string
		body               string
		status             int
		code               string
	}{
		{"malformed JSON", "POST", registerPath, `{"key":`, 400, "bad_json"},
		{"empty body", "POST", registerPath, ``, 400, "bad_json"},
		{"not an object", "POST", registerPath, `[1,2,3]`, 400, "bad_json"},
		{"bare string", "POST", registerPath, `"hello"`, 400, "bad_json"},
		{"trailing garbage", "POST", registerPath, `{"key":"` + k + `","num":64}xyz`, 400, "bad_json"},
		{"trailing object", "POST", registerPath, `{"key":"` + k + `","num":64}{}`, 400, "bad_json"},
		{"trailing bracket", "POST", registerPath, `{"key":"` + k + `","num":64}]`, 400, "bad_json"},
		{"key is a number", "POST", registerPath, `{"key":123,"num":64}`, 400, "bad_json"},
		// encoding/json also decodes a []byte from an array of numbers:
		// this one is well-formed but only 3 bytes long.
		{"key is a short array", "POST", registerPath, `{"key":[1,2,3],"num":64}`, 400, "key_length"},
		{"key is an array of strings", "POST", registerPath, `{"key":["a","b"],"num":64}`, 400, "bad_json"},
		{"key array element above 255", "POST", registerPath, `{"key":[256,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"num":64}`, 400, "bad_json"},
		{"num is a string", "POST", registerPath, `{"key":"` + k + `","num":"64"}`, 400, "bad_json"},
		{"num is fractional", "POST", registerPath, `{"key":"` + k + `","num":1.5}`, 400, "bad_json"},
		{"num overflows int64", "POST", registerPath, `{"key":"` + k + `","num":1e30}`, 400, "bad_json"},
		{"first is a bool", "POST", registerPath, `{"key":"` + k + `","num":64,"first":true}`, 400, "bad_json"},
		{"key not base64", "POST", registerPath, `{"key":"not base64!!","num":64}`, 400, "bad_json"},
		{"key URL-safe base64", "POST", registerPath, `{"key":"` + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)) + `","num":64}`, 400, "bad_json"},
		{"key missing", "POST", registerPath, `{"num":64}`, 400, "key_length"},
		{"key null", "POST", registerPath, `{"key":null,"num":64}`, 400, "key_length"},
		{"key empty", "POST", registerPath, `{"key":"","num":64}`, 400, "key_length"},
		{"key 15 bytes", "POST", registerPath, string(regBody(make([]byte, 15), 0, 64)), 400, "key_length"},
		{"key 65 bytes", "POST", registerPath, string(regBody(make([]byte, 65), 0, 64)), 400, "key_length"},
		{"num missing", "POST", registerPath, `{"key":"` + k + `"}`, 400, "num_range"},
		{"num 0", "POST", registerPath, string(regBody(key, 0, 0)), 400, "num_range"},
		{"num negative", "POST", registerPath, string(regBody(key, 0, -1)), 400, "num_range"},
		{"num above MaxCIDsPerRegistration", "POST", registerPath, string(regBody(key, 0, 4097)), 400, "num_range"},
		{"num 2^40", "POST", registerPath, string(regBody(key, 0, 1<<40)), 400, "num_range"},
		{"first negative", "POST", registerPath, string(regBody(key, -1, 64)), 400, "num_range"},
		{"first+num beyond 2^32-1", "POST", registerPath, string(regBody(key, 1<<32-1, 2)), 400, "num_range"},
		{"first beyond 2^32-1", "POST", registerPath, string(regBody(key, 1<<32, 1)), 400, "num_range"},
		// first+num-1 overflows int64 unless the check is careful.
		{"first+num overflows int64", "POST", registerPath, string(regBody(key, 1<<63-1, 2)), 400, "num_range"},
		{"first MaxInt64", "POST", registerPath, string(regBody(key, 1<<63-1, 1)), 400, "num_range"},
		{"first overflows int64", "POST", registerPath, `{"key":"` + k + `","first":9223372036854775808,"num":1}`, 400, "bad_json"},
		{"body too large", "POST", registerPath, `{"key":"` + string(big) + `","num":64}`, 413, "body_too_large"},
		{"body too large after the object", "POST", registerPath, `{"key":"` + k + `","num":64}` + strings.Repeat(" ", 5000), 413, "body_too_large"},
		{"GET", "GET", registerPath, ``, 405, "bad_method"},
		{"PUT", "PUT", registerPath, string(regBody(key, 0, 64)), 405, "bad_method"},
		{"PATCH", "PATCH", registerPath, string(regBody(key, 0, 64)), 405, "bad_method"},
		{"DELETE malformed JSON", "DELETE", registerPath, `{`, 400, "bad_json"},
		{"DELETE key 15 bytes", "DELETE", registerPath, string(regBody(make([]byte, 15), 0, 0)), 400, "key_length"},
		{"DELETE body too large", "DELETE", registerPath, `{"key":"` + string(big) + `"}`, 413, "body_too_large"},
		{"unknown path", "POST", "/v1/nope", string(regBody(key, 0, 64)), 404, "not_found"},
		{"unknown path GET", "GET", "/v1/stats", ``, 404, "not_found"},
		{"v1 root", "GET", "/v1/", ``, 404, "not_found"},
		{"register with trailing slash", "POST", registerPath + "/", string(regBody(key, 0, 64)), 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.Stats()
			state := relaySnapshot(r)
			a := c.do(t, tc.method, tc.path, []byte(tc.body))
			checkAPIError(t, a, tc.status, tc.code)
			if tc.code == "bad_method" {
				if got := a.header.Get("Allow"); got != "POST, DELETE" {
					t.Errorf("Allow: got %q, want %q", got, "POST, DELETE")
				}
			}
			after := r.Stats()
			for code, n := range after.Rejected {
				want := before.Rejected[code]
				if code == tc.code {
					want++
				}
				if n != want {
					t.Errorf("Rejected[%q]: got %d, want %d", code, n, want)
				}
			}
			if after.Registered != before.Registered {
				t.Errorf("Registered: got %d, want %d", after.Registered, before.Registered)
			}
			checkUnchanged(t, state, relaySnapshot(r))
		})
	}

	// Unknown fields and other spellings are accepted (encoding/json
	// matches names without regard to case).
	t.Run("lenient decoding", func(t *testing.T) {
		for _, body := range []string{
			`{"key":"` + k + `","num":64,"extra":[1,{"a":null}]}`,
			`{"KEY":"` + k + `","Num":64}`,
			"\n\t " + `{"key":"` + k + `","num":64}` + " \r\n",
			`{"key":"` + k + `","num":64,"first":0}`,
			// The same key as an array of byte values (an encoding/json
			// quirk: docs say base64, but []byte accepts both).
			`{"key":[7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7],"num":64}`,
		} {
			a := c.do(t, http.MethodPost, registerPath, []byte(body))
			if a.status != http.StatusOK {
				t.Errorf("body %s: got status %d (%s), want 200", body, a.status, a.body)
			}
		}
		checkCIDWindow(t, r, key, 1, 64, c.addr())
	})
}

func TestRelayAPILimits(t *testing.T) {
	t.Run("limit_source", func(t *testing.T) {
		e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxRegistrationsPerSource: 2})
		r := e.relay
		c := newAPIClient(t, e)
		c.register(t, fixedKey(1), 0, 8)
		c.register(t, fixedKey(2), 0, 8)
		state := relaySnapshot(r)
		a := c.do(t, http.MethodPost, registerPath, regBody(fixedKey(3), 0, 8))
		checkAPIError(t, a, http.StatusTooManyRequests, "limit_source")
		// The limit is per IP, not per socket.
		c2 := newAPIClient(t, e)
		a = c2.do(t, http.MethodPost, registerPath, regBody(fixedKey(3), 0, 8))
		checkAPIError(t, a, http.StatusTooManyRequests, "limit_source")
		checkUnchanged(t, state, relaySnapshot(r))
		if got := r.Stats().Rejected["limit_source"]; got != 2 {
			t.Errorf("Rejected[limit_source]: got %d, want 2", got)
		}
		// Refreshing a registration from the same IP is still allowed.
		c.register(t, fixedKey(1), 0, 16)
		c2.register(t, fixedKey(2), 0, 16)
		// Room is made by deleting one.
		if a := c.do(t, http.MethodDelete, registerPath, regBody(fixedKey(1), 0, 0)); a.status != http.StatusNoContent {
			t.Fatalf("DELETE: got status %d, want 204", a.status)
		}
		c.register(t, fixedKey(3), 0, 8)
		if st := r.Stats(); st.Registrations != 2 {
			t.Errorf("Registrations: got %d, want 2", st.Registrations)
		}
	})
	t.Run("limit_total", func(t *testing.T) {
		e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxRegistrations: 2})
		r := e.relay
		c := newAPIClient(t, e)
		c.register(t, fixedKey(1), 0, 8)
		c.register(t, fixedKey(2), 0, 8)
		state := relaySnapshot(r)
		a := c.do(t, http.MethodPost, registerPath, regBody(fixedKey(3), 0, 8))
		checkAPIError(t, a, http.StatusServiceUnavailable, "limit_total")
		checkUnchanged(t, state, relaySnapshot(r))
		if got := r.Stats().Rejected["limit_total"]; got != 1 {
			t.Errorf("Rejected[limit_total]: got %d, want 1", got)
		}
		c.register(t, fixedKey(2), 0, 32) // a refresh is not a new registration
	})
	t.Run("limit_cids", func(t *testing.T) {
		e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxCIDs: 100})
		r := e.relay
		c := newAPIClient(t, e)
		c.register(t, fixedKey(1), 0, 64)
		state := relaySnapshot(r)
		a := c.do(t, http.MethodPost, registerPath, regBody(fixedKey(2), 0, 64))
		checkAPIError(t, a, http.StatusServiceUnavailable, "limit_cids")
		checkUnchanged(t, state, relaySnapshot(r))
		// Growing an existing window past the limit is refused too.
		a = c.do(t, http.MethodPost, registerPath, regBody(fixedKey(1), 0, 101))
		checkAPIError(t, a, http.StatusServiceUnavailable, "limit_cids")
		checkUnchanged(t, state, relaySnapshot(r))
		if got := r.Stats().Rejected["limit_cids"]; got != 2 {
			t.Errorf("Rejected[limit_cids]: got %d, want 2", got)
		}
		// Exactly up to the limit is fine.
		c.register(t, fixedKey(2), 0, 36)
		if st := r.Stats(); st.CIDs != 100 {
			t.Errorf("CIDs: got %d, want 100", st.CIDs)
		}
		// Moving a window without growing it is fine at the limit.
		c.register(t, fixedKey(1), 33, 64)
		checkCIDWindow(t, r, fixedKey(1), 33, 64, c.addr())
	})
	t.Run("MaxKeyLen", func(t *testing.T) {
		e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxKeyLen: 32})
		c := newAPIClient(t, e)
		c.register(t, make([]byte, 32), 0, 1)
		checkAPIError(t, c.do(t, http.MethodPost, registerPath, regBody(make([]byte, 33), 0, 1)), 400, "key_length")
	})
}

func TestRelayAPIExpiry(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{RegistrationTTL: time.Second})
	r := e.relay
	c := newAPIClient(t, e)
	lapsing, kept := fixedKey(1), fixedKey(2)
	start := time.Now() // the lapsing registration expires no sooner than start+1s
	resp := c.register(t, lapsing, 0, 16)
	if resp.TTL != 1 {
		t.Errorf("TTL: got %d, want 1", resp.TTL)
	}
	c.register(t, kept, 0, 16)
	deadline := start.Add(2500 * time.Millisecond)
	refreshed := start
	for {
		if time.Since(refreshed) > 300*time.Millisecond {
			c.register(t, kept, 0, 16)
			refreshed = time.Now()
		}
		if r.Stats().Registrations == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lapsing registration still present after %v", time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone := time.Since(start); gone < time.Second {
		t.Errorf("registration expired after %v, want no sooner than its 1s TTL", gone)
	}
	// Keep refreshing past the lapsing registration's expiry by a margin.
	for time.Since(start) < 1500*time.Millisecond {
		c.register(t, kept, 0, 16)
		time.Sleep(300 * time.Millisecond)
	}
	st := r.Stats()
	if st.Expired != 1 || st.Registrations != 1 || st.CIDs != 16 {
		t.Errorf("stats: got Expired %d, Registrations %d, CIDs %d; want 1, 1, 16", st.Expired, st.Registrations, st.CIDs)
	}
	for i := uint32(1); i <= 16; i++ {
		cid, _ := DeriveCID(lapsing, i)
		if lookupReg(r, cid[:]) != nil {
			t.Fatalf("CID %d of the expired key: got an entry, want none", i)
		}
	}
	checkCIDWindow(t, r, kept, 1, 16, c.addr())
	if u := relaySnapshot(r).perSource[netip.MustParsePrefix("127.0.0.1/32")]; u != (sourceUsage{regs: 1, cids: 16}) {
		t.Errorf("usage of 127.0.0.1: got %+v, want 1 registration, 16 CIDs", u)
	}
}

func TestRelayAPIEmbedding(t *testing.T) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/hello" {
			http.NotFound(w, req)
			return
		}
		fmt.Fprintf(w, "hello over %s", req.Proto)
	})
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Handler: hello})
	c := newAPIClient(t, e)
	for _, tc := range []struct {
		name, method, path string
		status             int
		body               string
	}{
		{"custom route", "GET", "/hello", 200, "hello over HTTP/3.0"},
		{"custom 404", "GET", "/other", 404, "404 page not found\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := c.do(t, tc.method, tc.path, nil)
			if a.status != tc.status || string(a.body) != tc.body {
				t.Errorf("%s %s: got %d %q, want %d %q", tc.method, tc.path, a.status, a.body, tc.status, tc.body)
			}
		})
	}
	t.Run("relay API beside it", func(t *testing.T) {
		c.register(t, fixedKey(1), 0, 4)
		checkCIDWindow(t, e.relay, fixedKey(1), 1, 4, c.addr())
		// /v1/ stays the relay's, even for paths it does not know.
		checkAPIError(t, c.do(t, "GET", "/v1/hello", nil), 404, "not_found")
	})
	t.Run("no handler", func(t *testing.T) {
		e := newTestEnv(t, "127.0.0.1:0", nil)
		c := newAPIClient(t, e)
		if a := c.do(t, "GET", "/hello", nil); a.status != http.StatusNotFound {
			t.Errorf("GET /hello without Handler: got %d, want 404", a.status)
		}
	})
}
