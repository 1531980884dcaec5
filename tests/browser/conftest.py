"""Browser tests: headless Debian Chromium driven by Playwright against the real server.

Chromium comes from Debian (`apt-get install -y chromium`, done here when it is missing and we are
root, as on a fresh CI machine); Playwright's own browser download is never used. The editor's
bundle is built here if `make build` has not (npm ci + npm run build). These tests skip, saying
why, only when Chromium cannot be installed.

Every page records what the browser reports: uncaught exceptions, console errors and warnings
(CSP violations among them) and HTTP error statuses. `page.errors(...)` returns those problems
minus the HTTP error statuses the test expected (Chromium logs each 4xx/5xx answer that a fetch
received as a console error; the app handles them, the test says which it caused on purpose).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import ROOT

CHROMIUM = os.environ.get("WCE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
MANIFEST = ROOT / "static" / "dist" / "manifest.json"
NETWORK_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")


def _install_chromium() -> str | None:
    """Install Debian's chromium if we can; the reason if we cannot."""
    if os.path.exists(CHROMIUM):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{CHROMIUM} is missing and this user cannot apt-get install chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-400:]}"
    return None if os.path.exists(CHROMIUM) else f"chromium installed but {CHROMIUM} is absent"


def _build_editor() -> None:
    if MANIFEST.exists():
        return
    npm = shutil.which("npm")
    assert npm, "the editor bundle is not built and npm is missing: install node and npm, then `make build`"
    if not (ROOT / "node_modules" / ".package-lock.json").exists():
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=ROOT, check=True, timeout=600)
    subprocess.run([npm, "run", "--silent", "build"], cwd=ROOT, check=True, timeout=600)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    _build_editor()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Watched:
    """What one page reported; see the module docstring."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        self.statuses: list[tuple[int, str]] = []
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on("console", self._console)
        page.on("response", lambda r: r.status >= 400 and self.statuses.append((r.status, r.url)))

    def _console(self, msg: Any) -> None:
        if msg.type in ("error", "warning", "assert"):
            self.problems.append(f"console.{msg.type}: {msg.text}")

    def errors(self, *expected: int) -> list[str]:
        """Problems, minus Chromium's log lines for the HTTP statuses the test caused on purpose."""
        out = []
        for p in self.problems:
            m = NETWORK_ERROR.match(p.split(": ", 1)[1]) if p.startswith("console.error") else None
            if m and int(m.group(1)) in expected:
                continue
            out.append(p)
        out += [f"HTTP {s} {u}" for s, u in self.statuses if s not in expected]
        return out


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 820})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.watch = Watched(pg)
    yield pg
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/screenshots with WCE_SCREENSHOTS=docs/screenshots, else a temp dir."""
    target = os.environ.get("WCE_SCREENSHOTS")
    d = (ROOT / target) if target else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d
