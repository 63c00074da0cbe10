package quicpipe

// unixPermissions tells whether file modes protect identity files. On
// Windows they do not (access is governed by ACLs), so their check is
// skipped; the user's profile directory is private by default.
const unixPermissions = false
