"""Where a webhook may go: resolve the target, refuse addresses that are not globally
routable, and connect to exactly the address that was checked.

An httpx transport whose httpcore network backend does the resolution itself: the
check and the connect use the same address list, so there is no second DNS lookup an
attacker's name server could answer differently (DNS rebinding). TLS still verifies the
certificate against the URL's host name (httpcore sends the origin host as SNI and checks
the certificate against it), because only the TCP connect is given an IP.

Refused: loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 — cloud metadata —
and fe80::/10), CGNAT (100.64/10), unspecified, multicast, reserved and documentation
ranges, site-local ``fec0::/10``, and IPv4 addresses hidden in IPv6 (mapped
``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) — whatever Python's
``ipaddress`` does not call global, and those. Unless ``webhooks.allow_private_targets``
or a network in ``webhooks.allowed_cidrs`` allows it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpcore
import httpx
import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64)


class TargetRefused(Exception):
    """The target resolves to an address webhooks may not reach (or does not resolve)."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allowed: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, allow_private: bool, cidrs: Iterable[str]) -> TargetPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be reached; None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if self.allow_private or any(ip in net for net in self.allowed):
            return None
        inner = _embedded_v4(ip)
        if inner is not None and any(inner in net for net in self.allowed):
            return None
        # An address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that
        # IPv4 address alone: where it ends up. Python's own verdict on the outer address
        # differs between versions (3.13 calls all of 2002::/16 non-global, 3.11 none).
        for candidate in (ip,) if inner is None else (inner,):
            if (
                not candidate.is_global
                or candidate.is_multicast
                or candidate.is_reserved
                or candidate.is_unspecified
                # fec0::/10: deprecated site-local, yet still routed inside some networks
                or (isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local)
            ):
                return f"{address} is not a public address (loopback, private, link-local, ...)"
        return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        # 6to4 (2002::/16): Python calls 2002:7f00:1:: global, but a 6to4 relay takes it
        # to 127.0.0.1. (Teredo, 2001::/32, is never global.)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, connecting only to checked addresses."""

    def __init__(self, policy: TargetPolicy, resolve: Resolver = system_resolve) -> None:
        self._policy = policy
        self._resolve = resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._addresses(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _addresses(self, host: str, port: int) -> Sequence[str]:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = await self._resolve(host, port)
        if not addresses:
            raise TargetRefused(f"{host} resolves to no address")
        # Every address must pass: a name that also resolves to an internal address is
        # refused outright, whichever one a connect would have picked.
        for address in addresses:
            why = self._policy.refusal(address)
            if why is not None:
                raise TargetRefused(f"{host}: {why}" if host != address else why)
        return addresses

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool on a ``GuardedBackend``. No proxy (a
    proxy would connect for us, unchecked); redirects are the client's business."""

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        resolve: Resolver = system_resolve,
        limits: httpx.Limits = DEFAULT_LIMITS,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its pool without a way to pass a network backend; the pool is the
        # one attribute handle_async_request uses (httpx 0.28). tests/test_webhook_ssrf.py
        # fails if this stops taking effect.
        self._pool = httpcore.AsyncConnectionPool(
            # None: the public CAs; tests pass a context trusting their own CA.
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=GuardedBackend(policy, resolve),
        )
