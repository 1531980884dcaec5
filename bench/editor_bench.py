"""Benchmark of the browser editor's first load, in headless Debian Chromium (Playwright).

    python bench/editor_bench.py [--runs 7] [--json]

Starts its own server on a temporary data folder (the editor bundle must be built: `make build`),
creates a cenv with a page, signs in once, then loads the editor `--runs` times in each scenario:

  * cold, sign-in screen: a fresh browser context (empty HTTP cache), not signed in;
  * cold, page editor: a fresh context that is signed in (cookie and local storage copied, cache
    empty), opening `#/pages/1` (Monaco with the page's template, the preview iframe);
  * warm, page editor: the same context reloaded (assets from the HTTP cache: they are immutable).

For each load it reports the bytes transferred (the compressed bodies plus headers, as Chromium's
network layer counts them, for everything the page fetched, workers and fonts included, and
without the preview iframe's own page), the number of requests, and these times from the start of
navigation: DOMContentLoaded, the load event, and **interactive**: the moment the app has
rendered its first screen with Monaco created and Vim attached, ready for keys (the
`wce-ready` performance mark set by static/editor/src/shell.js).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PASSWORD = "correct horse"
TIMES = """(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const ready = performance.getEntriesByName("wce-ready")[0];
  return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, interactive: ready ? ready.startTime : null};
})()"""


def measure(context: Any, url: str, reload: bool = False, page: Any = None) -> tuple[dict[str, float], Any]:
    page = page or context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": False})
    sizes: dict[str, int] = {}
    urls: dict[str, str] = {}
    cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
    cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
    if reload:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector("html[data-ready='1']", state="attached", timeout=30_000)
    page.wait_for_load_state("load")
    if "#/pages/" in url:
        page.wait_for_selector(".monaco-editor .view-lines")
    times = page.evaluate(TIMES)
    page.wait_for_timeout(300)  # let the worker script and late fetches finish counting
    own = [rid for rid, u in urls.items() if "wce-preview=" not in u]
    result = {**times, "bytes": sum(sizes.get(rid, 0) for rid in own), "requests": len(own)}
    cdp.detach()
    return result, page


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("bytes", "requests", "dcl", "load", "interactive"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not (ROOT / "static" / "dist" / "manifest.json").exists():
        sys.exit("the editor is not built: run `make build` first")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), "--idle-timeout", "600")
        try:
            base = server.url
            cenv = httpx.post(f"{base}/new", json={"username": "admin", "password": PASSWORD}).json()["cenv"]
            token = httpx.post(f"{base}/{cenv}/auth/login", json={"username": "admin", "password": PASSWORD}).json()["token"]
            h = {"authorization": f"Bearer {token}"}
            httpx.post(f"{base}/{cenv}/api/tables", headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"})
            httpx.put(f"{base}/{cenv}/api/permissions/notes", headers=h, json={"roles": {"anon": {"select": True}}})
            httpx.post(f"{base}/{cenv}/api/tables/notes/rows", headers=h, json=[{"body": f"note {i}"} for i in range(20)])
            template = "<h1>Notes</h1>\n<ul>\n{{#notes}}\n  <li>{{body}}</li>\n{{/notes}}\n</ul>\n"
            httpx.post(f"{base}/{cenv}/api/pages", headers=h,
                       json={"path": "/notes", "template": template, "queries": {"notes": "SELECT body FROM notes"}})
            editor = f"{base}/{cenv}/_/"
            results: dict[str, list[dict[str, float]]] = {"cold, sign-in screen": [], "cold, page editor": [],
                                                          "warm, page editor": []}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                # sign in once, keep the cookie and the local storage
                ctx = browser.new_context()
                page = ctx.new_page()
                page.goto(editor)
                page.fill("#username", "admin")
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                page.wait_for_selector("html[data-view]", state="attached")
                state = ctx.storage_state()
                ctx.close()
                for _ in range(args.runs):
                    ctx = browser.new_context()
                    results["cold, sign-in screen"].append(measure(ctx, editor)[0])
                    ctx.close()
                    ctx = browser.new_context(storage_state=state)
                    row, page = measure(ctx, editor + "#/pages/1")
                    results["cold, page editor"].append(row)
                    results["warm, page editor"].append(measure(ctx, editor + "#/pages/1", reload=True, page=page)[0])
                    ctx.close()
                browser.close()
        finally:
            server.stop()
    report = {name: summary(rows) for name, rows in results.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"editor first load, {args.runs} runs each (median [min-max]); bytes = compressed transfer incl. headers")
    for name, s in report.items():
        b = s["bytes"]
        line = (f"  {name:22} {b['median'] / 1e6:6.3f} MB [{b['min'] / 1e6:.3f}-{b['max'] / 1e6:.3f}]"
                f" in {int(s['requests']['median'])} requests;")
        for key in ("dcl", "load", "interactive"):
            t = s[key]
            line += f" {key} {t['median']:.0f} ms [{t['min']:.0f}-{t['max']:.0f}]"
        print(line)


if __name__ == "__main__":
    main()
