"""The gateway's counters, and their Prometheus text form for `GET /metrics`.

Counting is a few dict increments per request (`observe`), done on the hot path; rendering happens
only when a scraper asks. Metrics (all counters are since the gateway started):

    wce_requests_total{route, status_class}            requests answered, by route class and 1xx..5xx
    wce_request_duration_seconds{status_class}         histogram of the time to the end of the answer
    wce_rate_limited_total{route}                      429 answers (cenv rate limit, login throttle, /new, /import)
    wce_workers_live                                   workers serving now (gauge)
    wce_worker_starts_total                            workers started
    wce_worker_restarts_total                          starts that replaced a worker that died or was killed
    wce_worker_exits_total{cause}                      idle_exit, evicted, died
    wce_worker_kills_total{cause}                      deadline, connection_lost, linger
    wce_worker_start_failures_total
    wce_page_cache_total{result}                       page answers from the render cache: hit / miss;
                                                       counted from a worker's `x-wce-cache: hit|miss`
                                                       response header (see PAGE_CACHE_HEADER)
    wce_imports_total{result}                          POST /import: ok / refused

With several gateway processes each counts its own requests and writes them to a file in the run
folder every second (`MetricsFiles`); a scrape, answered by whichever gateway takes it, adds the
others' files to its own live counters, so the totals are the server's (the others' part up to a
second old). `wce_workers_live` then counts the workers' socket names, which are server-wide.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
PAGE_CACHE_HEADER = "x-wce-cache"  # a worker sets it to "hit" or "miss" on a page answer

# Supervisor.events keys -> (metric, cause)
WORKER_EVENTS = {
    "started": ("wce_worker_starts_total", None),
    "restarted": ("wce_worker_restarts_total", None),
    "start_failed": ("wce_worker_start_failures_total", None),
    "idle_exit": ("wce_worker_exits_total", "idle"),
    "evicted": ("wce_worker_exits_total", "evicted"),
    "died": ("wce_worker_exits_total", "died"),
    "killed_deadline": ("wce_worker_kills_total", "deadline"),
    "killed_connection_lost": ("wce_worker_kills_total", "connection_lost"),
    "killed_linger": ("wce_worker_kills_total", "linger"),
}


def status_class(status: int) -> str:
    """'2xx' for 204; 'none' when no answer was sent (the client went away first)."""
    i = status // 100
    return STATUS_CLASSES[i] if 0 < i < 6 else "none"


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0


class Metrics:
    """Counters of one gateway process."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, _Histogram] = {c: _Histogram() for c in STATUS_CLASSES}
        self.rate_limited: Counter[str] = Counter()
        self.page_cache: Counter[str] = Counter()
        self.imports: Counter[str] = Counter()

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        cls = status_class(status)
        self.requests[(route, cls)] += 1
        h = self.latency[cls]
        h.buckets[bisect_left(BUCKETS, seconds)] += 1
        h.count += 1
        h.sum += seconds
        if status == 429:
            self.rate_limited[route] += 1

    def page_cache_result(self, result: str) -> None:
        """Count a page answer served from the render cache ('hit') or rendered for it ('miss')."""
        if result in ("hit", "miss"):
            self.page_cache[result] += 1

    def snapshot(self, worker_events: dict[str, int]) -> dict[str, Any]:
        """Every counter as plain JSON (worker events included), for another gateway to add up."""
        return {
            "requests": [[route, cls, n] for (route, cls), n in self.requests.items()],
            "latency": {c: [h.buckets, h.count, h.sum] for c, h in self.latency.items() if h.count},
            "rate_limited": dict(self.rate_limited), "page_cache": dict(self.page_cache),
            "imports": dict(self.imports), "events": dict(worker_events),
        }

    def add(self, snap: dict[str, Any]) -> dict[str, int]:
        """Add another gateway's snapshot to these counters; its worker events."""
        for route, cls, n in snap.get("requests", ()):
            self.requests[(route, cls)] += n
        for cls, (buckets, count, total) in snap.get("latency", {}).items():
            h = self.latency[cls]
            h.buckets = [a + b for a, b in zip(h.buckets, buckets, strict=True)]
            h.count += count
            h.sum += total
        self.rate_limited.update(snap.get("rate_limited", {}))
        self.page_cache.update(snap.get("page_cache", {}))
        self.imports.update(snap.get("imports", {}))
        return dict(snap.get("events", {}))

    def render(self, live_workers: int, worker_events: dict[str, int]) -> str:
        """The Prometheus text exposition format, version 0.0.4."""
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head("wce_requests_total", "counter", "Requests answered, by route class and status class.")
        for (route, cls), n in sorted(self.requests.items()):
            out.append(f'wce_requests_total{{route="{route}",status_class="{cls}"}} {n}')
        head("wce_request_duration_seconds", "histogram", "Time from the request to the end of its answer.")
        for cls in STATUS_CLASSES:
            h = self.latency[cls]
            if not h.count:
                continue
            running = 0
            for le, n in zip((*BUCKETS, "+Inf"), h.buckets, strict=True):
                running += n
                out.append(f'wce_request_duration_seconds_bucket{{status_class="{cls}",le="{le}"}} {running}')
            out.append(f'wce_request_duration_seconds_sum{{status_class="{cls}"}} {h.sum:.6f}')
            out.append(f'wce_request_duration_seconds_count{{status_class="{cls}"}} {h.count}')
        head("wce_rate_limited_total", "counter", "Requests refused with 429, by route class.")
        for route, n in sorted(self.rate_limited.items()):
            out.append(f'wce_rate_limited_total{{route="{route}"}} {n}')
        head("wce_workers_live", "gauge", "Workers serving now.")
        out.append(f"wce_workers_live {live_workers}")
        by_metric: dict[str, list[tuple[str | None, int]]] = {}
        for event, (metric, cause) in WORKER_EVENTS.items():
            by_metric.setdefault(metric, []).append((cause, worker_events.get(event, 0)))
        for metric, values in by_metric.items():
            head(metric, "counter", metric.removeprefix("wce_").replace("_", " ") + ".")
            for cause, n in values:
                out.append(f'{metric}{{cause="{cause}"}} {n}' if cause else f"{metric} {n}")
        head("wce_page_cache_total", "counter", "Page answers from the render cache (hit) or not (miss).")
        for result in ("hit", "miss"):
            out.append(f'wce_page_cache_total{{result="{result}"}} {self.page_cache[result]}')
        head("wce_imports_total", "counter", "POST /import outcomes.")
        for result in ("ok", "refused"):
            out.append(f'wce_imports_total{{result="{result}"}} {self.imports[result]}')
        return "\n".join(out) + "\n"


class MetricsFiles:
    """The counters of N gateway processes, shared through `{run}/gateway-{i}.metrics` files."""

    def __init__(self, run_dir: Path, index: int, count: int) -> None:
        self.run_dir = run_dir
        self.index = index
        self.count = count

    def _path(self, i: int) -> Path:
        return self.run_dir / f"gateway-{i}.metrics"

    def write(self, snap: dict[str, Any]) -> None:
        """Replace this gateway's file (atomically: a reader never sees half of it)."""
        tmp = self._path(self.index).with_suffix(".tmp")
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, self._path(self.index))

    def render(self, own: Metrics, own_events: dict[str, int]) -> str:
        """The server's metrics: our live counters plus every other gateway's last file."""
        total = Metrics()
        events: Counter[str] = Counter(total.add(own.snapshot(own_events)))
        for i in range(self.count):
            if i == self.index:
                continue
            try:
                events.update(total.add(json.loads(self._path(i).read_text())))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # not written yet (a gateway starting), or a torn read: counted next time
        live = sum(1 for p in self.run_dir.glob("*.sock") if p.name != "forkserver.sock")
        return total.render(live, dict(events))
