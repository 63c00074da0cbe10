package quicpipe

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Trust in Quicpipe rests on pinned Ed25519 public keys, not on certificate
// authorities. Each endpoint presents a self-signed certificate for its key.
// The verifying side turns each pinned key into a synthetic trust anchor: a CA
// certificate that carries the pinned key and a name derived from it. The
// standard crypto/x509 verifier then accepts exactly the certificates signed by
// a pinned key, and a VerifyConnection check requires the leaf itself to carry
// it. No InsecureSkipVerify anywhere. docs/decisions/0002-pinned-keys.md
// explains the choice.

// ServerName is the TLS server name every Quicpipe endpoint presents and
// expects. Identity comes from the pinned key, not from the name.
const ServerName = "quicpipe"

// PeerALPN is the ALPN protocol of a peer connection.
const PeerALPN = "quicpipe/1"

var (
	certNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	certNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// ErrUntrustedKey is returned (wrapped) when a TLS peer presents a key that
// is not pinned.
var ErrUntrustedKey = errors.New("quicpipe: peer key is not trusted")

// GenerateIdentity returns a new Ed25519 private key.
func GenerateIdentity() ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic("quicpipe: crypto/rand failed: " + err.Error()) // crypto/rand never fails on supported platforms
	}
	return priv
}

// keyName is the X.509 name used for a key's certificate and trust anchor.
func keyName(pub ed25519.PublicKey) pkix.Name {
	return pkix.Name{CommonName: "quicpipe " + hex.EncodeToString(pub)}
}

func keyID(pub ed25519.PublicKey) []byte {
	sum := sha256.Sum256(pub)
	return sum[:20]
}

// certificate returns a self-signed TLS certificate for an Ed25519 identity.
// It is valid for ServerName and for both server and client authentication.
func certificate(identity ed25519.PrivateKey) (tls.Certificate, error) {
	if len(identity) != ed25519.PrivateKeySize {
		return tls.Certificate{}, fmt.Errorf("quicpipe: identity must be a %d-byte Ed25519 private key, got %d bytes", ed25519.PrivateKeySize, len(identity))
	}
	pub := identity.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               keyName(pub),
		Issuer:                keyName(pub),
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		DNSNames:              []string{ServerName},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		SubjectKeyId:          keyID(pub),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, identity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("quicpipe: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("quicpipe: parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: identity, Leaf: leaf}, nil
}

// anchor returns a trust anchor for a pinned key. crypto/x509 does not check
// the signature of a root, so the anchor is signed with a throwaway key: only
// its public key and name matter.
func anchor(pub ed25519.PublicKey) (*x509.Certificate, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("quicpipe: pinned key must be a %d-byte Ed25519 public key, got %d bytes", ed25519.PublicKeySize, len(pub))
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               keyName(pub),
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
		SubjectKeyId:          keyID(pub),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, GenerateIdentity())
	if err != nil {
		return nil, fmt.Errorf("quicpipe: create trust anchor: %w", err)
	}
	return x509.ParseCertificate(der)
}

func anchorPool(keys []ed25519.PublicKey) (*x509.CertPool, error) {
	if len(keys) == 0 {
		return nil, errors.New("quicpipe: no pinned keys")
	}
	pool := x509.NewCertPool()
	for _, k := range keys {
		a, err := anchor(k)
		if err != nil {
			return nil, err
		}
		pool.AddCert(a)
	}
	return pool, nil
}

// verifyPinned requires the leaf certificate of a verified connection to carry
// one of keys.
func verifyPinned(keys []ed25519.PublicKey) func(tls.ConnectionState) error {
	keys = append([]ed25519.PublicKey(nil), keys...)
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: no certificate presented", ErrUntrustedKey)
		}
		pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
		if !ok {
			return fmt.Errorf("%w: certificate key is not Ed25519", ErrUntrustedKey)
		}
		for _, k := range keys {
			if bytes.Equal(pub, k) {
				return nil
			}
		}
		return fmt.Errorf("%w: %x", ErrUntrustedKey, []byte(pub))
	}
}

// PeerKey returns the Ed25519 public key that authenticated the remote side
// of a TLS connection state, or nil.
func PeerKey(cs tls.ConnectionState) ed25519.PublicKey {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	pub, _ := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	return pub
}

// ClientTLSConfig returns a TLS configuration for dialing a server whose
// Ed25519 key is pinned, presenting identity as client certificate (nil:
// none). alpn is the application protocol, e.g. PeerALPN or "h3".
func ClientTLSConfig(identity ed25519.PrivateKey, server ed25519.PublicKey, alpn string) (*tls.Config, error) {
	pool, err := anchorPool([]ed25519.PublicKey{server})
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          pool,
		ServerName:       ServerName,
		NextProtos:       []string{alpn},
		VerifyConnection: verifyPinned([]ed25519.PublicKey{server}),
	}
	if identity != nil {
		cert, err := certificate(identity)
		if err != nil {
			return nil, err
		}
		// Always present the certificate: crypto/tls would withhold a
		// self-signed one that matches none of the server's CA names.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		}
	}
	return conf, nil
}

// ServerTLSConfig returns a TLS configuration for a server with the given
// identity. If clients is empty, clients are not asked for a certificate (the
// relay's case); otherwise every client must present a certificate for one of
// the pinned keys (an accepter's case), or the handshake fails with an error
// wrapping ErrUntrustedKey.
func ServerTLSConfig(identity ed25519.PrivateKey, clients []ed25519.PublicKey, alpn string) (*tls.Config, error) {
	cert, err := certificate(identity)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpn},
	}
	if len(clients) > 0 {
		for _, k := range clients {
			if len(k) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("quicpipe: pinned key must be a %d-byte Ed25519 public key, got %d bytes", ed25519.PublicKeySize, len(k))
			}
		}
		// The client's certificate is pinned by its key alone: TLS 1.3's
		// CertificateVerify proves that the client holds the private key of
		// the leaf, and VerifyConnection requires that key to be trusted. No
		// chain is needed, so an untrusted client is refused with
		// ErrUntrustedKey naming its key.
		conf.ClientAuth = tls.RequireAnyClientCert
		conf.VerifyConnection = verifyPinned(clients)
	}
	return conf, nil
}
