package testbin

import (
	"bytes"
	"os"
	"strings"
	"sync"
)

// Env returns the test's environment for a program run by Build's binaries:
// os.Environ without the variables that start with any of drop, and with
// GORACE set so that race-enabled binaries skip the race detector's
// one-second sleep at exit (a race still makes them exit with status 66).
// Binaries built without the race detector ignore GORACE.
func Env(drop ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GORACE=") {
			continue
		}
		for _, p := range drop {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return append(env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// Buffer is a bytes.Buffer safe for concurrent use, for a process's output
// that a test reads while the process writes it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
