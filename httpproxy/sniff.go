package httpproxy

import (
	"net/http"
	"time"
)

// wrongProtocol answers a client that opened the HTTP listener speaking
// another protocol, judged by its first byte, and reports whether it did
// (the connection then closes). Each gets an answer it fails on at once,
// instead of waiting for a header timeout, and the log says what happened:
//   - 0x16, a TLS handshake record: the client was given an https://
//     proxy URL. It gets a plain-text 400, which a TLS stack reports at
//     once ("wrong version number") and a person can read in a capture.
//   - 0x05, a SOCKS5 greeting: "no acceptable methods" (0x05 0xFF).
//   - 0x04, a SOCKS4 request: "request rejected" (0x00 0x5B).
func (cc *clientConn) wrongProtocol(first byte) bool {
	var reply []byte
	var msg string
	switch first {
	case 0x16:
		msg = "TLS sent to a plain HTTP proxy: use an http:// proxy URL"
	case 0x05:
		reply, msg = []byte{0x05, 0xff}, "SOCKS5 greeting on the HTTP listener: use the SOCKS5 listener"
	case 0x04:
		reply, msg = []byte{0x00, 0x5b, 0, 0, 0, 0, 0, 0}, "SOCKS4 request on the HTTP listener: rotor speaks SOCKS5 on its SOCKS5 listener"
	default:
		return false
	}
	_ = cc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if reply != nil {
		_, _ = cc.c.Write(reply)
	} else {
		cc.writeError(http.StatusBadRequest, msg, true, nil)
	}
	cc.s.opts.Log.Warn().Str("proto", "http").Str("client", cc.c.RemoteAddr().String()).Msg(msg)
	return true
}
