"""Server-wide settings: one frozen record, from command-line flags and `WCE_*` environment variables.

Stdlib only: every process (gateway, fork server, workers) reads the same record.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything an operator can set. The per-cenv caps here are ceilings: a cenv's own config may
    lower them, never raise them; `wce caps` sets per-cenv exceptions (wce.core.caps)."""

    host: str = "127.0.0.1"
    port: int = 5309
    data: str = "./data"
    public_new: bool = True
    new_per_hour: int = 20  # cenvs created per client address per hour
    max_body: int = 1 << 20
    max_workers: int = 256
    idle_timeout: float = 300.0
    hard_deadline: float = 30.0  # a worker that has not begun answering by then is killed (504)
    graceful_timeout: float = 10.0
    gateways: int = 0  # gateway processes sharing the port (`serve --gateways`); 0: one per core
    # per-cenv caps: ceilings a cenv's _wce_config may lower (the operator's _wce_caps may also raise)
    memory_mb: int = 256
    cpu_ms_per_request: int = 2000
    max_db_mb: int = 1024
    run_dir: str = field(default="")
    max_import_mb: int = 64  # POST /import has its own, larger body limit
    access_log: str = "-"  # one JSON line per request: "-" stderr, "off", or a file path
    metrics_token: str = field(default="", repr=False)  # /metrics is 404 unless set; never sent to children
    # subdomain mode: cenv X at X.{cenv_domain}, its own browser origin; "" is path mode (/X/)
    cenv_domain: str = ""
    # peers whose X-Forwarded-For/-Proto (or Forwarded) are believed: "" none, "*" all, else IPs/CIDRs
    # and "unix" (a Unix-socket peer); parsed by wce.gateway.forwarded, which refuses a bad value
    forwarded_allow_ips: str = ""
    # each worker enters a kernel sandbox (Landlock, seccomp) before it opens its cenv: wce.worker.sandbox
    worker_sandbox: bool = True
    # bytes of pushed public pages each gateway process keeps, all cenvs together (LRU; a cenv
    # pushes at most a quarter of it); a page not held is answered by its worker. 0: none
    page_cache_mb: int = 64
    # seconds a client may take no byte of an answer the gateway is sending before it is dropped
    send_timeout: float = 30.0

    @property
    def data_path(self) -> Path:
        """The data folder, absolute."""
        return Path(self.data).resolve()

    @property
    def runtime_path(self) -> Path:
        """Where worker sockets live: `{data}/.run`, or a short private folder in /tmp when that
        path would be too long for a Unix socket name (108 bytes)."""
        if self.run_dir:
            return Path(self.run_dir)
        candidate = self.data_path / ".run"
        if len(str(candidate)) + 40 < 104:
            return candidate
        digest = hashlib.sha256(str(self.data_path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"wce-{digest}"

    def prepare_runtime_path(self) -> Path:
        """The run folder, made if missing; UnsafeRunFolder unless it is ours alone (private_folder)."""
        return private_folder(self.runtime_path)

    @property
    def sandbox_status_path(self) -> Path:
        """Where the fork server records which worker protections are active, for /healthz."""
        return self.runtime_path / "sandbox.json"

    @property
    def ceilings_path(self) -> Path:
        """Where a running server records its cap ceilings, for `wce caps` to show (the run folder)."""
        return self.runtime_path / "ceilings.json"

    def cenv_defaults(self) -> dict[str, Any]:
        """The server's ceilings for the per-cenv caps (also the value of a cap a cenv did not set)."""
        return {"memory_mb": self.memory_mb, "cpu_ms_per_request": self.cpu_ms_per_request, "max_db_mb": self.max_db_mb}

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (sent to the fork server on its command line, so without secrets)."""
        return {k: v for k, v in asdict(self).items() if k not in SECRET_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServerConfig:
        """The inverse of to_dict."""
        return cls(**d)


ENV = {
    "host": "WCE_HOST", "port": "WCE_PORT", "data": "WCE_DATA", "new_per_hour": "WCE_NEW_PER_HOUR",
    "max_body": "WCE_MAX_BODY", "max_workers": "WCE_MAX_WORKERS", "idle_timeout": "WCE_IDLE_TIMEOUT",
    "hard_deadline": "WCE_HARD_DEADLINE", "memory_mb": "WCE_MEMORY_MB",
    "cpu_ms_per_request": "WCE_CPU_MS_PER_REQUEST", "max_db_mb": "WCE_MAX_DB_MB",
    "max_import_mb": "WCE_MAX_IMPORT_MB", "access_log": "WCE_ACCESS_LOG", "metrics_token": "WCE_METRICS_TOKEN",
    "gateways": "WCE_GATEWAYS", "cenv_domain": "WCE_CENV_DOMAIN", "forwarded_allow_ips": "WCE_FORWARDED_ALLOW_IPS",
    "worker_sandbox": "WCE_WORKER_SANDBOX",
    "page_cache_mb": "WCE_PAGE_CACHE_MB", "send_timeout": "WCE_SEND_TIMEOUT",
}
SECRET_FIELDS = frozenset({"metrics_token"})


OLD_ENV = {"gateways": "WCE_WORKERS"}  # names a setting had before, still read when the new one is unset


def env_default(name: str, default: Any) -> Any:
    """The value of a setting's environment variable, converted to the default's type, else the default."""
    raw = os.environ.get(ENV.get(name, ""), None)
    if raw is None and name in OLD_ENV:
        raw = os.environ.get(OLD_ENV[name], None)
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    return type(default)(raw)


class UnsafeRunFolder(Exception):
    """The run folder exists but is not ours alone: whoever controls it could put their own sockets
    where the gateway looks for the fork server and workers (and be sent secrets and passwords)."""


def private_folder(path: Path) -> Path:
    """Make `path` (mode 0700) if it is missing, then check it with lstat: a real folder, not a
    symlink, owned by this process's user, mode 0700. UnsafeRunFolder, with a one-line reason, if not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeRunFolder(f"the run folder {path} is a symbolic link; remove it or set another data folder")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunFolder(f"the run folder {path} is not a folder")
    if st.st_uid != os.geteuid():
        raise UnsafeRunFolder(f"the run folder {path} belongs to uid {st.st_uid}, not to this server's "
                              f"user ({os.geteuid()}); remove it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise UnsafeRunFolder(f"the run folder {path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700; "
                              "check who wrote into it, then chmod 0700 or remove it")
    return path
