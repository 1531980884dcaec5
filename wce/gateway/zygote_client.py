"""The gateway's side of the fork server (zygote, wce.worker.zygote): starting it before the event
loop, and asking it for workers from inside it, in the messages of wce.proto.zygote."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from wce.config import ServerConfig
from wce.core.errors import RateLimited, Unavailable
from wce.proto import zygote
from wce.proto.errors import ProtocolError, TornFrame
from wce.proto.framing import FrameReader, frame
from wce.responses import error_from

REPLY_TIMEOUT = 30.0


class ZygoteClient:
    """The zygote process and how to talk to it."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path, config: ServerConfig) -> None:
        self.proc = proc
        self.path = path
        self.config = config

    @classmethod
    def start(cls, config: ServerConfig) -> ZygoteClient:
        """Start the zygote (a fresh interpreter: it inherits nothing of the caller's event loop)."""
        proc, path = cls._launch(config)
        return cls(proc, path, config)

    def restart_if_dead(self) -> bool:
        """Start a new zygote if ours has exited (its workers went with it, PR_SET_PDEATHSIG): the
        next spawn starts them again. Gateways find it by its socket path. True if restarted."""
        if self.proc.poll() is None:
            return False
        print(f"wce: the fork server exited ({self.proc.returncode}); starting another", file=sys.stderr, flush=True)
        self.proc, self.path = self._launch(self.config)
        return True

    @staticmethod
    def _launch(config: ServerConfig) -> tuple[subprocess.Popen[bytes], Path]:
        run = config.prepare_runtime_path()  # UnsafeRunFolder unless ours alone (finding L7)
        path = run / "forkserver.sock"
        path.unlink(missing_ok=True)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(str(path))
        os.chmod(path, 0o600)
        lst.listen(128)
        env = dict(os.environ, MALLOC_ARENA_MAX="1", RUST_BACKTRACE="0", PYTHONUNBUFFERED="1")
        env.pop("WCE_METRICS_TOKEN", None)  # the gateway's alone
        proc = subprocess.Popen(
            [sys.executable, "-m", "wce.worker.zygote", "--fd", str(lst.fileno()),
             "--config", json.dumps(config.to_dict())],
            pass_fds=(lst.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )
        lst.close()
        return proc, path

    async def _ask(self, msg: zygote.Request, fd: int | None = None) -> zygote.Reply:
        """Send one request (with the open file `fd`, for an import) and read its reply."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(REPLY_TIMEOUT):
                await sock.connect(str(self.path))
                data = frame(zygote.encode(msg))
                if fd is None:
                    await sock.send(data)
                else:
                    await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                reply = zygote.decode(await FrameReader(zygote.MAX_FRAME).read_async(lambda: sock.recv(65536)))
        except (EOFError, TornFrame):
            raise Unavailable("the fork server went away") from None
        except ProtocolError as exc:
            raise Unavailable("bad reply from the fork server") from exc
        except (OSError, trio.TooSlowError) as exc:
            raise Unavailable("the fork server is not answering") from exc
        finally:
            sock.close()
        if isinstance(reply, zygote.Request):
            raise Unavailable("bad reply from the fork server")
        return reply

    async def spawn(self, cenv: str) -> tuple[int, bool]:
        """The cenv's live worker, forked if it has none: (pid, whether this call started it). It
        listens on `{run}/{cenv}.sock`; every gateway process gets the same one."""
        reply = await self._ask(zygote.Spawn(cenv))
        if not isinstance(reply, zygote.Spawned):
            raise Unavailable("could not start a worker")
        return reply.pid, reply.new

    async def admit(self, kind: str, ip: str) -> None:
        """Count one cenv creation ("new") or import from ip; RateLimited past the per-hour limit,
        which the fork server keeps so that it holds across gateway processes."""
        reply = await self._ask(zygote.Admit(kind, ip))
        if isinstance(reply, zygote.Refused) and reply.code == "rate_limited":
            raise RateLimited(reply.message, retry_after=reply.retry_after or 60)
        if not isinstance(reply, zygote.Done):
            raise Unavailable("the fork server refused")

    async def create(self, cenv: str, username: str, password: str, ip: str) -> None:
        """Create a cenv file with its first admin user; raises the domain error on refusal."""
        _done(await self._ask(zygote.Create(cenv, username, password, ip)), "could not create the cenv")

    async def import_file(self, cenv: str, fd: int, username: str, password: str, ip: str) -> None:
        """Check an uploaded cenv file (open at fd) and install it as cenv; the domain error on refusal."""
        _done(await self._ask(zygote.Import(cenv, username, password, ip), fd), "could not import the cenv")

    async def fate(self, pid: int) -> dict[str, Any] | None:
        """How the worker pid ended, once it has (wce.worker.fates): its exit signal, and the
        request and script its crash marker noted; None while it runs or if it is not known."""
        reply = await self._ask(zygote.Fate(pid))
        return reply.fate if isinstance(reply, zygote.Ended) else None

    def stop(self, timeout: float) -> None:
        """SIGTERM the zygote (it stops its workers), SIGKILL after timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.path.unlink(missing_ok=True)


def _done(reply: zygote.Reply, failed: str) -> None:
    """Nothing for Done; the error a Refused names; Unavailable for any other reply."""
    if isinstance(reply, zygote.Refused):
        raise error_from(reply.code, reply.message)
    if not isinstance(reply, zygote.Done):
        raise Unavailable(failed)
