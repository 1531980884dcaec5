// Starlark endpoints (with a test panel) and triggers.
import { base, del, get, position, post, put, seg } from "../api.js";
import { openDoc } from "../doc.js";
import { h, select, when } from "../dom.js";
import { button, confirmDialog, empty, formDialog, toast, toolbar } from "../ui.js";
import { jsonErrorAt } from "./templates.js";

// A refused save: a compile error (422 with a position) is marked at its line in the source,
// anything else shown in the form; false, for the save command.
function notSaved(e, doc, formError) {
  const pos = e.status === 422 ? position(e.message) : null;
  if (pos) doc.error("source", pos.line, pos.column, e.message);
  else formError.textContent = e.message;
  toast(`Not saved: ${e.message}`, "error");
  return false;
}

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const ACCESS = [["public", "public: anyone"], ["user", "user: signed-in users"], ["admin", "admin: admins only"]];
const ENDPOINT_STARTER = `def handle_request(ctx):
    # ctx.method, ctx.path, ctx.params, ctx.query, ctx.json, ctx.user, ctx.db
    return {"hello": ctx.params.get("name", "world")}
`;
const TRIGGER_STARTER = `def on_change(event):
    # event.tables, event.changes ([{"table", "op", "rowid"}]), event.db
    for change in event.changes:
        print(change["table"], change["op"], change["rowid"])
`;

function grid(head, rows) {
  return h("table", { class: "grid" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))), h("tbody", {}, rows));
}

export async function endpointsList(ctx) {
  const { endpoints } = await get("/api/endpoints");
  const rows = endpoints.map((e) => h("tr", {},
    h("td", {}, h("span", { class: `method m-${e.method}`, text: e.method })),
    h("td", {}, h("a", { href: `#/endpoints/${e.id}`, text: `/fn${e.path}` })),
    h("td", { text: e.access }), h("td", { text: when(e.updated_at) })));
  const node = h("div", { class: "view list-view" },
    toolbar([h("h1", { text: "Endpoints" })], [button("New endpoint", () => newEndpoint(ctx), "primary", { id: "new-endpoint" })]),
    h("p", { class: "lead", text: `Starlark functions served at ${base}/fn/…: handle_request(ctx) returns a dict, a list or response(...).` }),
    endpoints.length ? grid(["Method", "Path", "Access", "Updated"], rows) : empty("No endpoints yet."));
  return { title: "Endpoints", node };
}

export async function newEndpoint(ctx) {
  const method = select({ name: "method" }, METHODS, "GET");
  const path = h("input", { name: "path", required: true, value: "/hello/{name}", spellcheck: false, autocomplete: "off" });
  const access = select({ name: "access" }, ACCESS, "public");
  const created = await formDialog("New endpoint", [
    { name: "method", label: "Method", input: method },
    { name: "path", label: "Path", input: path, hint: `served at ${base}/fn/…; {name} segments are ctx.params` },
    { name: "access", label: "Who may call it", input: access },
  ], "Create", (v) => post("/api/endpoints", { method: v.method, path: v.path.trim(), access: v.access, source: ENDPOINT_STARTER }));
  if (created) {
    await ctx.refreshExplorer();
    ctx.go(`/endpoints/${created.id}`);
  }
}

/** Path parameters of `pattern` (/a/{b}) in a concrete path, or {}. */
function paramsOf(pattern, path) {
  const ps = pattern.split("/");
  const xs = path.split("/");
  const out = {};
  if (ps.length !== xs.length) return out;
  ps.forEach((p, i) => {
    const m = /^\{(.+)\}$/.exec(p);
    if (m) out[m[1]] = decodeURIComponent(xs[i]);
  });
  return out;
}

function samplePath(pattern) {
  return pattern.replace(/\{([^}]+)\}/g, (_, n) => n === "name" ? "world" : n);
}

export async function endpointEditor(ctx, { id }) {
  let ep = await get(`/api/endpoints/${seg(id)}`);
  const doc = await openDoc(`endpoint ${id}`, [
    { id: "source", label: "Source", language: "python", value: ep.source },
    { id: "spec", label: "OpenAPI spec", language: "javascript", value: ep.spec ? JSON.stringify(ep.spec, null, 2) + "\n" : "" },
  ]);
  const method = select({ id: "ep-method", "aria-label": "Method", onchange: ctx.changed }, METHODS, ep.method);
  const path = h("input", { class: "path-input", id: "ep-path", value: ep.path, "aria-label": "Path", spellcheck: false, oninput: ctx.changed });
  const access = select({ id: "ep-access", "aria-label": "Access", onchange: ctx.changed }, ACCESS, ep.access);
  doc.trackFields(() => JSON.stringify([method.value, path.value, access.value]));
  const formError = h("div", { class: "form-error", role: "alert" });

  async function save() {
    formError.textContent = "";
    doc.clearErrors();
    let spec = null;
    if (doc.value("spec").trim()) {
      try {
        spec = JSON.parse(doc.value("spec"));
      } catch (e) {
        const at = jsonErrorAt(doc.value("spec"), e);
        doc.error("spec", at.line, at.column, e.message);
        toast(`Not saved: ${e.message}`, "error");
        return false;
      }
    }
    try {
      ep = await put(`/api/endpoints/${seg(id)}`, { method: method.value, path: path.value.trim(), access: access.value, source: doc.value("source"), spec });
    } catch (e) {
      return notSaved(e, doc, formError);
    }
    doc.markSaved();
    ctx.changed();
    toast(`Saved ${ep.method} /fn${ep.path}`, "ok");
    ctx.refreshExplorer();
    return true;
  }

  async function remove() {
    if (!(await confirmDialog("Delete endpoint", `Delete ${ep.method} /fn${ep.path}?`))) return;
    await del(`/api/endpoints/${seg(id)}`);
    doc.markSaved();
    await ctx.refreshExplorer();
    ctx.go("/endpoints");
  }

  // the test panel
  const tPath = h("input", { id: "test-path", value: samplePath(ep.path), spellcheck: false, "aria-label": "Test path" });
  const tQuery = h("input", { id: "test-query", placeholder: "a=1&b=2", spellcheck: false, "aria-label": "Query string" });
  const tBody = h("textarea", { id: "test-body", rows: 4, placeholder: '{"json": "body"}', spellcheck: false, "aria-label": "Body" });
  const result = h("div", { class: "test-result", id: "test-result" });

  async function run() {
    if (doc.isDirty() && !(await save())) return;
    const query = Object.fromEntries(new URLSearchParams(tQuery.value));
    const body = { method: method.value, path: tPath.value, params: paramsOf(ep.path, tPath.value), query };
    if (tBody.value) {
      body.body = tBody.value;
      try { body.json = JSON.parse(tBody.value); } catch { /* a text body */ }
    }
    result.replaceChildren(h("p", { class: "hint", text: "Running…" }));
    let out;
    try {
      out = await post(`/api/endpoints/${seg(id)}/test`, body);
    } catch (e) {
      result.replaceChildren(h("div", { class: "error-box", text: e.message }));
      return;
    }
    const status = out.response ? out.response.status : null;
    const parts = [
      h("div", { class: "test-head" },
        h("span", { class: `badge ${status && status < 400 ? "ok" : "bad"}`, id: "test-status", text: status === null ? "no response" : String(status) }),
        h("span", { class: "hint", id: "test-duration", text: `${out.duration_ms} ms` }),
        out.rolled_back ? h("span", { class: "hint", text: "writes rolled back" }) : null),
    ];
    if (out.error) {
      parts.push(h("div", { class: "error-box", id: "test-error", text: out.error.message }));
      if (out.error.line) doc.error("source", out.error.line, out.error.column || 1, out.error.message);
    }
    if (out.response) {
      let text = out.response.body ?? "";
      try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
      parts.push(h("h3", { text: "Body" }), h("pre", { class: "out", id: "test-body-out", text }));
      parts.push(h("h3", { text: "Headers" }), h("pre", { class: "out small",
        text: Object.entries(out.response.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n") }));
    }
    parts.push(h("h3", { text: "Printed" }),
      h("pre", { class: "out", id: "test-printed", text: (out.printed || []).join("\n") || "(nothing)" }));
    result.replaceChildren(...parts);
  }

  const openHref = () => `${base}/fn${samplePath(ep.path)}`;
  const node = h("div", { class: "view doc-view" },
    toolbar([h("span", { class: "doc-kind", text: "Endpoint" }), method, h("span", { class: "prefix", text: "/fn" }), path, access],
      [button("Save", save, "primary", { id: "save", title: "Save (Ctrl/Cmd-S, or :w in Vim)" }), button("Delete", remove, "danger")]),
    formError,
    h("div", { class: "doc-layout" },
      h("div", { class: "doc-main" }, doc.tabs.node, doc.pane),
      h("aside", { class: "side test-side" },
        h("div", { class: "side-head" }, h("strong", { text: "Test" }), h("span", { class: "spacer" }),
          h("a", { class: "open-link", target: "_blank", rel: "noopener", text: "Call ↗", href: openHref() })),
        h("p", { class: "hint", text: "Runs the saved endpoint as you, then rolls its writes back." }),
        h("label", { class: "field" }, h("span", { class: "field-label", text: "Path" }), tPath),
        h("label", { class: "field" }, h("span", { class: "field-label", text: "Query" }), tQuery),
        h("label", { class: "field" }, h("span", { class: "field-label", text: "Body" }), tBody),
        button("Run", run, "primary", { id: "run-test" }),
        result)));
  return { title: `Endpoint ${ep.method} ${ep.path}`, node, isDirty: () => doc.isDirty(), save,
    mounted: () => doc.show("source"), dispose: () => doc.dispose() };
}

export async function triggersList(ctx) {
  const { triggers } = await get("/api/triggers");
  const rows = triggers.map((t) => h("tr", {},
    h("td", {}, h("a", { href: `#/triggers/${t.id}`, text: t.name })),
    h("td", { text: (t.tables || []).join(", ") }), h("td", { text: when(t.updated_at) })));
  const node = h("div", { class: "view list-view" },
    toolbar([h("h1", { text: "Triggers" })], [button("New trigger", () => newTrigger(ctx), "primary")]),
    h("p", { class: "lead", text: "Starlark run after every commit that changed one of its tables: on_change(event)." }),
    triggers.length ? grid(["Name", "Tables", "Updated"], rows) : empty("No triggers yet."));
  return { title: "Triggers", node };
}

const tableList = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);

export async function newTrigger(ctx) {
  const name = h("input", { name: "name", required: true, spellcheck: false, autocomplete: "off" });
  const tables = h("input", { name: "tables", required: true, spellcheck: false, autocomplete: "off", placeholder: "orders, items" });
  const created = await formDialog("New trigger", [
    { name: "name", label: "Name", input: name },
    { name: "tables", label: "Tables", input: tables, hint: "comma-separated" },
  ], "Create", (v) => post("/api/triggers", { name: v.name.trim(), tables: tableList(v.tables), source: TRIGGER_STARTER }));
  if (created) {
    await ctx.refreshExplorer();
    ctx.go(`/triggers/${created.id}`);
  }
}

export async function triggerEditor(ctx, { id }) {
  let tr = await get(`/api/triggers/${seg(id)}`);
  const doc = await openDoc(`trigger ${id}`, [{ id: "source", label: "Source", language: "python", value: tr.source }]);
  const name = h("input", { id: "trigger-name", value: tr.name, "aria-label": "Name", oninput: ctx.changed });
  const tables = h("input", { id: "trigger-tables", value: (tr.tables || []).join(", "), "aria-label": "Tables", oninput: ctx.changed });
  doc.trackFields(() => JSON.stringify([name.value, tables.value]));
  const formError = h("div", { class: "form-error", role: "alert" });
  async function save() {
    formError.textContent = "";
    doc.clearErrors();
    try {
      tr = await put(`/api/triggers/${seg(id)}`, { name: name.value.trim(), tables: tableList(tables.value), source: doc.value("source") });
    } catch (e) {
      return notSaved(e, doc, formError);
    }
    doc.markSaved();
    ctx.changed();
    toast(`Saved trigger ${tr.name}`, "ok");
    ctx.refreshExplorer();
    return true;
  }
  async function remove() {
    if (!(await confirmDialog("Delete trigger", `Delete the trigger ${tr.name}?`))) return;
    await del(`/api/triggers/${seg(id)}`);
    doc.markSaved();
    await ctx.refreshExplorer();
    ctx.go("/triggers");
  }
  const node = h("div", { class: "view doc-view" },
    toolbar([h("span", { class: "doc-kind", text: "Trigger" }), name, h("span", { class: "prefix", text: "on" }), tables],
      [button("Save", save, "primary", { id: "save" }), button("Delete", remove, "danger")]),
    formError,
    h("div", { class: "doc-layout single" }, h("div", { class: "doc-main" }, doc.pane)));
  return { title: `Trigger ${tr.name}`, node, isDirty: () => doc.isDirty(), save, mounted: () => doc.show(), dispose: () => doc.dispose() };
}
