"""Keeps exactly one worker per active cenv: starts on first use, replaces the dead, kills the hung,
evicts the least recently used past the cap, and stops them all on shutdown.

A worker's socket lives at `{run}/{cenv}.sock`, a name derived from the cenv id alone, so any
gateway process that shares the run folder can reach it (see README, "Several gateways").
"""

from __future__ import annotations

import os
import signal
import weakref
from collections import Counter
from dataclasses import dataclass

import trio

from wce import proto
from wce.config import ServerConfig
from wce.core.errors import NotFound, Unavailable
from wce.core.ids import path_for
from wce.proto.channel import MessageChannel

from .budget import Budget
from .client import WorkerClient
from .fates import Fate
from .tokens import CACHE_BYTES
from .zygote_client import ZygoteClient

HELLO_TIMEOUT = 10.0
START_ATTEMPTS = 3
FATE_WAIT = 10.0  # how long a worker whose connection broke may take to exit before its fate is asked


class _Lookup:
    """One worker's fate, asked of the fork server once, for every request waiting on it."""

    __slots__ = ("done", "fate")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.fate: Fate | None = None


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot for tests and /healthz."""

    live: int
    starting: int
    stopping: int
    events: dict[str, int]


class Supervisor:
    """Owns the worker handles of this gateway process; runs its tasks in the given nursery."""

    def __init__(self, config: ServerConfig, zygote: ZygoteClient, nursery: trio.Nursery) -> None:
        self.config = config
        self.zygote = zygote
        self.nursery = nursery
        self.run_dir = config.runtime_path
        self._workers: dict[str, WorkerClient] = {}
        self._starting: dict[str, trio.Event] = {}
        self._stopping: dict[str, WorkerClient] = {}
        self.events: Counter[str] = Counter()
        self._lost: set[str] = set()  # cenvs whose worker died or was killed: their next start is a restart
        self._fates: weakref.WeakKeyDictionary[WorkerClient, _Lookup] = weakref.WeakKeyDictionary()
        # what all cenvs together may make this gateway process hold (wce.gateway.budget)
        self.page_budget = Budget(config.page_cache_mb << 20)
        self.token_budget = Budget(CACHE_BYTES)
        self._closed = False

    def statistics(self) -> SupervisorStatistics:
        """How many workers, and what has happened to them so far."""
        return SupervisorStatistics(len(self._workers), len(self._starting), len(self._stopping), dict(self.events))

    def exists(self, cenv: str) -> bool:
        """True if the cenv's file is there (the id must be well-shaped)."""
        return path_for(self.config.data_path, cenv).exists()

    def live(self, cenv: str) -> WorkerClient | None:
        """The cenv's worker if one is running and taking requests (never starts one)."""
        w = self._workers.get(cenv)
        if w is None or w.closing or w.exited.is_set():
            return None
        return w

    async def get(self, cenv: str) -> WorkerClient:
        """The live worker of cenv, started if need be. NotFound for an unknown cenv."""
        while True:
            w = self._workers.get(cenv)
            if w is not None and not w.closing:
                if not w.died():
                    w.last_used = trio.current_time()
                    return w
                # dead, and its watcher has not run yet: replace it now (the watcher cleans up)
                del self._workers[cenv]
                self._stopping[cenv] = w
                self.events["died"] += 1
                self._note_lost(cenv)
            if self._closed:
                raise Unavailable("the server is shutting down")
            ev = self._starting.get(cenv)
            if ev is not None:
                await ev.wait()
                if cenv not in self._workers:
                    raise Unavailable("the cenv's worker could not start")
                continue
            ev = self._starting[cenv] = trio.Event()
            try:
                if not self.exists(cenv):
                    raise NotFound("no such cenv")
                old = self._stopping.get(cenv)
                if old is not None:
                    with trio.move_on_after(self.config.graceful_timeout + 5):
                        await old.exited.wait()
                    old.kill()
                    await old.exited.wait()
                w = await self._start(cenv)
                self._workers[cenv] = w
                await self._evict_over_cap()
            finally:
                del self._starting[cenv]
                ev.set()

    async def _start(self, cenv: str) -> WorkerClient:
        """Connect to the cenv's worker, which the fork server starts unless another gateway process
        already has. A worker we reach just as it closes is asked for again: its successor comes."""
        for attempt in range(START_ATTEMPTS):
            pid, new = await self.zygote.spawn(cenv)
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone already (and reaped): ask again
            try:
                # a new worker may first wait for its predecessor's drain (the cenv lock)
                with trio.fail_after(HELLO_TIMEOUT + (self.config.graceful_timeout if new else 0)):
                    channel, hello = await self._greet(cenv)
                break
            except (OSError, trio.TooSlowError, trio.EndOfChannel, proto.ProtocolError, proto.BrokenChannel) as exc:
                if new:  # ours, and broken: make sure it is gone
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except OSError:
                        pass
                os.close(pidfd)
                if new or attempt == START_ATTEMPTS - 1:
                    self.events["start_failed"] += 1
                    raise Unavailable("the cenv's worker could not start") from exc
        else:
            self.events["start_failed"] += 1
            raise Unavailable("the cenv's worker could not start")
        self.events["started" if new else "joined"] += 1
        if cenv in self._lost:
            self._lost.discard(cenv)
            if new:
                self.events["restarted"] += 1
        w = WorkerClient(cenv, pid, pidfd, channel, hello.info["secret"], self._worker_closing,
                         self.connection_lost, self.page_budget, self.token_budget)
        settings = hello.info.get("settings")
        if isinstance(settings, dict):
            w.apply_settings(settings)
        self.nursery.start_soon(w.run_reader)
        self.nursery.start_soon(self._watch, w)
        return w

    async def _greet(self, cenv: str) -> tuple[MessageChannel, proto.Hello]:
        stream = await trio.open_unix_socket(str(self.run_dir / f"{cenv}.sock"))
        try:
            channel = MessageChannel(stream)
            # our pid names our requests in the worker's crash marker (request ids are per connection)
            await channel.send(proto.Hello(proto.PROTOCOL_VERSION, "gateway", {"pid": os.getpid()}))
            hello = await channel.receive()
            if not isinstance(hello, proto.Hello) or not isinstance(hello.info.get("secret"), bytes):
                raise proto.DecodeError("the worker did not greet properly")
            return channel, hello
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise

    async def _watch(self, w: WorkerClient) -> None:
        """Notice the worker's exit through its pidfd (the fork server, not we, is its parent)."""
        try:
            await trio.lowlevel.wait_readable(w.pidfd)
        finally:
            w.exited.set()
            os.close(w.pidfd)
            if self._workers.get(w.cenv) is w:
                del self._workers[w.cenv]
                self.events["died"] += 1
                self._note_lost(w.cenv)
            if self._stopping.get(w.cenv) is w:
                del self._stopping[w.cenv]
            await w.aclose()

    def _worker_closing(self, w: WorkerClient) -> None:
        """The worker announced it is going away (idle or told to): retire it gracefully."""
        if self._workers.get(w.cenv) is w:
            self.events["idle_exit"] += 1
            self._retire(w)

    def connection_lost(self, w: WorkerClient) -> None:
        """Our connection to a registered worker ended (it died, or spoke garbage): its state is
        unknown, so it is killed; the next request starts a new one."""
        if self._workers.get(w.cenv) is w:
            self.kill(w, "connection_lost")

    def _retire(self, w: WorkerClient) -> None:
        if self._workers.get(w.cenv) is w:
            del self._workers[w.cenv]
        w.closing = True
        self._stopping[w.cenv] = w
        self.nursery.start_soon(self._stop_gracefully, w)

    async def _stop_gracefully(self, w: WorkerClient) -> None:
        """Let in-flight requests finish, ask the worker to shut down, close, kill if it lingers."""
        with trio.move_on_after(self.config.graceful_timeout):
            await w.idle.wait()
        try:
            with trio.move_on_after(1):
                await w.channel.send(proto.Shutdown())
        except (proto.BrokenChannel, trio.ClosedResourceError):
            pass
        await w.aclose()
        with trio.move_on_after(self.config.graceful_timeout):
            await w.exited.wait()
        if not w.exited.is_set():
            self.events["killed_linger"] += 1
            w.kill()

    def kill(self, w: WorkerClient, reason: str) -> None:
        """Kill a worker at once (it blew the hard deadline); its in-flight requests fail."""
        self.events[f"killed_{reason}"] += 1
        self._note_lost(w.cenv)
        if self._workers.get(w.cenv) is w:
            del self._workers[w.cenv]
        self._stopping[w.cenv] = w
        w.kill()

    async def fate(self, w: WorkerClient) -> Fate | None:
        """How a worker whose connection broke ended, and what its crash marker said
        (wce.gateway.fates): asked of the fork server once it has exited; None if it does not
        exit within FATE_WAIT (it is being killed: connection_lost) or nothing is known."""
        lookup = self._fates.get(w)
        if lookup is None:
            lookup = self._fates[w] = _Lookup()
            self.nursery.start_soon(self._look_up, w, lookup)
        await lookup.done.wait()
        return lookup.fate

    async def _look_up(self, w: WorkerClient, lookup: _Lookup) -> None:
        try:
            with trio.move_on_after(FATE_WAIT):
                await w.exited.wait()
            if w.exited.is_set():
                lookup.fate = Fate.parse(await self.zygote.fate(w.pid))
                if lookup.fate is not None and lookup.fate.died_running_a_script:
                    self.events["crashed"] += 1
        except Unavailable:
            pass
        finally:
            lookup.done.set()

    def _note_lost(self, cenv: str) -> None:
        if len(self._lost) >= 4 * self.config.max_workers:  # bounded: forgetting one only miscounts
            self._lost.pop()
        self._lost.add(cenv)

    async def _evict_over_cap(self) -> None:
        while len(self._workers) > self.config.max_workers:
            lru = min(self._workers.values(), key=lambda w: w.last_used)
            self.events["evicted"] += 1
            self._retire(lru)

    async def aclose(self) -> None:
        """Stop every worker gracefully (in-flight requests finish first), then return."""
        self._closed = True
        for w in list(self._workers.values()):
            self._retire(w)
        with trio.move_on_after(self.config.graceful_timeout * 2 + 2):
            while self._stopping or self._starting:
                for w in list(self._stopping.values()):
                    await w.exited.wait()
                await trio.sleep(0.01)
