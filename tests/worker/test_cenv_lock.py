"""The cenv lock: a worker started while its predecessor still runs waits for it (never two workers
on one cenv file), and takes over the moment it is gone."""

from __future__ import annotations

import os
from pathlib import Path

from wce.config import ServerConfig
from wce.worker.server import lock_cenv

CENV = "a" * 26


def test_second_worker_waits_for_the_first(tmp_path: Path) -> None:
    config = ServerConfig(data=str(tmp_path / "data"), run_dir=str(tmp_path / "run"))
    config.runtime_path.mkdir()
    first = lock_cenv(config, CENV)
    assert first is not None
    assert lock_cenv(config, CENV, timeout=0.2) is None  # held: the successor gives up in time
    assert lock_cenv(config, "b" * 26, timeout=0.2) is not None  # another cenv is independent
    os.close(first)  # the first worker exits
    second = lock_cenv(config, CENV, timeout=0.2)
    assert second is not None
    os.close(second)

