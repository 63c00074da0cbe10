//go:build !quicpipe_noupnp

package portmap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// Limits of what a UPnP gateway may send.
const maxDescription = 256 << 10 // device description and SOAP answers

// upnpMapper speaks UPnP IGD: SSDP discovery (unicast to the gateway),
// the device description, then WANIPConnection (or WANPPPConnection) SOAP
// actions, through goupnp's generated clients.
type upnpMapper struct {
	c     *Client
	local netip.Addr
	loc   *url.URL // from discovery
	http  *http.Client
	svc   upnpService
	ext   uint16
}

// upnpService is the part of goupnp's WAN connection clients used here.
type upnpService interface {
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, inPort uint16, client string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) error
}

func newUPnPMapper(c *Client, local netip.Addr) *upnpMapper {
	tr := &http.Transport{
		DialContext:            c.cfg.DialContext,
		Proxy:                  nil,
		DisableKeepAlives:      true,
		ResponseHeaderTimeout:  c.cfg.MapTimeout,
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &upnpMapper{
		c:     c,
		local: local,
		http:  &http.Client{Transport: limitedTransport{tr}, Timeout: c.cfg.MapTimeout},
	}
}

// limitedTransport bounds the bodies a gateway returns.
type limitedTransport struct{ rt http.RoundTripper }

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxDescription), resp.Body}
	return resp, nil
}

// searchTargets are the SSDP search targets sent, newest first.
var searchTargets = [...]string{
	"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
	"urn:schemas-upnp-org:device:InternetGatewayDevice:1",
}

// ssdpGroup is SSDP's IPv4 multicast group.
var ssdpGroup = netip.MustParseAddr("239.255.255.250")

// probe sends SSDP searches to the gateway's port 1900 (UPnP 1.1 devices
// answer unicast searches) and to SSDP's multicast group (older ones
// listen there only), and waits for an answer from the gateway's address
// with a location on the gateway. Answers from other hosts are ignored.
func (m *upnpMapper) probe(ctx context.Context) error {
	pc, err := m.c.cfg.ListenPacket(ctx, "udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), 0).String())
	if err != nil {
		return err
	}
	defer pc.Close()
	gw := netip.AddrPortFrom(m.c.cfg.Gateway, m.c.cfg.ssdpPort)
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	for _, to := range []netip.AddrPort{gw, netip.AddrPortFrom(ssdpGroup, m.c.cfg.ssdpPort)} {
		for _, st := range searchTargets {
			req := fmt.Appendf(nil, "M-SEARCH * HTTP/1.1\r\nHOST: %s\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: %s\r\n\r\n", to, st)
			if _, err := pc.WriteTo(req, net.UDPAddrFromAddrPort(to)); err != nil && to == gw {
				return fmt.Errorf("sending SSDP search: %w", err)
			}
		}
	}
	buf := make([]byte, 4096)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("no SSDP answer: %w", ctx.Err())
			}
			return fmt.Errorf("SSDP: %w", err)
		}
		if ua, ok := from.(*net.UDPAddr); !ok || ua.AddrPort().Addr().Unmap() != m.c.cfg.Gateway {
			continue
		}
		loc, err := m.parseSSDP(buf[:n])
		if err != nil {
			m.c.bad.Add(1)
			m.c.log.Debug("unusable SSDP answer", "err", err)
			continue
		}
		m.loc = loc
		return nil
	}
}

// parseSSDP returns the location of an SSDP answer, which must be an
// http URL on the gateway's address: a LAN host cannot send the Client
// elsewhere.
func (m *upnpMapper) parseSSDP(b []byte) (*url.URL, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("SSDP status %q", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return nil, err
	}
	host, err := netip.ParseAddr(loc.Hostname())
	if loc.Scheme != "http" || err != nil || host.Unmap() != m.c.cfg.Gateway {
		return nil, fmt.Errorf("location %q is not an http URL on the gateway", loc)
	}
	return loc, nil
}

// discover fetches the device description and finds its WAN connection
// service.
func (m *upnpMapper) discover(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.loc.String(), nil)
	if err != nil {
		return err
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return fmt.Errorf("fetching the device description: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching the device description %s: %s", m.loc, resp.Status)
	}
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(resp.Body)
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	if err := dec.Decode(root); err != nil {
		m.c.bad.Add(1)
		return fmt.Errorf("decoding the device description: %w", err)
	}
	base := m.loc
	if root.URLBaseStr != "" {
		if base, err = url.Parse(root.URLBaseStr); err != nil {
			m.c.bad.Add(1)
			return fmt.Errorf("device description: URLBase: %w", err)
		}
	}
	root.SetURLBase(base)
	var found []upnpService
	var clients []*goupnp.ServiceClient
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, m.loc); err == nil {
		for _, c := range cs {
			found, clients = append(found, c), append(clients, &c.ServiceClient)
		}
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, m.loc); err == nil {
		for _, c := range cs {
			found, clients = append(found, c), append(clients, &c.ServiceClient)
		}
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, m.loc); err == nil {
		for _, c := range cs {
			found, clients = append(found, c), append(clients, &c.ServiceClient)
		}
	}
	for i, c := range clients {
		u := c.SOAPClient.EndpointURL
		host, err := netip.ParseAddr(u.Hostname())
		if u.Scheme != "http" || err != nil || host.Unmap() != m.c.cfg.Gateway {
			m.c.bad.Add(1)
			continue
		}
		c.SOAPClient = &soap.SOAPClient{EndpointURL: u, HTTPClient: *m.http}
		m.svc = found[i]
		return nil
	}
	m.c.bad.Add(1)
	return errors.New("the gateway's device description has no usable WAN connection service")
}

func (m *upnpMapper) mapPort(ctx context.Context, life time.Duration) (netip.AddrPort, time.Duration, error) {
	if m.svc == nil {
		if err := m.discover(ctx); err != nil {
			return netip.AddrPort{}, 0, err
		}
	}
	s, err := m.svc.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("GetExternalIPAddress: %w", err)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Unmap().Is4() || !ip.IsGlobalUnicast() {
		m.c.bad.Add(1)
		return netip.AddrPort{}, 0, fmt.Errorf("GetExternalIPAddress: unusable address %q", s)
	}
	ip = ip.Unmap()
	in := m.c.cfg.InternalPort
	lease := lifetimeSeconds(life, 604800) // IGD2's maximum: a week
	ports := []uint16{m.ext, in, uint16(1024 + rand.N(65535-1024))}
	if m.ext == 0 {
		ports = ports[1:]
	}
	var errs []error
	for _, ext := range ports {
		err := m.svc.AddPortMappingCtx(ctx, "", ext, "UDP", in, m.local.String(), true, "quicpipe", lease)
		if isOnlyPermanent(err) {
			// IGD1 gateways that only know permanent leases (error 725):
			// the Client removes the mapping on Close and renews it all
			// the same.
			lease = 0
			err = m.svc.AddPortMappingCtx(ctx, "", ext, "UDP", in, m.local.String(), true, "quicpipe", 0)
		}
		if err == nil {
			m.ext = ext
			return netip.AddrPortFrom(ip, ext), time.Duration(lease) * time.Second, nil
		}
		errs = append(errs, fmt.Errorf("AddPortMapping %d: %w", ext, err))
		if ctx.Err() != nil {
			break
		}
	}
	return netip.AddrPort{}, 0, errors.Join(errs...)
}

func isOnlyPermanent(err error) bool {
	var f *soap.SOAPFaultError
	if !errors.As(err, &f) {
		return false
	}
	return f.Detail.UPnPError.Errorcode == 725
}

func (m *upnpMapper) unmap(ctx context.Context) error {
	if m.svc == nil || m.ext == 0 {
		return nil
	}
	return m.svc.DeletePortMappingCtx(ctx, "", m.ext, "UDP")
}

func (m *upnpMapper) close() {}
