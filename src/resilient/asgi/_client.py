"""Who is the client? The rate-limit key of a request, safe against spoofed headers.

The key defaults to the connection's peer address. Forwarding headers (``X-Forwarded-For`` or
``Forwarded``) are read in one of two ways:

- ``trusted_proxies`` (ranges): only when the peer is a trusted proxy, and then from the right:
  the right-most hop that is not a trusted proxy is the client. Hops to its left were written
  by the client itself and are ignored, so rotating a spoofed header never earns a fresh
  bucket. Every host inside a trusted range is trusted, though: one that sends through the
  proxy a header naming someone else picks that key.
- ``trusted_hops=N`` (hop counting, as Werkzeug's ``ProxyFix``): the deployment has exactly N
  proxies, each appending the address it saw; the client is the N-th hop from the right. No
  range is involved, so a host behind the proxies is keyed by the address the first proxy saw,
  whatever it writes. A request with fewer than N hops did not pass the proxies: its peer is
  the key. With ``trusted_proxies`` too, the header is read only from a peer inside them.
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
_MAX_HOPS = 32

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
        trusted_hops: the number of proxies in front of the service, each appending the
            address it saw to the forwarding header: the client is that many hops from the
            right. ``None`` (default): ranges decide (``trusted_proxies``).

    Raises:
        ConfigurationError: an invalid proxy address, header name, prefix or hop count.
    """

    __slots__ = (
        "_exact",
        "_header",
        "_hop_count",
        "_is_trusted",
        "_networks",
        "_normalize",
        "_unix_trusted",
    )

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        ipv6_prefix: int = 64,
        trusted_hops: int | None = None,
    ) -> None:
        self._hop_count = 0 if trusted_hops is None else _hop_count(trusted_hops)
        self._unix_trusted, self._exact, self._networks = _parse_proxies(trusted_proxies)
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
        return bool(self._hop_count or self._exact or self._networks or self._unix_trusted)

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
        ranges = self._exact or self._networks or self._unix_trusted
        if ranges and not (self._unix_trusted if peer is None else self._is_trusted(peer)):
            ranges = False  # an untrusted peer: its header is not a proxy's
        elif self._hop_count:
            return self._by_hop_count(scope, peer)
        if not ranges:
            return NO_PEER_KEY if peer is None else self._normalize(peer)
        return self._by_ranges(scope, peer)

    def _by_ranges(self, scope: MutableMapping[str, Any], peer: str | None) -> str:
        # From a trusted peer: the right-most hop that is not a trusted proxy.
        hops = self._hops(scope)
        for hop in reversed(hops):
            host = _strip_port(hop)
            if not self._is_trusted(host):
                return self._normalize(host)
        if hops:  # every hop is a trusted proxy: the left-most one is the best we know
            return self._normalize(_strip_port(hops[0]))
        return NO_PEER_KEY if peer is None else self._normalize(peer)

    def _by_hop_count(self, scope: MutableMapping[str, Any], peer: str | None) -> str:
        # The client is the hop_count-th hop from the right (the peer, when trusted_proxies
        # are configured too, was checked to be one of them).
        hops = self._hops(scope)
        if len(hops) < self._hop_count:  # it did not come through every proxy
            return NO_PEER_KEY if peer is None else self._normalize(peer)
        return self._normalize(_strip_port(hops[-self._hop_count]))

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


def _hop_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError("ResilienceMiddleware.trusted_hops", value, "expected an integer")
    if not 1 <= value <= _MAX_HOPS:
        raise ConfigurationError(
            "ResilienceMiddleware.trusted_hops", value, f"must be in 1..{_MAX_HOPS}"
        )
    return value


def _parse_proxies(
    trusted_proxies: Iterable[str],
) -> tuple[bool, frozenset[str], tuple[_Network, ...]]:
    # (unix socket peers trusted, exact addresses, networks)
    if isinstance(trusted_proxies, str):
        trusted_proxies = [trusted_proxies]
    unix = False
    exact: set[str] = set()
    networks: list[_Network] = []
    for entry in trusted_proxies:
        if not isinstance(entry, str):
            raise ConfigurationError(
                "ResilienceMiddleware.trusted_proxies", entry, "expected address strings"
            )
        if entry == "unix":
            unix = True
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
    return unix, frozenset(exact), tuple(networks)


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
