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
        asyncio.run(callbacks.check(url, allow_private=False))


def test_allow_private_switches_the_guard_off():
    asyncio.run(callbacks.check("http://127.0.0.1:9/hook", allow_private=True))


def test_guarded_resolver_refuses_loopback():
    resolver = callbacks.GuardedResolver(allow_private=False)
    with pytest.raises(OSError):
        asyncio.run(resolver.resolve("localhost", 80))
    allowed = asyncio.run(callbacks.GuardedResolver(allow_private=True).resolve("localhost", 80))
    assert any(item["host"] in ("127.0.0.1", "::1") for item in allowed)
