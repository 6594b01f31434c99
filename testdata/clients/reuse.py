"""Fetch TARGET N times through PROXY with one Python HTTP client library,
sharing one client (shared) or with connection reuse turned off as
rotor's README says (fresh), and print the body of each response: the
source address the target saw. Used by cmd/rotor's TestClientsReuse.

    python3 reuse.py httpx|aiohttp|requests shared|fresh PROXY TARGET N
"""
import asyncio
import sys
import warnings

warnings.filterwarnings("ignore")  # unverified HTTPS to the test's own target


def run_httpx(mode, proxy, target, n):
    import httpx

    limits = httpx.Limits(max_keepalive_connections=0) if mode == "fresh" else httpx.Limits()
    with httpx.Client(proxies=proxy, verify=False, limits=limits) as c:
        for _ in range(n):
            print(c.get(target).text.strip(), flush=True)


def run_aiohttp(mode, proxy, target, n):
    import aiohttp

    async def main():
        conn = aiohttp.TCPConnector(ssl=False, force_close=(mode == "fresh"))
        async with aiohttp.ClientSession(connector=conn) as s:
            for _ in range(n):
                async with s.get(target, proxy=proxy) as r:
                    print((await r.text()).strip(), flush=True)

    asyncio.run(main())


def run_requests(mode, proxy, target, n):
    import requests

    proxies = {"http": proxy, "https": proxy}
    s = requests.Session()
    for _ in range(n):
        get = requests.get if mode == "fresh" else s.get
        print(get(target, proxies=proxies, verify=False).text.strip(), flush=True)


if __name__ == "__main__":
    lib, mode, proxy, target, n = sys.argv[1:6]
    {"httpx": run_httpx, "aiohttp": run_aiohttp, "requests": run_requests}[lib](mode, proxy, target, int(n))
