package quicpipe

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// An identity is an Ed25519 private key. Long-lived identities (a relay's, a
// listener's, a dialer that others allow by key) are kept in files: PEM
// "PRIVATE KEY" blocks holding PKCS#8, readable by their owner only, created
// on first use. Public keys travel as text in EncodeKey's form.

// ErrInsecureIdentity is returned (wrapped) when an identity file can be read
// by other users than its owner.
var ErrInsecureIdentity = errors.New("quicpipe: identity file is readable by others")

// identityPEMType is the PEM block type of an identity file.
const identityPEMType = "PRIVATE KEY"

// LoadIdentity reads an identity file. It refuses a file that is not a
// regular file or that the group or others may read or write (on systems with
// Unix permissions); the error then wraps ErrInsecureIdentity and says how to
// fix it. A missing file gives an error that wraps fs.ErrNotExist.
func LoadIdentity(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("quicpipe: identity %s is not a regular file", path)
	}
	if unixPermissions && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; only its owner may access it (chmod 600 %s)",
			ErrInsecureIdentity, path, fi.Mode().Perm(), path)
	}
	data, err := readLimited(f, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity %s: %w", path, err)
	}
	key, err := ParseIdentity(data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return key, nil
}

// LoadOrCreateIdentity loads the identity file at path, or creates it with a
// new key if it does not exist. A new file has mode 0600; missing directories
// are created with mode 0700. Creation is atomic: concurrent callers all end
// up with the same key, and nobody ever reads a half-written file.
func LoadOrCreateIdentity(path string) (ed25519.PrivateKey, error) {
	key, err := LoadIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("quicpipe: identity directory: %w", err)
	}
	key = GenerateIdentity()
	data, err := MarshalIdentity(key)
	if err != nil {
		return nil, err
	}
	// Write a private temporary file, then link it into place: the link
	// fails if another process created the file meanwhile.
	tmp, err := os.CreateTemp(dir, ".identity-*")
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil && unixPermissions {
		tmp.Close()
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: writing %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadIdentity(path)
		}
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	return key, nil
}

// MarshalIdentity returns the PEM form of an identity file: one "PRIVATE
// KEY" block holding the key in PKCS#8.
func MarshalIdentity(key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("quicpipe: identity must be a %d-byte Ed25519 private key, got %d bytes",
			ed25519.PrivateKeySize, len(key))
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: identityPEMType, Bytes: der}), nil
}

// ParseIdentity parses the PEM form written by MarshalIdentity.
func ParseIdentity(data []byte) (ed25519.PrivateKey, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("quicpipe: identity: no PEM block")
	}
	if block.Type != identityPEMType {
		return nil, fmt.Errorf("quicpipe: identity: PEM block is %q, want %q", block.Type, identityPEMType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("quicpipe: identity: data after the PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: identity: %w", err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("quicpipe: identity: key is %T, want an Ed25519 key", k)
	}
	return key, nil
}

// EncodeKey returns the text form of a public key: 43 characters of
// unpadded URL-safe base64 (RFC 4648 section 5). Mailbox paths use it.
func EncodeKey(pub ed25519.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(pub)
}

// ParseKey parses a public key in EncodeKey's form. It also accepts
// standard base64 (with or without padding) and 64 hex digits.
func ParseKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	var b []byte
	var err error
	switch {
	case len(s) == 2*ed25519.PublicKeySize:
		b, err = hex.DecodeString(s)
	case strings.ContainsAny(s, "+/"):
		b, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	default:
		b, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	}
	if err != nil {
		return nil, fmt.Errorf("quicpipe: bad public key %q: %w", s, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("quicpipe: bad public key %q: %d bytes, want %d", s, len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// readLimited reads all of r, failing if it holds more than max bytes.
func readLimited(r io.Reader, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return data, nil
}
