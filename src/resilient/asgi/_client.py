"""Who is the client? The rate-limit key of a request, safe against spoofed headers.

The key defaults to the connection's peer address. Forwarding headers (``X-Forwarded-For`` or
``Forwarded``) are read only when the peer is a configured trusted proxy, and then from the
right: the right-most hop that is not a trusted proxy is the client. Hops to its left were
written by the client itself and are ignored, so rotating a spoofed header never earns a fresh
bucket.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Final, final

from resilient._exceptions import ConfigurationError

__all__ = ["NO_PEER_KEY", "ClientKeyResolver"]

NO_PEER_KEY: Final = "unix"
"""The key of requests without a peer address (a unix socket) and no trusted proxy header."""

_MAX_KEY_LENGTH = 64  # an address is at most 45 characters; anything longer is junk

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _strip_port(hop: str) -> str:
    # "[2001:db8::1]:4711" -> "2001:db8::1"; "192.0.2.1:80" -> "192.0.2.1"; "2001:db8::1" stays.
    hop = hop.strip().strip('"').strip()
    if hop.startswith("["):
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop[1:]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def _forwarded_for(value: str) -> list[str]:
    # RFC 7239: `for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`. An element without a
    # `for` parameter is a hop that did not say who it saw: it counts as an unknown client.
    hops: list[str] = []
    for element in value.split(","):
        found = "unknown"
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found = val
                break
        hops.append(found)
    return hops


@final
class ClientKeyResolver:
    """Derives a bounded client key from an ASGI scope.

    Args:
        trusted_proxies: addresses or networks (``"10.0.0.0/8"``) of the proxies in front of
            the service; ``"unix"`` trusts a connection without a peer address (a unix
            socket). Empty (the default): forwarding headers are never read.
        forwarded_header: ``"x-forwarded-for"`` (default) or ``"forwarded"`` (RFC 7239): the
            one header the trusted proxies write. Only that header is read.
        ipv6_prefix: IPv6 clients are keyed by their ``/ipv6_prefix`` network (default 64:
            one end site usually owns a whole /64, so per-address buckets would be free to
            rotate); 128 keys each address.

    Raises:
        ConfigurationError: an invalid proxy address, header name or prefix.
    """

    __slots__ = ("_exact", "_header", "_is_trusted", "_networks", "_normalize", "_unix_trusted")

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        ipv6_prefix: int = 64,
    ) -> None:
        if isinstance(trusted_proxies, str):
            trusted_proxies = [trusted_proxies]
        exact: set[str] = set()
        networks: list[_Network] = []
        self._unix_trusted = False
        for entry in trusted_proxies:
            if not isinstance(entry, str):
                raise ConfigurationError(
                    "ResilienceMiddleware.trusted_proxies", entry, "expected address strings"
                )
            if entry == "unix":
                self._unix_trusted = True
                continue
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    exact.add(str(ipaddress.ip_address(entry)))
            except ValueError:
                raise ConfigurationError(
                    "ResilienceMiddleware.trusted_proxies",
                    entry,
                    "expected an IP address, a network such as 10.0.0.0/8, or 'unix'",
                ) from None
        self._exact = frozenset(exact)
        self._networks = tuple(networks)
        given: object = forwarded_header
        header = given.lower() if isinstance(given, str) else None
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigurationError(
                "ResilienceMiddleware.forwarded_header",
                forwarded_header,
                "expected 'x-forwarded-for' or 'forwarded'",
            )
        self._header = header.encode("latin-1")
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int):
            raise ConfigurationError(
                "ResilienceMiddleware.ipv6_prefix", ipv6_prefix, "expected an integer"
            )
        if not 1 <= ipv6_prefix <= 128:
            raise ConfigurationError(
                "ResilienceMiddleware.ipv6_prefix", ipv6_prefix, "must be in 1..128"
            )
        # Both caches are bounded: keys come from outside.
        self._normalize = functools.lru_cache(maxsize=4096)(
            functools.partial(_normalize, ipv6_prefix=ipv6_prefix)
        )
        self._is_trusted = functools.lru_cache(maxsize=1024)(self._trusted_uncached)

    @property
    def normalize(self) -> Callable[[str], str]:
        """``host -> key`` of a client at ``host`` (an IPv6 client keys its network; cached)."""
        return self._normalize

    @property
    def uses_headers(self) -> bool:
        """Whether any proxy is trusted (forwarding headers may be read)."""
        return bool(self._exact or self._networks or self._unix_trusted)

    def _trusted_uncached(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if str(address) in self._exact:
            return True
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
            if str(address) in self._exact:
                return True
        return any(address in network for network in self._networks)

    def __call__(self, scope: MutableMapping[str, Any]) -> str:
        """The client key of the request described by ``scope``."""
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        if not (self._exact or self._networks or self._unix_trusted):
            return NO_PEER_KEY if peer is None else self._normalize(peer)
        if peer is None:
            if not self._unix_trusted:
                return NO_PEER_KEY
        elif not self._is_trusted(peer):
            return self._normalize(peer)
        hops = self._hops(scope)
        for hop in reversed(hops):
            host = _strip_port(hop)
            if not self._is_trusted(host):
                return self._normalize(host)
        if hops:  # every hop is a trusted proxy: the left-most one is the best we know
            return self._normalize(_strip_port(hops[0]))
        return NO_PEER_KEY if peer is None else self._normalize(peer)

    def _hops(self, scope: MutableMapping[str, Any]) -> list[str]:
        wanted = self._header
        values = [
            value.decode("latin-1") for name, value in scope.get("headers", ()) if name == wanted
        ]
        if not values:
            return []
        joined = ",".join(values)
        if wanted == b"forwarded":
            return _forwarded_for(joined)
        return [hop for hop in joined.split(",") if hop.strip()]


def _normalize(host: str, *, ipv6_prefix: int) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Not an address (an obfuscated RFC 7239 identifier, "unknown", junk): bounded text.
        return host[:_MAX_KEY_LENGTH] or "unknown"
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)
