"""The two channels beside the gateway <-> worker messages: the fork server's protocol
(wce.proto.zygote) and the page push (proto.PagePush in a 'pages' Notice), and the one frame reader
(proto.FrameReader) the plain socket users share."""

from __future__ import annotations

import msgpack
import pytest

from wce import proto
from wce.proto import zygote

ZYGOTE = [
    zygote.Spawn("a" * 26), zygote.Fate(42), zygote.Admit("new", "192.0.2.1"),
    zygote.Create("a" * 26, "admin", "secret pw", ""), zygote.Import("a" * 26, "admin", "secret pw", "::1"),
    zygote.Spawned(7, True), zygote.Ended(None), zygote.Ended({"signal": 6, "culprit": [1, 2, "endpoint:3"]}),
    zygote.Done(), zygote.Refused("rate_limited", "later", 60), zygote.Refused("invalid", "not a cenv"),
]


@pytest.mark.parametrize("msg", ZYGOTE, ids=lambda m: type(m).__name__)
def test_every_zygote_message_round_trips(msg: zygote.Message) -> None:
    assert zygote.decode(zygote.encode(msg)) == msg


@pytest.mark.parametrize("payload", [
    b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"cenv": "x"}), msgpack.packb({"op": "spawn"}),
    msgpack.packb({"op": "spawn", "cenv": "x", "extra": 1}), msgpack.packb({"op": "spawn", "cenv": 5}),
    msgpack.packb({"op": "fate", "pid": -1}), msgpack.packb({"op": "admit", "kind": "other", "ip": ""}),
    msgpack.packb({"op": "spawned", "pid": 3, "new": 1}),
])
def test_a_bad_zygote_payload_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(proto.DecodeError):
        zygote.decode(payload)


def test_an_unknown_op_is_an_unknown_kind() -> None:
    with pytest.raises(proto.UnknownKind):
        zygote.decode(msgpack.packb({"op": "fork_bomb"}))


def test_the_frame_reader_keeps_what_a_read_brought_and_tells_a_clean_end() -> None:
    chunks = [proto.frame(b"one") + proto.frame(b"two")[:3], proto.frame(b"two")[3:], b""]
    reader = proto.FrameReader()
    assert [reader.read(lambda: chunks.pop(0)) for _ in range(2)] == [b"one", b"two"]
    with pytest.raises(EOFError):
        reader.read(lambda: chunks.pop(0))
    torn = [proto.frame(b"three")[:5], b""]
    with pytest.raises(proto.TornFrame):
        proto.FrameReader().read(lambda: torn.pop(0))
    with pytest.raises(proto.FrameTooLarge):
        proto.FrameReader(4).read(lambda: proto.frame(b"12345"))


async def test_the_frame_reader_reads_async() -> None:
    chunks = [proto.frame(b"x")[:2], proto.frame(b"x")[2:]]

    async def recv() -> bytes:
        return chunks.pop(0)

    assert await proto.FrameReader().read_async(recv) == b"x"


def test_a_page_push_travels_in_a_notice() -> None:
    page = proto.PushedPage("/about", '"e1"', b"<p>hi</p>", [("content-type", "text/html")], [("etag", '"e1"')])
    push = proto.PagePush(True, ("/gone",), (page,))
    notice = proto.decode(proto.encode(push.notice()))
    assert isinstance(notice, proto.Notice) and notice.topic == "pages"
    assert [p["path"] for p in notice.data["pages"]] == ["/gone", "/about"]
    assert proto.PagePush.of(notice.data) == push
    assert proto.PagePush().notice().data == {"reset": False, "pages": []}


def test_a_malformed_pushed_page_is_skipped() -> None:
    good = {"path": "/ok", "etag": "e", "body": b"x", "headers": [["a", "b"]], "headers_304": []}
    data = {"pages": [good, {"path": "/no-body", "etag": "e", "headers": [], "headers_304": []},
                      {"path": "/bad-headers", "etag": "e", "body": b"", "headers": [["a"]], "headers_304": []},
                      {"path": 3, "drop": True}, "not a map", {"path": "/x", "drop": True}]}
    push = proto.PagePush.of(data)
    assert not push.reset and push.dropped == ("/x",) and [p.path for p in push.pages] == ["/ok"]
    assert push.pages[0].headers == [("a", "b")]
    with pytest.raises(proto.DecodeError):
        proto.PushedPage("/p", "e", "not bytes", [], [])  # type: ignore[arg-type]
