package quicpipe

import "time"

// The relay's registration API, served over HTTP/3 under /v1/. The wire format
// is specified in docs/PROTOCOL.md.

// registerPath is the path of the registration endpoint.
const registerPath = "/v1/register"

// registerRequest is the JSON body of POST /v1/register and DELETE
// /v1/register.
type registerRequest struct {
	// Key is the peer's CID key (16 to 64 bytes; base64 in JSON).
	Key []byte `json:"key"`
	// Num is the number of CIDs to register (at least 1).
	Num uint32 `json:"num"`
	// First is the index of the first CID to register. If zero, 1 is used.
	First uint32 `json:"first,omitempty"`
}

// registerResponse is the JSON answer to a successful registration.
type registerResponse struct {
	// Addr is the peer's address as the relay observed it on the HTTP/3
	// connection that carried the request: the address CIDs forward to.
	Addr string `json:"addr"`
	// First and Num give the registered window of CID indexes.
	First uint32 `json:"first"`
	Num   uint32 `json:"num"`
	// Expires is when the registration lapses unless refreshed.
	Expires time.Time `json:"expires"`
	// TTL is the registration lifetime in seconds.
	TTL int `json:"ttl"`
	// Tunnel is the URL of the relay's TLS/WebSocket tunnel (its host
	// may be empty: the relay's), if the relay has one.
	Tunnel string `json:"tunnel,omitempty"`
	// Sleep, present only when the relay lets listeners sleep, gives the
	// keep-alive interval of a sleeping listener (relay_sleep.go).
	Sleep *sleepOffer `json:"sleep,omitempty"`
}

// errorResponse is the JSON body of every error answer of the relay API.
type errorResponse struct {
	// Error is a human-readable message.
	Error string `json:"error"`
	// Code is a stable machine-readable reason: one of the Code* constants,
	// e.g. CodeBadJSON ("bad_json").
	Code string `json:"code"`
}

// The codes of the relay's error answers (ErrorResponse.Code), stable across
// versions. docs/PROTOCOL.md lists the status each comes with.
const (
	// CodeBadMethod: a method the endpoint does not serve (405; an Allow
	// header lists those it does).
	CodeBadMethod = "bad_method"
	// CodeBadJSON: the registration body is not one JSON object (400).
	CodeBadJSON = "bad_json"
	// CodeBodyTooLarge: the body exceeds the relay's limit (413).
	CodeBodyTooLarge = "body_too_large"
	// CodeKeyLength: a CID key shorter than MinCIDKeyLen or longer than
	// the relay's maximum (400).
	CodeKeyLength = "key_length"
	// CodeNumRange: a window of CIDs out of range (400).
	CodeNumRange = "num_range"
	// CodeUnauthorized: the relay's Authorizer refused the request (401).
	CodeUnauthorized = "unauthorized"
	// CodeTarget: the address the relay observed is not a forwarding
	// target it allows (403).
	CodeTarget = "target"
	// CodeNotFound: no such endpoint, or the mailbox is off (404).
	CodeNotFound = "not_found"
	// CodeTimeout: the body did not arrive in time after the headers
	// (408).
	CodeTimeout = "timeout"
	// CodeConflict: concurrent requests for the same key kept changing its
	// registration; retry (409).
	CodeConflict = "conflict"
	// CodeLimitSource: the source (an IPv4 address or IPv6 /64) holds its
	// maximum of registrations, or of mailboxes (429).
	CodeLimitSource = "limit_source"
	// CodeLimitSourceCIDs: the registrations of the source would hold too
	// many CIDs (429).
	CodeLimitSourceCIDs = "limit_source_cids"
	// CodeLimitDerive: the source had the relay derive too many new CIDs
	// lately (429, with Retry-After).
	CodeLimitDerive = "limit_derive"
	// CodeLimitTotal: the relay holds its maximum of registrations (503).
	CodeLimitTotal = "limit_total"
	// CodeLimitCIDs: the relay holds its maximum of CIDs (503).
	CodeLimitCIDs = "limit_cids"
	// CodeClosing: the relay is shutting down or draining (503).
	CodeClosing = "closing"
	// CodeNoAddress: the relay cannot tell the request's connection or its
	// address (500).
	CodeNoAddress = "no_address"

	// CodeBadKey: a mailbox path that does not end with a public key (400).
	CodeBadKey = "bad_key"
	// CodeBadSignature: a mailbox request without a valid proof of its key
	// on this connection (403).
	CodeBadSignature = "bad_signature"
	// CodeBadFlight: a mailbox post whose body is not a first flight (400).
	CodeBadFlight = "bad_flight"
	// CodeNoMailbox: nobody holds the mailbox, or its holder left before
	// the flight was delivered (404).
	CodeNoMailbox = "no_mailbox"
	// CodeRateLimited: too many mailbox posts from the source (429, with
	// Retry-After).
	CodeRateLimited = "rate_limited"
	// CodeMailboxBusy: flights are piling up for the mailbox, or its holder
	// did not take this one in time (503).
	CodeMailboxBusy = "mailbox_busy"
	// CodeLimitMailboxes: the relay holds its maximum of mailboxes (503).
	CodeLimitMailboxes = "limit_mailboxes"
	// CodeSleepRefused: a request to sleep over a connection that holds
	// neither the key's registration nor the mailbox, or whose mailbox's
	// ID is taken (409).
	CodeSleepRefused = "sleep_refused"
	// CodeLimitSleepers: the relay holds its maximum of sleeping listeners
	// (503).
	CodeLimitSleepers = "limit_sleepers"
)
