"""Fuzzing the API from its own OpenAPI document (schemathesis CLI) against the real server.

Two runs: anonymously, on the document an anonymous caller gets, then as an admin, on the admin's,
which has every route of the worker's table (wce.worker.app.ROUTES) but three: logout and password
change would end the run's own session (test_auth.py covers both), and `GET events` is a stream
that does not end. A run passes only if no answer is a 5xx and every answer matches the document
(status code, content type, response schema). `make test` runs a short pass (WCE_FUZZ_EXAMPLES,
default 50 examples per operation: 12 + 52 operations, about 4,000 requests; on 2 cores with one
busy, 5 took 10 s, 30 19 s, 50 24 s; with the admin's 36 operations of before, 50 took 19 s, and 5
missed a 500 that 30 already found); `make fuzz` a long one (200).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from support import Server

EXAMPLES = os.environ.get("WCE_FUZZ_EXAMPLES", "50")
# A page's path answers 404 to methods other than GET and HEAD (display mode claims only those;
# wce.worker.routes), not the 405 schemathesis expects of a documented path.
CONFIG = """
checks.ignored_auth.enabled = false
checks.positive_data_acceptance.enabled = false

[[operations]]
include-operation-id-regex = "^page_"
checks.unsupported_method.enabled = false
"""


def test_api_fuzz(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        cenv = c.post("/new", json={"username": "admin", "password": "fuzz password"}).json()["cenv"]
        token = c.post(f"/{cenv}/auth/login", json={"username": "admin", "password": "fuzz password"}).json()["token"]
        h = {"authorization": f"Bearer {token}"}
        c.post(f"/{cenv}/api/tables", headers=h, json={"name": "notes", "columns": [
            {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "title", "type": "TEXT"},
            {"name": "score", "type": "REAL"}, {"name": "data", "type": "BLOB"}], "full_text": ["title"]})
        c.post(f"/{cenv}/api/tables/notes/rows", headers=h, json=[{"title": f"n{i}", "score": i} for i in range(5)])
        c.put(f"/{cenv}/api/permissions/notes", headers=h, json={"roles": {"user": {"select": True, "insert": True},
                                                                           "anon": {"select": True}}})
        r = c.post(f"/{cenv}/api/endpoints", headers=h, json={"method": "POST", "path": "/echo/{name}", "access": "public",
                   "source": "def handle_request(ctx):\n    return {'name': ctx.params['name'], 'json': ctx.json}\n",
                   "spec": {"responses": {"200": {"description": "echo", "content": {"application/json": {
                       "schema": {"type": "object", "required": ["name"]}}}}}}})
        assert r.status_code == 201, r.text
        r = c.post(f"/{cenv}/api/pages", headers=h, json={"path": "/about", "template": "{{> nav}} {{values.site}}",
                                                          "queries": {"notes": "SELECT title FROM notes"}})
        assert r.status_code == 201, r.text
        assert c.put(f"/{cenv}/api/templates/nav", headers=h, json={"source": "<nav>home</nav>"}).status_code == 201
        assert c.put(f"/{cenv}/api/values/site", headers=h, json={"value": {"title": "fuzzed"}}).status_code == 201
        c.cookies.clear()  # the login's session cookie: the anonymous document must be asked for without it
        docs = {who: c.get(f"/{cenv}/api/openapi.json", headers=auth) for who, auth in (("anon", {}), ("admin", h))}
        assert all(d.status_code == 200 for d in docs.values())
    # Anonymously first: the admin's run may drop the tables and pages it reads. The anonymous
    # document leaves out the methods an anonymous caller may not use, which the server still has
    # (405 lists them in Allow; others answer 401): the checks of undocumented methods are the admin's.
    figures = [fuzz(tmp_path, "anon", docs["anon"].content, f"{server.url}/{cenv}", [
                   "--exclude-checks", "unsupported_method,allow_header_conformance"]),
               fuzz(tmp_path, "admin", docs["admin"].content, f"{server.url}/{cenv}", [
                   "-H", f"Authorization: Bearer {token}", "--exclude-path", "/auth/logout",
                   "--exclude-path", "/auth/password"])]
    print("; ".join(figures))


def fuzz(tmp_path: Path, who: str, doc: bytes, url: str, options: list[str]) -> str:
    """Run schemathesis on a document against the server; the figures of the run ("N
    operations, M test cases"), or an assertion error with the end of its output."""
    schema_file = tmp_path / f"openapi-{who}.json"
    schema_file.write_bytes(doc)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [st, "--config-file", str(config), "run", str(schema_file), "--url", url, *options, "--exclude-path", "/api/events",  # a stream: never ends
           "--max-examples", EXAMPLES,
           "--generation-deterministic", "--request-timeout", "30", "--no-color"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    text = out.stdout + out.stderr
    (tmp_path / f"fuzz-{who}.txt").write_text(text)
    if os.environ.get("WCE_FUZZ_KEEP"):
        Path(f"/tmp/fuzz_last_{who}.txt").write_text(text)
    assert out.returncode == 0, text[-6000:]
    tested = re.search(r"Tested: (\d+)", text)
    cases = re.search(r"(\d+) generated", text)
    return f"{who}: {tested and tested[1]} operations, {cases and cases[1]} test cases"
