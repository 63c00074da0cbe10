//go:build race

package fleet

// labRace: the fleet lab runs under the race detector, slower; it moves
// less data.
const labRace = true
