// Pages: list, create, and the editor (template, queries, context, access) with a live preview.
import { base, del, get, position, post, put, seg } from "../api.js";
import { openDoc } from "../doc.js";
import { h, select, when } from "../dom.js";
import { button, confirmDialog, empty, formDialog, toast, toolbar } from "../ui.js";

const ACCESS = [["public", "public: anyone"], ["user", "user: signed-in users"], ["admin", "admin: admins only"]];
const STARTER = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{page.path}}</title></head>
<body>
  <h1>{{page.path}}</h1>
</body>
</html>
`;

export const pageUrl = (path) => base + (path === "/" ? "/" : path);

export async function pagesList(ctx) {
  const { pages } = await get("/api/pages");
  const rows = pages.map((p) => h("tr", {},
    h("td", {}, h("a", { href: `#/pages/${p.id}`, text: p.path })),
    h("td", { text: p.access }),
    h("td", { text: p.content_type }),
    h("td", { class: p.render_error ? "bad" : "ok", text: p.render_error ? "render error" : "rendered" }),
    h("td", { text: when(p.updated_at) }),
    h("td", {}, h("a", { href: pageUrl(p.path), target: "_blank", rel: "noopener", text: "open ↗" }))));
  const node = h("div", { class: "view list-view" },
    toolbar([h("h1", { text: "Pages" })], [button("New page", () => newPage(ctx), "primary", { id: "new-page" })]),
    h("p", { class: "lead", text: "A page is a Mustache template rendered with the rows of its SQL queries, re-rendered whenever the data it read changes." }),
    pages.length
      ? h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Path", "Access", "Type", "Status", "Updated", ""].map((t) => h("th", { text: t })))), h("tbody", {}, rows))
      : empty("No pages yet."));
  return { title: "Pages", node };
}

export async function newPage(ctx) {
  const path = h("input", { name: "path", value: "/", required: true, autocomplete: "off", spellcheck: false });
  const access = select({ name: "access" }, ACCESS, "public");
  const created = await formDialog("New page", [
    { name: "path", label: "Path", input: path, hint: "e.g. / or /notes: the page is served at " + base + "/notes" },
    { name: "access", label: "Who may see it", input: access },
  ], "Create", (v) => post("/api/pages", { path: v.path.trim(), access: v.access, template: STARTER }));
  if (created) {
    await ctx.refreshExplorer();
    ctx.go(`/pages/${created.id}`);
  }
}

/** The queries part as text: blocks of SQL, each after a `-- name: NAME` line. */
export function queriesText(queries) {
  return Object.entries(queries || {}).map(([name, q]) => `-- name: ${name}\n${q.trim()}\n`).join("\n");
}

export function parseQueries(text) {
  const out = {};
  const lines = text.split("\n");
  let name = null;
  let buf = [];
  const flush = (line) => {
    if (name === null) return;
    const sql = buf.join("\n").trim();
    if (!sql) throw Object.assign(new Error(`query '${name}' is empty`), { line });
    out[name] = sql;
  };
  lines.forEach((line, i) => {
    const m = /^\s*--\s*name:\s*(.*?)\s*$/.exec(line);
    if (m) {
      flush(i + 1);
      if (!m[1]) throw Object.assign(new Error("name the query: -- name: NAME"), { line: i + 1 });
      if (m[1] in out) throw Object.assign(new Error(`two queries are named '${m[1]}'`), { line: i + 1 });
      name = m[1];
      buf = [];
    } else if (name === null) {
      if (line.trim() && !line.trim().startsWith("--")) {
        throw Object.assign(new Error("start each query with a line '-- name: NAME'"), { line: i + 1 });
      }
    } else {
      buf.push(line);
    }
  });
  flush(lines.length);
  return out;
}

function queryLine(text, name) {
  const lines = text.split("\n");
  const i = lines.findIndex((l) => new RegExp(`^\\s*--\\s*name:\\s*${name.replace(/[^\w]/g, "")}\\s*$`).test(l));
  return i >= 0 ? i + 1 : 1;
}

export async function pageEditor(ctx, { id }) {
  let page = await get(`/api/pages/${seg(id)}`);
  const doc = await openDoc(`page ${page.path}`, [
    { id: "template", label: "Template", language: "handlebars", value: page.template },
    { id: "queries", label: "Queries", language: "sql", value: queriesText(page.queries) },
    { id: "context", label: "Context", language: "python", value: page.context || "" },
  ]);
  const path = h("input", { class: "path-input", id: "page-path", value: page.path, "aria-label": "Path", spellcheck: false, oninput: ctx.changed });
  const access = select({ id: "page-access", "aria-label": "Access", onchange: ctx.changed }, ACCESS, page.access);
  const ctype = h("input", { id: "page-type", class: "narrow", value: page.content_type, "aria-label": "Content type", oninput: ctx.changed });
  doc.trackFields(() => JSON.stringify([path.value, access.value, ctype.value]));

  const formError = h("div", { class: "form-error", role: "alert" });
  const renderStatus = h("div", { class: "render-status", id: "render-status" });
  const frame = h("iframe", { class: "preview-frame", id: "preview", title: "Preview", sandbox: "allow-scripts" });
  const open = h("a", { class: "open-link", target: "_blank", rel: "noopener", text: "Open ↗", id: "open-page" });
  const previewPath = h("code", { class: "preview-path" });
  let previews = 0;

  function reloadPreview() {
    previews += 1;
    open.href = pageUrl(page.path);
    previewPath.textContent = page.path;
    frame.src = `${pageUrl(page.path)}?wce-preview=${previews}`; // the query string is ignored by the cenv
  }

  function locate(message) {
    const pos = position(message) || { line: 1, column: 1 };
    let m = /^query '([^']+)'/.exec(message);
    if (m) return ["queries", queryLine(doc.value("queries"), m[1]), 1];
    if (message.startsWith("context")) return ["context", pos.line, pos.column];
    if (message.startsWith("template")) return ["template", pos.line, pos.column];
    return null;
  }

  function showRender(p) {
    if (p.render_error) {
      renderStatus.className = "render-status bad";
      renderStatus.replaceChildren(h("strong", { text: "Render error: " }), p.render_error,
        p.rendered_at ? h("span", { class: "hint", text: " (the last good output is still served)" }) : null);
      const where = locate(p.render_error);
      if (where) doc.error(where[0], where[1], where[2], p.render_error);
    } else {
      renderStatus.className = "render-status ok";
      renderStatus.textContent = `Rendered ${when(p.rendered_at)}`;
    }
  }

  async function save() {
    formError.textContent = "";
    doc.clearErrors();
    let queries;
    try {
      queries = parseQueries(doc.value("queries"));
    } catch (e) {
      doc.error("queries", e.line || 1, 1, e.message);
      toast(`Not saved: ${e.message}`, "error");
      return false;
    }
    const context = doc.value("context").trim() ? doc.value("context") : null;
    const body = { path: path.value.trim(), template: doc.value("template"), queries, context,
      access: access.value, content_type: ctype.value.trim() || "text/html" };
    try {
      page = await put(`/api/pages/${seg(id)}`, body);
    } catch (e) {
      const where = e.status === 422 ? locate(e.message) : null;
      if (where) doc.error(where[0], where[1], where[2], e.message);
      else formError.textContent = e.message;
      toast(`Not saved: ${e.message}`, "error");
      return false;
    }
    doc.markSaved();
    ctx.changed();
    showRender(page);
    reloadPreview();
    toast(`Saved ${page.path}`, "ok");
    ctx.refreshExplorer();
    return true;
  }

  async function remove() {
    if (!(await confirmDialog("Delete page", `Delete the page ${page.path}? Its URL will answer 404.`))) return;
    await del(`/api/pages/${seg(id)}`);
    doc.markSaved();
    toast(`Deleted ${page.path}`, "ok");
    await ctx.refreshExplorer();
    ctx.go("/pages");
  }

  const node = h("div", { class: "view doc-view" },
    toolbar([h("span", { class: "doc-kind", text: "Page" }), path, access, ctype],
      [button("Save", save, "primary", { id: "save", title: "Save (Ctrl/Cmd-S, or :w in Vim)" }), button("Delete", remove, "danger")]),
    formError,
    h("div", { class: "doc-layout" },
      h("div", { class: "doc-main" }, doc.tabs.node,
        h("p", { class: "part-hint", id: "part-hint" }), doc.pane),
      h("aside", { class: "side preview-side" },
        h("div", { class: "side-head" }, h("strong", { text: "Preview " }), previewPath,
          h("span", { class: "spacer" }), button("Reload", reloadPreview, "small"), open),
        renderStatus, frame)));

  const hints = {
    template: "Mustache: {{name}} escapes, {{{name}}} does not; {{#rows}}…{{/rows}} loops over a query's rows; values.KEY and page.path are always there.",
    queries: "One read-only SELECT per block, each starting with a line  -- name: NAME  (its rows are NAME in the template).",
    context: "Optional Starlark: def context(ctx): return {...}: its keys join the template's data.",
  };
  const hint = node.querySelector("#part-hint");
  const origShow = doc.show.bind(doc);
  doc.show = (part = doc.current) => { origShow(part); hint.textContent = hints[part]; };

  return {
    title: `Page ${page.path}`, node, doc,
    isDirty: () => doc.isDirty(), save,
    mounted() { doc.show("template"); showRender(page); reloadPreview(); },
    dispose: () => doc.dispose(),
  };
}
