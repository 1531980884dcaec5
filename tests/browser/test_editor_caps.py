"""The config screen shows each resource cap's ceiling, read-only, and a value above it is refused
with the ceiling named (the server's side: tests/e2e/test_caps.py)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from support import ROOT, Server

from .test_editor_flow import sign_in, status_message, wait_view
from .test_editor_screens import Api


def test_config_screen_shows_the_caps_set_by_the_operator(page: Any, server: Server) -> None:
    api = Api(server.url)
    # an operator exception for this cenv; the other caps are the server's ceilings
    r = subprocess.run([sys.executable, "-m", "wce", "--data", str(server.data), "caps", api.cenv, "--memory-mb", "512"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    sign_in(page, server.url, api.cenv, "#/config")
    wait_view(page, "/config")
    assert page.inner_text("#cfg-cap-memory_mb") == "at most 512, set by this server's operator"
    assert page.inner_text("#cfg-cap-cpu_ms_per_request") == "at most 2000, set by this server's operator"
    assert page.inner_text("#cfg-cap-max_db_mb") == "at most 1024, set by this server's operator"
    assert page.locator("#cfg-cap-registration").count() == 0
    assert page.input_value("#cfg-memory_mb") == "512"  # never set by the cenv: its ceiling
    # above the ceiling: refused, and the form says why
    page.fill("#cfg-memory_mb", "600")
    page.click("#save")
    page.wait_for_selector(".form-error:has-text('memory_mb may be at most 512 on this server')")
    assert api("GET", "/api/config")["memory_mb"] == 512
    # lower: saved
    page.fill("#cfg-memory_mb", "300")
    page.click("#save")
    status_message(page, "Configuration saved")
    assert api("GET", "/api/config")["memory_mb"] == 300
    assert page.inner_text("#cfg-cap-memory_mb") == "at most 512, set by this server's operator"
    assert page.watch.errors(422) == []
