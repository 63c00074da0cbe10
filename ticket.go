package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/quic-go/quic-go"
)

// A ticket tells a dialer everything it needs to reach an accepter: the
// accepter's public key, its relay's address and public key, and optionally a
// dial secret from which the dialer's identity is derived (the ticket is then
// a capability: whoever holds it may connect). docs/PROTOCOL.md specifies the
// format byte by byte.

// TicketPrefix starts the text form of every ticket: "qp", the human-readable
// part, and "1", a separator that base32 never produces.
const TicketPrefix = "qp1"

// TicketSecretLen is the length of a ticket's dial secret.
const TicketSecretLen = 16

// ticketVersion is the only version this package reads and writes.
const ticketVersion = 1

// Flags of the binary form: a dial secret follows the keys; the relay's
// tunnel URL follows the relay address.
const (
	ticketFlagSecret = 0x01
	ticketFlagTunnel = 0x02
)

// ticketTunnelPrefix is the scheme every tunnel URL of a ticket has; the
// binary form leaves it out.
const ticketTunnelPrefix = "wss://"

// Relay address types of the binary form.
const (
	ticketAddrIPv4 = 1
	ticketAddrIPv6 = 2
	ticketAddrName = 3
)

// ticketMinLen is the length of the shortest ticket: version, flags, two
// keys, an IPv4 address with its port, and the checksum.
const ticketMinLen = 1 + 1 + 2*ed25519.PublicKeySize + 1 + 4 + 2 + 4

// ticketMaxLen bounds the binary form: a 253-byte host name, a secret and
// the longest tunnel URL.
const ticketMaxLen = 1 + 1 + 2*ed25519.PublicKeySize + TicketSecretLen + 2 + 253 + 2 + 1 + maxTunnelURL - len(ticketTunnelPrefix) + 4

// ticketDialerInfo is the HKDF info string of the dialer key derivation.
const ticketDialerInfo = "quicpipe/1 ticket dialer key"

// ticketAlphabet is the RFC 4648 base32 alphabet in lower case.
const ticketAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

var ticketEncoding = base32.NewEncoding(ticketAlphabet).WithPadding(base32.NoPadding)

// ErrBadTicket is wrapped by every error about a malformed ticket.
var ErrBadTicket = errors.New("quicpipe: bad ticket")

func badTicket(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadTicket, fmt.Sprintf(format, args...))
}

// Ticket is what a dialer needs to reach an accepter through its relay.
type Ticket struct {
	// Peer is the accepter's public key, which the dialer pins and whose
	// mailbox it posts to.
	Peer ed25519.PublicKey
	// RelayAddr is the relay's UDP address, "host:port", where host is an
	// IPv4 or IPv6 address or a DNS name.
	RelayAddr string
	// RelayKey is the relay's public key, which peers pin.
	RelayKey ed25519.PublicKey
	// Secret, if not nil, is a TicketSecretLen-byte dial secret. The dialer
	// then uses the identity DialerIdentity derives from it, and the
	// accepter trusts that identity's public key: holding the ticket is
	// the permission to connect. If nil, the dialer uses its own identity
	// and the accepter must trust that key by other means.
	Secret []byte
	// TunnelURL, if not empty, is the relay's TLS/WebSocket tunnel for
	// dialers whose UDP is blocked, "wss://host:port/path" in
	// Config.TunnelURL's form (the host may be left out: the relay's). If
	// empty, dialers look for the tunnel at port 443 of the relay's host.
	TunnelURL string
}

// NewTicketSecret returns a new random dial secret.
func NewTicketSecret() []byte {
	b := make([]byte, TicketSecretLen)
	rand.Read(b)
	return b
}

// DialerIdentity returns the dialer identity derived from the ticket's
// secret, or nil if it has none:
// Ed25519 seed = HKDF-SHA256(secret, salt = Peer, info = "quicpipe/1 ticket
// dialer key", 32 bytes). The accepter pins its public key.
func (t *Ticket) DialerIdentity() ed25519.PrivateKey {
	if len(t.Secret) == 0 {
		return nil
	}
	seed, err := hkdf.Key(sha256.New, t.Secret, t.Peer, ticketDialerInfo, ed25519.SeedSize)
	if err != nil {
		panic("quicpipe: hkdf: " + err.Error()) // only for absurd lengths
	}
	return ed25519.NewKeyFromSeed(seed)
}

// MarshalBinary returns the binary form of the ticket, checksum included.
func (t *Ticket) MarshalBinary() ([]byte, error) {
	if len(t.Peer) != ed25519.PublicKeySize {
		return nil, badTicket("accepter key is %d bytes, want %d", len(t.Peer), ed25519.PublicKeySize)
	}
	if len(t.RelayKey) != ed25519.PublicKeySize {
		return nil, badTicket("relay key is %d bytes, want %d", len(t.RelayKey), ed25519.PublicKeySize)
	}
	if t.Secret != nil && len(t.Secret) != TicketSecretLen {
		return nil, badTicket("secret is %d bytes, want %d", len(t.Secret), TicketSecretLen)
	}
	if err := checkTicketTunnel(t.TunnelURL); err != nil {
		return nil, err
	}
	host, port, err := splitRelayAddr(t.RelayAddr)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, ticketMaxLen)
	var flags byte
	if t.Secret != nil {
		flags |= ticketFlagSecret
	}
	if t.TunnelURL != "" {
		flags |= ticketFlagTunnel
	}
	b = append(b, ticketVersion, flags)
	b = append(b, t.Peer...)
	b = append(b, t.RelayKey...)
	b = append(b, t.Secret...)
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return nil, badTicket("relay address %q has a zone", t.RelayAddr)
		}
		if ip = ip.Unmap(); ip.Is4() {
			b = append(b, ticketAddrIPv4)
		} else {
			b = append(b, ticketAddrIPv6)
		}
		b = append(b, ip.AsSlice()...)
	} else {
		name := strings.ToLower(strings.TrimSuffix(host, "."))
		if err := checkHostName(name); err != nil {
			return nil, badTicket("relay address %q: %v", t.RelayAddr, err)
		}
		b = append(b, ticketAddrName, byte(len(name)))
		b = append(b, name...)
	}
	b = binary.BigEndian.AppendUint16(b, port)
	if t.TunnelURL != "" {
		u := t.TunnelURL[len(ticketTunnelPrefix):]
		b = append(b, byte(len(u)))
		b = append(b, u...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b)), nil
}

// UnmarshalBinary parses the binary form, checksum included.
func (t *Ticket) UnmarshalBinary(b []byte) error {
	if len(b) < ticketMinLen {
		return badTicket("truncated: %d bytes, a ticket has at least %d", len(b), ticketMinLen)
	}
	if len(b) > ticketMaxLen {
		return badTicket("%d bytes, a ticket has at most %d", len(b), ticketMaxLen)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return badTicket("checksum mismatch: the ticket is mistyped or incomplete")
	}
	if body[0] != ticketVersion {
		return badTicket("unsupported version %d (this program reads version %d)", body[0], ticketVersion)
	}
	flags := body[1]
	if flags&^(ticketFlagSecret|ticketFlagTunnel) != 0 {
		return badTicket("unknown flags %#02x", flags)
	}
	r := body[2:]
	take := func(n int, what string) ([]byte, error) {
		if len(r) < n {
			return nil, badTicket("truncated in the %s", what)
		}
		v := r[:n]
		r = r[n:]
		return v, nil
	}
	var g Ticket
	peer, _ := take(ed25519.PublicKeySize, "accepter key")
	relayKey, err := take(ed25519.PublicKeySize, "relay key")
	if err != nil {
		return err
	}
	g.Peer, g.RelayKey = bytes.Clone(peer), bytes.Clone(relayKey)
	if flags&ticketFlagSecret != 0 {
		s, err := take(TicketSecretLen, "secret")
		if err != nil {
			return err
		}
		g.Secret = bytes.Clone(s)
	}
	typ, err := take(1, "relay address")
	if err != nil {
		return err
	}
	var host string
	switch typ[0] {
	case ticketAddrIPv4, ticketAddrIPv6:
		n := 4
		if typ[0] == ticketAddrIPv6 {
			n = 16
		}
		a, err := take(n, "relay address")
		if err != nil {
			return err
		}
		ip, _ := netip.AddrFromSlice(a)
		if ip.Is4In6() {
			return badTicket("bad relay address: IPv4-mapped IPv6 address %s", ip)
		}
		if ip.IsUnspecified() {
			return badTicket("bad relay address: unspecified address %s", ip)
		}
		host = ip.String()
	case ticketAddrName:
		l, err := take(1, "relay address")
		if err != nil {
			return err
		}
		name, err := take(int(l[0]), "relay host name")
		if err != nil {
			return err
		}
		if err := checkHostName(string(name)); err != nil {
			return badTicket("bad relay address: %v", err)
		}
		host = string(name)
	default:
		return badTicket("bad relay address: unknown type %d", typ[0])
	}
	p, err := take(2, "relay port")
	if err != nil {
		return err
	}
	port := binary.BigEndian.Uint16(p)
	if port == 0 {
		return badTicket("bad relay address: port 0")
	}
	if flags&ticketFlagTunnel != 0 {
		l, err := take(1, "tunnel URL")
		if err != nil {
			return err
		}
		u, err := take(int(l[0]), "tunnel URL")
		if err != nil {
			return err
		}
		g.TunnelURL = ticketTunnelPrefix + string(u)
		if err := checkTicketTunnel(g.TunnelURL); err != nil {
			return err
		}
	}
	if len(r) != 0 {
		return badTicket("%d unexpected bytes after the relay address", len(r))
	}
	g.RelayAddr = net.JoinHostPort(host, strconv.Itoa(int(port)))
	*t = g
	return nil
}

// MarshalText returns the text form: TicketPrefix followed by the binary form
// in lower-case base32 (RFC 4648 alphabet, no padding).
func (t *Ticket) MarshalText() ([]byte, error) {
	b, err := t.MarshalBinary()
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(TicketPrefix), len(TicketPrefix)+ticketEncoding.EncodedLen(len(b)))
	copy(out, TicketPrefix)
	return ticketEncoding.AppendEncode(out, b), nil
}

// UnmarshalText parses the text form. Upper case is accepted (QR codes carry
// it) and white space is ignored (line breaks of a pasted ticket).
func (t *Ticket) UnmarshalText(text []byte) error {
	if len(text) > 4*ticketMaxLen {
		return badTicket("%d characters, far too long", len(text))
	}
	s := normalizeTicket(text)
	if !strings.HasPrefix(s, TicketPrefix) {
		return badTicket("a ticket starts with %q", TicketPrefix)
	}
	enc := s[len(TicketPrefix):]
	b, err := ticketEncoding.DecodeString(enc)
	if err != nil {
		var ce base32.CorruptInputError
		if errors.As(err, &ce) && int(ce) < len(enc) && !strings.ContainsRune(ticketAlphabet, rune(enc[ce])) {
			return badTicket("character %q at position %d is not base32", enc[ce], len(TicketPrefix)+int(ce)+1)
		}
		return badTicket("%d characters cannot be base32: the ticket is incomplete or has extra characters", len(s))
	}
	// Reject non-canonical encodings (non-zero padding bits): one ticket,
	// one string.
	if canon := ticketEncoding.EncodeToString(b); canon != enc {
		if len(canon) != len(enc) {
			return badTicket("%d characters cannot be base32: the ticket is incomplete or has extra characters", len(s))
		}
		return badTicket("the last character is not canonical base32: the ticket is mistyped")
	}
	return t.UnmarshalBinary(b)
}

// String returns the text form, or a description of why there is none.
func (t *Ticket) String() string {
	b, err := t.MarshalText()
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// ParseTicket parses the text form of a ticket.
func ParseTicket(s string) (*Ticket, error) {
	var t Ticket
	if err := t.UnmarshalText([]byte(s)); err != nil {
		return nil, err
	}
	return &t, nil
}

// DialTicket dials the accepter a ticket names, through its relay and
// mailbox. cfg may be nil; its RelayAddr and RelayKey are replaced by the
// ticket's, and if the ticket carries a secret, its Identity (if nil) by the
// derived one (see DialerConfig). As with DialMailbox, the connection owns
// its Dialer.
func DialTicket(ctx context.Context, t *Ticket, cfg *Config) (*quic.Conn, error) {
	c, err := t.DialerConfig(cfg)
	if err != nil {
		return nil, err
	}
	return DialMailbox(ctx, c, t.Peer)
}

// DialerConfig returns the configuration of a Dialer that dials the ticket's
// accepter (with Dialer.DialMailbox and the ticket's Peer): a copy of cfg
// (which may be nil) with the ticket's RelayAddr and RelayKey, its
// TunnelURL if cfg has none, and, if
// cfg has no Identity, the one derived from the ticket's secret. It fails
// if the ticket has no secret and cfg no Identity.
func (t *Ticket) DialerConfig(cfg *Config) (*Config, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.RelayAddr, c.RelayKey = t.RelayAddr, t.RelayKey
	if c.TunnelURL == "" {
		c.TunnelURL = t.TunnelURL
	}
	if c.Identity == nil {
		c.Identity = t.DialerIdentity()
	}
	if c.Identity == nil {
		return nil, errors.New("quicpipe: the ticket has no secret: Config.Identity is required")
	}
	return &c, nil
}

// checkTicketTunnel checks a ticket's tunnel URL ("" for none): a wss URL
// that parseTunnelURL accepts, 1 to 249 bytes after the scheme.
func checkTicketTunnel(s string) error {
	if s == "" {
		return nil
	}
	rest, ok := strings.CutPrefix(s, ticketTunnelPrefix)
	if !ok || rest == "" {
		return badTicket("tunnel URL %q must be wss://[host][:port][/path]", s)
	}
	if _, err := parseTunnelURL(s); err != nil {
		return badTicket("%v", err)
	}
	return nil
}

// normalizeTicket lowers ASCII letters and drops white space.
func normalizeTicket(text []byte) string {
	var sb strings.Builder
	sb.Grow(len(text))
	for _, c := range text {
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		case 'A' <= c && c <= 'Z':
			sb.WriteByte(c + 'a' - 'A')
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// splitRelayAddr splits "host:port" and checks the port.
func splitRelayAddr(addr string) (string, uint16, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, badTicket("relay address %q: %v", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, badTicket("relay address %q: port must be 1 to 65535", addr)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsUnspecified() {
		return "", 0, badTicket("relay address %q: a dialer cannot reach the unspecified address", addr)
	}
	return host, uint16(port), nil
}

// checkHostName accepts lower-case DNS names of letters, digits and hyphens.
func checkHostName(name string) error {
	if len(name) == 0 || len(name) > 253 {
		return fmt.Errorf("host name is %d bytes, want 1 to 253", len(name))
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("%q is an IP address, not a host name", name)
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("host name %q has a label of %d bytes", name, len(label))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has a label starting or ending with '-'", name)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q contains %q", name, c)
			}
		}
	}
	return nil
}
