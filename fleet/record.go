package fleet

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/quicpipe/quicpipe"
)

// The bucket's layout: a registration under "r." followed by its CID key in
// hex, a member's liveness under "m." followed by its id. Anything else in
// the bucket is foreign and ignored.
const (
	regPrefix    = "r."
	memberPrefix = "m."
)

// recordVersion is the version of the value format; a value of another
// version is malformed to this member.
const recordVersion = 1

// maxValueLen bounds a value this member decodes.
const maxValueLen = 1024

// value is a registration as stored in the bucket, under regKey(key).
type value struct {
	V      int    `json:"v"`
	Member string `json:"member"`
	First  uint32 `json:"first"`
	Num    uint32 `json:"num"`
	Addr   string `json:"addr"`
}

// regKey is the bucket key of the registration of CID key k.
func regKey(k []byte) string { return regPrefix + hex.EncodeToString(k) }

// memberKey is the bucket key of member's liveness.
func memberKey(member string) string { return memberPrefix + member }

// encodeRecord returns the stored value of rec, held by member.
func encodeRecord(rec quicpipe.FleetRecord, member string) ([]byte, error) {
	return json.Marshal(value{V: recordVersion, Member: member, First: rec.First, Num: rec.Num, Addr: rec.Target.String()})
}

// errMalformed is a bucket entry in the fleet's layout that cannot be
// decoded.
var errMalformed = errors.New("fleet: malformed entry")

// decodeRecord decodes the value stored under the registration key k
// (without its prefix). Its range checks are the relay's (ApplyRemote).
func decodeRecord(k string, v []byte) (quicpipe.FleetRecord, error) {
	key, err := hex.DecodeString(k)
	if err != nil || len(key) == 0 || strings.ToLower(k) != k {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: key %q is not lower-case hex", errMalformed, k)
	}
	if len(v) > maxValueLen {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: value of %d bytes", errMalformed, len(v))
	}
	var val value
	if err := json.Unmarshal(v, &val); err != nil {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: %w", errMalformed, err)
	}
	if val.V != recordVersion {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: version %d", errMalformed, val.V)
	}
	if !validMember(val.Member) {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: member %q", errMalformed, val.Member)
	}
	ap, err := netip.ParseAddrPort(val.Addr)
	if err != nil {
		return quicpipe.FleetRecord{}, fmt.Errorf("%w: %w", errMalformed, err)
	}
	return quicpipe.FleetRecord{Key: key, First: val.First, Num: val.Num, Target: ap, Member: val.Member}, nil
}

// validMember reports whether id is a valid member id: 1 to 64 letters,
// digits, '-' or '_'.
func validMember(id string) bool {
	if len(id) < 1 || len(id) > 64 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
