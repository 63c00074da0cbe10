package forward

import "testing"

func TestRelayCIDGenerator(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		c, err := RelayCIDGenerator{}.GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		if c.Len() != CIDLen || !IsRelayCID(c.Bytes()) {
			t.Fatalf("relay CID %x: want %d bytes with the high bit set", c.Bytes(), CIDLen)
		}
		if seen[string(c.Bytes())] {
			t.Fatalf("relay CID %x repeated", c.Bytes())
		}
		seen[string(c.Bytes())] = true
	}
}
