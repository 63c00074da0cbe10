package quicpipe

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestIdentityFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "config", "quicpipe")
	path := filepath.Join(dir, "identity.key")
	if _, err := LoadIdentity(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadIdentity of a missing file: %v, want ErrNotExist", err)
	}
	key, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if unixPermissions {
		for p, want := range map[string]fs.FileMode{path: 0o600, dir: 0o700, filepath.Dir(dir): 0o700} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s has mode %04o, want %04o", p, fi.Mode().Perm(), want)
			}
		}
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("identity file is not a PEM PRIVATE KEY:\n%s", data)
	}
	again, err := LoadOrCreateIdentity(path)
	if err != nil || !again.Equal(key) {
		t.Fatalf("second LoadOrCreateIdentity: %v, same key %v", err, again.Equal(key))
	}
	loaded, err := LoadIdentity(path)
	if err != nil || !loaded.Equal(key) {
		t.Fatalf("LoadIdentity: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the identity file", len(entries))
	}
}

func TestIdentityInsecureFile(t *testing.T) {
	if !unixPermissions {
		t.Skip("no Unix permissions")
	}
	path := filepath.Join(t.TempDir(), "id.key")
	if _, err := LoadOrCreateIdentity(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []fs.FileMode{0o640, 0o604, 0o620} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		for name, load := range map[string]func(string) (any, error){
			"LoadIdentity":         func(p string) (any, error) { return LoadIdentity(p) },
			"LoadOrCreateIdentity": func(p string) (any, error) { return LoadOrCreateIdentity(p) },
		} {
			_, err := load(path)
			if !errors.Is(err, ErrInsecureIdentity) || !strings.Contains(err.Error(), "chmod 600 "+path) {
				t.Errorf("%s with mode %04o: %v, want ErrInsecureIdentity with a chmod hint", name, mode, err)
			}
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(path); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
	if _, err := LoadIdentity(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
}

// TestIdentityConcurrentCreate: processes racing to create the file end up
// with one key.
func TestIdentityConcurrentCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "id.key")
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateIdentity(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for i := range keys {
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("caller %d got another key", i)
		}
	}
}

func TestIdentityBadContent(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	good, _ := MarshalIdentity(GenerateIdentity())
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no PEM block"},
		{"garbage", []byte("hello"), "no PEM block"},
		{"type", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1}}), `"RSA PRIVATE KEY"`},
		{"der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "asn1"},
		{"ecdsa", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), "want an Ed25519 key"},
		{"two-blocks", append(append([]byte{}, good...), good...), "data after the PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "id.key")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadIdentity(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want one containing %q and the path", err, tc.want)
			}
			// A broken file is never replaced by a new key.
			if _, err := LoadOrCreateIdentity(path); err == nil {
				t.Fatal("LoadOrCreateIdentity replaced a broken file")
			}
		})
	}
	if _, err := MarshalIdentity(make([]byte, 10)); err == nil {
		t.Error("MarshalIdentity of a short key succeeded")
	}
}

func TestParseKey(t *testing.T) {
	k := pub(GenerateIdentity())
	for _, s := range []string{
		EncodeKey(k),
		" " + EncodeKey(k) + "\n",
		hex.EncodeToString(k),
		base64.StdEncoding.EncodeToString(k),
		base64.RawStdEncoding.EncodeToString(k),
		base64.URLEncoding.EncodeToString(k),
	} {
		got, err := ParseKey(s)
		if err != nil || !got.Equal(k) {
			t.Errorf("ParseKey(%q): %v", s, err)
		}
	}
	if len(EncodeKey(k)) != 43 {
		t.Errorf("EncodeKey is %d characters, want 43", len(EncodeKey(k)))
	}
	for _, s := range []string{"", "abc", EncodeKey(k)[:42], EncodeKey(k) + "AA", "zz" + hex.EncodeToString(k)[2:]} {
		if _, err := ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) succeeded", s)
		}
	}
}
