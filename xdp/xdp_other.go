//go:build !linux

package xdp

// kernel is empty: without XDP there is nothing to hold.
type kernel struct{}

func load(Config) (*Program, error)                   { return nil, ErrNotSupported }
func (p *Program) attach(Config) error                { return ErrNotSupported }
func (p *Program) close() error                       { return nil }
func (p *Program) put([CIDLen]byte, *entry) error     { return ErrNotSupported }
func (p *Program) delete([CIDLen]byte) error          { return ErrNotSupported }
func (p *Program) counters() (Counters, error)        { return Counters{}, ErrNotSupported }
func (p *Program) run([]byte) (uint32, []byte, error) { return 0, nil, ErrNotSupported }
func (p *Program) resetBucket(uint32) error           { return ErrNotSupported }
func (p *Program) allowSource([18]byte) error         { return ErrNotSupported }
func (p *Program) removeSource([18]byte) error        { return ErrNotSupported }
