"""The new gateway modules keep the gateway's promise: no SQLite, no worker code; the admin CLI
and the backup code stay out of the event loop's imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

RULES = [
    ("wce.gateway.asgi", ["apsw", "starlark", "wce.worker", "wce.core.backup", "wce.core.db"]),
    ("wce.gateway.platform", ["apsw", "wce.worker", "wce.core.backup"]),
    ("wce.gateway.metrics", ["apsw", "trio", "quart", "wce.worker"]),
    ("wce.gateway.logs", ["apsw", "trio", "quart", "wce.worker"]),
    ("wce.core.backup", ["trio", "quart", "hypercorn", "wce.gateway", "wce.worker"]),
    ("wce.admin", ["trio", "quart", "hypercorn", "apsw", "wce.gateway", "wce.worker"]),
]


@pytest.mark.parametrize("module,forbidden", RULES, ids=[r[0] for r in RULES])
def test_import_layering(module: str, forbidden: list[str]) -> None:
    code = f"import sys, {module}\nprint(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
