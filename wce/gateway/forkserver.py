"""Starting the fork server before the event loop, and asking it for workers from inside it."""

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

import msgpack
import trio

from wce.config import ServerConfig
from wce.core.errors import RateLimited, Unavailable
from wce.proto.framing import FrameDecoder, frame
from wce.responses import error_from

REPLY_TIMEOUT = 30.0


class ForkServer:
    """The zygote process and how to talk to it."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path, config: ServerConfig) -> None:
        self.proc = proc
        self.path = path
        self.config = config

    @classmethod
    def start(cls, config: ServerConfig) -> ForkServer:
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
            [sys.executable, "-m", "wce.worker.forkserver", "--fd", str(lst.fileno()),
             "--config", json.dumps(config.to_dict())],
            pass_fds=(lst.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )
        lst.close()
        return proc, path

    async def _ask(self, msg: dict[str, Any], fd: int | None = None) -> dict[str, Any]:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(REPLY_TIMEOUT):
                await sock.connect(str(self.path))
                data = frame(msgpack.packb(msg, use_bin_type=True))
                if fd is None:
                    await sock.send(data)
                else:
                    await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                decoder = FrameDecoder(1 << 20)
                while True:
                    chunk = await sock.recv(65536)
                    if not chunk:
                        raise Unavailable("the fork server went away")
                    frames = decoder.feed(chunk)
                    if frames:
                        reply = msgpack.unpackb(frames[0], raw=False)
                        if not isinstance(reply, dict):
                            raise Unavailable("bad reply from the fork server")
                        return reply
        except (OSError, trio.TooSlowError) as exc:
            raise Unavailable("the fork server is not answering") from exc
        finally:
            sock.close()

    async def spawn(self, cenv: str) -> tuple[int, bool]:
        """The cenv's live worker, forked if it has none: (pid, whether this call started it). It
        listens on `{run}/{cenv}.sock`; every gateway process gets the same one."""
        reply = await self._ask({"op": "spawn", "cenv": cenv})
        if not reply.get("ok"):
            raise Unavailable("could not start a worker")
        return int(reply["pid"]), bool(reply.get("new"))

    async def admit(self, kind: str, ip: str) -> None:
        """Count one cenv creation ("new") or import from ip; RateLimited past the per-hour limit,
        which the fork server keeps so that it holds across gateway processes."""
        reply = await self._ask({"op": "admit", "kind": kind, "ip": ip})
        if not reply.get("ok"):
            if reply.get("code") == "rate_limited":
                raise RateLimited(str(reply.get("message")), retry_after=int(reply.get("retry_after", 60)))
            raise Unavailable("the fork server refused")

    async def create(self, cenv: str, username: str, password: str, ip: str) -> None:
        """Create a cenv file with its first admin user; raises the domain error on refusal."""
        reply = await self._ask({"op": "create", "cenv": cenv, "username": username, "password": password, "ip": ip})
        if not reply.get("ok"):
            raise error_from(str(reply.get("code")), str(reply.get("message", "could not create the cenv")))

    async def import_file(self, cenv: str, fd: int, username: str, password: str, ip: str) -> None:
        """Check an uploaded cenv file (open at fd) and install it as cenv; the domain error on refusal."""
        reply = await self._ask({"op": "import", "cenv": cenv, "username": username, "password": password,
                                 "ip": ip}, fd)
        if not reply.get("ok"):
            raise error_from(str(reply.get("code")), str(reply.get("message", "could not import the cenv")))

    async def fate(self, pid: int) -> dict[str, Any] | None:
        """How the worker pid ended, once it has (wce.worker.fates): its exit signal, and the
        request and script its crash marker noted; None while it runs or if it is not known."""
        reply = await self._ask({"op": "fate", "pid": pid})
        fate = reply.get("fate")
        return fate if reply.get("ok") and isinstance(fate, dict) else None

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
