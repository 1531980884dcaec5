"""`wce serve`: fork server first, then the event loop with hypercorn, the supervisor and the app;
with several gateway processes (`--gateways N`, by default one per core) each runs that event loop
under wce.gateway.master.

Shutdown on SIGTERM or SIGINT: hypercorn stops accepting and lets in-flight requests finish
(graceful_timeout), then every worker is stopped gracefully, then the fork server; no process is
left behind.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from functools import partial
from time import time
from wsgiref.handlers import format_date_time

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from wce.config import ServerConfig, UnsafeRunFolder

from .asgi import Gateway
from .forwarded import trusted_proxies
from .master import Master, gateway_count, listening_sockets
from .metrics import MetricsFiles
from .platform import create_platform_app
from .supervisor import Supervisor
from .transport import serve as lean_serve
from .zygote_client import ZygoteClient

METRICS_EVERY = 1.0  # seconds between writes of a gateway's counters (several gateways only)


class GatewayConfig(HypercornConfig):
    """hypercorn's Config, with the Date header formatted once a second rather than for every
    response (`format_date_time` was ~5 µs of a 215 µs cached page in a py-spy profile)."""

    _date_second = -1
    _date = b""

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        if self.include_server_header or self.alt_svc_headers or self._quic_addresses or not self.include_date_header:
            return super().response_headers(protocol)
        now = time()
        if int(now) != self._date_second:
            self._date_second = int(now)
            self._date = format_date_time(now).encode("ascii")
        return [(b"date", self._date)]


def hypercorn_config(config: ServerConfig, listen_fd: int | None = None) -> HypercornConfig:
    """Hypercorn settings for the gateway (on a socket bound by the master, if given)."""
    hc = GatewayConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"fd://{listen_fd}" if listen_fd is not None else f"{host}:{config.port}"]
    hc.graceful_timeout = config.graceful_timeout
    hc.keep_alive_timeout = 5
    hc.accesslog = None
    hc.errorlog = "-"
    hc.include_server_header = False
    return hc


async def _serve(config: ServerConfig, zygote: ZygoteClient, listen_fd: int | None = None,
                 index: int = 0, count: int = 1) -> None:
    """One gateway process: gateway `index` of `count` when the master runs several."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(config, zygote, nursery)
        app = Gateway(config, supervisor, create_platform_app(config, supervisor))
        if count == 1:  # the fork server is our child: bring it back if it dies
            nursery.start_soon(_watch_zygote, zygote)
        else:  # the master's child, and its business
            files = app.metrics_route.files = MetricsFiles(config.runtime_path, index, count)
            nursery.start_soon(_share_metrics, files, app, supervisor)

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    shutdown.set()
                    app.end_streams()  # open event streams would hold hypercorn's graceful drain

        nursery.start_soon(on_signals)
        async with trio.open_nursery() as http:
            # hypercorn's protocol layer on our lean trio transport; WCE_STOCK_TRANSPORT=1: hypercorn's own, to compare
            serve_http = (hypercorn_serve if os.environ.get("WCE_STOCK_TRANSPORT") == "1"
                          else partial(lean_serve, send_timeout=config.send_timeout))
            binds = await http.start(lambda task_status: serve_http(
                app, hypercorn_config(config, listen_fd), shutdown_trigger=shutdown.wait, task_status=task_status))  # type: ignore[arg-type]
            print(f"wce: listening on {' '.join(binds)} (data: {config.data_path})", flush=True)
        # hypercorn has returned: no new requests, in-flight ones answered (or its grace ran out)
        await supervisor.aclose()
        nursery.cancel_scope.cancel()


async def _watch_zygote(zygote: ZygoteClient) -> None:
    while True:
        pidfd = os.pidfd_open(zygote.proc.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        zygote.restart_if_dead()


async def _share_metrics(files: MetricsFiles, app: Gateway, supervisor: Supervisor) -> None:
    """Every second, our counters to our file, for the scrapes the other gateways answer."""
    while True:
        await trio.sleep(METRICS_EVERY)
        try:
            files.write(app.metrics.snapshot(supervisor.statistics().events))
        except OSError:
            pass  # the run folder is being removed at shutdown


def lock_data_dir(config: ServerConfig) -> int:
    """One server per data folder: a second one would fight over the worker sockets."""
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"wce: another server is already using {data}")
    return fd


def run(config: ServerConfig) -> None:
    """Run the server in the foreground until SIGTERM or SIGINT."""
    try:
        trusted_proxies(config.forwarded_allow_ips)  # checked before anything starts
    except ValueError as exc:
        sys.exit(f"wce: {exc}")
    lock = lock_data_dir(config)
    try:
        config.prepare_runtime_path()  # before anything binds a socket in it
    except UnsafeRunFolder as exc:
        sys.exit(f"wce: {exc}")
    n = gateway_count(config)
    sockets = listening_sockets(config, n) if n > 1 else []
    zygote = ZygoteClient.start(config)
    try:
        if n == 1:
            trio.run(_serve, config, zygote)
        else:
            Master(config, sockets, lambda fd, i: trio.run(_serve, config, zygote, fd, i, n),
                   on_child_exit=zygote.restart_if_dead).run()
    finally:
        zygote.stop(config.graceful_timeout + 2)
        os.close(lock)
