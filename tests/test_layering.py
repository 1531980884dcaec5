"""Imports flow one way: each package is imported alone in a fresh interpreter and must not pull
in what it is not allowed to know about."""

import subprocess
import sys

import pytest

RULES = [
    ("wce.proto", ["wce.core", "wce.worker", "wce.gateway", "apsw", "quart", "hypercorn", "starlark"]),
    ("wce.proto.channel", ["wce.core", "wce.worker", "wce.gateway", "apsw", "quart"]),
    ("wce.proto.zygote", ["wce.core", "wce.worker", "wce.gateway", "apsw", "quart", "trio"]),
    ("wce.core.cenv", ["trio", "quart", "hypercorn", "wce.proto", "wce.worker", "wce.gateway"]),
    ("wce.core.accounts", ["trio", "quart", "hypercorn", "wce.proto", "wce.worker", "wce.gateway"]),
    ("wce.core.mustache", ["trio", "quart", "apsw", "wce.proto", "wce.worker", "wce.gateway"]),
    ("wce.gateway.serve", ["apsw", "starlark", "wce.worker", "wce.core.db", "wce.core.cenv", "wce.core.accounts"]),
    ("wce.worker.server", ["quart", "hypercorn", "wce.gateway"]),
    ("wce.config", ["trio", "apsw", "msgpack", "wce.core"]),
]


@pytest.mark.parametrize("module,forbidden", RULES, ids=[r[0] for r in RULES])
def test_import_layering(module: str, forbidden: list[str]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
