package quicpipe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/forward"
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
	json.NewEncoder(w).Encode(errorResponse{Error: msg, Code: code})
}

// apiError writes a JSON error answer and counts it.
func (r *Relay) apiError(w http.ResponseWriter, status int, code, msg string) {
	r.stats.rejected.fail(w, status, code, msg)
}

func (r *Relay) handleRegister(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost && req.Method != http.MethodDelete {
		w.Header().Set("Allow", "POST, DELETE")
		r.apiError(w, http.StatusMethodNotAllowed, CodeBadMethod, "method "+req.Method+" not allowed")
		return
	}
	if r.cfg.Authorizer != nil {
		op := OpRegister
		if req.Method == http.MethodDelete {
			op = OpUnregister
		}
		if err := r.cfg.Authorizer.Authorize(req, op); err != nil {
			r.apiError(w, http.StatusUnauthorized, CodeUnauthorized, err.Error())
			return
		}
	}
	var body registerBody
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, r.cfg.MaxBodyBytes))
	tooLarge := func(err error) bool {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.apiError(w, http.StatusRequestTimeout, CodeTimeout,
				fmt.Sprintf("request body not received within %v", r.cfg.RequestHeaderTimeout))
			return true
		}
		if _, ok := errors.AsType[*http.MaxBytesError](err); !ok {
			return false
		}
		r.apiError(w, http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
			fmt.Sprintf("request body exceeds %d bytes", r.cfg.MaxBodyBytes))
		return true
	}
	if err := dec.Decode(&body); err != nil {
		if !tooLarge(err) {
			r.apiError(w, http.StatusBadRequest, CodeBadJSON, "malformed JSON body: "+err.Error())
		}
		return
	}
	// The limit may be hit only after the object, while looking for its end.
	if _, err := dec.Token(); err != io.EOF {
		if !tooLarge(err) {
			r.apiError(w, http.StatusBadRequest, CodeBadJSON, "malformed JSON body: trailing data after the object")
		}
		return
	}
	if n := len(body.Key); n < MinCIDKeyLen || n > r.cfg.MaxKeyLen {
		r.apiError(w, http.StatusBadRequest, CodeKeyLength,
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
		r.apiError(w, http.StatusBadRequest, CodeNumRange,
			fmt.Sprintf("num must be 1 to %d and first+num-1 at most 2^32-1 (got first %d, num %d)", maxNum, first, body.Num))
		return
	}
	qc, _ := req.Context().Value(quicConnKey{}).(*quic.Conn)
	var observed *net.UDPAddr
	if qc != nil {
		observed, _ = qc.RemoteAddr().(*net.UDPAddr)
	}
	if observed == nil {
		r.apiError(w, http.StatusInternalServerError, CodeNoAddress, "cannot tell the address of this connection")
		return
	}
	reg, status, code, err := r.register(body.Key, uint32(first), uint32(body.Num), observed, qc)
	if err != nil {
		if ra, ok := errors.AsType[*retryAfterError](err); ok {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(ra.wait.Seconds())))))
		}
		r.apiError(w, status, code, err.Error())
		return
	}
	r.stats.registered.Add(1)
	connStateOf(req.Context()).holdUntil(reg.Expires)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(reg)
}

// register creates or refreshes the registration of key with the window
// [first, first+num) forwarding to addr.
// qc is the HTTP/3 connection that carried the request (nil in tests: the
// relay's bound address then counts as where the peer reached it).
//
// The CIDs new to the window are derived without r.regMu, from a snapshot
// of the registration taken under it; if the registration changed before
// they are applied (a concurrent request for the same key), it starts over.
func (r *Relay) register(key []byte, first, num uint32, addr *net.UDPAddr, qc *quic.Conn) (registerResponse, int, string, error) {
	ap := netAddrPort(addr.AddrPort())
	local := netAddrPort(r.udpAddr().AddrPort())
	if qc != nil {
		if la, ok := qc.LocalAddr().(*net.UDPAddr); ok {
			local = netAddrPort(la.AddrPort())
		}
	}
	d, err := r.newDest(ap, local)
	if err != nil {
		return registerResponse{}, http.StatusForbidden, CodeTarget, err
	}
	src := sourceOf(ap.Addr())
	ttl := r.cfg.RegistrationTTL
	for attempt := 0; ; attempt++ {
		r.regMu.Lock()
		reg := r.regs.get(string(key))
		if status, code, err := r.checkLimitsLocked(reg, src, num); err != nil {
			r.regMu.Unlock()
			return registerResponse{}, status, code, err
		}
		var gen uint64
		var oldFirst uint32
		var oldCIDs []CID
		if reg != nil {
			gen, oldFirst, oldCIDs = reg.gen, reg.first, reg.cids
		}
		r.regMu.Unlock()

		derived := num - overlap(oldFirst, uint32(len(oldCIDs)), first, num)
		if ok, wait := r.derivations.allowN(src, float64(derived), time.Now()); !ok {
			return registerResponse{}, http.StatusTooManyRequests, CodeLimitDerive, &retryAfterError{
				wait: wait,
				err: fmt.Errorf("%s registered too many new CIDs lately (budget %d per second, bursts of %d); this window needs %d",
					src, r.cfg.DerivationsPerSecond, r.cfg.DerivationBurst, derived),
			}
		}
		cids := slideWindow(key, oldFirst, oldCIDs, first, num)
		if hook := r.testHookDerived.Load(); hook != nil {
			(*hook)()
		}

		r.regMu.Lock()
		cur := r.regs.get(string(key))
		if cur != reg || (reg != nil && reg.gen != gen) {
			r.regMu.Unlock()
			if attempt < 2 {
				continue
			}
			return registerResponse{}, http.StatusConflict, CodeConflict,
				errors.New("the registration of this key kept changing under concurrent requests; retry")
		}
		// Other registrations may have changed the counts meanwhile.
		if status, code, err := r.checkLimitsLocked(reg, src, num); err != nil {
			r.regMu.Unlock()
			return registerResponse{}, status, code, err
		}
		expires := time.Now().Add(ttl)
		before := shapeOf(reg)
		reg = r.regs.put(string(key), reg, src, d, local, qc, first, cids, expires)
		if before.remote {
			// The peer registered here after another member: it is ours now.
			reg.member = ""
			r.remoteRegs--
		}
		if shapeOf(reg) != before {
			r.replicatePut(reg)
		}
		r.regMu.Unlock()
		return registerResponse{
			Addr:    ap.String(),
			First:   first,
			Num:     num,
			Expires: expires.UTC().Truncate(time.Millisecond),
			TTL:     int(ttl / time.Second),
			Tunnel:  r.tunnelURL,
			Sleep:   r.sleep.offer(),
		}, 0, "", nil
	}
}

// checkLimitsLocked decides whether reg (nil for a new key) may hold a
// window of num CIDs for source src. r.regMu must be held.
func (r *Relay) checkLimitsLocked(reg *regEntry, src netip.Prefix, num uint32) (int, string, error) {
	if r.closing {
		return http.StatusServiceUnavailable, CodeClosing, errors.New("relay is shutting down")
	}
	use := r.regs.usage(src)
	var mine, held int // what reg holds already: from src, and in total
	if reg != nil {
		held = int(reg.num)
		if reg.src == src {
			mine = held
		}
	}
	if (reg == nil || reg.src != src) && use.regs >= r.cfg.MaxRegistrationsPerSource {
		return http.StatusTooManyRequests, CodeLimitSource,
			fmt.Errorf("too many registrations from %s (limit %d)", src, r.cfg.MaxRegistrationsPerSource)
	}
	if reg == nil && r.regs.count() >= r.cfg.MaxRegistrations {
		return http.StatusServiceUnavailable, CodeLimitTotal,
			fmt.Errorf("relay holds the maximum of %d registrations", r.cfg.MaxRegistrations)
	}
	if int(num) > mine && use.cids-mine+int(num) > r.cfg.MaxCIDsPerSource {
		return http.StatusTooManyRequests, CodeLimitSourceCIDs,
			fmt.Errorf("registrations from %s would hold %d CIDs (limit %d)", src, use.cids-mine+int(num), r.cfg.MaxCIDsPerSource)
	}
	if added := int64(num) - int64(held); added > 0 && int64(r.table.Len())+added > int64(r.cfg.MaxCIDs) {
		return http.StatusServiceUnavailable, CodeLimitCIDs,
			fmt.Errorf("relay holds the maximum of %d CIDs", r.cfg.MaxCIDs)
	}
	return 0, "", nil
}

// overlap returns how many indexes the windows [f1, f1+n1) and [f2, f2+n2)
// share.
func overlap(f1, n1, f2, n2 uint32) uint32 {
	lo := max(uint64(f1), uint64(f2))
	hi := min(uint64(f1)+uint64(n1), uint64(f2)+uint64(n2))
	if lo >= hi {
		return 0
	}
	return uint32(hi - lo)
}

// slideWindow returns the CIDs of key with indexes first..first+num-1,
// taking those it can from old (the CIDs from index oldFirst on) and
// deriving the others.
func slideWindow(key []byte, oldFirst uint32, old []CID, first, num uint32) []CID {
	cids := make([]CID, 0, num)
	oldEnd := uint64(oldFirst) + uint64(len(old))
	end := uint64(first) + uint64(num)
	for j := uint64(first); j < end; {
		if j >= uint64(oldFirst) && j < oldEnd {
			k := min(end, oldEnd)
			cids = append(cids, old[j-uint64(oldFirst):k-uint64(oldFirst)]...)
			j = k
			continue
		}
		k := end
		if j < uint64(oldFirst) {
			k = min(end, uint64(oldFirst))
		}
		// The key's length was checked: deriving cannot fail.
		cids, _ = deriveRange(cids, key, uint32(j), int(k-j))
		j = k
	}
	return cids
}

// retryAfterError is a refusal that tells the client when to retry.
type retryAfterError struct {
	wait time.Duration
	err  error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// netAddrPort normalizes an address as the relay stores it: IPv4-mapped IPv6
// addresses become IPv4.
func netAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// newDest checks a forwarding target and encodes it for the socket.
func (r *Relay) newDest(ap netip.AddrPort, local netip.AddrPort) (*forward.Dest, error) {
	if err := checkTarget(ap, local, r.cfg.AllowPrivateTargets); err != nil {
		return nil, err
	}
	if ap.Port() == uint16(r.udpAddr().Port) && r.locals.has(ap.Addr()) {
		return nil, fmt.Errorf("%w: %s is an address of the relay's host on the relay's port", errTarget, ap)
	}
	d, ok := r.rconn.NewDest(ap)
	if !ok {
		return nil, fmt.Errorf("%w: the relay socket cannot send to %s", errTarget, ap)
	}
	return d, nil
}

func (r *Relay) unregister(key []byte) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if reg := r.regs.get(string(key)); reg != nil {
		r.removeLocked(reg)
	}
}
