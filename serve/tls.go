package serve

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// Certs holds the TLS configuration client connections are served with:
// the certificate and key, and the CAs client certificates must chain to
// (none: no client certificate asked for). Store replaces them whole, so
// a SIGHUP changes what new handshakes present while connections already
// up keep theirs; a pair that does not load leaves the old one in place.
type Certs struct {
	cur atomic.Pointer[tls.Config]
}

// ErrTLSFiles is every error of loading the TLS files.
var ErrTLSFiles = errors.New("TLS files")

// Store makes cfg (from LoadTLS) what new handshakes use.
func (c *Certs) Store(cfg *tls.Config) { c.cur.Store(cfg) }

// LoadTLS reads certFile and keyFile (PEM) and, when clientCA is not
// empty, the CA certificates client certificates must be signed by.
func LoadTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate %s and key %s: %w", ErrTLSFiles, certFile, keyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		// A proxy speaks HTTP/1.1 (CONNECT and absolute-form); a client
		// offering h2 only is told so in the handshake.
		NextProtos: []string{"http/1.1"},
	}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("%w: client CA: %w", ErrTLSFiles, err)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: client CA %s: no PEM certificate in it", ErrTLSFiles, clientCA)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Config is the tls.Config to serve with: each handshake takes what was
// loaded last.
func (c *Certs) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return c.cur.Load(), nil
		},
	}
}

// PeerName is the subject common name of the verified client certificate
// of a finished handshake, or "" when none was required.
func PeerName(st tls.ConnectionState) string {
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return ""
	}
	return st.VerifiedChains[0][0].Subject.CommonName
}
