// Templates (named partials and layouts) and values (JSON every page sees as values.KEY).
import { del, get, position, put, seg } from "../api.js";
import { openDoc } from "../doc.js";
import { h, when } from "../dom.js";
import { button, confirmDialog, empty, formDialog, toast, toolbar } from "../ui.js";

function listView(title, lead, head, rows, actions, emptyText) {
  return h("div", { class: "view list-view" },
    toolbar([h("h1", { text: title })], actions),
    h("p", { class: "lead", text: lead }),
    rows.length
      ? h("table", { class: "grid" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))), h("tbody", {}, rows))
      : empty(emptyText));
}

export async function templatesList(ctx) {
  const { templates } = await get("/api/templates");
  const rows = templates.map((t) => h("tr", {},
    h("td", {}, h("a", { href: `#/templates/${encodeURIComponent(t.name)}`, text: t.name })),
    h("td", { text: when(t.updated_at) })));
  return {
    title: "Templates",
    node: listView("Templates", "Partials and layouts, used from pages as {{> name}} and {{< name}}…{{/name}}.",
      ["Name", "Updated"], rows, [button("New template", () => newTemplate(ctx), "primary")], "No templates yet."),
  };
}

export async function newTemplate(ctx) {
  const name = h("input", { name: "name", required: true, autocomplete: "off", spellcheck: false, placeholder: "layout" });
  const done = await formDialog("New template", [{ name: "name", label: "Name", input: name, hint: "letters, digits, _ . -" }], "Create",
    async (v) => { await put(`/api/templates/${seg(v.name.trim())}`, { source: `{{! ${v.name.trim()} }}\n` }); return v.name.trim(); });
  if (done) {
    await ctx.refreshExplorer();
    ctx.go(`/templates/${encodeURIComponent(done)}`);
  }
}

export async function templateEditor(ctx, { name }) {
  const t = await get(`/api/templates/${seg(name)}`);
  const doc = await openDoc(`template ${name}`, [{ id: "source", label: "Source", language: "handlebars", value: t.source }]);
  async function save() {
    doc.clearErrors();
    try {
      await put(`/api/templates/${seg(name)}`, { source: doc.value("source") });
    } catch (e) {
      const pos = position(e.message);
      if (pos) doc.error("source", pos.line, pos.column, e.message);
      toast(`Not saved: ${e.message}`, "error");
      return false;
    }
    doc.markSaved();
    ctx.changed();
    toast(`Saved template ${name}`, "ok");
    return true;
  }
  async function remove() {
    if (!(await confirmDialog("Delete template", `Delete the template ${name}? Pages using it render without it.`))) return;
    await del(`/api/templates/${seg(name)}`);
    doc.markSaved();
    await ctx.refreshExplorer();
    ctx.go("/templates");
  }
  const node = h("div", { class: "view doc-view" },
    toolbar([h("span", { class: "doc-kind", text: "Template" }), h("code", { class: "doc-name", text: name })],
      [button("Save", save, "primary", { id: "save" }), button("Delete", remove, "danger")]),
    h("div", { class: "doc-layout single" }, h("div", { class: "doc-main" }, doc.pane)));
  return { title: `Template ${name}`, node, isDirty: () => doc.isDirty(), save, mounted: () => doc.show(), dispose: () => doc.dispose() };
}

export async function valuesList(ctx) {
  const { values } = await get("/api/values");
  const rows = values.map((v) => h("tr", {},
    h("td", {}, h("a", { href: `#/values/${encodeURIComponent(v.key)}`, text: v.key })),
    h("td", {}, h("code", { class: "clip", text: JSON.stringify(v.value) })),
    h("td", { text: when(v.updated_at) })));
  return {
    title: "Values",
    node: listView("Values", "JSON values every page sees as values.KEY.", ["Key", "Value", "Updated"], rows,
      [button("New value", () => newValue(ctx), "primary")], "No values yet."),
  };
}

export async function newValue(ctx) {
  const key = h("input", { name: "key", required: true, autocomplete: "off", spellcheck: false, placeholder: "site" });
  const value = h("textarea", { name: "value", rows: 4, spellcheck: false, value: '"hello"' });
  const done = await formDialog("New value", [
    { name: "key", label: "Key", input: key, hint: "an identifier: values.KEY in templates" },
    { name: "value", label: "Value (JSON)", input: value },
  ], "Create", async (v) => {
    let parsed;
    try { parsed = JSON.parse(v.value); } catch (e) { throw new Error(`Value: ${e.message}`); }
    await put(`/api/values/${seg(v.key.trim())}`, { value: parsed });
    return v.key.trim();
  });
  if (done) {
    await ctx.refreshExplorer();
    ctx.go(`/values/${encodeURIComponent(done)}`);
  }
}

/** Line and column of a JSON.parse error in text. */
export function jsonErrorAt(text, err) {
  const m = /line (\d+) column (\d+)/.exec(err.message);
  if (m) return { line: Number(m[1]), column: Number(m[2]) };
  const p = /position (\d+)/.exec(err.message);
  if (p) {
    const before = text.slice(0, Number(p[1])).split("\n");
    return { line: before.length, column: before[before.length - 1].length + 1 };
  }
  return { line: 1, column: 1 };
}

export async function valueEditor(ctx, { key }) {
  const v = await get(`/api/values/${seg(key)}`);
  const doc = await openDoc(`value ${key}`, [{ id: "json", label: "JSON", language: "javascript", value: JSON.stringify(v.value, null, 2) + "\n" }]);
  async function save() {
    doc.clearErrors();
    let parsed;
    try {
      parsed = JSON.parse(doc.value("json"));
    } catch (e) {
      const at = jsonErrorAt(doc.value("json"), e);
      doc.error("json", at.line, at.column, e.message);
      toast(`Not saved: ${e.message}`, "error");
      return false;
    }
    try {
      await put(`/api/values/${seg(key)}`, { value: parsed });
    } catch (e) {
      toast(`Not saved: ${e.message}`, "error");
      return false;
    }
    doc.markSaved();
    ctx.changed();
    toast(`Saved value ${key}`, "ok");
    return true;
  }
  async function remove() {
    if (!(await confirmDialog("Delete value", `Delete the value ${key}?`))) return;
    await del(`/api/values/${seg(key)}`);
    doc.markSaved();
    await ctx.refreshExplorer();
    ctx.go("/values");
  }
  const node = h("div", { class: "view doc-view" },
    toolbar([h("span", { class: "doc-kind", text: "Value" }), h("code", { class: "doc-name", text: `values.${key}` })],
      [button("Save", save, "primary", { id: "save" }), button("Delete", remove, "danger")]),
    h("div", { class: "doc-layout single" }, h("div", { class: "doc-main" }, doc.pane)));
  return { title: `Value ${key}`, node, isDirty: () => doc.isDirty(), save, mounted: () => doc.show(), dispose: () => doc.dispose() };
}
