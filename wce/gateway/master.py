"""The parent of several gateway processes (`wce serve --gateways N`, N > 1).

One trio process serves about one core's worth of requests (measured before this was built: two
processes on two cores doubled throughput), so
the server runs N gateways. They share everything a cenv needs through the fork server, which is
the one arbiter of which worker serves which cenv and of the limits that must hold server-wide;
workers already accept several gateway connections. What each gateway keeps to itself is cheap to
duplicate: token verification caches, the pushed public pages, its counters.

Each gateway gets its own listening socket on the same port with SO_REUSEPORT, bound here before
the fork: the kernel spreads new connections evenly over the N accept queues. (One shared socket
would let whichever process wakes first take every connection of a burst; a benchmark's 32
keep-alive connections would all land on one core.)

This process never runs trio: it forks the gateways, restarts one that dies (its socket stays
open here, so connections queued on it are not lost), and on SIGTERM/SIGINT tells them all to
stop gracefully and waits for them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from wce.config import ServerConfig
from wce.process import die_with_parent

RESTART_DELAY = 0.5  # a gateway that dies within a second of starting is restarted after this
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def gateway_count(config: ServerConfig) -> int:
    """Gateway processes to run: the setting, or one per core this process may use."""
    return config.gateways if config.gateways > 0 else max(1, len(os.sched_getaffinity(0)))


def listening_sockets(config: ServerConfig, n: int) -> list[socket.socket]:
    """n listening sockets on the configured address (port 0: one free port for all)."""
    host = config.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # a plain bind first: it fails if anything listens there, even another SO_REUSEPORT group
    # (which our own reuseport binds would otherwise silently join)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, config.port))
        except OSError as exc:
            sys.exit(f"wce: cannot listen on {host}:{config.port}: {exc.strerror}")
        port = probe.getsockname()[1]
    socks = []
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        s.bind((host, port))
        s.listen(128)
        s.set_inheritable(True)
        socks.append(s)
    return socks


class Master:
    """Forks and watches the gateway processes; `run_gateway(fd, index)` is one gateway's whole life."""

    def __init__(self, config: ServerConfig, sockets: list[socket.socket],
                 run_gateway: Callable[[int, int], None], on_child_exit: Callable[[], object] = lambda: None) -> None:
        self.config = config
        self.on_child_exit = on_child_exit  # for our other children (the fork server)
        self.sockets = sockets
        self.run_gateway = run_gateway
        self.children: dict[int, int] = {}  # pid -> index of its socket
        self.started: dict[int, float] = {}

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                die_with_parent()
                for i, s in enumerate(self.sockets):
                    if i != index:
                        s.close()
                self.run_gateway(self.sockets[index].fileno(), index)
                code = 0
            except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT; then stop the gateways gracefully (SIGKILL past the grace)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for i in range(len(self.sockets)):
                self._fork(i)
            while True:
                info = signal.sigwaitinfo(_SIGNALS)
                if info.si_signo != signal.SIGCHLD:
                    break
                self.on_child_exit()
                for pid, index in self._reap():
                    print(f"wce: gateway {pid} exited; starting another", file=sys.stderr, flush=True)
                    if time.monotonic() - self.started.get(index, 0) < 1:
                        time.sleep(RESTART_DELAY)
                    self._fork(index)
            self._stop()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for s in self.sockets:
                s.close()

    def _reap(self) -> list[tuple[int, int]]:
        """Our gateways that have exited, as (pid, index); other children (none) are ignored."""
        gone = []
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                gone.append((pid, self.children.pop(pid)))
        return gone

    def _stop(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # a gateway drains its requests (graceful_timeout), then stops its workers gracefully
        deadline = time.monotonic() + self.config.graceful_timeout * 3 + 5
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

