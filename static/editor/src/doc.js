// A document made of one or more Monaco models (a page's template, queries and context; an
// endpoint's source and spec, ...) with its saved state, so unsaved changes are known.
import * as code from "./code.js";
import { h } from "./dom.js";
import { tabs } from "./ui.js";

/** A CodeDoc, once Monaco is loaded. */
export async function openDoc(name, parts) {
  await code.load();
  return new CodeDoc(name, parts);
}

export class CodeDoc {
  /** parts: [{id, label, language, value}]; name: shown in the status bar. */
  constructor(name, parts) {
    this.name = name;
    this.parts = parts;
    this.models = {};
    this.saved = {};
    this.current = parts[0].id;
    this.fieldsSaved = "";
    this.fields = () => "";
    for (const p of parts) {
      this.models[p.id] = code.createModel(p.value, p.language, `${name}/${p.id}`);
      this.saved[p.id] = p.value;
    }
    this.tabs = parts.length > 1 ? tabs(parts.map((p) => ({ id: p.id, label: p.label })), (id) => this.show(id)) : null;
    this.problem = h("button", { type: "button", class: "problem", id: "problem", hidden: true,
      onclick: () => this.jump() });
    this.pane = h("div", { class: "editor-wrap" }, this.problem, h("div", { class: "editor-pane" }, code.host));
    this.where = null;
  }

  /** `fields()` returns a string of the form fields that are part of this document (dirty check). */
  trackFields(fields) {
    this.fields = fields;
    this.fieldsSaved = fields();
  }

  show(id = this.current) {
    this.current = id;
    if (this.tabs) this.tabs.select(id);
    code.show(this.models[id]);
  }

  value(id) { return this.models[id].getValue(); }

  isDirty() {
    return this.parts.some((p) => this.models[p.id].getValue() !== this.saved[p.id]) || this.fields() !== this.fieldsSaved;
  }

  /** Everything as it is now becomes the saved state. */
  markSaved() {
    for (const p of this.parts) this.saved[p.id] = this.models[p.id].getValue();
    this.fieldsSaved = this.fields();
  }

  /** Replace a part's text (after the server normalised it), keeping the undo stack. */
  setValue(id, text) {
    const m = this.models[id];
    if (m.getValue() !== text) m.pushEditOperations([], [{ range: m.getFullModelRange(), text }], () => null);
  }

  /** The problems line: above the editor, click to go to the place. */
  jump() {
    if (!this.where) return;
    this.show(this.where.id);
    code.reveal(this.models[this.where.id], this.where.line, this.where.column);
    code.focus();
  }

  clearErrors() {
    this.problem.hidden = true;
    this.where = null;
    for (const p of this.parts) code.clearMarkers(this.models[p.id]);
    if (this.tabs) for (const p of this.parts) this.tabs.setFlag(p.id, "has-error", false);
  }

  /** Show an error at its place: switch to that part and mark the line. */
  error(id, line, column, message, severity = "error") {
    const model = this.models[id];
    code.setMarkers(model, [{ line, column, message, severity }]);
    if (this.tabs) this.tabs.setFlag(id, "has-error", true);
    this.where = { id, line, column };
    const label = this.parts.length > 1 ? `${this.parts.find((p) => p.id === id).label}, ` : "";
    const text = message.includes(`line ${line}`) ? message : `line ${line}, column ${column}: ${message}`;
    this.problem.textContent = `${severity === "error" ? "✖" : "⚠"} ${label}${text}`;
    this.problem.title = message;
    this.problem.className = `problem ${severity}`;
    this.problem.hidden = false;
    this.show(id);
    code.reveal(model, line, column);
  }

  dispose() { code.disposeModels(Object.values(this.models)); }
}
