package quicpipe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// registerBody is RegisterRequest as decoded from JSON, with wide integer
// fields so that out-of-range values get a precise error.
type registerBody struct {
	Key   []byte `json:"key"`
	Num   int64  `json:"num"`
	First int64  `json:"first"`
}

// rejectCounters count refused API requests by the code of their error
// answer; the registration API and the mailbox each have their own.
type rejectCounters map[string]*atomic.Uint64

func newRejectCounters(codes []string) rejectCounters {
	c := make(rejectCounters, len(codes))
	for _, code := range codes {
		c[code] = new(atomic.Uint64)
	}
	return c
}

// snapshot returns the current counts.
func (c rejectCounters) snapshot() map[string]uint64 {
	s := make(map[string]uint64, len(c))
	for code, n := range c {
		s[code] = n.Load()
	}
	return s
}

// fail writes a JSON error answer and counts it.
func (c rejectCounters) fail(w http.ResponseWriter, status int, code, msg string) {
	if n, ok := c[code]; ok {
		n.Add(1)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(ErrorResponse{Error: msg, Code: code})
}

// apiError writes a JSON error answer and counts it.
func (r *Relay) apiError(w http.ResponseWriter, status int, code, msg string) {
	r.stats.rejected.fail(w, status, code, msg)
}

func (r *Relay) handleRegister(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost && req.Method != http.MethodDelete {
		w.Header().Set("Allow", "POST, DELETE")
		r.apiError(w, http.StatusMethodNotAllowed, "bad_method", "method "+req.Method+" not allowed")
		return
	}
	if r.cfg.Authorizer != nil {
		op := OpRegister
		if req.Method == http.MethodDelete {
			op = OpUnregister
		}
		if err := r.cfg.Authorizer.Authorize(req, op); err != nil {
			r.apiError(w, http.StatusUnauthorized, "unauthorized", err.Error())
			return
		}
	}
	var body registerBody
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, r.cfg.MaxBodyBytes))
	tooLarge := func(err error) bool {
		if _, ok := errors.AsType[*http.MaxBytesError](err); !ok {
			return false
		}
		r.apiError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body exceeds %d bytes", r.cfg.MaxBodyBytes))
		return true
	}
	if err := dec.Decode(&body); err != nil {
		if !tooLarge(err) {
			r.apiError(w, http.StatusBadRequest, "bad_json", "malformed JSON body: "+err.Error())
		}
		return
	}
	// The limit may be hit only after the object, while looking for its end.
	if _, err := dec.Token(); err != io.EOF {
		if !tooLarge(err) {
			r.apiError(w, http.StatusBadRequest, "bad_json", "malformed JSON body: trailing data after the object")
		}
		return
	}
	if n := len(body.Key); n < MinCIDKeyLen || n > r.cfg.MaxKeyLen {
		r.apiError(w, http.StatusBadRequest, "key_length",
			fmt.Sprintf("key is %d bytes; it must be %d to %d bytes", n, MinCIDKeyLen, r.cfg.MaxKeyLen))
		return
	}
	if req.Method == http.MethodDelete {
		r.unregister(body.Key)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	first := body.First
	if first == 0 {
		first = 1
	}
	maxNum := int64(r.cfg.MaxCIDsPerRegistration)
	// Written so as not to overflow: first may be as large as int64 allows.
	if body.Num < 1 || body.Num > maxNum || first < 1 || first > int64(^uint32(0))-body.Num+1 {
		r.apiError(w, http.StatusBadRequest, "num_range",
			fmt.Sprintf("num must be 1 to %d and first+num-1 at most 2^32-1 (got first %d, num %d)", maxNum, first, body.Num))
		return
	}
	qc, _ := req.Context().Value(quicConnKey{}).(*quic.Conn)
	var observed *net.UDPAddr
	if qc != nil {
		observed, _ = qc.RemoteAddr().(*net.UDPAddr)
	}
	if observed == nil {
		r.apiError(w, http.StatusInternalServerError, "no_address", "cannot tell the address of this connection")
		return
	}
	reg, status, code, err := r.register(body.Key, uint32(first), uint32(body.Num), observed, qc)
	if err != nil {
		r.apiError(w, status, code, err.Error())
		return
	}
	r.stats.registered.Add(1)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(reg)
}

// register creates or refreshes the registration of key with the window
// [first, first+num) forwarding to addr.
// qc is the HTTP/3 connection that carried the request (nil in tests: the
// relay's bound address then counts as where the peer reached it).
func (r *Relay) register(key []byte, first, num uint32, addr *net.UDPAddr, qc *quic.Conn) (RegisterResponse, int, string, error) {
	ap := netAddrPort(addr.AddrPort())
	local := netAddrPort(r.Addr().AddrPort())
	if qc != nil {
		if la, ok := qc.LocalAddr().(*net.UDPAddr); ok {
			local = netAddrPort(la.AddrPort())
		}
	}
	d, err := r.newDest(ap, local)
	if err != nil {
		return RegisterResponse{}, http.StatusForbidden, "target", err
	}
	ip := ap.Addr().String()
	ttl := r.cfg.RegistrationTTL
	expires := time.Now().Add(ttl)

	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.closing {
		return RegisterResponse{}, http.StatusServiceUnavailable, "closing", errors.New("relay is shutting down")
	}
	reg := r.regs[string(key)]
	if reg == nil || reg.ip != ip {
		if r.perIP[ip] >= r.cfg.MaxRegistrationsPerSource {
			return RegisterResponse{}, http.StatusTooManyRequests, "limit_source",
				fmt.Errorf("too many registrations from %s (limit %d)", ip, r.cfg.MaxRegistrationsPerSource)
		}
	}
	if reg == nil && len(r.regs) >= r.cfg.MaxRegistrations {
		return RegisterResponse{}, http.StatusServiceUnavailable, "limit_total",
			fmt.Errorf("relay holds the maximum of %d registrations", r.cfg.MaxRegistrations)
	}
	var oldFirst, oldEnd uint64
	if reg != nil {
		oldFirst, oldEnd = uint64(reg.first), uint64(reg.first)+uint64(reg.num)
	}
	newFirst, newEnd := uint64(first), uint64(first)+uint64(num)
	added := int64(num) - int64(oldEnd-oldFirst)
	if added > 0 && r.table.size.Load()+added > int64(r.cfg.MaxCIDs) {
		return RegisterResponse{}, http.StatusServiceUnavailable, "limit_cids",
			fmt.Errorf("relay holds the maximum of %d CIDs", r.cfg.MaxCIDs)
	}
	if reg == nil {
		reg = &registration{key: string(key)}
		r.regs[reg.key] = reg
	}
	r.moveIPLocked(reg, ip)
	reg.local, reg.conn = local, qc
	old := reg.dest.Swap(d)
	if old != nil && old.ap != d.ap {
		// The kept part of the window forwards to the new address too.
		r.xdpPutRange(reg, max(oldFirst, newFirst), min(oldEnd, newEnd))
		r.stats.rebinds.Add(1) // a peer that saw its NAT rebind refreshes at once
	}
	reg.expires.Store(expires.UnixNano())
	// Move the window: remove what falls out, derive and add what is new.
	if oldEnd > oldFirst {
		r.removeRange(reg, oldFirst, min(oldEnd, newFirst))
		r.removeRange(reg, max(oldFirst, newEnd), oldEnd)
		r.addRange(reg, newFirst, min(newEnd, oldFirst))
		r.addRange(reg, max(newFirst, oldEnd), newEnd)
	} else {
		r.addRange(reg, newFirst, newEnd)
	}
	reg.first, reg.num = first, num
	return RegisterResponse{
		Addr:    ap.String(),
		First:   first,
		Num:     num,
		Expires: expires.UTC().Truncate(time.Millisecond),
		TTL:     int(ttl / time.Second),
	}, 0, "", nil
}

// netAddrPort normalizes an address as the relay stores it: IPv4-mapped IPv6
// addresses become IPv4.
func netAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// newDest checks a forwarding target and encodes it for the socket.
func (r *Relay) newDest(ap netip.AddrPort, local netip.AddrPort) (*dest, error) {
	if err := checkTarget(ap, local, r.cfg.AllowPrivateTargets); err != nil {
		return nil, err
	}
	raw, ok := r.rconn.io.encode(ap)
	if !ok {
		return nil, fmt.Errorf("%w: the relay socket cannot send to %s", errTarget, ap)
	}
	return &dest{addr: net.UDPAddrFromAddrPort(ap), ap: ap, raw: raw}, nil
}

// moveIPLocked accounts reg under a new source IP. r.regMu must be held.
func (r *Relay) moveIPLocked(reg *registration, ip string) {
	if reg.ip == ip {
		return
	}
	if reg.ip != "" {
		r.perIP[reg.ip]--
		if r.perIP[reg.ip] <= 0 {
			delete(r.perIP, reg.ip)
		}
	}
	reg.ip = ip
	r.perIP[ip]++
}

func (r *Relay) addRange(reg *registration, from, to uint64) {
	if from >= to {
		return
	}
	cids, _ := deriveRange(nil, []byte(reg.key), uint32(from), int(to-from))
	for _, c := range cids {
		r.table.insert(c, reg)
	}
	r.xdpPut(cids, reg.dest.Load())
}

func (r *Relay) removeRange(reg *registration, from, to uint64) {
	if from >= to {
		return
	}
	cids, _ := deriveRange(nil, []byte(reg.key), uint32(from), int(to-from))
	for _, c := range cids {
		r.table.remove(c, reg)
	}
	r.xdpDelete(cids)
}

// removeLocked deletes a registration and its CIDs. r.regMu must be held.
func (r *Relay) removeLocked(reg *registration) {
	r.removeRange(reg, uint64(reg.first), uint64(reg.first)+uint64(reg.num))
	delete(r.regs, reg.key)
	r.perIP[reg.ip]--
	if r.perIP[reg.ip] <= 0 {
		delete(r.perIP, reg.ip)
	}
}

func (r *Relay) unregister(key []byte) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if reg := r.regs[string(key)]; reg != nil {
		r.removeLocked(reg)
	}
}
