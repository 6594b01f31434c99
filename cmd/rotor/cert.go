package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

func certFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("rotor cert", pflag.ContinueOnError)
	fs.String("host", "", "comma-separated names and IP addresses the certificate is for (required)")
	fs.String("cert", "rotor.crt", "file to write the certificate to")
	fs.String("key", "rotor.key", "file to write the private key to (mode 0600)")
	fs.Duration("valid", 365*24*time.Hour, "how long the certificate is valid")
	return fs
}

// runCert writes a self-signed ECDSA P-256 certificate and its key, for a
// quick start with --https-listen: clients trust this one certificate
// (curl --proxy-cacert). A certificate from a CA the clients already
// trust is the normal way (README, "TLS").
func runCert(_ context.Context, std stdio, fs *pflag.FlagSet) error {
	hosts, _ := fs.GetString("host")
	certFile, _ := fs.GetString("cert")
	keyFile, _ := fs.GetString("key")
	valid, _ := fs.GetDuration("valid")
	if strings.TrimSpace(hosts) == "" || fs.NArg() != 0 {
		return fmt.Errorf("%w: usage: rotor cert --host NAME[,IP...] [--cert FILE] [--key FILE]", errConfig)
	}
	if valid <= 0 {
		return fmt.Errorf("%w: --valid %s: must be positive", errConfig, valid)
	}
	certPEM, keyPEM, err := selfSigned(strings.Split(hosts, ","), time.Now(), valid)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return err
	}
	first := strings.TrimSpace(strings.Split(hosts, ",")[0])
	fmt.Fprintf(std.stdout, "wrote %s and %s for %s, valid until %s\n", certFile, keyFile, hosts, time.Now().Add(valid).Format(time.DateOnly))
	fmt.Fprintf(std.stdout, "serve:  rotor --https-listen %s --tls-cert %s --tls-key %s ...\n", net.JoinHostPort(first, "8443"), certFile, keyFile)
	fmt.Fprintf(std.stdout, "client: curl --proxy https://USER:PASS@%s --proxy-cacert %s https://example.com/\n", net.JoinHostPort(first, "8443"), certFile)
	return nil
}

// selfSigned returns a PEM certificate for hosts (names or IP addresses),
// signed by its own key, and the key.
func selfSigned(hosts []string, now time.Time, valid time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: strings.TrimSpace(hosts[0]), Organization: []string{"rotor self-signed"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(valid),
		// Its own CA, so that clients can be given it as the CA to
		// trust (curl --proxy-cacert, Python's verify=).
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}
