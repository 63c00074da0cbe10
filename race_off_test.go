//go:build !race

package quicpipe

const raceEnabled = false
