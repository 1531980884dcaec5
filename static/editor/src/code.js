// The one Monaco editor of the app, seen from the rest of the code: a light facade. Monaco itself
// (monaco.js, most of the bundle) arrives by a dynamic import: `load()` before using models.
import { h } from "./dom.js";

const VIM_KEY = "wce.editor.vim";

export const vimStatus = h("span", { id: "vim-status", class: "vim-status" });
export const cursorStatus = h("span", { class: "cursor-status" });
export const host = h("div", { class: "code-host", id: "code" });

let m = null; // monaco.js's init() once loaded
let loading = null;
let saveHandler = null;
let changeHandler = null;
const vimListeners = new Set();

/** Load Monaco (once); resolves when the editor functions below may be used. */
export function load() {
  if (!loading) {
    performance.mark("wce-monaco-import");
    loading = import("./monaco.js").then((mod) => {
      performance.mark("wce-monaco-evaluated");
      m = mod.init({
        host, vimStatus, cursorStatus, vimEnabled,
        save: () => save(),
        changed: () => { if (changeHandler) changeHandler(); },
      });
      m.ensureEditor();
      showVimMode();
      performance.mark("wce-monaco-ready");
    });
  }
  return loading;
}
export const loaded = () => m !== null;

/** The current document's save; `:w` and Ctrl/Cmd-S call it. */
export function onSave(fn) { saveHandler = fn; }
export function onChange(fn) { changeHandler = fn; }
export function save() { if (saveHandler) saveHandler(); }

export function vimEnabled() { return localStorage.getItem(VIM_KEY) !== "off"; }
export function onVimToggle(fn) { vimListeners.add(fn); }
function showVimMode() { document.documentElement.dataset.vim = vimEnabled() ? "on" : "off"; }

export function setVim(on) {
  localStorage.setItem(VIM_KEY, on ? "on" : "off");
  if (m) m.applyVim();
  showVimMode();
  for (const fn of vimListeners) fn(on);
}

export const createModel = (value, language, name) => m.createModel(value, language, name);
export const disposeModels = (list) => { if (m) m.disposeModels(list); };
export const show = (model) => m.show(model);
export const focus = () => { if (m) m.focus(); };
export const setMarkers = (model, list) => m.setMarkers(model, list);
export const clearMarkers = (model) => m.clearMarkers(model);
export const reveal = (model, line, column) => m.reveal(model, line, column);
