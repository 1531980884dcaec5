"""A/B of WCE against an earlier commit of itself, in one run on this machine.

    python bench/ab.py REV [--seconds 4] [--rounds 5] [--cold 20]

Starts two WCE servers, this tree (A) and REV checked out in a temporary git worktree (B), each
with one gateway process on CPU 0 (wrk on CPU 1, one at a time), sets up the same data in each, and
measures the hot paths alternately, A then B for each target in each round, so a slow spell of
the machine moves both: the cached public page and its 304, a row GET with a row policy, a 50-row
list, a trivial Starlark endpoint and auth/me. A ratio is the median of the per-round A/B
ratios (1.00: no change; 0.95: A is 5% slower). Also each server's cold first answer (median
over `--cold` fresh cenvs). Prints a markdown table. Needs `wrk`, `taskset` and git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the bench package
from bench import pages_bench  # noqa: E402
from bench.common import free_port, stop, wait_port  # noqa: E402
from bench.run import Phase, seed_data_api  # noqa: E402

TRIVIAL = 'def handle_request(ctx):\n    return {"ok": True}\n'


def start(tree: Path, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A server from the given source tree (one gateway process, on CPU 0)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "wce", "--data", str(data), "serve",
                             "--port", str(port), "--new-per-hour", "100000", "--workers", "1", "--access-log", "off"],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def setup(base: str, cold: int) -> tuple[dict[str, tuple[str, dict[str, str]]], list[float]]:
    """The same cenv, data, page and endpoint in a server; (targets, cold first answers in ms)."""
    with httpx.Client(base_url=base, timeout=30) as c:
        ids = [c.post("/new", json={"username": "admin", "password": "bench password"}).json()["cenv"]
               for _ in range(cold)]
        time.sleep(0.5)
        cold_ms = []
        for cid in ids:
            t0 = time.perf_counter()
            assert c.get(f"/{cid}/").status_code == 200
            cold_ms.append((time.perf_counter() - t0) * 1000)
        cenv = ids[0]
        admin = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "bench password"}).json()["token"]
        c.cookies.clear()
        reader = seed_data_api(c, cenv, admin)
    auth = {"authorization": f"Bearer {admin}"}
    rauth = {"authorization": f"Bearer {reader}"}
    with httpx.Client(base_url=f"{base}/{cenv}/", timeout=30) as c:
        pages_bench._setup(c, auth)
        etag = c.get(pages_bench.PAGE.lstrip("/")).headers["etag"]
        r = c.post("api/endpoints", headers=auth, json={"method": "GET", "path": "/trivial", "source": TRIVIAL,
                                                        "access": "user"})
        assert r.status_code == 201, r.text
    page = f"{base}/{cenv}{pages_bench.PAGE}"
    return {
        "cached page": (page, {}),
        "cached page 304": (page, {"if-none-match": etag}),
        "row GET, row policy": (f"{base}/{cenv}/api/tables/items_policy/rows/500", rauth),
        "list 50, row policy": (f"{base}/{cenv}/api/tables/items_policy/rows?limit=50", rauth),
        "trivial Starlark": (f"{base}/{cenv}/fn/trivial", rauth),
        "auth/me": (f"{base}/{cenv}/auth/me", auth),
    }, cold_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", help="the commit to compare with (B)")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=20)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing (Debian: apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="wce-ab-"))
    base_tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.rev],
                   check=True, capture_output=True)
    procs = []
    try:
        pa, ua = start(ROOT, tmp / "a")
        procs.append(pa)
        pb, ub = start(base_tree, tmp / "b")
        procs.append(pb)
        ta, cold_a = setup(ua, args.cold)
        tb, cold_b = setup(ub, args.cold)
        phase = Phase("one core", "0", "1", 1)
        for url, hdr in [*ta.values(), *tb.values()]:
            phase.wrk(url, 1, hdr)  # warm up
        runs: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]] = {k: [] for k in ta}
        for _ in range(args.rounds):
            for name in ta:
                a = phase.measure(pa.pid, ta[name][0], args.seconds, ta[name][1])
                b = phase.measure(pb.pid, tb[name][0], args.seconds, tb[name][1])
                runs[name].append((a, b))
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True,
                             text=True, check=True).stdout.strip()
        print(f"| target | A (this tree) req/s | µs/req | B ({rev}) req/s | µs/req | A/B |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, v in runs.items():
            ratio = statistics.median(a[0] / b[0] for a, b in v)
            print(f"| {name} | {statistics.median(a[0] for a, _ in v):,.0f} | {statistics.median(a[1] for a, _ in v):.0f}"
                  f" | {statistics.median(b[0] for _, b in v):,.0f} | {statistics.median(b[1] for _, b in v):.0f}"
                  f" | {ratio:.3f} |")
        print(f"\ncold first answer, median of {args.cold}: A {statistics.median(cold_a):.1f} ms, "
              f"B {statistics.median(cold_b):.1f} ms")
    finally:
        stop(procs)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
