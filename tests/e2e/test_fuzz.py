"""Fuzzing the API from its own OpenAPI document (schemathesis CLI) against the real server.

`make test` runs a short pass (WCE_FUZZ_EXAMPLES, default 50 examples per operation; on 2 quiet
cores 5 took 9 s, 30 13 s, 100 34 s, 200 64 s, and 50 about 10 s more than 5 under load; 5 missed
a 500 that 30 already found); `make fuzz` a long one (200). It passes only if no answer is a 5xx
and every answer matches the document (status code, content type, response schema). Logout and
password change are excluded: they would end the run's own session (test_auth.py covers both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from support import Server

EXAMPLES = os.environ.get("WCE_FUZZ_EXAMPLES", "50")


def test_api_fuzz(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        cenv = c.post("/new", json={"username": "admin", "password": "fuzz password"}).json()["cenv"]
        token = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "fuzz password"}).json()["token"]
        h = {"authorization": f"Bearer {token}"}
        c.post(f"/{cenv}/api/tables", headers=h, json={"name": "notes", "columns": [
            {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "title", "type": "TEXT"},
            {"name": "score", "type": "REAL"}, {"name": "data", "type": "BLOB"}], "full_text": ["title"]})
        c.post(f"/{cenv}/api/tables/notes/rows", headers=h, json=[{"title": f"n{i}", "score": i} for i in range(5)])
        c.put(f"/{cenv}/api/permissions/notes", headers=h, json={"roles": {"user": {"select": True, "insert": True}}})
        r = c.post(f"/{cenv}/api/endpoints", headers=h, json={"method": "POST", "path": "/echo/{name}", "access": "public",
                   "source": "def handle_request(ctx):\n    return {'name': ctx.params['name'], 'json': ctx.json}\n",
                   "spec": {"responses": {"200": {"description": "echo", "content": {"application/json": {
                       "schema": {"type": "object", "required": ["name"]}}}}}}})
        assert r.status_code == 201, r.text
        doc = c.get(f"/{cenv}/api/openapi.json", headers=h)
        assert doc.status_code == 200
    schema_file = tmp_path / "openapi.json"
    schema_file.write_bytes(doc.content)
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [st, "run", str(schema_file), "--url", f"{server.url}/{cenv}", "-H", f"Authorization: Bearer {token}",
           "--max-examples", EXAMPLES, "--checks", "all", "--exclude-checks", "ignored_auth,positive_data_acceptance",
           "--exclude-path", "/auth/logout", "--exclude-path", "/auth/password",
           "--generation-deterministic", "--request-timeout", "30", "--no-color"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    (tmp_path / "fuzz.txt").write_text(out.stdout + out.stderr)
    Path("/tmp/fuzz_last.txt").write_text(out.stdout + out.stderr) if os.environ.get("WCE_FUZZ_KEEP") else None
    tail = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, tail
