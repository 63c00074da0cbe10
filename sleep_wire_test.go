package quicpipe

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// sleepTestKey is a fixed sleep key for the seeds and vectors.
func sleepTestKey(t testing.TB) [sleepKeyLen]byte {
	k, err := deriveSleepKey(bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSleepKeyVector pins the sleep key's derivation (docs/PROTOCOL.md,
// "Sleeping listeners").
func TestSleepKeyVector(t *testing.T) {
	k := sleepTestKey(t)
	const (
		wantKey = "8e9a5c4555355ddbf55e881b4d999b22033b993e58b4bf50191be9011cb9763d"
		wantKA  = "12812222222222222222000000000000000140fe03ddc7c7631e498f541ab2595c26"
	)
	if got := hex.EncodeToString(k[:]); got != wantKey {
		t.Fatalf("sleep key %s, want %s", got, wantKey)
	}
	b := appendSleep(nil, &k, sleepKeepAlive, sleepIDOf(bytes.Repeat([]byte{0x22}, 32)), 1)
	if got := hex.EncodeToString(b); got != wantKA {
		t.Fatalf("keep-alive %s, want %s", got, wantKA)
	}
}

func TestSleepRoundTrip(t *testing.T) {
	k := sleepTestKey(t)
	id := sleepIDOf(bytes.Repeat([]byte{0x22}, 32))
	wake := append(make([]byte, sleepWakeIDLen), 1, 2)
	for _, c := range []struct {
		name string
		typ  byte
		body [][]byte
	}{
		{"keep-alive", sleepKeepAlive, nil},
		{"ack", sleepKeepAliveAck, [][]byte{make([]byte, 8)}},
		{"challenge", sleepChallenge, [][]byte{bytes.Repeat([]byte{9}, sleepNonceLen)}},
		{"response", sleepResponse, [][]byte{bytes.Repeat([]byte{9}, sleepNonceLen)}},
		{"plain wake", sleepWake, [][]byte{make([]byte, sleepWakeHdrLen)}},
		{"wake part", sleepWake, [][]byte{wake, bytes.Repeat([]byte{0xc0}, sleepMaxPart)}},
		{"wake-ack", sleepWakeAck, [][]byte{make([]byte, sleepWakeAckLen)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := appendSleep(nil, &k, c.typ, id, 42, c.body...)
			m, err := parseSleep(b)
			if err != nil {
				t.Fatal(err)
			}
			if m.typ != c.typ || m.id != id || m.counter != 42 || !bytes.Equal(m.body, bytes.Join(c.body, nil)) || !m.verify(&k) {
				t.Fatalf("parsed %+v", m)
			}
			other := k
			other[0] ^= 1
			if m.verify(&other) {
				t.Fatal("verified under another key")
			}
			for i := range b {
				bad := bytes.Clone(b)
				bad[i] ^= 0x40
				if m, err := parseSleep(bad); err == nil && m.verify(&k) {
					t.Fatalf("byte %d flipped: still valid", i)
				}
			}
		})
	}
	// Too large a part does not fit a datagram.
	if _, err := parseSleep(appendSleep(nil, &k, sleepWake, id, 1, wake, make([]byte, sleepMaxPart+1))); err == nil {
		t.Fatal("an oversized wake parsed")
	}
}

// FuzzParseSleep feeds parseSleep arbitrary datagrams: it must never panic,
// and what it accepts must hold together (sizes, wake fields, the MAC's
// span). Seeds in testdata/fuzz/FuzzParseSleep are replayed by go test.
func FuzzParseSleep(f *testing.F) {
	k := sleepTestKey(f)
	id := sleepIDOf(bytes.Repeat([]byte{0x22}, 32))
	f.Add([]byte{})
	f.Add([]byte{sleepMarker})
	f.Add(appendSleep(nil, &k, sleepKeepAlive, id, 1))
	f.Add(appendSleep(nil, &k, sleepChallenge, id, 2, make([]byte, sleepNonceLen)))
	f.Add(appendSleep(nil, &k, sleepWake, id, 3, append(make([]byte, sleepWakeIDLen), 0, 2), []byte{0xc0, 1, 2}))
	f.Add(appendSleep(nil, &k, sleepWakeAck, id, 4, make([]byte, sleepWakeAckLen)))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSleep(b)
		if err != nil {
			return
		}
		if len(b) < sleepOverhead || len(b) > sleepMaxLen || b[0] != sleepMarker {
			t.Fatalf("accepted a datagram of %d bytes", len(b))
		}
		if len(m.signed)+len(m.mac) != len(b) || len(m.mac) != sleepMACLen {
			t.Fatal("MAC span wrong")
		}
		if m.typ == sleepWake {
			_, idx, count, part := wakeBody(m.body)
			if count > sleepMaxParts || (count > 0 && idx >= count) || len(part) > sleepMaxPart {
				t.Fatalf("wake part %d of %d, %d bytes", idx, count, len(part))
			}
		}
		// Re-signing the same fields gives a datagram that parses the same.
		again := appendSleep(nil, &k, m.typ, m.id, m.counter, m.body)
		m2, err := parseSleep(again)
		if err != nil || !m2.verify(&k) || !bytes.Equal(m2.signed, m.signed) {
			t.Fatalf("re-signed datagram: %v", err)
		}
	})
}
