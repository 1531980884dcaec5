"""The gateway's hypercorn Config: the Date header formatted once a second, still always right."""

from __future__ import annotations

from wsgiref.handlers import format_date_time

import pytest

from wce.config import ServerConfig
from wce.gateway import serve


def test_date_header_is_the_current_second(monkeypatch: pytest.MonkeyPatch) -> None:
    hc = serve.hypercorn_config(ServerConfig())
    now = [1_800_000_000.2]
    monkeypatch.setattr(serve, "time", lambda: now[0])
    first = hc.response_headers("h11")
    assert first == [(b"date", format_date_time(1_800_000_000).encode())]
    now[0] = 1_800_000_000.9  # same second: the same bytes
    assert hc.response_headers("h11") == first
    now[0] = 1_800_000_001.0  # the next second: a new date
    assert hc.response_headers("h11") == [(b"date", format_date_time(1_800_000_001).encode())]
    # callers may extend what they get: each call returns its own list
    hc.response_headers("h11").append((b"x", b"y"))
    assert len(hc.response_headers("h11")) == 1


def test_other_response_headers_still_come_from_hypercorn() -> None:
    hc = serve.hypercorn_config(ServerConfig())
    hc.include_server_header = True
    names = [k for k, _ in hc.response_headers("h11")]
    assert names == [b"date", b"server"]

