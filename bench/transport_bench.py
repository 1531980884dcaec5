"""bare_asgi under hypercorn's own trio server vs under wce.gateway.transport, in one run.

    python -m bench.transport_bench [--seconds 5] [--rounds 3]      (from the repository root)

`run(seconds, rounds)` returns medians of `rounds` (req/s, server CPU µs per request) for both.
Both servers are this module started as `python -m bench.transport_bench --serve {stock,lean} PORT`,
so they differ only in the transport: the same Config (hypercorn's defaults, access log off), the
same app, one process each. Servers on CPU 0 and wrk on CPU 1 (taskset), keep-alive, 32 connections,
as bench/run.py does; each round measures both, alternating which goes first. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the bench package
from bench.common import free_port, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS = ("stock", "lean")


def _cpu_seconds(pid: int) -> float:
    """user+sys of one process (the servers here have no children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, seconds: int) -> float:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def _measure(pid: int, port: int, seconds: int) -> tuple[float, float]:
    c0 = _cpu_seconds(pid)
    rps = _wrk(port, seconds)
    return rps, (_cpu_seconds(pid) - c0) / (rps * seconds) * 1e6


def run(seconds: int = 5, rounds: int = 3) -> dict[str, float]:
    """Medians of `rounds`: req/s and CPU µs/request for each transport, and lean/stock ratios."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for name in TRANSPORTS:
            ports[name] = free_port()
            procs[name] = subprocess.Popen(
                ["taskset", "-c", "0", sys.executable, "-m", "bench.transport_bench", "--serve", name, str(ports[name])],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in TRANSPORTS:
            wait_port(ports[name])
            _wrk(ports[name], 2)  # warm up
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in TRANSPORTS}
        for i in range(rounds):
            order = TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]
            for name in order:
                samples[name].append(_measure(procs[name].pid, ports[name], seconds))
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    result: dict[str, float] = {}
    for name in TRANSPORTS:
        result[f"bare_{name}_rps"] = round(statistics.median(s[0] for s in samples[name]))
        result[f"bare_{name}_cpu_us_per_req"] = round(statistics.median(s[1] for s in samples[name]), 1)
    result["lean_to_stock_rps"] = round(result["bare_lean_rps"] / result["bare_stock_rps"], 2)
    result["lean_to_stock_cpu"] = round(result["bare_lean_cpu_us_per_req"] / result["bare_stock_cpu_us_per_req"], 2)
    return result


def _serve(transport: str, port: int) -> None:
    """One server process: bare_asgi on 127.0.0.1:port until SIGTERM."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as stock_serve

    from bench.apps.bare_asgi import app
    from wce.gateway.transport import serve as lean_serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    serve = lean_serve if transport == "lean" else stock_serve

    async def main() -> None:
        done = trio.Event()

        async def on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    done.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_sigterm)
            await serve(app, config, shutdown_trigger=done.wait)  # type: ignore[arg-type]

    trio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", nargs=2, metavar=("TRANSPORT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
    else:
        print(json.dumps(run(args.seconds, args.rounds), indent=2))


if __name__ == "__main__":
    main()
