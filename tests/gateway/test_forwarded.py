"""wce.gateway.forwarded: which peers are trusted proxies, and what is believed of their headers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from wce.config import ServerConfig
from wce.gateway.asgi import Gateway
from wce.gateway.forwarded import MAX_HOPS, TrustedProxies, forwarded_elements, parse_address, trusted_proxies


def rewritten(setting: str, peer: str | None, *headers: tuple[str, str]) -> tuple[str | None, str]:
    """(client address, scheme) of a request from peer with headers, after the rewrite."""
    scope: dict[str, Any] = {"type": "http", "scheme": "http", "client": (peer, 51234) if peer else None,
                             "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers]}
    proxies = trusted_proxies(setting)
    assert proxies is not None
    proxies.rewrite(scope)
    return (scope["client"][0] if scope["client"] else None), scope["scheme"]


def test_empty_setting_is_off() -> None:
    assert trusted_proxies("") is None and trusted_proxies("  ") is None


@pytest.mark.parametrize("setting", [
    ",", "127.0.0.1,", "127.0.0.1,,::1", "localhost", "10.0.0.1/8", "10.0.0.0/33", "::1/129", "*, 10.0.0.0/8",
    "127.0.0.1 10.0.0.1", "unix:/run/wce.sock", "1.2.3", "01.2.3.4",
])
def test_bad_settings_are_refused_with_one_line(setting: str) -> None:
    with pytest.raises(ValueError) as caught:
        trusted_proxies(setting)
    message = str(caught.value)
    assert message.startswith("--forwarded-allow-ips: ") and "\n" not in message


def test_host_bits_message_suggests_the_network() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/8"):
        trusted_proxies("10.0.0.1/8")


def test_which_peers_are_trusted() -> None:
    p = TrustedProxies(" 127.0.0.1 , ::1, 10.0.0.0/8, 2001:db8:1::/48 ")
    for peer in ("127.0.0.1", "::1", "10.200.3.4", "2001:db8:1:ffff::9", "::ffff:127.0.0.1", "::ffff:10.1.1.1"):
        assert p.trusts_peer((peer, 1)), peer
    for peer in ("127.0.0.2", "11.0.0.1", "2001:db8:2::1", "::2", "not an address", ""):
        assert not p.trusts_peer((peer, 1)), peer
    assert not p.trusts_peer(None)  # a Unix-socket peer only when named
    assert TrustedProxies("unix").trusts_peer(None) and not TrustedProxies("unix").trusts_peer(("127.0.0.1", 1))
    assert TrustedProxies("*").trusts_peer(None) and TrustedProxies("*").trusts_peer(("203.0.113.1", 1))
    # an IPv4-mapped entry is the IPv4 address it maps
    assert TrustedProxies("::ffff:192.0.2.1").trusts_peer(("192.0.2.1", 1))
    assert TrustedProxies("::ffff:192.0.2.0/120").trusts_peer(("192.0.2.77", 1))


def test_addresses_as_proxies_write_them() -> None:
    assert str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert str(parse_address("192.0.2.1:8080")) == "192.0.2.1"
    assert str(parse_address("2001:DB8:0::1")) == "2001:db8::1"  # canonical: one key per address
    assert str(parse_address("[2001:db8::1]:4711")) == "2001:db8::1"
    assert str(parse_address("[2001:db8::1]")) == "2001:db8::1"
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    for bad in ("unknown", "_hidden", "", "[2001:db8::1", "example.com", "192.0.2.1:80:80", "001.2.3.4"):
        assert parse_address(bad) is None, bad


def test_x_forwarded_for_is_walked_from_the_right() -> None:
    xff = "x-forwarded-for"
    # the peer is the proxy; it appended the client it saw
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "198.51.100.7")) == ("198.51.100.7", "http")
    # spoofed leftmost entries are never reached
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "10.0.0.1, 1.1.1.1, 198.51.100.7"))[0] == "198.51.100.7"
    # a chain of trusted proxies is skipped, the first untrusted address is the client
    chain = (xff, "6.6.6.6, 198.51.100.7, 10.0.0.5, 10.0.0.6")
    assert rewritten("127.0.0.1, 10.0.0.0/8", "127.0.0.1", chain)[0] == "198.51.100.7"
    # all trusted: the leftmost
    assert rewritten("127.0.0.1, 10.0.0.0/8", "127.0.0.1", (xff, "10.0.0.1, 10.0.0.2"))[0] == "10.0.0.1"
    # `*` trusts every address, so it is always the leftmost (only for a server nothing else reaches)
    assert rewritten("*", "203.0.113.1", (xff, "198.51.100.1, 198.51.100.2"))[0] == "198.51.100.1"
    # several header lines are one list, in order
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "1.1.1.1"), (xff, "198.51.100.9"))[0] == "198.51.100.9"
    # ports and brackets dropped, IPv6 canonical
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "[2001:DB8::7]:4711"))[0] == "2001:db8::7"
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "198.51.100.7:5555"))[0] == "198.51.100.7"


def test_a_word_ends_the_walk_at_the_last_address_known() -> None:
    xff = "x-forwarded-for"
    # the proxy did not know (or hid) the client: it stays the proxy, never what the client wrote further left
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "198.51.100.7, unknown"))[0] == "127.0.0.1"
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, "1.1.1.1, garbage, 10.0.0.3"))[0] == "10.0.0.3"
    assert rewritten("127.0.0.1, 10.0.0.0/8", "127.0.0.1", (xff, "1.1.1.1, _hidden, 10.0.0.3"))[0] == "10.0.0.3"
    assert rewritten("127.0.0.1", "127.0.0.1", (xff, ""))[0] == "127.0.0.1"


def test_what_is_remembered_is_bounded() -> None:
    p = TrustedProxies("*")
    long_entry = "1" * 10_000
    assert rewritten("*", "127.0.0.1", ("x-forwarded-for", f"{long_entry}, 198.51.100.7"))[0] == "198.51.100.7"
    assert p.address(long_entry) is None and long_entry not in p._seen
    for i in range(5000):
        p.address(f"10.{i // 250}.{i % 250}.1")
    assert len(p._seen) <= 4096


def test_a_long_chain_is_looked_at_only_so_far() -> None:
    many = ", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000))
    client, _ = rewritten("127.0.0.1, 10.0.0.0/8", "127.0.0.1", ("x-forwarded-for", many))
    entries = [e.strip() for e in many.split(",")]
    assert client == entries[-MAX_HOPS]


def test_untrusted_peer_is_left_alone() -> None:
    headers = (("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https"), ("forwarded", "for=1.1.1.1;proto=https"))
    assert rewritten("10.0.0.0/8", "127.0.0.1", *headers) == ("127.0.0.1", "http")
    assert rewritten("10.0.0.0/8", None, *headers) == (None, "http")  # a Unix-socket peer, not named
    assert rewritten("unix", None, *headers[:2]) == ("198.51.100.7", "https")


def test_scheme_from_x_forwarded_proto() -> None:
    xfp = "x-forwarded-proto"
    assert rewritten("127.0.0.1", "127.0.0.1", (xfp, "https")) == ("127.0.0.1", "https")
    assert rewritten("127.0.0.1", "127.0.0.1", (xfp, "HTTPS"))[1] == "https"
    assert rewritten("127.0.0.1", "127.0.0.1", (xfp, "http, https"))[1] == "https"  # the nearest hop's
    for other in ("ftp", "", "https;", "javascript", "ws"):
        assert rewritten("127.0.0.1", "127.0.0.1", (xfp, other))[1] == "http", other


def test_forwarded_elements_quoting() -> None:
    assert forwarded_elements('for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https, For=unknown;by=_x') == [
        {"for": "192.0.2.43"}, {"for": "[2001:db8:cafe::17]:4711", "proto": "https"}, {"for": "unknown", "by": "_x"}]
    # commas and semicolons inside quotes belong to the value; escapes are undone
    assert forwarded_elements('for="a,b;c";proto=http, for="x\\"y"') == [{"for": "a,b;c", "proto": "http"}, {"for": 'x"y'}]
    # junk pairs dropped, empty elements kept as empty, the first of a repeated parameter counts
    assert forwarded_elements("junk;for=1.2.3.4;for=5.6.7.8,,") == [{"for": "1.2.3.4"}, {}, {}]
    assert forwarded_elements('for="unterminated') == [{"for": "unterminated"}]


def test_forwarded_is_walked_like_x_forwarded_for() -> None:
    fw = "forwarded"
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, 'for="[2001:db8::1]:4711";proto=https')) == ("2001:db8::1", "https")
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, "for=1.1.1.1, for=198.51.100.7")) == ("198.51.100.7", "http")
    # the proto of the outermost trusted proxy, the one that spoke to the client
    assert rewritten("127.0.0.1, 10.0.0.0/8", "127.0.0.1",
                     (fw, "for=198.51.100.7;proto=https, for=10.0.0.2;proto=http")) == ("198.51.100.7", "https")
    # obfuscated and unknown identifiers are not addresses: they end the walk
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, "for=1.1.1.1, for=_hidden;proto=https")) == ("127.0.0.1", "https")
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, "for=1.1.1.1, for=unknown")) == ("127.0.0.1", "http")
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, "proto=https")) == ("127.0.0.1", "https")
    assert rewritten("127.0.0.1", "127.0.0.1", (fw, "for=198.51.100.7;proto=gopher")) == ("198.51.100.7", "http")


def test_x_forwarded_headers_win_over_forwarded() -> None:
    # a proxy that sets X-Forwarded-* passes a client's own Forwarded through: it must count for nothing
    headers = (("forwarded", "for=1.1.1.1;proto=https"), ("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "http"))
    assert rewritten("127.0.0.1", "127.0.0.1", *headers) == ("198.51.100.7", "http")
    headers = (("forwarded", "for=1.1.1.1;proto=https"), ("x-forwarded-for", "198.51.100.7"))
    assert rewritten("127.0.0.1", "127.0.0.1", *headers) == ("198.51.100.7", "http")


class Recorder:
    """The platform app: notes the scope it was called with."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append((scope.get("client"), scope["scheme"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def gateway_sees(setting: str, headers: dict[str, str]) -> tuple[Any, str]:
    platform = Recorder()
    app = Gateway(ServerConfig(forwarded_allow_ips=setting, access_log="off"), None, platform)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/", headers=headers)).status_code == 204
    return platform.seen[0]


async def test_the_gateway_rewrites_before_dispatch() -> None:
    proxied = {"x-forwarded-for": "9.9.9.9, 198.51.100.7", "x-forwarded-proto": "https"}
    assert await gateway_sees("127.0.0.1", proxied) == (("198.51.100.7", 0), "https")
    assert await gateway_sees("10.0.0.0/8", proxied) == (("127.0.0.1", 40000), "http")
    assert await gateway_sees("", proxied) == (("127.0.0.1", 40000), "http")  # off: the default


def test_off_costs_one_attribute_test() -> None:
    assert Gateway(ServerConfig(access_log="off"), None, Recorder()).proxies is None  # type: ignore[arg-type]
