"""A worker's socket is robust to a peer that speaks the wrong version or garbage: it drops that
connection and keeps serving everyone else."""

from __future__ import annotations

import socket
import struct

import httpx
import msgpack

from support import Server, new_cenv, worker_of
from wce import proto
from wce.config import ServerConfig


def worker_socket(server: Server, cenv: str) -> str:
    return str(ServerConfig(data=str(server.data)).runtime_path / f"{cenv}.sock")


def talk(path: str, data: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(path)
    s.sendall(data)
    out = b""
    dec = proto.FrameDecoder()
    try:
        while chunk := s.recv(65536):
            out += chunk
            if dec.feed(chunk):
                break  # one whole frame is all any of these exchanges answers
    finally:
        s.close()
    return out


async def test_version_mismatch_and_garbage(client: httpx.AsyncClient, server: Server) -> None:
    cenv = await new_cenv(client)
    assert (await client.get(f"/{cenv}/")).status_code == 200
    path = worker_socket(server, cenv)

    reply = talk(path, proto.frame(proto.encode(proto.Hello(99, "gateway", {}))))
    [payload] = proto.FrameDecoder().feed(reply)
    err = proto.decode(payload)
    assert isinstance(err, proto.Error) and err.code == "version_mismatch"

    assert talk(path, b"\x00\x00\x00\x05garbage and more") == b""  # dropped, nothing leaked
    assert talk(path, struct.pack(">I", 1 << 30)) == b""  # absurd frame length
    assert talk(path, proto.frame(msgpack.packb([42, 1]))) == b""  # unknown kind
    # a proper Hello still works and reveals the secret only to the local gateway side
    good = talk(path, proto.frame(proto.encode(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {}))))
    assert isinstance(proto.decode(proto.FrameDecoder().feed(good)[0]), proto.Hello)
    # and the worker still serves HTTP
    assert (await client.get(f"/{cenv}/")).status_code == 200



async def test_a_peer_that_greets_and_leaves_does_not_take_the_worker_down(client: httpx.AsyncClient,
                                                                           server: Server) -> None:
    """It used to: the worker's first notice to a peer already gone raised out of the connection's
    task and ended the worker (found as a 15% flake of the test above)."""
    cenv = await new_cenv(client)
    assert (await client.get(f"/{cenv}/")).status_code == 200
    pid = worker_of(server, cenv)
    path = worker_socket(server, cenv)
    hello = proto.frame(proto.encode(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {})))
    for _ in range(30):
        talk(path, hello)  # reads the worker's Hello, then hangs up
    assert (await client.get(f"/{cenv}/")).status_code == 200
    assert worker_of(server, cenv) == pid  # the same worker, not a replacement
