"""Public pages answered by the gateway from what the worker pushed: no hop, and the same answer
the worker itself gives (compared over the worker's own socket)."""

from __future__ import annotations

import os
import signal
import socket

import httpx

from support import Server, admin_cenv, bearer, link_every_gateway
from wce import proto
from wce.config import ServerConfig
from wce.gateway.origins import PATH_MODE_HEADERS


def ask_worker(server: Server, cenv: str, path: str, headers: list[tuple[str, str]]) -> proto.Response:
    """One request straight to the cenv's worker, as a gateway would send it."""
    sock_path = str(ServerConfig(data=str(server.data)).runtime_path / f"{cenv}.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    try:
        s.sendall(proto.frame(proto.encode(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {}))))
        s.sendall(proto.frame(proto.encode(proto.Request(1, cenv, "GET", path, "", headers, b"", "127.0.0.1", "http"))))
        dec = proto.FrameDecoder()
        while True:
            data = s.recv(65536)
            assert data, "worker closed the connection"
            for payload in dec.feed(data):
                msg = proto.decode(payload)
                if isinstance(msg, proto.Response):
                    return msg
    finally:
        s.close()


def comparable(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers if k.lower() not in ("date", "server", "content-length", "transfer-encoding")}


def as_forwarded(headers: list[tuple[str, str]]) -> dict[str, str]:
    """A worker's headers as the gateway answers them: with the sandbox and CORS of every cenv answer."""
    return comparable([*headers, *((k.decode(), v.decode()) for k, v in PATH_MODE_HEADERS)])


async def test_gateway_answers_public_pages_like_the_worker(client: httpx.AsyncClient, server: Server) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"})
    await client.put(c.url("/api/permissions/items"), headers=h, json={"roles": {"anon": {"select": True}}})
    await client.post(c.url("/api/tables/items/rows"), headers=h, json={"name": "first"})
    r = await client.post(c.url("/api/pages"), headers=h, json={
        "path": "/list", "template": "<ul>{{#items}}<li>{{name}}</li>{{/items}}</ul>",
        "queries": {"items": "SELECT name FROM items ORDER BY id"}})
    assert r.status_code == 201, r.text

    via_gateway = await client.get(c.url("/list"))
    direct = ask_worker(server, c.id, "/list", [])
    assert via_gateway.status_code == direct.status == 200
    assert via_gateway.headers["content-length"] == str(len(direct.body))
    assert via_gateway.content == direct.body == b"<ul><li>first</li></ul>"
    assert comparable(list(via_gateway.headers.items())) == as_forwarded(direct.headers), (via_gateway.headers, direct.headers)
    etag = via_gateway.headers["etag"]
    g304 = await client.get(c.url("/list"), headers={"if-none-match": etag})
    d304 = ask_worker(server, c.id, "/list", [("if-none-match", etag)])
    assert g304.status_code == d304.status == 304
    assert comparable(list(g304.headers.items())) == as_forwarded(d304.headers)

    # the gateway answers without the worker: a stopped worker does not stop the page
    me = await client.get(c.url("/auth/me"), headers=h)
    assert me.status_code == 200
    await link_every_gateway(server, c.id)  # whichever gateway takes the next connection has the page
    pids = server.workers()
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        with httpx.Client(base_url=server.url, timeout=5) as sync:
            assert sync.get(c.url("/list")).text == "<ul><li>first</li></ul>"
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)

    # a write's acknowledgement comes after the gateway has the new page
    for i in range(20):
        assert (await client.post(c.url("/api/tables/items/rows"), headers=h, json={"name": f"n{i}"})).status_code == 201
        assert f"<li>n{i}</li>" in (await client.get(c.url("/list"))).text
    # a deleted page is gone from the gateway too
    page_id = r.json()["id"]
    assert (await client.delete(c.url(f"/api/pages/{page_id}"), headers=h)).status_code == 204
    assert (await client.get(c.url("/list"))).status_code == 404
