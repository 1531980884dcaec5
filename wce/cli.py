"""The `wce` command: `serve` runs the server; `new` creates a cenv from the command line."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence

from .config import ServerConfig, env_default


def _serve_args(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    p.add_argument("--host", default=env_default("host", d.host), help="address to listen on (WCE_HOST)")
    p.add_argument("--port", type=int, default=env_default("port", d.port), help="port, 0 for any free one (WCE_PORT)")
    p.add_argument("--no-public-new", dest="public_new", action="store_false",
                   default=env_default("public_new", d.public_new), help="turn off public cenv creation at /new")
    p.add_argument("--new-per-hour", type=int, default=env_default("new_per_hour", d.new_per_hour),
                   help="cenvs one client address may create per hour (WCE_NEW_PER_HOUR)")
    p.add_argument("--max-body", type=int, default=env_default("max_body", d.max_body), help="request body limit in bytes")
    p.add_argument("--gateways", type=int, default=env_default("gateways", d.gateways),
                   help="gateway processes sharing the port; 0 (the default): one per core (WCE_GATEWAYS)")
    p.add_argument("--workers", dest="gateways", type=int, action=_Renamed, help=argparse.SUPPRESS)
    p.add_argument("--max-workers", type=int, default=env_default("max_workers", d.max_workers), help="live worker cap")
    p.add_argument("--idle-timeout", type=float, default=env_default("idle_timeout", d.idle_timeout),
                   help="seconds before an idle worker exits")
    p.add_argument("--hard-deadline", type=float, default=env_default("hard_deadline", d.hard_deadline),
                   help="seconds before a worker that has not answered is killed (504)")
    p.add_argument("--memory-mb", type=int, default=env_default("memory_mb", d.memory_mb), help="default memory cap per cenv")
    p.add_argument("--cpu-ms-per-request", type=int, default=env_default("cpu_ms_per_request", d.cpu_ms_per_request),
                   help="default CPU budget per request")
    p.add_argument("--max-db-mb", type=int, default=env_default("max_db_mb", d.max_db_mb), help="default database size cap")
    p.add_argument("--max-import-mb", type=int, default=env_default("max_import_mb", d.max_import_mb),
                   help="size limit of a file uploaded to POST /import (WCE_MAX_IMPORT_MB)")
    p.add_argument("--cenv-domain", default=env_default("cenv_domain", d.cenv_domain),
                   help="serve cenv X at X.DOMAIN, its own browser origin (WCE_CENV_DOMAIN); unset: /X/ paths")
    p.add_argument("--forwarded-allow-ips", default=env_default("forwarded_allow_ips", d.forwarded_allow_ips),
                   help="comma-separated proxy addresses or CIDRs, 'unix' (a Unix-socket peer) or '*', whose "
                        "X-Forwarded-For/-Proto (or Forwarded) are trusted (WCE_FORWARDED_ALLOW_IPS); unset: none")
    p.add_argument("--page-cache-mb", type=int, default=env_default("page_cache_mb", d.page_cache_mb),
                   help="MiB of public pages each gateway process answers without a hop, all cenvs together, "
                        "least recently used out first; a cenv fills at most a quarter (WCE_PAGE_CACHE_MB)")
    p.add_argument("--send-timeout", type=float, default=env_default("send_timeout", d.send_timeout),
                   help="seconds a client may take no byte of an answer before it is dropped (WCE_SEND_TIMEOUT)")
    p.add_argument("--access-log", default=env_default("access_log", d.access_log),
                   help="one JSON line per request: '-' for stderr, 'off', or a file (WCE_ACCESS_LOG)")
    p.add_argument("--no-worker-sandbox", dest="worker_sandbox", action="store_false",
                   default=env_default("worker_sandbox", d.worker_sandbox),
                   help="run workers without their kernel sandbox (Landlock, seccomp), e.g. to attach a "
                        "debugger to one; WCE_WORKER_SANDBOX=0 does the same")


class _Renamed(argparse.Action):
    """An option kept under its old name: it still works, and says its new name once."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option: str | None = None) -> None:
        print("wce: --workers is now --gateways (it counts gateway processes, not cenv workers)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _read_password(confirm: bool = True) -> str:
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    pw = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != pw:
        sys.exit("wce: passwords differ")
    return pw


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: global options (`--data`) before or after the subcommand, both work."""
    parser = argparse.ArgumentParser(prog="wce", description="WCE, the Web Compute Environment")
    parser.add_argument("--data", default=env_default("data", ServerConfig().data), help="data folder (WCE_DATA)")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="run the server"))
    new = sub.add_parser("new", help="create a cenv; the password is read from a prompt or stdin")
    new.add_argument("--username", required=True)
    from . import admin

    admin.add_parsers(sub)
    _global_options_everywhere(sub)
    return parser.parse_args(argv)


def _global_options_everywhere(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Accept `--data` after any subcommand too (`wce serve --data DIR`); given there it wins, else
    the value before the subcommand (or its default) stays."""
    for p in sub.choices.values():
        p.add_argument("--data", default=argparse.SUPPRESS, help="data folder (WCE_DATA)")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _global_options_everywhere(action)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `wce` console script and `python -m wce`."""
    args = parse_args(argv)
    from . import admin

    if args.command == "serve":
        from .gateway.serve import run

        fields = {k: v for k, v in vars(args).items() if k in ServerConfig.__dataclass_fields__}
        fields["metrics_token"] = env_default("metrics_token", "")  # from the environment only: argv is public
        run(ServerConfig(**fields))
    elif args.command == "new":
        from .core import auth, cenv
        from .core.errors import WceError
        from .core.ids import new_id

        try:
            username = auth.check_username(args.username)
            password = auth.check_password(_read_password())
            data = ServerConfig(data=args.data).data_path
            data.mkdir(parents=True, exist_ok=True)
            cenv_id = new_id()
            cenv.create(data, cenv_id, username, auth.hash_password(password), ip="cli")
        except WceError as exc:
            sys.exit(f"wce: {exc.message}")
        print(cenv_id)
        print(f"created {os.path.join(str(data), cenv_id + '.sqlite')}", file=sys.stderr)
    elif args.command in admin.COMMANDS:
        sys.exit(admin.run(args))
