//go:build race

package forward

// raceEnabled: the race detector makes sync.Pool drop buffers at random.
const raceEnabled = true
