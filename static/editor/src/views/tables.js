// Tables: list, create (columns form or SQL), browse rows with filters and paging, edit, insert and
// delete rows, grants and row policies, schema and drop.
import { del, get, patch, post, put, seg } from "../api.js";
import { openDoc } from "../doc.js";
import { h, select } from "../dom.js";
import { button, confirmDialog, empty, modal, tabs, toast, toolbar } from "../ui.js";

const TYPES = ["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB", "ANY"];
const OPS = [["", "="], ["__ne", "≠"], ["__gt", ">"], ["__gte", "≥"], ["__lt", "<"], ["__lte", "≤"], ["__like", "like"], ["__in", "in"]];
const ACTIONS = ["select", "insert", "update", "delete"];

function grid(head, rows, props = {}) {
  return h("table", { class: "grid", ...props }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))), h("tbody", {}, rows));
}

export async function tablesList(ctx) {
  const { tables } = await get("/api/tables");
  const rows = tables.map((t) => h("tr", {},
    h("td", {}, h("a", { href: `#/tables/${encodeURIComponent(t.name)}`, text: t.name })),
    h("td", { text: t.columns.map((c) => c.name).join(", ") }),
    h("td", { text: (t.primary_key || []).join(", ") || "rowid" })));
  const node = h("div", { class: "view list-view" },
    toolbar([h("h1", { text: "Tables" })], [h("a", { class: "button primary", href: "#/tables/new", text: "New table", id: "new-table" })]),
    tables.length ? grid(["Name", "Columns", "Key"], rows) : empty("No tables yet."));
  return { title: "Tables", node };
}

// --- create -----------------------------------------------------------------------------------

export async function newTable(ctx) {
  const name = h("input", { id: "table-name", placeholder: "notes", spellcheck: false, autocomplete: "off", oninput: ctx.changed });
  const colRows = h("tbody", {});
  const columns = [];
  function addColumn(init = {}) {
    const c = {
      name: h("input", { class: "col-name", value: init.name || "", placeholder: "column", spellcheck: false, oninput: ctx.changed }),
      type: select({ class: "col-type", onchange: ctx.changed }, TYPES, init.type || "TEXT"),
      pk: h("input", { type: "checkbox", class: "col-pk", checked: !!init.pk, onchange: ctx.changed }),
      notNull: h("input", { type: "checkbox", class: "col-notnull", checked: !!init.notNull, onchange: ctx.changed }),
      unique: h("input", { type: "checkbox", class: "col-unique", onchange: ctx.changed }),
      dflt: h("input", { class: "col-default", placeholder: "(none)", spellcheck: false, oninput: ctx.changed }),
    };
    c.row = h("tr", {}, h("td", {}, c.name), h("td", {}, c.type), h("td", { class: "c" }, c.pk), h("td", { class: "c" }, c.notNull),
      h("td", { class: "c" }, c.unique), h("td", {}, c.dflt),
      h("td", {}, button("✕", () => { columns.splice(columns.indexOf(c), 1); c.row.remove(); ctx.changed(); }, "small", { title: "Remove column" })));
    columns.push(c);
    colRows.appendChild(c.row);
  }
  addColumn({ name: "id", type: "INTEGER", pk: true });
  addColumn({ name: "", type: "TEXT" });

  const SQL_START = "CREATE TABLE notes (\n    id INTEGER PRIMARY KEY,\n    body TEXT NOT NULL\n)\n";
  const doc = await openDoc("new table", [{ id: "sql", label: "SQL", language: "sql", value: SQL_START }]);
  const formError = h("div", { class: "form-error", role: "alert" });
  let mode = "columns";
  const form = h("div", { class: "panel", id: "columns-form" },
    h("label", { class: "field inline" }, h("span", { class: "field-label", text: "Table name" }), name),
    grid(["Column", "Type", "Primary key", "Not null", "Unique", "Default", ""], [], { id: "columns" }),
    button("+ Column", () => { addColumn(); ctx.changed(); }, "small", { id: "add-column" }));
  form.querySelector("tbody").replaceWith(colRows);
  const sqlPane = h("div", { class: "doc-layout single sql-pane" }, h("div", { class: "doc-main" }, doc.pane));
  const body = h("div", { class: "create-body" }, form);
  const modeTabs = tabs([{ id: "columns", label: "Columns" }, { id: "sql", label: "SQL" }], (id) => {
    mode = id;
    body.replaceChildren(id === "columns" ? form : sqlPane);
    if (id === "sql") doc.show();
  });
  modeTabs.select("columns");

  function value(text, type) {
    if (text === "") return undefined;
    if ((type === "INTEGER" || type === "REAL" || type === "NUMERIC") && !Number.isNaN(Number(text))) return Number(text);
    return text;
  }

  async function save() {
    formError.textContent = "";
    doc.clearErrors();
    let spec;
    if (mode === "sql") {
      spec = { sql: doc.value("sql") };
    } else {
      spec = { name: name.value.trim(), columns: columns.filter((c) => c.name.value.trim()).map((c) => {
        const col = { name: c.name.value.trim(), type: c.type.value };
        if (c.pk.checked) col.primary_key = true;
        if (c.notNull.checked) col.not_null = true;
        if (c.unique.checked) col.unique = true;
        const d = value(c.dflt.value.trim(), c.type.value);
        if (d !== undefined) col.default = d;
        return col;
      }) };
    }
    let table;
    try {
      table = await post("/api/tables", spec);
    } catch (e) {
      formError.textContent = e.message;
      toast(`Not created: ${e.message}`, "error");
      return false;
    }
    doc.markSaved();
    name.value = "";
    for (const c of columns) c.name.value = "";
    toast(`Created ${table.name}`, "ok");
    await ctx.refreshExplorer();
    ctx.go(table.columns ? `/tables/${encodeURIComponent(table.name)}` : "/tables");
    return true;
  }

  const node = h("div", { class: "view" },
    toolbar([h("h1", { text: "New table" }), modeTabs.node], [button("Create", save, "primary", { id: "create-table" })]),
    formError, body);
  return {
    title: "New table", node, save,
    isDirty: () => (mode === "sql" ? doc.isDirty() : !!name.value.trim()),
    dispose: () => doc.dispose(),
  };
}

// --- one table --------------------------------------------------------------------------------

function cellText(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Text typed in a form, as the JSON value for a column of this declared type. */
export function typed(text, type) {
  const t = (type || "").toUpperCase();
  if (t.includes("INT")) {
    if (/^-?\d+$/.test(text.trim())) return Number(text.trim());
    if (text === "true" || text === "false") return text === "true";
    return text;
  }
  if (t.includes("REAL") || t.includes("NUM") || t.includes("FLOA") || t.includes("DOUB")) {
    return text.trim() !== "" && !Number.isNaN(Number(text)) ? Number(text) : text;
  }
  if (t === "" || t === "ANY") {
    if (text.trim() !== "" && !Number.isNaN(Number(text))) return Number(text);
  }
  return text;
}

async function rowDialog(table, row) {
  const key = keyOf(table);
  const fields = table.columns.map((c) => {
    const current = row ? row[c.name] : undefined;
    const input = h("input", { name: c.name, spellcheck: false, autocomplete: "off",
      value: current === null || current === undefined ? "" : cellText(current),
      placeholder: row ? "" : (c.primary_key ? "(automatic)" : c.default !== null ? `default ${c.default}` : "") });
    const isNull = h("input", { type: "checkbox", class: "null-box", checked: row ? current === null : false,
      onchange: () => { input.disabled = isNull.checked; } });
    input.disabled = isNull.checked;
    return { c, input, isNull, original: input.value, originalNull: isNull.checked };
  });
  const body = fields.map((f) => h("label", { class: "field row-field" },
    h("span", { class: "field-label" }, f.c.name, h("span", { class: "hint", text: ` ${f.c.type || "ANY"}${f.c.primary_key ? " · key" : ""}${f.c.not_null ? " · not null" : ""}` })),
    h("span", { class: "row-input" }, f.input, f.c.not_null ? null : h("span", { class: "null-label" }, f.isNull, "NULL"))));
  let saved;
  const v = await modal(row ? `Edit row ${row[key] ?? ""}` : `Insert into ${table.name}`, body, [
    { label: "Cancel", value: "cancel" },
    { label: row ? "Save" : "Insert", value: "ok", kind: "primary", default: true },
  ], async () => {
    const out = {};
    for (const f of fields) {
      if (row && f.input.value === f.original && f.isNull.checked === f.originalNull) continue;
      if (f.isNull.checked) out[f.c.name] = null;
      else if (row || f.input.value !== "") out[f.c.name] = typed(f.input.value, f.c.type);
    }
    if (row) saved = await patch(`/api/tables/${seg(table.name)}/rows/${seg(row[key])}`, out);
    else saved = await post(`/api/tables/${seg(table.name)}/rows`, out);
  });
  return v === "ok" ? saved : undefined;
}

function keyOf(table) {
  return table.primary_key && table.primary_key.length === 1 ? table.primary_key[0] : "rowid";
}

function rowsPanel(ctx, table) {
  const key = keyOf(table);
  const filters = [];
  const filterBox = h("div", { class: "filters", id: "filters" });
  const order = select({ id: "order", "aria-label": "Order" },
    [["", `order: ${key}`], ...table.columns.flatMap((c) => [[c.name, `${c.name} ↑`], [`-${c.name}`, `${c.name} ↓`]])], "");
  const limit = select({ id: "limit", "aria-label": "Rows per page" }, [["25", "25 rows"], ["50", "50 rows"], ["100", "100 rows"]], "50");
  const search = table.full_text ? h("input", { id: "search", placeholder: "full-text search", type: "search" }) : null;
  const gridBox = h("div", { class: "rows-box", id: "rows" });
  const pageInfo = h("span", { class: "hint", id: "page-info" });
  const prevBtn = button("← Previous", () => load(cursors.length - 2), "small", { id: "prev-page" });
  const nextBtn = button("Next →", () => load(cursors.length), "small", { id: "next-page" });
  let cursors = [null]; // cursors[i] is the `after` of page i
  let next = null;
  let offset = 0;

  function addFilter(col = table.columns[0].name, op = "", value = "") {
    const f = {
      col: select({ class: "f-col" }, table.columns.map((c) => c.name), col),
      op: select({ class: "f-op" }, OPS, op),
      value: h("input", { class: "f-value", value, spellcheck: false, onkeydown: (e) => { if (e.key === "Enter") apply(); } }),
    };
    f.node = h("span", { class: "filter" }, f.col, f.op, f.value,
      button("✕", () => { filters.splice(filters.indexOf(f), 1); f.node.remove(); apply(); }, "small", { title: "Remove filter" }));
    filters.push(f);
    filterBox.appendChild(f.node);
    f.value.focus();
  }

  function query(after) {
    const q = new URLSearchParams();
    q.set("limit", limit.value);
    if (order.value) q.set("order", order.value);
    if (search && search.value.trim()) q.set("search", search.value.trim());
    for (const f of filters) q.append(f.col.value + f.op.value, f.value.value);
    if (after) q.set("after", after);
    return q.toString();
  }

  async function load(page) {
    if (page < 0) page = 0;
    if (page >= cursors.length) {
      if (!next) return;
      cursors.push(next);
      page = cursors.length - 1;
    } else {
      cursors = cursors.slice(0, page + 1);
    }
    let data;
    try {
      data = await get(`/api/tables/${seg(table.name)}/rows?${query(cursors[page])}`);
    } catch (e) {
      gridBox.replaceChildren(h("div", { class: "error-box", text: e.message }));
      cursors = cursors.slice(0, Math.max(1, page));
      return;
    }
    next = data.next;
    offset = (cursors.length - 1) * Number(limit.value);
    render(data.rows);
  }

  function apply() { cursors = [null]; next = null; load(0); }

  function render(rows) {
    const cols = table.columns.map((c) => c.name);
    const showRowid = key === "rowid";
    const head = [...(showRowid ? ["rowid"] : []), ...cols, ""];
    const body = rows.map((r) => h("tr", { dataset: { key: String(r[key]) } },
      (showRowid ? ["rowid", ...cols] : cols).map((c) => {
        const t = cellText(r[c]);
        return h("td", { class: t === null ? "null" : "", text: t === null ? "NULL" : t, title: t ?? "" });
      }),
      h("td", { class: "actions" },
        button("Edit", async () => {
          const saved = await rowDialog(table, r);
          if (saved) { toast("Row saved", "ok"); load(cursors.length - 1); }
        }, "small edit-row"),
        button("Delete", async () => {
          if (!(await confirmDialog("Delete row", `Delete the row ${key} = ${r[key]}?`))) return;
          try {
            await del(`/api/tables/${seg(table.name)}/rows/${seg(r[key])}`);
          } catch (e) { toast(e.message, "error"); return; }
          toast("Row deleted", "ok");
          load(cursors.length - 1);
        }, "small danger delete-row"))));
    gridBox.replaceChildren(rows.length ? grid(head, body, { id: "rows-grid" }) : empty("No rows."));
    pageInfo.textContent = rows.length ? `rows ${offset + 1}–${offset + rows.length}` : "";
    prevBtn.disabled = cursors.length <= 1;
    nextBtn.disabled = !next;
  }

  order.addEventListener("change", apply);
  limit.addEventListener("change", apply);
  if (search) search.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });

  const node = h("div", { class: "rows-panel" },
    h("div", { class: "row-tools" },
      button("Insert row", async () => {
        const saved = await rowDialog(table, null);
        if (saved) { toast("Row inserted", "ok"); load(cursors.length - 1); }
      }, "primary", { id: "insert-row" }),
      button("+ Filter", () => addFilter(), "small", { id: "add-filter" }),
      button("Apply", apply, "small", { id: "apply-filters" }),
      search, order, limit, h("span", { class: "spacer" }), pageInfo, prevBtn, nextBtn),
    filterBox, gridBox);
  return { node, load: () => load(0) };
}

function accessPanel(ctx, table, state) {
  const grantsBox = h("tbody", {});
  const roles = new Map(); // role -> {action: checkbox}
  const newRole = h("input", { placeholder: "role", class: "narrow", id: "new-role", spellcheck: false });
  const policiesBox = h("div", { class: "policies", id: "policies" });
  const policies = [];
  const grantsError = h("div", { class: "form-error", role: "alert" });
  const policiesError = h("div", { class: "form-error", role: "alert" });

  function addRole(role, grants = {}) {
    if (!role || roles.has(role) || role === "admin") return;
    const boxes = {};
    const row = h("tr", { dataset: { role } }, h("td", {}, h("code", { text: role })),
      ACTIONS.map((a) => {
        boxes[a] = h("input", { type: "checkbox", class: `grant-${a}`, checked: !!grants[a], onchange: ctx.changed, "aria-label": `${role} ${a}` });
        return h("td", { class: "c" }, boxes[a]);
      }));
    roles.set(role, boxes);
    grantsBox.appendChild(row);
  }

  function addPolicy(p = { role: "user", action: "select", using: "", check: "" }) {
    const x = {
      role: h("input", { class: "p-role narrow", value: p.role || "", spellcheck: false, oninput: ctx.changed }),
      action: select({ class: "p-action", onchange: ctx.changed }, [...ACTIONS, "all"], p.action),
      using: h("input", { class: "p-using code", value: p.using || "", placeholder: "using: owner = :user_id", spellcheck: false, oninput: ctx.changed }),
      check: h("input", { class: "p-check code", value: p.check || "", placeholder: "check: owner = :user_id", spellcheck: false, oninput: ctx.changed }),
    };
    x.node = h("div", { class: "policy" }, x.role, x.action, x.using, x.check,
      button("✕", () => { policies.splice(policies.indexOf(x), 1); x.node.remove(); ctx.changed(); }, "small", { title: "Remove policy" }));
    policies.push(x);
    policiesBox.appendChild(x.node);
  }

  const grantsValue = () => Object.fromEntries([...roles].map(([role, boxes]) =>
    [role, Object.fromEntries(ACTIONS.map((a) => [a, boxes[a].checked]))]));
  const policiesValue = () => policies.map((p) => {
    const out = { role: p.role.value.trim(), action: p.action.value };
    if (p.using.value.trim()) out.using = p.using.value.trim();
    if (p.check.value.trim()) out.check = p.check.value.trim();
    return out;
  });

  async function load() {
    const [perm, pol] = await Promise.all([get(`/api/permissions/${seg(table.name)}`), get(`/api/policies/${seg(table.name)}`)]);
    grantsBox.replaceChildren();
    roles.clear();
    for (const r of ["anon", "user"]) addRole(r, perm.roles[r] || {});
    for (const [r, g] of Object.entries(perm.roles)) addRole(r, g);
    policiesBox.replaceChildren();
    policies.length = 0;
    for (const p of (Array.isArray(pol) ? pol : pol.policies || [])) addPolicy(p);
    state.saved = snapshot();
  }
  const snapshot = () => JSON.stringify([grantsValue(), policiesValue()]);

  async function saveGrants() {
    grantsError.textContent = "";
    try {
      await put(`/api/permissions/${seg(table.name)}`, { roles: grantsValue() });
    } catch (e) { grantsError.textContent = e.message; toast(e.message, "error"); return false; }
    toast(`Grants on ${table.name} saved`, "ok");
    state.saved = JSON.stringify([grantsValue(), JSON.parse(state.saved)[1]]);
    ctx.changed();
    return true;
  }
  async function savePolicies() {
    policiesError.textContent = "";
    try {
      await put(`/api/policies/${seg(table.name)}`, policiesValue());
    } catch (e) { policiesError.textContent = e.message; toast(e.message, "error"); return false; }
    toast(`Policies on ${table.name} saved`, "ok");
    state.saved = JSON.stringify([JSON.parse(state.saved)[0], policiesValue()]);
    ctx.changed();
    return true;
  }
  async function save() {
    const [g, p] = JSON.parse(state.saved);
    if (JSON.stringify(g) !== JSON.stringify(grantsValue()) && !(await saveGrants())) return false;
    if (JSON.stringify(p) !== JSON.stringify(policiesValue()) && !(await savePolicies())) return false;
    return true;
  }

  const node = h("div", { class: "access-panel" },
    h("section", { class: "panel" }, h("h2", { text: "Grants" }),
      h("p", { class: "hint", text: "Which roles may do what through the data API (admins may do everything). Public pages read with anon's grants, user pages with user's." }),
      h("table", { class: "grid narrow-grid", id: "grants" }, h("thead", {}, h("tr", {}, ["Role", ...ACTIONS].map((t) => h("th", { text: t })))), grantsBox),
      h("div", { class: "row-tools" }, newRole, button("+ Role", () => { addRole(newRole.value.trim()); newRole.value = ""; ctx.changed(); }, "small"),
        h("span", { class: "spacer" }), button("Save grants", saveGrants, "primary", { id: "save-grants" })),
      grantsError),
    h("section", { class: "panel" }, h("h2", { text: "Row policies" }),
      h("p", { class: "hint", text: "SQL over the table's columns with :user_id, :username, :role. using filters the rows a role sees, updates or deletes; check must hold for rows it writes." }),
      policiesBox,
      h("div", { class: "row-tools" }, button("+ Policy", () => { addPolicy(); ctx.changed(); }, "small", { id: "add-policy" }),
        h("span", { class: "spacer" }), button("Save policies", savePolicies, "primary", { id: "save-policies" })),
      policiesError));
  return { node, load, save, isDirty: () => state.saved !== null && snapshot() !== state.saved };
}

function schemaPanel(ctx, table) {
  const rows = table.columns.map((c) => h("tr", {}, h("td", {}, h("code", { text: c.name })), h("td", { text: c.type || "ANY" }),
    h("td", { text: c.primary_key ? "yes" : "" }), h("td", { text: c.not_null ? "yes" : "" }), h("td", { text: c.default === null ? "" : String(c.default) })));
  return h("div", { class: "schema-panel" },
    h("section", { class: "panel" }, h("h2", { text: "Columns" }), grid(["Name", "Type", "Key", "Not null", "Default"], rows),
      table.full_text ? h("p", { class: "hint", text: `Full-text index on ${table.full_text.join(", ")}` }) : null),
    h("section", { class: "panel danger-zone" }, h("h2", { text: "Drop table" }),
      h("p", { class: "hint", text: "Drops the table and its rows, grants and policies. Pages that read it will fail to render." }),
      button(`Drop ${table.name}`, async () => {
        if (!(await confirmDialog("Drop table", `Drop the table ${table.name} and all its rows?`, "Drop"))) return;
        try { await del(`/api/tables/${seg(table.name)}`); } catch (e) { toast(e.message, "error"); return; }
        toast(`Dropped ${table.name}`, "ok");
        await ctx.refreshExplorer();
        ctx.go("/tables");
      }, "danger", { id: "drop-table" })));
}

export async function tableView(ctx, { name, tab }) {
  const { tables } = await get("/api/tables");
  const table = tables.find((t) => t.name === name);
  if (!table) throw Object.assign(new Error(`no table named ${name}`), { status: 404 });
  const state = { saved: null };
  const rows = rowsPanel(ctx, table);
  const access = accessPanel(ctx, table, state);
  const body = h("div", { class: "table-body" });
  const current = tab || "rows";
  const t = tabs([{ id: "rows", label: "Rows" }, { id: "access", label: "Grants & policies" }, { id: "schema", label: "Schema" }],
    (id) => ctx.go(`/tables/${encodeURIComponent(name)}${id === "rows" ? "" : "/" + id}`));
  t.select(current);
  if (current === "rows") body.appendChild(rows.node);
  else if (current === "access") body.appendChild(access.node);
  else body.appendChild(schemaPanel(ctx, table));
  const node = h("div", { class: "view table-view" },
    toolbar([h("span", { class: "doc-kind", text: "Table" }), h("h1", { text: name }), t.node]), body);
  return {
    title: `Table ${name}`, node,
    isDirty: () => current === "access" && access.isDirty(),
    save: () => (current === "access" ? access.save() : true),
    async mounted() {
      if (current === "rows") await rows.load();
      else if (current === "access") await access.load();
    },
  };
}

