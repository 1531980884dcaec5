"""Trusted proxies: the client's address and scheme as a proxy in front of us saw them.

Behind a TLS-terminating proxy every request comes from the proxy's address over plain HTTP. With
`--forwarded-allow-ips` (`WCE_FORWARDED_ALLOW_IPS`) naming that proxy, the gateway believes what it
says in `X-Forwarded-For`/`X-Forwarded-Proto` (or RFC 7239 `Forwarded`) and rewrites the request's
`client` and `scheme` once, before anything reads them: the per-address limits (login throttle and
rate limit in the worker, `/new` and `/import` in the fork server), the audit log and the `Secure`
cookie flag all go by the rewritten values. A request from any other peer is left as it is: its
forwarded headers are ignored entirely.

The setting, parsed once by `trusted_proxies`:
- `""`: off (the default); the gateway does not even look at the headers;
- comma-separated IPv4/IPv6 addresses and CIDR networks (`127.0.0.1, ::1, 10.0.0.0/8`); an IPv4
  peer seen as IPv4-mapped IPv6 (`::ffff:127.0.0.1`, on a dual-stack socket) matches its IPv4 entry;
- `unix`: a peer on a Unix socket, which has no address (the socket file's permissions decide who
  may connect, so naming it is the operator's statement that only the proxy can);
- `*`: any peer, Unix sockets included (only when nothing but the proxy can reach the server).
Anything else (a host name, a network with host bits set, `*` among others) is a ValueError, and
`wce serve` refuses to start with its message.

Which address is the client's: the entries of `X-Forwarded-For` are walked from the right (the
rightmost was written by the peer, a trusted proxy); an address that is itself a trusted proxy is
skipped, the first untrusted one is the client, and if all are trusted the leftmost is. Entries left
of the client were written by the client and are never looked at, so a spoofed leftmost entry
changes nothing. An entry that is not an address (`unknown`, an obfuscated `_name`, garbage) ends
the walk, and the last address passed (or the peer's own) stays the client's; at most `MAX_HOPS`
entries are looked at. `Forwarded` is walked the same way on its `for=` parameters (token or
quoted, `"[2001:db8::1]:4711"`), and the scheme is the `proto=` of the last element walked, the
one the outermost trusted proxy wrote.

`X-Forwarded-For` wins over `Forwarded` when both are present, and `X-Forwarded-Proto` over
`Forwarded`'s `proto=`: a proxy that sets the X- headers (nginx as shipped, HAProxy's `option
forwardfor`, Caddy, Traefik) passes a client's own `Forwarded` through untouched. A proxy that
sends only `Forwarded` must remove the X- headers its clients send. Only `http` and `https` are
taken as a scheme.

hypercorn's `ProxyFixMiddleware` is not used: it believes a fixed number of hops from any peer
(no address check: a client that reaches the server directly sets its own address), copies the
whole scope per request, takes any scheme, and reads `Forwarded` values without unquoting them.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

Scope = dict[str, Any]
Address = IPv4Address | IPv6Address

MAX_HOPS = 16  # entries looked at per header: bounds the cost of a long (e.g. all-trusted) chain
MEMO_SIZE = 4096  # addresses remembered (parsed, canonical, trusted or not) before starting afresh
MAX_ADDRESS = 64  # characters: `[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535` is 53
SCHEMES = {"http": "http", "https": "https"}
_UNSEEN = object()


def parse_address(text: str) -> Address | None:
    """An IP address as a proxy may write it (`192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
    `[2001:db8::1]:80`), IPv4-mapped IPv6 as IPv4; None for anything else (`unknown`, `_hidden`)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of a `Forwarded` header value (RFC 7239 §4), each {parameter: value}, with
    parameter names lowercased and quoted strings unquoted (a comma or semicolon inside quotes
    is part of the value). A pair without `=` is dropped; of a repeated parameter the first counts."""
    parts = value.split('"')
    if len(parts) % 2 and not any(c in q for q in parts[1::2] for c in ",;\\"):
        # the usual case: nothing quoted but addresses (`"[2001:db8::1]:4711"`), so no quote can hide a separator
        return [_pairs(element.split(";")) for element in "".join(parts).split(",")]
    elements: list[list[str]] = [[]]
    pair = ""
    for token in _TOKENS.findall(value):
        if token == ";" or token == ",":
            elements[-1].append(pair)
            pair = ""
            if token == ",":
                elements.append([])
        elif token[0] == '"':
            inner = token[1:-1] if len(token) > 1 and token[-1] == '"' else token[1:]
            pair += _ESCAPE.sub(r"\1", inner)
        else:
            pair += token
    elements[-1].append(pair)
    return [_pairs(element) for element in elements]


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[;,]|[^;,"]+')
_ESCAPE = re.compile(r"\\(.)")


def _pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, val = pair.partition("=")
        if eq and (name := name.strip().lower()):
            out.setdefault(name, val.strip())
    return out


class TrustedProxies:
    """The parsed setting: which peers are trusted proxies, and the rewrite of a request by them."""

    __slots__ = ("any", "unix", "exact", "networks", "_seen")

    def __init__(self, setting: str) -> None:
        entries = [e.strip() for e in setting.split(",")]
        if not any(entries):
            raise ValueError("--forwarded-allow-ips: no address in the setting")
        self.any = entries == ["*"]
        self.unix = self.any or "unix" in entries
        self.exact: frozenset[str] = frozenset()
        self.networks: tuple[IPv4Network | IPv6Network, ...] = ()
        self._seen: dict[str, tuple[str, bool] | None] = {}
        if self.any:
            return
        exact: set[str] = set()
        networks = []
        for entry in entries:
            if entry == "unix":
                continue
            if entry in ("", "*"):
                raise ValueError(f"--forwarded-allow-ips: {'an empty entry' if not entry else '* must stand alone'} "
                                 f"in {setting!r}")
            if "/" in entry:
                try:
                    net = ip_network(entry)
                except ValueError:
                    raise ValueError(f"--forwarded-allow-ips: {entry!r} is not a network{_did_you_mean(entry)}") from None
                if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
                    net = ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")  # as addresses are
                networks.append(net)
                continue
            try:
                ip = ip_address(entry)
            except ValueError:
                raise ValueError(f"--forwarded-allow-ips: {entry!r} is not an IP address, a CIDR network, "
                                 "'unix' or '*'") from None
            exact.add(str(parse_address(str(ip))))
        self.exact = frozenset(exact)
        self.networks = tuple(networks)

    def trusts(self, ip: Address) -> bool:
        """Whether an address is a trusted proxy's."""
        return self.any or str(ip) in self.exact or any(ip in net for net in self.networks)

    def address(self, text: str) -> tuple[str, bool] | None:
        """(canonical form, trusted) of an address as written in a header or by the socket layer;
        None when it is no address. Remembered: parsing one costs a few µs, looking it up ~0.1."""
        found = self._seen.get(text, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        if len(text) > MAX_ADDRESS:
            return None  # no address is that long; and a long key is not worth remembering
        ip = parse_address(text)
        found = None if ip is None else (str(ip), self.trusts(ip))
        if len(self._seen) >= MEMO_SIZE:
            self._seen.clear()  # a flood of distinct addresses costs parsing again, never memory
        self._seen[text] = found
        return found

    def trusts_peer(self, client: tuple[str, int] | list[Any] | None) -> bool:
        """Whether the connection's peer (ASGI `scope["client"]`; None on a Unix socket) is trusted."""
        if not client:
            return self.unix
        if self.any:
            return True
        found = self.address(client[0])
        return found is not None and found[1]

    def client_from(self, entries: list[str]) -> str | None:
        """The client's address among proxy-written entries (walked from the right), or None when
        the rightmost is not an address."""
        client = None
        for entry in reversed(entries[-MAX_HOPS:]):
            found = self.address(entry)
            if found is None:
                break
            client = found[0]
            if not found[1]:
                break
        return client

    def rewrite(self, scope: Scope) -> None:
        """Set the scope's `client` and `scheme` from the forwarded headers, if its peer is trusted."""
        if not self.trusts_peer(scope.get("client")):
            return
        xff = xfp = fwd = None
        for k, v in scope["headers"]:
            if k == b"x-forwarded-for":
                xff = v if xff is None else xff + b"," + v
            elif k == b"x-forwarded-proto":
                xfp = v if xfp is None else xfp + b"," + v
            elif k == b"forwarded":
                fwd = v if fwd is None else fwd + b"," + v
        client = scheme = None
        if xff is not None:
            client = self.client_from(xff.decode("latin-1").split(","))
        elif fwd is not None:
            client, scheme = self._forwarded(fwd.decode("latin-1"))
        if xfp is not None:
            scheme = xfp.decode("latin-1").rpartition(",")[2].strip().lower()
        if client is not None:
            scope["client"] = (client, 0)
        if scheme in SCHEMES:
            scope["scheme"] = SCHEMES[scheme]

    def _forwarded(self, value: str) -> tuple[str | None, str | None]:
        """(client, proto) from a `Forwarded` value, walked like X-Forwarded-For."""
        client = proto = None
        for element in reversed(forwarded_elements(value)[-MAX_HOPS:]):
            proto = element.get("proto", proto)
            found = self.address(element.get("for", ""))
            if found is None:
                break
            client = found[0]
            if not found[1]:
                break
        return client, proto.lower() if proto else None


def _did_you_mean(entry: str) -> str:
    try:
        return f" (host bits set: {ip_network(entry, strict=False)}?)"
    except ValueError:
        return ""


def trusted_proxies(setting: str) -> TrustedProxies | None:
    """The parsed `--forwarded-allow-ips`, or None when it is empty (off). ValueError, with a
    one-line message naming the setting, when it cannot be parsed."""
    return TrustedProxies(setting) if setting.strip() else None
