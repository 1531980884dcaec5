"""Fixtures: one real server for the whole session (most tests), a fresh one where a test kills things."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from support import Server, processes_mentioning, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # two gateway processes, like the default on a multi-core machine: every e2e test crosses them
    srv = start_server(tmp_path_factory.mktemp("shared"), "--gateways", "2", "--idle-timeout", "600")
    _servers.append(srv)
    yield srv
    srv.stop()
    assert processes_mentioning(str(srv.data)) == []


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    _servers.append(srv)
    yield srv
    srv.stop()
    assert processes_mentioning(str(srv.data)) == []


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


_servers: list[Server] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On a failure, show what the servers printed (worker tracebacks land there, never in responses)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in _servers:
            tail = "".join([line for line in srv.log if not line.startswith('{"ts"')][-60:])  # not the request log
            if tail:
                report.sections.append(("wce server output", tail))
