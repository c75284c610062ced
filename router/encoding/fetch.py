"""Image URLs fetched without reaching inside the network (SSRF): public addresses only, checked after DNS
resolution (every address the name has), the connection made to the checked address itself (no second lookup for a
rebinding DNS server to answer differently), no redirects, no proxies from the environment, bounded bytes and time.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

from cluster.errors import ImageError, PayloadTooLarge

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def public(ip: Address) -> bool:
    """Globally routable: not private, loopback, link-local (cloud metadata at 169.254.169.254), shared (CGNAT),
    multicast, reserved or unspecified; an IPv4 address inside IPv6 (::ffff:a.b.c.d) is judged as itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return public(inner)
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def fetch_url(url: str, field: str, *, max_bytes: int, timeout_s: float = 10.0,
              resolver: Callable[[str, int], list[str]] = resolve, allowed: Callable[[Address], bool] = public,
              clock: Callable[[], float] = time.monotonic) -> bytes:
    """The body of `url` (http or https), at most `max_bytes`, all of it within `timeout_s`."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise ImageError(f"{field}: not a valid URL", field=field) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ImageError(f"{field}: only http(s) URLs with a host are fetched", field=field)
    host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = clock() + timeout_s
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise ImageError(f"{field}: cannot resolve {host!r} ({exc})", field=field) from None
    if not addresses:
        raise ImageError(f"{field}: {host!r} has no address", field=field)
    for a in addresses:
        if not allowed(ipaddress.ip_address(a.split("%", 1)[0])):
            raise ImageError(f"{field}: {host!r} resolves to {a}, which is not a public address; image URLs may "
                             "only reach public hosts", field=field)
    target = parsed.copy_with(host=addresses[0])  # the address just checked, not a second lookup
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    headers = {"Host": parsed.netloc.decode("ascii"), "Accept": "image/*"}
    try:
        with httpx.Client(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout_s)) as client:
            with client.stream("GET", target, headers=headers, extensions=extensions) as r:
                if r.is_redirect:
                    raise ImageError(f"{field}: the URL answers with a redirect ({r.status_code}); redirects are not "
                                     "followed: give the final URL", field=field)
                if r.status_code != 200:
                    raise ImageError(f"{field}: the URL answered HTTP {r.status_code}", field=field)
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise PayloadTooLarge(f"{field}: image at URL is {declared} bytes, more than {max_bytes}",
                                          field=field)
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"{field}: image at URL exceeds {max_bytes} bytes", field=field)
                    if clock() > deadline:
                        raise ImageError(f"{field}: fetching the URL took longer than {timeout_s:g}s "
                                         "(images.fetch_timeout_s)", field=field)
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.TimeoutException:
        raise ImageError(f"{field}: no answer from the URL within {timeout_s:g}s (images.fetch_timeout_s)",
                         field=field) from None
    except httpx.HTTPError as exc:
        raise ImageError(f"{field}: cannot fetch the URL ({type(exc).__name__})", field=field) from None
