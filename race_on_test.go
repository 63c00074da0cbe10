//go:build race

package quicpipe

const raceEnabled = true
