//go:build linux

package xdp

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// generatorClang is the clang that generated the committed objects
// (Debian 12's clang package). Other versions compile the same source to
// different, equally valid, bytes.
const generatorClang = "clang version 14.0.6"

// TestGeneratedFilesCurrent regenerates the program with the go:generate
// line of xdp_linux.go into a temporary directory and compares the result
// with the committed files, so that a change to quicpipe.c cannot land
// without its objects. It needs generatorClang and llvm-strip (Debian 12:
// clang, llvm).
func TestGeneratedFilesCurrent(t *testing.T) {
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("xdp: %s is not installed, cannot regenerate the program", tool)
		}
	}
	v, _ := exec.Command("clang", "--version").Output()
	if !regexp.MustCompile(regexp.QuoteMeta(generatorClang) + `\b`).Match(v) {
		t.Skipf("xdp: the committed objects come from %s, not %s", generatorClang, bytes.SplitN(v, []byte("\n"), 2)[0])
	}
	src, err := os.ReadFile("xdp_linux.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^//go:generate go tool bpf2go (.*)$`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no go:generate line for bpf2go in xdp_linux.go")
	}
	dir := t.TempDir()
	// The line has one quoted argument, -cflags "...".
	args := []string{"tool", "bpf2go", "-output-dir", dir}
	for i, part := range strings.Split(string(m[1]), `"`) {
		if i%2 == 1 {
			args = append(args, part)
		} else {
			args = append(args, strings.Fields(part)...)
		}
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=xdp")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(files) != 4 {
		t.Fatalf("generated %v, %v; want 4 files", files, err)
	}
	for _, f := range files {
		fresh, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Base(f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s is not what quicpipe.c generates: run go generate ./xdp", filepath.Base(f))
		}
	}
}
