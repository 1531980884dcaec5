// Shared pieces of the UI: dialogs, the status line message, tabs, error display.
import { h, mount } from "./dom.js";

const messageNode = h("span", { class: "status-message", id: "status-message", role: "status" });
let messageTimer = null;

export function statusMessage() { return messageNode; }

/** A short message in the status bar ("saved", an error, ...). */
export function toast(text, kind = "info") {
  messageNode.textContent = text;
  messageNode.className = `status-message ${kind}`;
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(() => { messageNode.textContent = ""; }, 6000);
}

/**
 * A modal <dialog>. buttons: [{label, value, kind}]; resolves with the value of the button
 * pressed, or "cancel" (Escape). `onButton(value, setError)` may return false to keep it open.
 */
export function modal(title, body, buttons, onButton) {
  return new Promise((resolve) => {
    const error = h("p", { class: "dialog-error", role: "alert" });
    const setError = (text) => { error.textContent = text || ""; };
    let busy = false;
    const dlg = h("dialog", { class: "dialog" },
      h("form", { method: "dialog", onsubmit: (e) => { e.preventDefault(); press(buttons.find((b) => b.default)?.value); } },
        h("h2", { text: title }),
        h("div", { class: "dialog-body" }, body),
        error,
        h("div", { class: "dialog-buttons" }, buttons.map((b) => h("button", {
          type: b.default ? "submit" : "button", class: b.kind || "", text: b.label,
          dataset: { value: b.value },
          onclick: b.default ? null : () => press(b.value),
        })))));
    async function press(value) {
      if (busy || value === undefined) return;
      if (onButton && value !== "cancel") {
        busy = true;
        try {
          const keep = await onButton(value, setError);
          if (keep === false) return;
        } catch (e) {
          setError(e.message);
          return;
        } finally {
          busy = false;
        }
      }
      dlg.close();
      dlg.remove();
      resolve(value);
    }
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); press("cancel"); });
    document.body.appendChild(dlg);
    dlg.showModal();
    const first = dlg.querySelector("input, select, textarea");
    if (first) first.focus();
  });
}

/** A form in a modal: fields [{name, label, input}], submit(values) may throw to show the error. */
export async function formDialog(title, fields, submitLabel, submit) {
  const inputs = Object.fromEntries(fields.map((f) => [f.name, f.input]));
  const body = fields.map((f) => h("label", { class: "field" }, h("span", { class: "field-label", text: f.label }), f.input,
    f.hint ? h("span", { class: "hint", text: f.hint }) : null));
  let result;
  const value = await modal(title, body, [
    { label: "Cancel", value: "cancel" },
    { label: submitLabel, value: "ok", kind: "primary", default: true },
  ], async () => {
    const values = {};
    for (const [name, input] of Object.entries(inputs)) {
      values[name] = input.type === "checkbox" ? input.checked : input.value;
    }
    result = await submit(values);
  });
  return value === "ok" ? result : undefined;
}

export async function confirmDialog(title, text, label = "Delete") {
  const v = await modal(title, h("p", { text }), [
    { label: "Cancel", value: "cancel" },
    { label, value: "ok", kind: "danger", default: true },
  ]);
  return v === "ok";
}

/** Tabs: [{id, label}], onSelect(id); returns {node, select(id), setLabel(id, text), setFlag(id, cls, on)}. */
export function tabs(list, onSelect) {
  const buttons = new Map();
  const node = h("div", { class: "tabs", role: "tablist" }, list.map((t) => {
    const b = h("button", { type: "button", role: "tab", class: "tab", text: t.label, dataset: { tab: t.id },
      onclick: () => { select(t.id); onSelect(t.id); } });
    buttons.set(t.id, b);
    return b;
  }));
  function select(id) {
    for (const [key, b] of buttons) {
      b.classList.toggle("active", key === id);
      b.setAttribute("aria-selected", key === id ? "true" : "false");
    }
  }
  return {
    node, select,
    setLabel: (id, text) => { buttons.get(id).textContent = text; },
    setFlag: (id, cls, on) => { buttons.get(id).classList.toggle(cls, on); },
  };
}

export function errorBox(text) {
  return h("div", { class: "error-box", role: "alert", text });
}

export function empty(text) { return h("p", { class: "empty", text }); }

export function button(label, onclick, kind = "", extra = {}) {
  return h("button", { type: "button", class: kind, text: label, onclick, ...extra });
}

/** A toolbar: left items, then right items. */
export function toolbar(left, right = []) {
  return h("div", { class: "toolbar" }, h("div", { class: "toolbar-left" }, left), h("div", { class: "toolbar-right" }, right));
}

export function section(title, ...children) {
  return h("section", { class: "panel" }, h("h2", { text: title }), children);
}

export { mount };
