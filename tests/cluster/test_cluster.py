"""Two WCE nodes behind nginx (deploy/nginx-cluster.conf) on loopback, with Litestream replicating
one node's cenvs (a file replica): each cenv is served by one node only, the other node's cenvs keep
working when one node stops, and a cenv of the stopped node restored from its replica onto the
survivor is served again through nginx with every acknowledged row."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import ROOT, Server, start_server

LITESTREAM = shutil.which("litestream") or str(Path(sys.executable).parent / "litestream")  # as in conftest.py

PASSWORD = "cluster password"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def port_of(srv: Server) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def nginx_conf(tmp: Path, listen: int, nodes: list[int]) -> Path:
    """deploy/nginx-cluster.conf with this test's ports, inside a minimal main configuration."""
    site = (ROOT / "deploy" / "nginx-cluster.conf").read_text()
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    servers = iter(nodes * 2)
    site = re.sub(r"server 127\.0\.0\.1:\d+", lambda m: f"server 127.0.0.1:{next(servers)}", site)
    (tmp / "site.conf").write_text(site)
    temp = tmp / "nginx-temp"
    temp.mkdir()
    main = tmp / "nginx.conf"
    main.write_text(f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    include {tmp}/site.conf;
}}
""")
    return main


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers at {url}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, Server], Path, Path]]:
    nodes = {name: start_server(tmp_path / name, "--access-log", str(tmp_path / f"{name}.log"))
             for name in ("a", "b")}
    for name in nodes:
        (tmp_path / name).mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listen = free_port()
        conf = nginx_conf(tmp_path, listen, [port_of(nodes["a"]), port_of(nodes["b"])])
        procs.append(subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        replica = tmp_path / "replica"
        lconf = tmp_path / "litestream.yml"
        deployed = (ROOT / "deploy" / "litestream.yml").read_text()
        lconf.write_text(deployed.replace("/var/lib/wce", str(nodes["b"].data)).replace("/var/backups/wce", str(replica)))
        with open(tmp_path / "litestream.log", "wb") as llog:
            procs.append(subprocess.Popen([LITESTREAM, "replicate", "-config", str(lconf)],
                                          stdout=subprocess.DEVNULL, stderr=llog))
        base = f"http://127.0.0.1:{listen}"
        wait_http(base + "/healthz")
        yield base, nodes, replica, tmp_path
    finally:
        for p in procs:
            stop(p)
        for srv in nodes.values():
            srv.stop()


def holder(nodes: dict[str, Server], cenv: str) -> list[str]:
    return [name for name, srv in nodes.items() if (srv.data / f"{cenv}.sqlite").exists()]


def served_by(log: Path, cenv: str) -> int:
    """Answers other than 404 that a node's request log shows for a cenv."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines()
               if (e := json.loads(line))["cenv"] == cenv and e["status"] != 404)


def restore(replica: Path, cenv: str, out: Path) -> None:
    subprocess.run([LITESTREAM, "restore", "-o", str(out), f"file://{replica}/{cenv}.sqlite"],
                   check=True, capture_output=True, timeout=60)


def rows_in(path: Path) -> set[int]:
    import apsw

    conn = apsw.Connection(str(path))
    try:
        return {i for (i,) in conn.execute("SELECT id FROM notes")}
    finally:
        conn.close()


def test_two_nodes_behind_nginx_with_litestream(cluster: tuple[str, dict[str, Server], Path, Path]) -> None:
    base, nodes, replica, tmp = cluster
    with httpx.Client(base_url=base, timeout=30) as c:
        cenvs: dict[str, str] = {}  # cenv -> token
        acked: dict[str, set[int]] = {}
        for _ in range(8):  # /new goes to any node
            r = c.post("/new", json={"username": "admin", "password": PASSWORD})
            assert r.status_code == 201, r.text
            cenv = r.json()["cenv"]
            r = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": PASSWORD})
            assert r.status_code == 200, r.text
            c.cookies.clear()
            cenvs[cenv] = r.json()["token"]
            h = {"authorization": f"Bearer {cenvs[cenv]}"}
            r = c.post(f"/{cenv}/api/tables", headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"})
            assert r.status_code == 201, r.text
            acked[cenv] = set()
            for i in range(5):
                r = c.post(f"/{cenv}/api/tables/notes/rows", headers=h, json={"body": f"row {i}"})
                assert r.status_code == 201, r.text
                acked[cenv].add(r.json()["id"])
        # each cenv lives on exactly one node, both nodes got some, and only its node serves it
        where = {cenv: holder(nodes, cenv) for cenv in cenvs}
        assert all(len(w) == 1 for w in where.values()), where
        on = {name: [cv for cv, w in where.items() if w == [name]] for name in nodes}
        assert on["a"] and on["b"], on
        for cenv, token in cenvs.items():
            for _ in range(5):
                assert c.get(f"/{cenv}/auth/me", headers={"authorization": f"Bearer {token}"}).status_code == 200
            [home] = where[cenv]
            other = "b" if home == "a" else "a"
            assert served_by(tmp / f"{home}.log", cenv) == 12  # login, table, 5 rows, 5 reads
            assert served_by(tmp / f"{other}.log", cenv) == 0

        # Litestream has every acknowledged row of node b's cenvs (it syncs each second)
        lost = on["b"][0]
        deadline = time.monotonic() + 60
        while True:
            out = tmp / "probe.sqlite"
            for p in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
                p.unlink(missing_ok=True)
            try:
                restore(replica, lost, out)
                if acked[lost] <= rows_in(out):
                    break
            except (subprocess.CalledProcessError, Exception):
                pass
            assert time.monotonic() < deadline, "litestream did not catch up"
            time.sleep(0.5)

        # node b stops: node a's cenvs keep working through nginx, b's are not found
        nodes["b"].stop()
        for cenv in on["a"]:
            h = {"authorization": f"Bearer {cenvs[cenv]}"}
            assert c.get(f"/{cenv}/auth/me", headers=h).status_code == 200
            r = c.post(f"/{cenv}/api/tables/notes/rows", headers=h, json={"body": "after the stop"})
            assert r.status_code == 201
        # the stopped node's cenvs are unreachable (404 from a, or 502 when b, tried last, is down)
        assert c.get(f"/{lost}/auth/me", headers={"authorization": f"Bearer {cenvs[lost]}"}).status_code in (404, 502)

        # restore the lost cenv from its replica onto node a: served again, nothing lost
        restore(replica, lost, nodes["a"].data / f"{lost}.sqlite")
        h = {"authorization": f"Bearer {cenvs[lost]}"}
        assert c.get(f"/{lost}/auth/me", headers=h).status_code == 200  # same secret and sessions
        r = c.get(f"/{lost}/api/tables/notes/rows", headers=h, params={"limit": 1000})
        assert r.status_code == 200
        assert {x["id"] for x in r.json()["rows"]} == acked[lost]
        r = c.post(f"/{lost}/api/tables/notes/rows", headers=h, json={"body": "on its new node"})
        assert r.status_code == 201
        assert served_by(tmp / "a.log", lost) >= 3
        check = subprocess.run([str(Path(LITESTREAM).parent / "python"), "-m", "wce", "--data", str(nodes["a"].data),
                                "check"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
