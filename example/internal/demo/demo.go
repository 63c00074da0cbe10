// Package demo holds what the Quicpipe examples share: fixed identities and
// the relay address taken from the environment.
//
// WARNING: THE KEYS IN THIS PACKAGE ARE PUBLIC AND PROVIDE NO SECURITY.
// They are derived from well-known strings printed right here, so anyone can
// compute the private keys and impersonate the relay, the dialer or the
// accepter. They exist only so that the examples run without configuration.
// Real deployments generate each key with quicpipe.GenerateIdentity, keep the
// private key secret and exchange only the public keys.
package demo

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"os"
)

// The demo identities. DO NOT USE THEM IN PRODUCTION: see the package comment.
var (
	RelayKey    = key("quicpipe demo relay key - DO NOT USE IN PRODUCTION")
	DialerKey   = key("quicpipe demo dialer key - DO NOT USE IN PRODUCTION")
	AccepterKey = key("quicpipe demo accepter key - DO NOT USE IN PRODUCTION")
)

func key(phrase string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(phrase))
	return ed25519.NewKeyFromSeed(seed[:])
}

// Public returns the public half of a demo key.
func Public(k ed25519.PrivateKey) ed25519.PublicKey {
	return k.Public().(ed25519.PublicKey)
}

// RelayAddr returns the relay's address from the environment variable QHOST.
func RelayAddr() (string, error) {
	addr := os.Getenv("QHOST")
	if addr == "" {
		return "", errors.New("QHOST must be set to the relay's address, e.g. QHOST=127.0.0.1:4433")
	}
	return addr, nil
}
