// Package testbin builds the project's programs for tests that run them as
// real processes.
package testbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

var (
	mu    sync.Mutex
	built = map[string]result{} // by the joined package list
)

type result struct {
	dir string
	err error
}

// Build builds the main packages (import paths) into a temporary directory,
// once per test process, and returns the directory; each binary is named
// after its package's last path element. When the test runs with the race
// detector, so do the binaries. Call RemoveAll from TestMain.
func Build(pkgs ...string) (string, error) {
	key := strings.Join(pkgs, " ")
	mu.Lock()
	defer mu.Unlock()
	if r, ok := built[key]; ok {
		return r.dir, r.err
	}
	dir, err := build(pkgs)
	built[key] = result{dir, err}
	return dir, err
}

func build(pkgs []string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("testbin: cannot build %s: %w", strings.Join(pkgs, " "), err)
	}
	dir, err := os.MkdirTemp("", "quicpipe-bin-")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, pkgs...)
	if out, err := exec.CommandContext(ctx, goBin, args...).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("testbin: go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dir, nil
}

// RemoveAll deletes every directory Build made.
func RemoveAll() {
	mu.Lock()
	defer mu.Unlock()
	for k, r := range built {
		if r.dir != "" {
			os.RemoveAll(r.dir)
		}
		delete(built, k)
	}
}
