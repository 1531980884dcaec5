"""Benchmark of pages rendered on write.

    python bench/pages_bench.py [--seconds 5]       # starts its own server on CPU 0
    from bench.pages_bench import run               # against a running server (bench/run.py)

`run(base_url, cenv, admin_token, seconds)` sets up, in the given cenv, a table `bench_notes`
(anon may select it) and a public page `/bench-notes` listing its newest 20 rows, then measures:
  * req/s of the cached public page (GET, 200) with wrk: keep-alive, 32 connections, on CPU 1;
  * req/s of the same GET with `If-None-Match` (304, no body);
  * freshness: for `writes` inserts through the data API, the time from the write's
    acknowledgement to the first GET that serves the updated page (median and p99, ms; the
    worker re-renders before it acknowledges, so this is one GET's round trip when all is well),
    with the write's own latency next to it.
Needs `wrk` and `taskset`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the bench package
from bench.common import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "/bench-notes"
TABLE = "bench_notes"


def _wrk(url: str, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", "--latency", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    return {"rps": round(rps), "p50_ms": round(_ms(p50.group(1), p50.group(2)), 3) if p50 else -1.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _setup(c: httpx.Client, admin: dict[str, str]) -> None:
    r = c.post("api/tables", headers=admin, json={"sql": f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, body TEXT)"})
    if r.status_code not in (201, 409, 422):
        raise RuntimeError(f"cannot create the table: {r.status_code} {r.text}")
    c.put(f"api/permissions/{TABLE}", headers=admin, json={"roles": {"anon": {"select": True}}}).raise_for_status()
    c.post(f"api/tables/{TABLE}/rows", headers=admin,
           json=[{"body": f"note {i}"} for i in range(20)]).raise_for_status()
    page = {"path": PAGE, "access": "public",
            "template": "<!doctype html><title>notes</title><ul>{{#notes}}<li>{{id}}: {{body}}</li>{{/notes}}</ul>",
            "queries": {"notes": f"SELECT id, body FROM {TABLE} ORDER BY id DESC LIMIT 20"}}
    existing = [p for p in c.get("api/pages", headers=admin).json()["pages"] if p["path"] == PAGE]
    if existing:
        c.put(f"api/pages/{existing[0]['id']}", headers=admin, json=page).raise_for_status()
    else:
        c.post("api/pages", headers=admin, json=page).raise_for_status()


def _freshness(c: httpx.Client, admin: dict[str, str], writes: int) -> dict[str, float]:
    lag, write = [], []
    for i in range(writes):
        marker = f"fresh-{i}-{time.monotonic_ns()}"
        t0 = time.perf_counter()
        c.post(f"api/tables/{TABLE}/rows", headers=admin, json={"body": marker}).raise_for_status()
        acked = time.perf_counter()
        write.append((acked - t0) * 1000)
        deadline = acked + 10
        while marker not in c.get(PAGE.lstrip("/")).text:
            if time.perf_counter() > deadline:
                raise RuntimeError("the page never showed the write")
        lag.append((time.perf_counter() - acked) * 1000)
    lag.sort()
    return {"write_to_fresh_page_ms_median": round(statistics.median(lag), 2),
            "write_to_fresh_page_ms_p99": round(lag[min(len(lag) - 1, int(len(lag) * 0.99))], 2),
            "write_ms_median": round(statistics.median(write), 2)}


def run(base_url: str, cenv: str, admin_token: str, seconds: int, writes: int = 200) -> dict[str, Any]:
    """Set the page up in cenv and measure (see the module docstring); a flat dict of numbers."""
    admin = {"authorization": f"Bearer {admin_token}"}
    url = f"{base_url.rstrip('/')}/{cenv}/"
    with httpx.Client(base_url=url, timeout=30) as c:
        _setup(c, admin)
        first = c.get(PAGE.lstrip("/"))
        first.raise_for_status()
        etag = first.headers["etag"]
        assert c.get(PAGE.lstrip("/"), headers={"if-none-match": etag}).status_code == 304
        page_url = url + PAGE.lstrip("/")
        _wrk(page_url, 1, {})  # warm up
        full = _wrk(page_url, seconds, {})
        cached = _wrk(page_url, seconds, {"if-none-match": etag})
        result: dict[str, Any] = {"page_bytes": len(first.content), "page_rps": full["rps"],
                                  "page_p50_ms": full["p50_ms"], "page_304_rps": cached["rps"],
                                  "page_304_p50_ms": cached["p50_ms"]}
        result.update(_freshness(c, admin, writes))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--writes", type=int, default=200)
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("bench: wrk and taskset are needed (Debian: apt-get install wrk util-linux)")
    tmp = Path(tempfile.mkdtemp(prefix="wce-pages-bench-"))
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "wce", "--data", str(tmp / "data"), "serve",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=30) as c:
            cenv = c.post("/new", json={"username": "admin", "password": "bench password"}).json()["cenv"]
            token = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "bench password"}).json()["token"]
        print(json.dumps(run(base, cenv, token, args.seconds, args.writes), indent=2))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
