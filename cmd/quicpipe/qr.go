package main

import (
	"strings"

	"rsc.io/qr"
)

// qrQuiet is the light border around the code, in modules. The standard asks
// for 4; 2 scans fine on a screen and saves two lines of terminal.
const qrQuiet = 2

// renderQR renders text as a QR code for a terminal: two modules per
// character cell with half blocks, dark on light whatever the terminal's
// colors (ANSI black on bright white). Tickets are encoded in upper case, so
// that the code uses the compact alphanumeric mode; ParseTicket accepts it.
func renderQR(text string) (string, error) {
	code, err := qr.Encode(strings.ToUpper(text), qr.M)
	if err != nil {
		return "", err
	}
	dark := func(x, y int) bool {
		return x >= 0 && y >= 0 && x < code.Size && y < code.Size && code.Black(x, y)
	}
	var b strings.Builder
	for y := -qrQuiet; y < code.Size+qrQuiet; y += 2 {
		b.WriteString("\x1b[30;107m")
		for x := -qrQuiet; x < code.Size+qrQuiet; x++ {
			top, bottom := dark(x, y), y+1 < code.Size+qrQuiet && dark(x, y+1)
			switch {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteByte(' ')
			}
		}
		b.WriteString("\x1b[0m\n")
	}
	return b.String(), nil
}
