package main

// A minimal TURN client (RFC 8656) over a raw UDP socket: just enough to
// allocate a relay address with long-term credentials and bind a channel to
// one peer, after which the load generator sends ChannelData messages from
// the same socket. STUN messages are built and parsed with pion/stun.

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"
)

const (
	turnUser    = "bench"
	turnPass    = "bench"
	turnRealm   = "bench"
	turnChannel = 0x4000
)

// turnClient runs TURN transactions on a blocking UDP socket fd.
type turnClient struct {
	fd     int
	server netip.AddrPort
	nonce  stun.Nonce
	realm  stun.Realm
	buf    []byte
}

type setterFunc func(m *stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

func rawAttr(t stun.AttrType, v []byte) stun.Setter {
	return stun.RawAttribute{Type: t, Value: v}
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

// bindUDP opens an IPv4 UDP socket, sets the SOL_SOCKET options given as
// option, value pairs, and binds it to addr.
func bindUDP(addr netip.AddrPort, opts ...int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return -1, err
	}
	for i := 0; i+1 < len(opts); i += 2 {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opts[i], opts[i+1])
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// transact sends a request (adding credentials once a realm and nonce are
// known) and returns the success response; it retries on loss, on the first
// 401 and on a stale nonce, for up to timeout.
func (c *turnClient) transact(method stun.Method, timeout time.Duration, attrs ...stun.Setter) (*stun.Message, error) {
	deadline := time.Now().Add(timeout)
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if c.buf == nil {
		c.buf = make([]byte, 2048)
	}
	authRetries := 0
	for time.Now().Before(deadline) {
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if c.nonce != nil {
			setters = append(setters, stun.NewUsername(turnUser), c.realm, c.nonce,
				stun.NewLongTermIntegrity(turnUser, string(c.realm), turnPass))
		}
		req, err := stun.Build(setters...)
		if err != nil {
			return nil, err
		}
		if err := unix.Sendto(c.fd, req.Raw, 0, sockaddr(c.server)); err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for {
			n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
			if err != nil {
				break // timeout: resend
			}
			resp := &stun.Message{Raw: append([]byte(nil), c.buf[:n]...)}
			if resp.Decode() != nil || resp.TransactionID != req.TransactionID {
				continue
			}
			if resp.Type.Class == stun.ClassSuccessResponse {
				return resp, nil
			}
			var ec stun.ErrorCodeAttribute
			ec.GetFrom(resp)
			if (ec.Code == stun.CodeUnauthorized || ec.Code == stun.CodeStaleNonce) && authRetries < 3 {
				authRetries++
				var nonce stun.Nonce
				var realm stun.Realm
				if nonce.GetFrom(resp) == nil {
					c.nonce = nonce
				}
				if realm.GetFrom(resp) == nil {
					c.realm = realm
				}
				break // resend with credentials
			}
			return nil, fmt.Errorf("TURN %v: error %d %s", method, ec.Code, ec.Reason)
		}
	}
	return nil, fmt.Errorf("TURN %v to %v: no answer within %v", method, c.server, timeout)
}

// allocate allocates a UDP relay address and returns it.
func (c *turnClient) allocate(timeout time.Duration) (netip.AddrPort, error) {
	resp, err := c.transact(stun.MethodAllocate, timeout, rawAttr(stun.AttrRequestedTransport, []byte{17, 0, 0, 0}))
	if err != nil {
		return netip.AddrPort{}, err
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil {
		return netip.AddrPort{}, fmt.Errorf("TURN allocate: no relayed address: %w", err)
	}
	ip, _ := netip.AddrFromSlice(relayed.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(relayed.Port)), nil
}

// bindChannel binds channel turnChannel to peer (which also installs the
// permission for it).
func (c *turnClient) bindChannel(peer netip.AddrPort, timeout time.Duration) error {
	xp := stun.XORMappedAddress{IP: net.IP(peer.Addr().AsSlice()), Port: int(peer.Port())}
	_, err := c.transact(stun.MethodChannelBind, timeout,
		rawAttr(stun.AttrChannelNumber, []byte{turnChannel >> 8, turnChannel & 0xff, 0, 0}),
		setterFunc(func(m *stun.Message) error { return xp.AddToAs(m, stun.AttrXORPeerAddress) }))
	return err
}

// channelData frames payload as a ChannelData message on turnChannel.
func channelData(payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	b[0], b[1] = turnChannel>>8, turnChannel&0xff
	b[2], b[3] = byte(len(payload)>>8), byte(len(payload))
	copy(b[4:], payload)
	return b
}
