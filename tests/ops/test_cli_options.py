"""The command line's own rules: `--data` before or after the subcommand, `--gateways` and its old
name `--workers` (which says so), `WCE_GATEWAYS` and its old name `WCE_WORKERS`."""

from __future__ import annotations

import pytest

from wce.cli import parse_args


def test_data_before_or_after_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WCE_DATA", raising=False)
    assert parse_args(["--data", "/a", "serve"]).data == "/a"
    assert parse_args(["serve", "--data", "/b"]).data == "/b"
    assert parse_args(["--data", "/a", "serve", "--data", "/b"]).data == "/b"  # the later, nearer one wins
    assert parse_args(["serve"]).data == "./data"
    assert parse_args(["list", "--data", "/c"]).data == "/c"
    assert parse_args(["users", "list", "X", "--data", "/d"]).data == "/d"
    monkeypatch.setenv("WCE_DATA", "/env")
    assert parse_args(["serve"]).data == "/env"


def test_gateways_and_its_old_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("WCE_GATEWAYS", "WCE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    assert parse_args(["serve", "--gateways", "3"]).gateways == 3
    assert capsys.readouterr().err == ""
    assert parse_args(["serve", "--workers", "2"]).gateways == 2
    assert "--workers is now --gateways" in capsys.readouterr().err
    assert parse_args(["serve"]).gateways == 0
    monkeypatch.setenv("WCE_WORKERS", "4")
    assert parse_args(["serve"]).gateways == 4
    monkeypatch.setenv("WCE_GATEWAYS", "5")
    assert parse_args(["serve"]).gateways == 5
