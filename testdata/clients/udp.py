"""Send N datagrams to TARGET through a SOCKS5 proxy with PySocks
(socksocket(SOCK_DGRAM): UDP ASSOCIATE), one socket per association,
and print each reply (the source address the target saw). Used by
cmd/rotor's TestPySocksUDP.

    python3 udp.py PROXY_HOST PROXY_PORT USER PASS TARGET_HOST TARGET_PORT ASSOCIATIONS
"""
import socket
import sys

import socks

host, port, user, password, thost, tport, n = sys.argv[1:8]
for _ in range(int(n)):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, host, int(port), username=user, password=password)
    s.settimeout(5)
    s.sendto(b"ping", (thost, int(tport)))
    data, _ = s.recvfrom(2048)
    print(data.decode(), flush=True)
    s.close()
