"""`GET /{cenv}/api/openapi.json`: valid OpenAPI 3.1, and showing each caller only what it may use."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate

from support import add_user, admin_cenv, bearer
from wce.worker.app import ROUTER


async def test_openapi_per_caller(client: httpx.AsyncClient) -> None:
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"name": "notes", "columns": [
        {"name": "id", "type": "INTEGER", "primary_key": True}, {"name": "title", "type": "TEXT"},
        {"name": "data", "type": "BLOB"}, {"name": "anything"}], "full_text": ["title"]})
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE hidden (id INTEGER PRIMARY KEY, v)"})
    await client.put(c.url("/api/permissions/notes"), headers=h, json={"roles": {"user": {"select": True}, "anon": {"select": True}}})
    await client.post(c.url("/api/endpoints"), headers=h, json={"method": "GET", "path": "/hello/{name}", "access": "public",
                      "source": "def handle_request(ctx):\n    return {}\n",
                      "spec": {"summary": "say hello", "responses": {"200": {"description": "a greeting"}}}})
    await client.post(c.url("/api/endpoints"), headers=h, json={"method": "POST", "path": "/admin-only", "access": "admin",
                      "source": "def handle_request(ctx):\n    return {}\n"})
    user = await add_user(client, c, "olive")
    docs = {}
    for who, headers in (("admin", h), ("user", bearer(user)), ("anon", {})):
        r = await client.get(c.url("/api/openapi.json"), headers=headers)
        assert r.status_code == 200, r.text
        validate(r.json())  # raises if not a valid OpenAPI 3.1 document
        docs[who] = r.json()
    admin, usr, anon = docs["admin"], docs["user"], docs["anon"]
    assert admin["openapi"] == "3.1.0" and admin["servers"] == [{"url": f"/{c.id}"}]
    assert "/api/tables/hidden/rows" in admin["paths"] and "/api/users" in admin["paths"]
    assert "/api/tables/hidden/rows" not in usr["paths"] and "/api/users" not in usr["paths"]
    assert "post" not in usr["paths"]["/api/tables/notes/rows"]  # no insert grant
    params = {p["name"] for p in usr["paths"]["/api/tables/notes/rows"]["get"]["parameters"]}
    assert {"limit", "after", "order", "search", "title", "title__like", "id__gt"} <= params
    assert admin["paths"]["/fn/hello/{name}"]["get"]["summary"] == "say hello"
    assert "/fn/admin-only" in admin["paths"] and "/fn/admin-only" not in anon["paths"]
    assert "/fn/hello/{name}" in anon["paths"]
    row = admin["components"]["schemas"]["row_notes"]["properties"]
    assert row["id"]["type"] == ["integer", "null"] and row["data"]["contentEncoding"] == "base64" and row["anything"] == {}
    # another cenv's token cannot read this document
    other = await admin_cenv(client)
    assert (await client.get(c.url("/api/openapi.json"), headers=bearer(other.admin))).status_code == 401


async def test_every_route_is_in_openapi(client: httpx.AsyncClient) -> None:
    """Each route of the worker's table is in an admin's document: at its own path, or, for those
    documented from the cenv's data, at each table's rows, each endpoint's and each page's path."""
    c = await admin_cenv(client)
    h = bearer(c.admin)
    await client.post(c.url("/api/tables"), headers=h, json={"sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, v)"})
    await client.post(c.url("/api/endpoints"), headers=h, json={"method": "GET", "path": "/hello", "access": "admin",
                      "source": "def handle_request(ctx):\n    return {}\n"})
    await client.post(c.url("/api/pages"), headers=h, json={"path": "/about", "template": "hi", "access": "admin"})
    doc = (await client.get(c.url("/api/openapi.json"), headers=h)).json()
    validate(doc)
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    per = {"tables": lambda path: path.replace("{table}", "notes"), "endpoints": lambda _: "/fn/hello",
           "pages": lambda _: "/about"}
    missing = [f"{r.method} {r.path}" for r in ROUTER.routes
               if (("GET" if r.method == "*" else r.method), per[r.per](r.path) if r.per else r.path) not in documented]
    assert missing == []
