import asyncio
import ipaddress

import pytest

from service import callbacks


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
        "100.64.0.1", "198.18.0.1", "192.0.2.1", "198.51.100.7", "203.0.113.9", "224.0.0.1",
        "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
        "2002:7f00:1::", "2002:a00:1::", "2001:db8::1", "::127.0.0.1",
    ],
)  # fmt: skip
def test_non_public_addresses(address):
    assert not callbacks.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address):
    assert callbacks.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x", "example.com/hook", "http:///nohost", "https://user:pw@example.com/",
        "https://user@example.com/", "http://exa mple.com/", "http://example.com/\n",
        "http://example.com:99999/", "https://example.com/" + "a" * 2048, "javascript:alert(1)",
    ],
)  # fmt: skip
def test_malformed_urls_rejected(url):
    with pytest.raises(callbacks.CallbackRejected):
        callbacks.parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/", "http://localhost/", "http://localhost./", "http://2130706433/",
        "http://0x7f.0.0.1/", "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/",
        "http://[::1]:8080/", "http://169.254.169.254/latest/meta-data/", "http://0/",
        "http://10.0.0.1/", "http://[fe80::1]/", "http://0x7f000001/", "http://127.1/",
        "http://017700000001/", "http://[::ffff:7f00:1]/", "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://LOCALHOST/", "http://LocalHost.:80/", "http://[::]/", "http://0.0.0.0/",
        "http://[fd00::1]/", "http://100.64.0.1/", "http://198.18.0.1/",
        "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::]/", "http://[::ffff:a9fe:a9fe]/",
        "http://192.0.2.10/", "http://[2001:db8::1]/", "http://224.0.0.251/",
    ],
)  # fmt: skip
def test_private_hosts_refused_by_the_guard(url):
    with pytest.raises(callbacks.CallbackRejected):
        asyncio.run(callbacks.check(url, callbacks.Guard()))


def test_allow_private_switches_the_guard_off():
    asyncio.run(callbacks.check("http://127.0.0.1:9/hook", callbacks.Guard(allow_private=True)))


def test_guarded_resolver_refuses_loopback():
    with pytest.raises(OSError, match="localhost"):
        asyncio.run(callbacks.resolver(callbacks.Guard())("localhost", 80))
    loose = callbacks.resolver(callbacks.Guard(allow_private=True))
    allowed = asyncio.run(loose("localhost", 80))
    assert any(host in ("127.0.0.1", "::1") and port == 80 for _, host, port in allowed)


def guard(*networks: str) -> callbacks.Guard:
    return callbacks.Guard(networks=tuple(ipaddress.ip_network(n) for n in networks))


@pytest.mark.parametrize(
    ("networks", "address", "permitted"),
    [
        ((), "8.8.8.8", True),
        ((), "10.20.1.2", False),
        (("10.20.0.0/16",), "10.20.1.2", True),
        (("10.20.0.0/16",), "10.21.0.1", False),
        (("10.20.0.0/16",), "127.0.0.1", False),
        (("10.20.0.0/16",), "::ffff:10.20.1.2", True),  # the mapped form of an allowed one
        (("fd00::/8",), "fd12::1", True),
        (("fd00::/8",), "fe80::1", False),
        (("fd00::/8",), "fd00:ec2::254", False),  # AWS metadata inside a listed network
        (("fd00:ec2::254/128",), "fd00:ec2::254", True),
        (("169.254.0.0/16",), "169.254.169.254", False),
        (("169.254.0.0/16",), "169.254.1.1", True),
        (("169.254.0.0/16",), "::ffff:169.254.169.254", False),
        (("169.254.169.254/32",), "169.254.169.254", True),
        (("169.254.169.254/32",), "::ffff:169.254.169.254", True),
        (("100.64.0.0/10",), "100.100.100.200", False),  # Alibaba metadata
        (("0.0.0.0/0",), "169.254.169.254", False),
        (("0.0.0.0/0",), "192.168.1.1", True),
    ],
)  # fmt: skip
def test_networks_allowed_by_name(networks, address, permitted):
    assert guard(*networks).permits(ipaddress.ip_address(address)) is permitted


def test_a_name_must_resolve_inside_the_networks_only():
    # localhost may resolve to 127.0.0.1 and ::1: every address it gives must be allowed.
    with pytest.raises(callbacks.CallbackRejected):
        asyncio.run(callbacks.check("http://localhost:9/h", guard("10.0.0.0/8")))
    asyncio.run(callbacks.check("http://localhost:9/h", guard("127.0.0.0/8", "::1/128")))
    asyncio.run(callbacks.check("http://127.0.0.1:9/h", guard("127.0.0.0/8")))
    with pytest.raises(callbacks.CallbackRejected):
        asyncio.run(callbacks.check("http://127.0.0.1:9/h", guard("127.0.0.2/32")))


@pytest.mark.parametrize(
    "url",
    ["http://127.1/", "http://2130706433/", "http://0x7f.0.0.1/", "http://134744072/x",
     "http://8.8.2056/x", "http://0x08080808/"],
)  # fmt: skip
def test_ipv4_spelled_otherwise_than_dotted_decimal_is_refused_even_when_allowed(url):
    """The resolver reads these as addresses, the HTTP client refuses to send to them:
    registered, they could never be delivered."""
    with pytest.raises(callbacks.CallbackRejected, match="four decimal numbers"):
        asyncio.run(callbacks.check(url, callbacks.Guard(allow_private=True)))


def test_dotted_decimal_ipv4_is_taken_when_allowed():
    asyncio.run(callbacks.check("http://8.8.8.8/x", callbacks.Guard(allow_private=True)))
