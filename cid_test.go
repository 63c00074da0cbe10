package quicpipe

import (
	"bufio"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// TestCIDVectors checks DeriveCID against the test vectors published in
// docs/PROTOCOL.md, so that the code and the specification cannot drift.
func TestCIDVectors(t *testing.T) {
	f, err := os.Open("docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cols := strings.Split(strings.Trim(line, "| "), "|")
		if len(cols) != 3 {
			t.Fatalf("malformed vector row %q", line)
		}
		key, err1 := hex.DecodeString(strings.Trim(cols[0], " `"))
		i, err2 := strconv.ParseUint(strings.TrimSpace(cols[1]), 10, 32)
		want := strings.Trim(cols[2], " `")
		if err1 != nil || err2 != nil {
			t.Fatalf("malformed vector row %q", line)
		}
		got, err := DeriveCID(key, uint32(i))
		if err != nil {
			t.Fatalf("DeriveCID(%x, %d): %v", key, i, err)
		}
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("DeriveCID(%x, %d) = %x, want %s", key, i, got, want)
		}
		n++
	}
	if n < 10 {
		t.Fatalf("found %d vectors in docs/PROTOCOL.md, want at least 10", n)
	}
}

func TestDeriveCIDErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		i    uint32
	}{
		{"key too short", make([]byte, MinCIDKeyLen-1), 1},
		{"key too long", make([]byte, MaxCIDKeyLen+1), 1},
		{"nil key", nil, 1},
		{"index zero", make([]byte, 32), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DeriveCID(tc.key, tc.i); err == nil {
				t.Fatalf("DeriveCID succeeded, want an error")
			}
		})
	}
	if _, err := newCIDGenerator(make([]byte, 15)); err == nil {
		t.Fatal("NewCIDGenerator accepted a 15-byte key")
	}
}

func TestCIDGenerator(t *testing.T) {
	key := newCIDKey()
	g, err := newCIDGenerator(key)
	if err != nil {
		t.Fatal(err)
	}
	if g.ConnectionIDLen() != CIDLen {
		t.Fatalf("ConnectionIDLen = %d, want %d", g.ConnectionIDLen(), CIDLen)
	}
	for i := uint32(1); i <= 100; i++ {
		c, err := g.GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := DeriveCID(key, i)
		if string(c.Bytes()) != string(want[:]) {
			t.Fatalf("CID %d = %x, want %x", i, c.Bytes(), want)
		}
		if forward.IsRelayCID(c.Bytes()) {
			t.Fatalf("peer CID %x has the relay bit set", c.Bytes())
		}
	}
	if g.Issued() != 100 {
		t.Fatalf("Issued = %d, want 100", g.Issued())
	}
	key[0] ^= 1 // the generator keeps its own copy
	c, _ := g.GenerateConnectionID()
	key[0] ^= 1
	if want, _ := DeriveCID(key, 101); string(c.Bytes()) != string(want[:]) {
		t.Fatal("generator changed when the caller's key slice changed")
	}
}

func BenchmarkDeriveCID(b *testing.B) {
	key := newCIDKey()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		DeriveCID(key, uint32(i+1))
	}
}

func BenchmarkDeriveRange1024(b *testing.B) {
	key := newCIDKey()
	dst := make([]CID, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = deriveRange(dst[:0], key, 1, 1024)
	}
}
