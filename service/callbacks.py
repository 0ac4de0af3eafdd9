"""Callback URLs: their shape, and the guard that keeps deliveries off private networks
except those the operator allows by name (``CALLBACK_ALLOW_NETWORKS``)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx
import idna

from service import wire

MAX_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

# Cloud instance metadata services: they hand out credentials to whoever asks from the
# instance, so a network that merely contains one does not open it; only a network of
# exactly that address does. (AWS, its ECS and EKS agents, GCP, Azure, Oracle, OpenStack
# and DigitalOcean use 169.254.169.254; Alibaba 100.100.100.200; Oracle also 192.0.0.192.)
METADATA = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254", "169.254.170.2", "169.254.170.23", "100.100.100.200",
        "192.0.0.192", "fd00:ec2::254", "fd00:ec2::23",
    )
)  # fmt: skip


class CallbackRejected(ValueError):
    """The callback URL is not acceptable."""


@functools.lru_cache(maxsize=4096)
def parse(url: str) -> SplitResult:
    """Check the URL's shape: absolute http(s), a host, no user-info, no odd characters.
    Kept per URL (refusals are not): clients register the same few callbacks over and
    over, and parsing one took 6 % of a registration's CPU."""
    if len(url) > MAX_LENGTH:
        raise CallbackRejected(f"callback_url must be at most {MAX_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise CallbackRejected("callback_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRejected(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRejected("callback_url must be an absolute http or https URL")
    if not parts.hostname:
        raise CallbackRejected("callback_url must name a host")
    if "@" in parts.netloc:
        raise CallbackRejected("callback_url must not contain user-info")
    if port == 0:
        raise CallbackRejected("callback_url has an invalid port")
    if not _host_encodes(url):
        raise CallbackRejected("callback_url has a host name that cannot be looked up")
    if _odd_ipv4(parts.hostname):
        # 127.1, 2130706433, 0x7f.1: the resolver reads them as addresses, the HTTP client
        # refuses to send to them; refused here rather than failing every attempt later.
        raise CallbackRejected("callback_url must write an IPv4 address as four decimal numbers")
    return parts


def _odd_ipv4(host: str) -> bool:
    """Whether ``host`` is an IPv4 address in a spelling other than dotted decimal."""
    try:
        ipaddress.IPv4Address(host)
        return False
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _host_encodes(url: str) -> bool:
    """Whether the HTTP client can turn the host into a DNS name (IDNA): empty or
    over-long labels and malformed A-labels would fail on sending, not here."""
    try:
        host = httpx.URL(url).host.rstrip(".")
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        host.encode("idna")
        if not host.isascii() or "xn--" in host.lower():
            idna.encode(host, uts46=True)
    except (httpx.InvalidURL, ValueError):  # UnicodeError and idna's errors are ValueErrors
        return False
    return True


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable, looking through mapped and tunnelled forms."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    # IPv4-compatible ::a.b.c.d (deprecated, but still parsed by some stacks)
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


# eq=False: a guard is itself (hashed by identity), a cheap key for the verdicts kept
# per URL; hashing its networks took 3 % of a webhook's CPU (issue 21).
@dataclass(frozen=True, slots=True, eq=False)
class Guard:
    """Which addresses callbacks may reach: public ones; with ``allow_private`` every one
    (development); else also those inside ``networks``, except cloud metadata addresses
    that no network names exactly."""

    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = ()

    def permits(self, address: IPAddress) -> bool:
        if self.allow_private or is_public(address):
            return True
        forms = {address}
        if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_ipv4(address)):
            forms.add(inner)
        listed = [net for net in self.networks if any(form in net for form in forms)]
        if forms & METADATA:
            return any(net.num_addresses == 1 for net in listed)
        return bool(listed)

    def vet(self, address: IPAddress, host: str) -> None:
        """Raise CallbackRejected unless ``address`` (of ``host``) may be used."""
        if not self.permits(address):
            raise CallbackRejected(
                f"callback host {host!r} is or resolves to a non-public address "
                "outside CALLBACK_ALLOW_NETWORKS"
            )


async def resolve(host: str, port: int, guard: Guard) -> list[tuple[int, str, int]]:
    """Resolve ``host`` to the addresses to connect to, each (family, address, port);
    refuse it when any address is one the guard does not permit."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host.rstrip(".") or host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise CallbackRejected(f"callback host {host!r} does not resolve") from exc
    if not infos:
        raise CallbackRejected(f"callback host {host!r} does not resolve")
    results: list[tuple[int, str, int]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        guard.vet(address, host)
        results.append((family, str(address), int(sockaddr[1])))
    return results


async def check(url: str, guard: Guard) -> None:
    """Validate a callback URL: its shape, and every address its host is or resolves to
    (no lookup when private callbacks are allowed)."""
    parts = parse(url)
    if guard.allow_private:
        return
    host = parts.hostname or ""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        await resolve(host, parts.port or (443 if parts.scheme == "https" else 80), guard)
    else:
        guard.vet(literal, host)


def vet_literal(url: str, guard: Guard) -> None:
    """At delivery: a host given as an address never reaches the resolver, so it is
    checked here; host names are checked by the resolver at connect time. Raises
    CallbackRejected. The verdict of a URL is kept (most events go to callbacks seen
    before, and it depends only on the URL and the guard)."""
    refusal = _literal_refusal(url, guard)
    if refusal is not None:
        raise CallbackRejected(refusal)


@functools.lru_cache(maxsize=4096)
def _literal_refusal(url: str, guard: Guard) -> str | None:
    try:
        host = parse(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        guard.vet(address, host)
    except CallbackRejected as exc:
        return str(exc)
    return None


def resolver(guard: Guard) -> wire.Resolve:
    """The addresses to connect to for a host, each one vetted by ``guard``, so that
    connections go only to the addresses that were checked (no DNS-rebinding window).
    A refused or unresolvable host raises OSError with the guard's words."""

    async def resolve_vetted(host: str, port: int) -> list[tuple[int, str, int]]:
        try:
            return await resolve(host, port, guard)
        except CallbackRejected as exc:
            raise OSError(str(exc)) from None

    return resolve_vetted


DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=4096)
def origin(url: str) -> str:
    """``scheme://host:port`` of a URL (RFC 6454's origin), lower case, the port always
    written: a receiver's circuit and concurrency key, and what operator events name,
    without a path or query that may carry a receiver's token. Kept per URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{scheme}://{host}:{port or DEFAULT_PORTS.get(scheme, 0)}"
