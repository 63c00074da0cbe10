package main

import (
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
	"rsc.io/qr"
)

// parseQR turns renderQR's output back into modules (true = dark),
// including the quiet zone.
func parseQR(t *testing.T, s string) [][]bool {
	t.Helper()
	ansi := regexp.MustCompile("\x1b\\[[0-9;]*m")
	var rows [][]bool
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if !strings.HasPrefix(line, "\x1b[30;107m") || !strings.HasSuffix(line, "\x1b[0m") {
			t.Fatalf("line %q is not dark on light", line)
		}
		line = ansi.ReplaceAllString(line, "")
		var top, bottom []bool
		for _, r := range line {
			switch r {
			case '█':
				top, bottom = append(top, true), append(bottom, true)
			case '▀':
				top, bottom = append(top, true), append(bottom, false)
			case '▄':
				top, bottom = append(top, false), append(bottom, true)
			case ' ':
				top, bottom = append(top, false), append(bottom, false)
			default:
				t.Fatalf("unexpected rune %q", r)
			}
		}
		rows = append(rows, top, bottom)
	}
	return rows
}

// TestRenderQR: the half blocks show exactly the modules of the upper-case
// ticket's QR code, inside a light quiet zone.
func TestRenderQR(t *testing.T) {
	ticket := "qp1aeaqcaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7ibaueq2eivdeoscjjjfuytkoj5iadqaaaiarcunrcwbp2"
	s, err := renderQR(ticket)
	if err != nil {
		t.Fatal(err)
	}
	code, err := qr.Encode(strings.ToUpper(ticket), qr.M)
	if err != nil {
		t.Fatal(err)
	}
	rows := parseQR(t, s)
	n := code.Size + 2*qrQuiet
	if len(rows) < n || len(rows) > n+1 || len(rows[0]) != n {
		t.Fatalf("rendered %d×%d modules, want %d×%d", len(rows[0]), len(rows), n, n)
	}
	for y := range rows {
		for x := range rows[y] {
			want := false
			if cx, cy := x-qrQuiet, y-qrQuiet; cx >= 0 && cy >= 0 && cx < code.Size && cy < code.Size {
				want = code.Black(cx, cy)
			}
			if rows[y][x] != want {
				t.Fatalf("module (%d,%d) is %v, want %v", x, y, rows[y][x], want)
			}
		}
	}
	// Upper case keeps the code small: alphanumeric mode, version 7 at
	// level M for a 152-character ticket.
	if code.Size > 45 {
		t.Errorf("QR code is %d modules wide; upper case should fit in 45", code.Size)
	}
}

// TestQRScans decodes the rendered code with zbarimg, when installed
// (Debian's zbar-tools): the terminal rendering must scan back to the
// ticket.
func TestQRScans(t *testing.T) {
	zbar, err := exec.LookPath("zbarimg")
	if err != nil {
		t.Skip("zbarimg not installed")
	}
	ticket := "qp1aeaacaqdaqcqmbyibefawdanbyhraeiscmkbkfqxdamrugy4dupb6ibbeirsijjge4ucskrlfqws4lzqgezdgnbvgy3tqoj2hm6d2pr7iabrc4tfnrqxsltfpbqw24dmmuxgg33ncfi4qji37y"
	s, err := renderQR(ticket)
	if err != nil {
		t.Fatal(err)
	}
	rows := parseQR(t, s)
	const scale = 4
	img := image.NewGray(image.Rect(0, 0, len(rows[0])*scale, len(rows)*scale))
	for y := range img.Bounds().Dy() {
		for x := range img.Bounds().Dx() {
			c := color.Gray{255}
			if rows[y/scale][x/scale] {
				c = color.Gray{0}
			}
			img.SetGray(x, y, c)
		}
	}
	path := filepath.Join(t.TempDir(), "ticket.png")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command(zbar, "-q", "--raw", path).Output()
	if err != nil {
		t.Fatalf("zbarimg: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != strings.ToUpper(ticket) {
		t.Fatalf("zbarimg read %q", got)
	}
	if _, err := quicpipe.ParseTicket(string(out)); err != nil {
		t.Fatalf("the scanned ticket does not parse: %v", err)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[float64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		10 << 20: "10.0 MiB", 3 << 30: "3.0 GiB", 5 << 40: "5.0 TiB", 5 << 50: "5120.0 TiB",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%v) = %q, want %q", n, got, want)
		}
	}
}

// TestProgress: progress appears only when enabled and only after the
// delay, on one line rewritten in place, which a summary replaces at the
// finish; a short transfer shows only the summary. Piped output on the same
// terminal clears the line first and keeps it off a line it has begun.
func TestProgress(t *testing.T) {
	var quiet syncBuffer
	p := newProgress(&quiet, false, false)
	p.start()
	p.sent.Add(100)
	p.finish()
	if quiet.String() != "" {
		t.Errorf("disabled progress wrote %q", quiet.String())
	}

	var short syncBuffer
	p = newProgress(&short, true, false)
	p.start()
	time.Sleep(600 * time.Millisecond)
	p.finish()
	if short.String() != "" {
		t.Errorf("a transfer of nothing shorter than the delay showed progress: %q", short.String())
	}

	var long syncBuffer
	p = newProgress(&long, true, true)
	p.delay = 500 * time.Millisecond
	p.start()
	p.sent.Add(3 << 20)
	p.received.Add(512)
	time.Sleep(p.delay + 700*time.Millisecond)
	out := p.writer(&long)
	io.WriteString(out, "partial")
	time.Sleep(700 * time.Millisecond)
	p.finish()
	got := long.String()
	if !strings.HasPrefix(got, "\rquicpipe: sent 3.0 MiB (") || !strings.Contains(got, "received 512 B (") ||
		!strings.Contains(got, "\x1b[K\r\x1b[Kpartial\nquicpipe: sent 3.0 MiB, received 512 B\n") ||
		strings.Count(got, "\n") != 2 {
		t.Errorf("progress output %q", got)
	}
}

func TestShowProgress(t *testing.T) {
	for _, tc := range []struct{ in, out, errTerm, want bool }{
		{true, true, true, false},  // a chat
		{false, true, true, true},  // sending a file
		{true, false, true, true},  // receiving a file
		{false, false, true, true}, // both
		{false, false, false, false},
	} {
		if got := showProgress(tc.in, tc.out, tc.errTerm); got != tc.want {
			t.Errorf("showProgress(stdin terminal %v, stdout terminal %v, stderr terminal %v) = %v", tc.in, tc.out, tc.errTerm, got)
		}
	}
}

// TestStatusWriter: a message written to standard error while the progress
// line is drawn clears that line first instead of running into it.
func TestStatusWriter(t *testing.T) {
	var buf syncBuffer
	sw := &statusWriter{w: &buf}
	p := newProgress(sw, true, false)
	p.sw.mu.Lock()
	p.sw.drawLocked("quicpipe: sent 1 B (1 B/s), received 0 B (0 B/s)")
	p.sw.mu.Unlock()
	io.WriteString(sw, "quicpipe: refused another dialer\n")
	if got, want := buf.String(), "\rquicpipe: sent 1 B (1 B/s), received 0 B (0 B/s)\x1b[K\r\x1b[Kquicpipe: refused another dialer\n"; got != want {
		t.Errorf("terminal got %q, want %q", got, want)
	}
}
