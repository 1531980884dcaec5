"""Behind a trusted proxy (finding M4): the client address of every per-address limit and the scheme
of the `Secure` cookie come from X-Forwarded-For/-Proto (or Forwarded), and only when the peer is a
trusted proxy. The tests talk to the server over loopback, so they play a proxy at 127.0.0.1: with
`--forwarded-allow-ips 127.0.0.1` it is trusted, with `10.0.0.0/8` it is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from support import ROOT, Server, assert_safe_error, sql, start_server

OWNER = {"username": "admin", "password": "correct horse"}


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("trusted"), "--forwarded-allow-ips", "127.0.0.1", "--new-per-hour", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("untrusted"), "--forwarded-allow-ips", "10.0.0.0/8", "--new-per-hour", "2")
    yield srv
    srv.stop()


@pytest.fixture
async def via_proxy(trusted: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=trusted.url, timeout=60) as c:
        yield c


@pytest.fixture
async def direct(untrusted: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=untrusted.url, timeout=60) as c:
        yield c


def fwd(client_ip: str, proto: str | None = None) -> dict[str, str]:
    """The headers a proxy (the shipped nginx configuration) adds for a client at client_ip."""
    headers = {"x-forwarded-for": client_ip}
    if proto:
        headers["x-forwarded-proto"] = proto
    return headers


async def new_cenv_from(client: httpx.AsyncClient, ip: str, **headers: str) -> httpx.Response:
    return await client.post("/new", json=OWNER, headers={**fwd(ip), **headers})


async def created_from(client: httpx.AsyncClient, ip: str) -> str:
    r = await new_cenv_from(client, ip)
    assert r.status_code == 201, r.text
    return str(r.json()["cenv"])


async def fail_login(client: httpx.AsyncClient, cenv: str, ip: str, username: str) -> int:
    r = await client.post(f"/{cenv}/auth/login", json={"username": username, "password": "wrong password"},
                          headers=fwd(ip))
    return r.status_code


async def test_login_throttle_counts_each_forwarded_client(via_proxy: httpx.AsyncClient, trusted: Server) -> None:
    cenv = await created_from(via_proxy, "192.0.2.1")
    # 31 failures from 31 clients (and 31 usernames: the per-username limit is not what is tested)
    for i in range(31):
        assert await fail_login(via_proxy, cenv, f"198.51.100.{i + 1}", f"nobody{i}") == 401
    # nobody is locked out: the owner, from yet another address, signs in
    r = await via_proxy.post(f"/{cenv}/auth/login", json=OWNER, headers=fwd("203.0.113.7"))
    assert r.status_code == 200, r.text
    ips = {row[0] for row in sql(trusted.data, cenv, "SELECT ip FROM _wce_audit_log WHERE action = 'auth.login_failed'")}
    assert ips == {f"198.51.100.{i + 1}" for i in range(31)}  # the audit log has the real clients too


async def test_login_throttle_locks_out_only_the_forwarded_client(via_proxy: httpx.AsyncClient) -> None:
    cenv = await created_from(via_proxy, "192.0.2.2")
    statuses = [await fail_login(via_proxy, cenv, "198.51.100.200", f"guess{i}") for i in range(31)]
    assert statuses == [401] * 30 + [429]
    r = await via_proxy.post(f"/{cenv}/auth/login", json=OWNER, headers=fwd("198.51.100.200"))
    assert_safe_error(r, 429, "rate_limited")
    # a spoofed leftmost entry changes nothing: the proxy appended the address it saw
    r = await via_proxy.post(f"/{cenv}/auth/login", json=OWNER, headers=fwd("203.0.113.8, 198.51.100.200"))
    assert_safe_error(r, 429, "rate_limited")
    # the owner, from another address, is not locked out
    r = await via_proxy.post(f"/{cenv}/auth/login", json=OWNER, headers=fwd("203.0.113.8"))
    assert r.status_code == 200, r.text


async def test_new_limit_counts_each_forwarded_client(via_proxy: httpx.AsyncClient) -> None:
    await created_from(via_proxy, "192.0.2.10")
    await created_from(via_proxy, "192.0.2.10")
    assert_safe_error(await new_cenv_from(via_proxy, "192.0.2.10"), 429, "rate_limited")
    assert_safe_error(await new_cenv_from(via_proxy, "192.0.2.11, 192.0.2.10"), 429, "rate_limited")  # spoofed
    await created_from(via_proxy, "192.0.2.11")  # another client still may
    # RFC 7239 Forwarded (quoted IPv6 with a port) when no X-Forwarded-For is sent
    for _ in range(2):
        r = await via_proxy.post("/new", json=OWNER, headers={"forwarded": 'for="[2001:db8::7]:4711";proto=https'})
        assert r.status_code == 201, r.text
    r = await via_proxy.post("/new", json=OWNER, headers={"forwarded": 'for="[2001:DB8:0::7]"'})
    assert_safe_error(r, 429, "rate_limited")  # the same address, however it is written


async def test_absolute_urls_follow_the_forwarded_scheme(via_proxy: httpx.AsyncClient) -> None:
    r = await new_cenv_from(via_proxy, "192.0.2.20", **{"x-forwarded-proto": "https", "host": "wce.example"})
    assert r.status_code == 201 and r.json()["url"].startswith("https://wce.example/"), r.text
    r = await new_cenv_from(via_proxy, "192.0.2.20", host="wce.example")
    assert r.status_code == 201 and r.json()["url"].startswith("http://wce.example/"), r.text


async def login_cookie(client: httpx.AsyncClient, cenv: str, **headers: str) -> str:
    r = await client.post(f"/{cenv}/auth/login", json=OWNER, headers=headers)
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return r.headers["set-cookie"]


async def test_session_cookie_is_secure_under_https(via_proxy: httpx.AsyncClient) -> None:
    cenv = await created_from(via_proxy, "192.0.2.30")
    assert "; Secure" in await login_cookie(via_proxy, cenv, **fwd("192.0.2.30", "https"))
    assert "; Secure" in await login_cookie(via_proxy, cenv, forwarded="for=192.0.2.30;proto=https")
    assert "; Secure" not in await login_cookie(via_proxy, cenv, **fwd("192.0.2.30", "http"))
    assert "; Secure" not in await login_cookie(via_proxy, cenv, **fwd("192.0.2.30"))
    assert "; Secure" not in await login_cookie(via_proxy, cenv, **fwd("192.0.2.30", "ftp"))  # not a scheme we take


async def test_untrusted_peer_forwarded_headers_are_ignored(direct: httpx.AsyncClient) -> None:
    # the per-address limit stays the socket peer's, whatever the headers claim
    r = await new_cenv_from(direct, "192.0.2.40")
    assert r.status_code == 201, r.text
    cenv = r.json()["cenv"]
    assert (await new_cenv_from(direct, "192.0.2.41", forwarded="for=192.0.2.42")).status_code == 201
    assert_safe_error(await new_cenv_from(direct, "192.0.2.43"), 429, "rate_limited")
    assert_safe_error(await direct.post("/new", json=OWNER, headers={"forwarded": "for=192.0.2.44"}), 429, "rate_limited")
    # and the scheme stays http: no Secure cookie, no https URL
    assert "; Secure" not in await login_cookie(direct, cenv, **fwd("192.0.2.40", "https"))
    assert "; Secure" not in await login_cookie(direct, cenv, forwarded="for=192.0.2.40;proto=https")


def test_a_bad_setting_stops_the_server_with_one_line(tmp_path: Path) -> None:
    serve = [sys.executable, "-m", "wce", "--data", str(tmp_path / "data"), "serve", "--port", "0"]
    for setting, from_env in (("10.0.0.1/8", False), ("localhost", False), ("127.0.0.1,,::1", False),
                              ("*, 10.0.0.0/8", False), ("proxy.example", True)):
        args = serve if from_env else [*serve, "--forwarded-allow-ips", setting]
        env = {**os.environ, "WCE_FORWARDED_ALLOW_IPS": setting} if from_env else None
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it started: stop it as an operator would
            proc.communicate(timeout=60)
            raise AssertionError(f"the server started with --forwarded-allow-ips {setting!r}") from None
        assert proc.returncode != 0 and out == "", (setting, out)
        assert len(err.splitlines()) == 1 and err.startswith("wce: --forwarded-allow-ips: "), err
