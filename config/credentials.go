package config

import (
	"crypto/sha256"
	"crypto/subtle"
)

// Credentials is the user name and password both listeners accept. Only
// SHA-256 digests are kept, so that the comparison runs over equal-length
// values and leaks neither content nor length through timing.
type Credentials struct {
	user, pass [sha256.Size]byte
}

// NewCredentials returns credentials for user and pass.
func NewCredentials(user, pass string) *Credentials {
	return &Credentials{user: sha256.Sum256([]byte(user)), pass: sha256.Sum256([]byte(pass))}
}

// Check reports whether user and pass match, in time independent of where
// or whether they differ. Both halves are always compared.
func (c *Credentials) Check(user, pass []byte) bool {
	u, p := sha256.Sum256(user), sha256.Sum256(pass)
	return subtle.ConstantTimeCompare(u[:], c.user[:])&subtle.ConstantTimeCompare(p[:], c.pass[:]) == 1
}

// String never shows the secret: Credentials may end up in a log field.
func (c *Credentials) String() string { return "[credentials]" }
