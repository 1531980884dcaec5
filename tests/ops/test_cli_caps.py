"""`wce caps` and the caps column of `wce list`, as an operator runs them on a data folder (the
live-server side, with the tenant's view and the worker's RLIMIT_AS, is tests/e2e/test_caps.py)."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli_admin import make_cenv, one_line_error, wce

from support import sql


def shown(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()}


def test_caps_shows_sets_and_resets_exceptions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cenv = make_cenv(data)
    # no server has run here: the ceilings are those `wce serve` would take from the environment
    r = wce(data, "caps", cenv, env={"WCE_MEMORY_MB": "300"})
    assert r.returncode == 0, r.stderr
    assert shown(r.stdout) == {"memory_mb": ["300", "server", "ceiling"], "cpu_ms_per_request": ["2000", "server", "ceiling"],
                               "max_db_mb": ["1024", "server", "ceiling"]}
    assert "WCE_MEMORY_MB" in r.stderr
    r = wce(data, "caps", cenv, "--memory-mb", "512", "--max-db-mb", "10")
    assert r.returncode == 0, r.stderr
    assert shown(r.stdout)["memory_mb"] == ["512", "exception", "(server", "ceiling", "256)"]
    assert shown(r.stdout)["max_db_mb"][:2] == ["10", "exception"]
    assert "no live worker answered" in r.stderr
    assert dict(sql(data, cenv, "SELECT key, value FROM _wce_caps")) == {"memory_mb": "512", "max_db_mb": "10"}
    # later calls change only what they name
    assert wce(data, "caps", cenv, "--memory-mb", "1024").returncode == 0
    assert dict(sql(data, cenv, "SELECT key, value FROM _wce_caps")) == {"memory_mb": "1024", "max_db_mb": "10"}
    r = wce(data, "caps", cenv, "--reset")
    assert r.returncode == 0 and all(v[1] == "server" for v in shown(r.stdout).values())
    assert sql(data, cenv, "SELECT count(*) FROM _wce_caps") == [(0,)]
    actions = [a for (a,) in sql(data, cenv, "SELECT action FROM _wce_audit_log WHERE actor = 'cli'")]
    assert actions == ["caps.update", "caps.update", "caps.reset"]


def test_list_shows_each_cenvs_exceptions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    plain, raised = make_cenv(data), make_cenv(data)
    assert wce(data, "caps", raised, "--memory-mb", "512", "--cpu-ms-per-request", "5000").returncode == 0
    rows = {x["cenv"]: x for x in map(json.loads, wce(data, "list", "--json").stdout.splitlines())}
    assert rows[plain]["caps"] == {} and rows[raised]["caps"] == {"memory_mb": 512, "cpu_ms_per_request": 5000}
    lines = {line.split()[0]: line for line in wce(data, "list").stdout.splitlines()}
    assert lines[raised].endswith("caps: memory_mb=512 cpu_ms_per_request=5000")
    assert "caps" not in lines[plain]


def test_caps_errors_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cenv = make_cenv(data)
    assert one_line_error(wce(data, "caps", "a" * 26)) == f"wce: no cenv {'a' * 26}"
    assert one_line_error(wce(data, "caps", cenv, "--memory-mb", "10")) == "wce: memory_mb must be an integer from 64 to 16384"
    assert "either --reset" in one_line_error(wce(data, "caps", cenv, "--reset", "--max-db-mb", "5"))
    assert sql(data, cenv, "SELECT count(*) FROM _wce_caps") == [(0,)]
