package quicpipe

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// Limits of a first flight.
const (
	// MaxFlightDatagrams is the most datagrams a first flight may hold.
	MaxFlightDatagrams = 8
	// MinFlightDatagramSize is the smallest datagram of a first flight: QUIC
	// requires a client to pad Initial datagrams to 1200 bytes.
	MinFlightDatagramSize = 1200
	// MaxFlightDatagramSize is the largest datagram of a first flight: the
	// largest UDP payload quic-go receives (1452 bytes).
	MaxFlightDatagramSize = 1452
	// MaxFlightJSONSize bounds the JSON form accepted by UnmarshalJSON.
	MaxFlightJSONSize = 32 << 10
)

// flightVersion is the version of the JSON and binary forms.
const flightVersion = 1

// flightMagic starts the binary form.
var flightMagic = [3]byte{'Q', 'P', 'F'}

// ErrBadFlight is wrapped by every error about a malformed first flight.
var ErrBadFlight = errors.New("quicpipe: bad first flight")

func badFlight(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadFlight, fmt.Sprintf(format, args...))
}

// FirstFlight is a dialer's first flight: every UDP datagram of its QUIC
// client Initial (with Go's default key exchange, X25519MLKEM768, the
// ClientHello needs two). The application carries it to the accepter by any
// means, in its JSON form (one line, see String) or its compact binary form.
//
// The datagrams are protected with keys anyone can derive, as all QUIC
// Initial packets are: they reveal the ClientHello (the dialer's key share,
// ALPN and transport parameters), never the peers' keys.
type FirstFlight struct {
	Datagrams [][]byte
}

// flightJSON is the JSON form: {"v":1,"datagrams":["<base64>",...]}.
type flightJSON struct {
	V         int      `json:"v"`
	Datagrams []string `json:"datagrams"`
}

// String returns the JSON form on one line.
func (f *FirstFlight) String() string {
	b, err := f.MarshalJSON()
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// MarshalJSON returns the JSON form.
func (f *FirstFlight) MarshalJSON() ([]byte, error) {
	if err := f.checkShape(); err != nil {
		return nil, err
	}
	j := flightJSON{V: flightVersion, Datagrams: make([]string, len(f.Datagrams))}
	for i, d := range f.Datagrams {
		j.Datagrams[i] = base64.StdEncoding.EncodeToString(d)
	}
	return json.Marshal(j)
}

// UnmarshalJSON parses the JSON form and checks its shape (see Check for the
// full validation).
func (f *FirstFlight) UnmarshalJSON(b []byte) error {
	if len(b) > MaxFlightJSONSize {
		return badFlight("JSON form is %d bytes, more than %d", len(b), MaxFlightJSONSize)
	}
	var j flightJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return badFlight("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badFlight("malformed JSON: trailing data after the object")
	}
	if j.V != flightVersion {
		return badFlight("unsupported version %d (want %d)", j.V, flightVersion)
	}
	if len(j.Datagrams) == 0 || len(j.Datagrams) > MaxFlightDatagrams {
		return badFlight("%d datagrams; want 1 to %d", len(j.Datagrams), MaxFlightDatagrams)
	}
	ds := make([][]byte, len(j.Datagrams))
	for i, s := range j.Datagrams {
		if base64.StdEncoding.DecodedLen(len(s)) > MaxFlightDatagramSize+3 {
			return badFlight("datagram %d is longer than %d bytes", i, MaxFlightDatagramSize)
		}
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return badFlight("datagram %d: bad base64: %v", i, err)
		}
		ds[i] = d
	}
	g := FirstFlight{Datagrams: ds}
	if err := g.checkShape(); err != nil {
		return err
	}
	*f = g
	return nil
}

// MarshalBinary returns the compact binary form: "QPF", a version byte, a
// count byte, then per datagram a 2-byte big-endian length and the bytes.
func (f *FirstFlight) MarshalBinary() ([]byte, error) {
	if err := f.checkShape(); err != nil {
		return nil, err
	}
	n := 5
	for _, d := range f.Datagrams {
		n += 2 + len(d)
	}
	b := make([]byte, 0, n)
	b = append(b, flightMagic[:]...)
	b = append(b, flightVersion, byte(len(f.Datagrams)))
	for _, d := range f.Datagrams {
		b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
		b = append(b, d...)
	}
	return b, nil
}

// UnmarshalBinary parses the binary form and checks its shape.
func (f *FirstFlight) UnmarshalBinary(b []byte) error {
	if len(b) < 5 || !bytes.Equal(b[:3], flightMagic[:]) {
		return badFlight("binary form must start with %q", flightMagic[:])
	}
	if b[3] != flightVersion {
		return badFlight("unsupported version %d (want %d)", b[3], flightVersion)
	}
	count := int(b[4])
	if count == 0 || count > MaxFlightDatagrams {
		return badFlight("%d datagrams; want 1 to %d", count, MaxFlightDatagrams)
	}
	rest := b[5:]
	ds := make([][]byte, 0, count)
	for i := range count {
		if len(rest) < 2 {
			return badFlight("truncated before datagram %d", i)
		}
		l := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if l > len(rest) {
			return badFlight("datagram %d claims %d bytes, %d left", i, l, len(rest))
		}
		ds = append(ds, bytes.Clone(rest[:l]))
		rest = rest[l:]
	}
	if len(rest) != 0 {
		return badFlight("%d trailing bytes", len(rest))
	}
	g := FirstFlight{Datagrams: ds}
	if err := g.checkShape(); err != nil {
		return err
	}
	*f = g
	return nil
}

// ParseFirstFlight parses either form: JSON if b starts with '{' (after
// white space), binary otherwise. It runs Check.
func ParseFirstFlight(b []byte) (*FirstFlight, error) {
	var f FirstFlight
	var err error
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		err = f.UnmarshalJSON(t)
	} else {
		err = f.UnmarshalBinary(b)
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.check(); err != nil {
		return nil, err
	}
	return &f, nil
}

// checkShape validates counts and sizes.
func (f *FirstFlight) checkShape() error {
	if f == nil || len(f.Datagrams) == 0 || len(f.Datagrams) > MaxFlightDatagrams {
		n := 0
		if f != nil {
			n = len(f.Datagrams)
		}
		return badFlight("%d datagrams; want 1 to %d", n, MaxFlightDatagrams)
	}
	for i, d := range f.Datagrams {
		if len(d) < MinFlightDatagramSize || len(d) > MaxFlightDatagramSize {
			return badFlight("datagram %d is %d bytes; want %d to %d", i, len(d), MinFlightDatagramSize, MaxFlightDatagramSize)
		}
	}
	return nil
}

// Check verifies that the flight is a complete QUIC version 1 client first
// flight: every datagram starts with an Initial packet for the same original
// destination CID and a 12-byte source CID, and together they carry a whole
// ClientHello offering PeerALPN.
func (f *FirstFlight) Check() error {
	_, err := f.check()
	return err
}

func (f *FirstFlight) check() (wire.ClientInitialInfo, error) {
	if err := f.checkShape(); err != nil {
		return wire.ClientInitialInfo{}, err
	}
	info, err := wire.InspectClientInitials(f.Datagrams)
	if err != nil {
		return info, badFlight("%v", err)
	}
	// RFC 9000, Section 7.2: a client's first destination CID is at least
	// 8 bytes; quic-go drops shorter ones silently, and Accept would wait.
	if len(info.ODCID) < 8 {
		return info, badFlight("original destination connection ID is %d bytes, want at least 8", len(info.ODCID))
	}
	if len(info.SCID) != CIDLen {
		return info, badFlight("source connection ID is %d bytes, want %d", len(info.SCID), CIDLen)
	}
	if !info.Complete {
		return info, badFlight("the ClientHello is incomplete (a datagram is missing)")
	}
	found := false
	for _, p := range info.ALPN {
		found = found || p == PeerALPN
	}
	if !found {
		return info, badFlight("ClientHello does not offer ALPN %q (offers %q)", PeerALPN, info.ALPN)
	}
	return info, nil
}
