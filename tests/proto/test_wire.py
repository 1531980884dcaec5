"""The wire: framing, codec and channel, each edge case a peer can throw at us."""

import struct

import msgpack
import pytest
import trio
import trio.testing

from wce import proto
from wce.proto.channel import MessageChannel
from wce.proto.testing import channel_pair


def req(i: int = 1, **kw: object) -> proto.Request:
    base = dict(id=i, cenv="a" * 26, method="GET", path="/auth/me", query="x=1",
                headers=[("accept", "*/*")], body=b"\x00\xff", client="127.0.0.1", scheme="http",
                identity={"sub": "1", "jti": "j", "role": "admin"})
    base.update(kw)
    return proto.Request(**base)  # type: ignore[arg-type]


ALL = [
    proto.Hello(proto.PROTOCOL_VERSION, "gateway", {"pid": 3}),
    req(),
    req(identity=None),
    proto.Response(1, 200, [("content-type", "application/json")], b"{}"),
    proto.StreamStart(2, 200, []),
    proto.StreamChunk(2, b"data: x\n\n"),
    proto.StreamEnd(2),
    proto.Error(3, "internal", "boom"),
    proto.Cancel(4),
    proto.Shutdown(),
    proto.Closing("idle"),
    proto.Notice("settings", {"rate_limit_per_minute": 60}),
]


@pytest.mark.parametrize("msg", ALL, ids=lambda m: type(m).__name__)
def test_roundtrip_every_kind(msg: proto.Message) -> None:
    assert proto.decode(proto.encode(msg)) == msg


def test_frames_split_and_merged() -> None:
    payloads = [proto.encode(m) for m in ALL]
    stream = b"".join(proto.frame(p) for p in payloads)
    dec = proto.FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), 7):  # torn at every 7th byte
        got += dec.feed(stream[i : i + 7])
    assert got == payloads and dec.pending == 0
    dec.eof()  # a clean end


def test_frame_over_limit_refused_before_buffering() -> None:
    dec = proto.FrameDecoder(max_size=1024)
    with pytest.raises(proto.FrameTooLarge):
        dec.feed(struct.pack(">I", 1025))
    with pytest.raises(proto.FrameTooLarge):
        proto.frame(b"x" * 2000, max_size=1024)
    default = proto.FrameDecoder()
    with pytest.raises(proto.FrameTooLarge):
        default.feed(struct.pack(">I", (16 << 20) + 1))


def test_torn_frame_at_eof() -> None:
    dec = proto.FrameDecoder()
    assert dec.feed(proto.frame(b"hello")[:6]) == []
    with pytest.raises(proto.TornFrame):
        dec.eof()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never-used msgpack byte
        b"garbage that is not msgpack at all \xff\xfe",
        msgpack.packb({"kind": 2}),  # a map, not [kind, ...]
        msgpack.packb([]),
        msgpack.packb(["2", 1]),  # kind not an int
        msgpack.packb([3, 1, 200]),  # wrong arity
        msgpack.packb([3, 1, "200", [], b""]),  # wrong type
        msgpack.packb([3, 1, 200, [["a"]], b""]),  # header not a pair
        msgpack.packb([3, -1, 200, [], b""]),  # negative id
        msgpack.packb([1, 1, "gateway", {1: "int key"}]),  # non-string map key
        msgpack.packb([2, 1, "c", "GET", "/", "", [], "body as str", "ip", "http", None]),
    ],
)
def test_bad_payloads_are_decode_errors(payload: bytes) -> None:
    with pytest.raises(proto.DecodeError):
        proto.decode(payload)


def test_unknown_kind() -> None:
    with pytest.raises(proto.UnknownKind):
        proto.decode(msgpack.packb([99, 1]))


def test_unencodable_values_are_encode_errors() -> None:
    with pytest.raises(proto.EncodeError):
        proto.encode(proto.Hello(1, "worker", {"big": 2**64}))
    with pytest.raises(proto.EncodeError):
        proto.encode(proto.Hello(1, "worker", {"obj": object()}))


def test_constructing_a_bad_message_fails() -> None:
    with pytest.raises(proto.DecodeError):
        proto.Response(1, 1000, [], b"")
    with pytest.raises(proto.DecodeError):
        proto.Hello(1, "someone", {})


async def test_channel_roundtrip_and_clean_eof() -> None:
    a, b = channel_pair()
    for m in ALL:
        await a.send(m)
    got = [await b.receive() for _ in ALL]
    assert got == ALL
    await a.aclose()
    with pytest.raises(trio.EndOfChannel):
        await b.receive()


async def test_channel_torn_frame_and_garbage() -> None:
    s1, s2 = trio.testing.memory_stream_pair()
    ch = MessageChannel(s2)
    await s1.send_all(proto.frame(proto.encode(proto.Cancel(1)))[:-1])
    await s1.aclose()
    with pytest.raises(proto.TornFrame):
        await ch.receive()

    s1, s2 = trio.testing.memory_stream_pair()
    ch = MessageChannel(s2)
    await s1.send_all(proto.frame(b"\xc1\xc1\xc1"))
    with pytest.raises(proto.DecodeError):
        await ch.receive()


async def test_channel_oversize_header_does_not_hang() -> None:
    s1, s2 = trio.testing.memory_stream_pair()
    ch = MessageChannel(s2, max_frame=1024)
    await s1.send_all(struct.pack(">I", 10**9))
    with trio.fail_after(5):
        with pytest.raises(proto.FrameTooLarge):
            await ch.receive()


async def test_concurrent_senders_never_interleave() -> None:
    a, b = channel_pair()
    big = [proto.StreamChunk(i, bytes([i % 256]) * 200_000) for i in range(8)]
    async with trio.open_nursery() as n:
        for m in big:
            n.start_soon(a.send, m)
        got = [await b.receive() for _ in big]
    assert sorted(got, key=lambda m: m.id) == big  # type: ignore[union-attr]


async def test_broken_stream_is_broken_channel() -> None:
    s1, s2 = trio.testing.memory_stream_pair()
    ch = MessageChannel(s1)
    await s2.aclose()
    with pytest.raises(proto.BrokenChannel):
        for _ in range(3):
            await ch.send(proto.Cancel(1))


async def test_writer_sends_a_batch_in_one_write_in_order() -> None:
    """Frames queued in one scheduler batch reach the stream together, in the order queued."""
    s1, s2 = trio.testing.memory_stream_pair()
    writes: list[int] = []
    real_send_all = s1.send_all

    async def counting_send_all(data: bytes) -> None:
        writes.append(len(data))
        await real_send_all(data)

    s1.send_all = counting_send_all  # type: ignore[method-assign]
    a, b = MessageChannel(s1), MessageChannel(s2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        ends = [a.send_nowait(proto.Cancel(i)) for i in range(10)]
        assert ends == sorted(ends) and a.flushed == 0 and a.backlog == ends[-1]
        got = [await b.receive() for _ in range(10)]
        assert got == [proto.Cancel(i) for i in range(10)]
        assert writes == [ends[-1]] and a.flushed == ends[-1]
        await a.send(proto.Cancel(99))  # returns once written
        assert a.flushed == a.queued
        nursery.cancel_scope.cancel()


async def test_a_broken_stream_leaves_later_frames_unflushed() -> None:
    """What the stream never took stays past `flushed`: the gateway's test for 'safe to resend'."""
    s1, s2 = trio.testing.memory_stream_pair()
    a = MessageChannel(s1)
    await s2.aclose()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run_writer)
        end = a.send_nowait(proto.Cancel(1))
        with pytest.raises(proto.BrokenChannel):
            await a.wait_flushed(end)
        assert a.flushed < end
        with pytest.raises(proto.BrokenChannel):
            a.send_nowait(proto.Cancel(2))


async def test_closed_for_sending_refuses_and_drops_the_queue() -> None:
    a, b = channel_pair()
    a.send_nowait(proto.Cancel(1))
    a.close_sending()
    with pytest.raises(trio.ClosedResourceError):
        a.send_nowait(proto.Cancel(2))
    with pytest.raises(trio.ClosedResourceError):
        await a.send(proto.Cancel(3))
    assert a.flushed == 0


async def test_socket_channel_round_trip_and_backpressure() -> None:
    """Over a real socket pair (the raw read/write path): big frames, a peer slower than us."""
    import socket as stdlib_socket

    x, y = stdlib_socket.socketpair()
    a = MessageChannel(trio.SocketStream(trio.socket.from_stdlib_socket(x)), high_water=64 * 1024)
    b = MessageChannel(trio.SocketStream(trio.socket.from_stdlib_socket(y)))
    big = [proto.StreamChunk(i, bytes([i]) * 300_000) for i in range(6)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run_writer)

        async def produce() -> None:
            for m in big:
                await a.send_soon(m)  # waits while more than high_water is queued
                assert a.backlog <= a.high_water + 300_100

        nursery.start_soon(produce)
        got = []
        for _ in big:
            got.append(await b.receive())
            await trio.sleep(0.01)
        assert got == big
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.receive()
        nursery.cancel_scope.cancel()
    await b.aclose()


async def test_unread_tells_of_a_message_not_yet_received() -> None:
    """What the gateway asks before answering a cached page: has the worker said more?"""
    import socket as stdlib_socket

    x, y = stdlib_socket.socketpair()
    a = MessageChannel(trio.SocketStream(trio.socket.from_stdlib_socket(x)))
    b = MessageChannel(trio.SocketStream(trio.socket.from_stdlib_socket(y)))
    assert not b.unread()
    await a.send(proto.Notice("pages", {"n": 1}))
    await a.send(proto.Notice("pages", {"n": 2}))
    assert b.unread()  # still in the socket
    assert await b.receive() == proto.Notice("pages", {"n": 1})
    assert b.unread()  # decoded and waiting
    assert await b.receive() == proto.Notice("pages", {"n": 2})
    assert not b.unread()
    await a.aclose()
    await b.aclose()
