// The app's frame: sign-in, the explorer, the router (location.hash), the status bar, and the
// guard that never drops unsaved changes silently.
import { ApiError, base, cenv, get, post, whenSignedOut } from "./api.js";
import * as code from "./code.js";
import { h, mount } from "./dom.js";
import { errorBox, modal, statusMessage, toast } from "./ui.js";
import { auditView, configView, logsView, usersView } from "./views/admin.js";
import { pageEditor, pagesList } from "./views/pages.js";
import { endpointEditor, endpointsList, triggerEditor, triggersList } from "./views/scripts.js";
import { newTable, tablesList, tableView } from "./views/tables.js";
import { templateEditor, templatesList, valueEditor, valuesList } from "./views/templates.js";

// [pattern, view, uses Monaco]
const ROUTES = [
  [/^\/pages$/, pagesList],
  [/^\/pages\/(?<id>\d+)$/, pageEditor, true],
  [/^\/templates$/, templatesList],
  [/^\/templates\/(?<name>[^/]+)$/, templateEditor, true],
  [/^\/values$/, valuesList],
  [/^\/values\/(?<key>[^/]+)$/, valueEditor, true],
  [/^\/endpoints$/, endpointsList],
  [/^\/endpoints\/(?<id>\d+)$/, endpointEditor, true],
  [/^\/triggers$/, triggersList],
  [/^\/triggers\/(?<id>\d+)$/, triggerEditor, true],
  [/^\/tables$/, tablesList],
  [/^\/tables\/new$/, newTable, true],
  [/^\/tables\/(?<name>[^/]+)(?:\/(?<tab>access|schema))?$/, tableView],
  [/^\/users$/, usersView],
  [/^\/config$/, configView],
  [/^\/audit$/, auditView],
  [/^\/logs$/, logsView],
];

const SECTIONS = [
  ["pages", "Pages", async () => (await get("/api/pages")).pages.map((p) => [`/pages/${p.id}`, p.path, p.render_error ? "bad" : ""])],
  ["templates", "Templates", async () => (await get("/api/templates")).templates.map((t) => [`/templates/${encodeURIComponent(t.name)}`, t.name])],
  ["values", "Values", async () => (await get("/api/values")).values.map((v) => [`/values/${encodeURIComponent(v.key)}`, v.key])],
  ["endpoints", "Endpoints", async () => (await get("/api/endpoints")).endpoints.map((e) => [`/endpoints/${e.id}`, `${e.method} ${e.path}`])],
  ["triggers", "Triggers", async () => (await get("/api/triggers")).triggers.map((t) => [`/triggers/${t.id}`, t.name])],
  ["tables", "Tables", async () => (await get("/api/tables")).tables.map((t) => [`/tables/${encodeURIComponent(t.name)}`, t.name])],
];
const ADMIN = [["users", "Users"], ["config", "Config"], ["audit", "Audit log"], ["logs", "Script output"]];

const root = document.getElementById("app");
// Whether this browser signed in here last (the cookie itself is HttpOnly): without it, the
// sign-in form shows at once instead of asking the cenv and getting a 401.
const SIGNED_IN = `wce.editor.signedIn.${cenv}`;
let me = null;
let current = null; // the view on screen: {title, node, isDirty?, save?, mounted?, dispose?}
let currentPath = null;
let navigating = false;
let workspace = null;

const docState = h("span", { class: "doc-state", id: "doc-state" });
const docName = h("span", { class: "doc-name-status", id: "doc-name" });
const vimToggle = h("button", { type: "button", class: "vim-toggle", id: "vim-toggle", title: "Vim mode (remembered in this browser)",
  onclick: () => code.setVim(!code.vimEnabled()) });
function showVimState(on) {
  vimToggle.textContent = on ? "Vim: on" : "Vim: off";
  vimToggle.setAttribute("aria-pressed", on ? "true" : "false");
}
code.onVimToggle(showVimState);
showVimState(code.vimEnabled());

const ctx = {
  go(path) { location.hash = "#" + path; },
  reload() { render(currentPath, true); },
  changed() { updateDirty(); },
  refreshExplorer: () => refreshExplorer(),
};

function dirty() { return !!(current && current.isDirty && current.isDirty()); }

function updateDirty() {
  const d = dirty();
  docState.textContent = current && current.isDirty ? (d ? "● unsaved" : "saved") : "";
  docState.className = d ? "doc-state dirty" : "doc-state";
  document.title = `${d ? "● " : ""}${current ? current.title : "WCE"} · WCE editor`;
}

async function saveCurrent() {
  if (!current || !current.save) return false;
  const ok = await current.save();
  updateDirty();
  return ok;
}
code.onSave(() => saveCurrent());
code.onChange(() => updateDirty());

document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === "s") {
    e.preventDefault();
    saveCurrent();
  }
});
window.addEventListener("beforeunload", (e) => {
  if (dirty()) {
    e.preventDefault();
    e.returnValue = "";
  }
});

/** Ask what to do with unsaved changes: true to go on (saved or discarded), false to stay. */
async function leaveOk() {
  if (!dirty()) return true;
  const choice = await modal("Unsaved changes", h("p", { text: `${current.title} has changes that are not saved.` }), [
    { label: "Stay", value: "cancel" },
    { label: "Discard", value: "discard", kind: "danger" },
    { label: "Save", value: "save", kind: "primary", default: true },
  ]);
  if (choice === "save") return await saveCurrent();
  return choice === "discard";
}

async function onHashChange() {
  const path = location.hash.slice(1) || "/pages";
  if (path === currentPath || navigating) return;
  navigating = true;
  try {
    if (!(await leaveOk())) {
      history.replaceState(null, "", "#" + currentPath);
      return;
    }
  } finally {
    navigating = false;
  }
  await render(path);
}

async function render(path, force = false) {
  if (!workspace) return;
  if (current && current.dispose) current.dispose();
  current = null;
  currentPath = path;
  code.onSave(() => saveCurrent());
  const main = workspace.main;
  main.replaceChildren(h("p", { class: "loading", text: "Loading…" }));
  highlight(path);
  const match = ROUTES.map(([re, view, usesCode]) => [re.exec(path), view, usesCode]).find(([m]) => m);
  let view;
  try {
    if (!match) throw Object.assign(new Error(`nothing at #${path}`), { status: 404 });
    if (match[2]) code.load(); // in parallel with the view's own requests
    const params = Object.fromEntries(Object.entries(match[0].groups || {}).map(([k, v]) => [k, v && decodeURIComponent(v)]));
    view = await match[1](ctx, params);
  } catch (e) {
    if (currentPath !== path) return;
    if (e instanceof ApiError && e.status === 401) return;
    view = { title: "Not found", node: h("div", { class: "view" }, errorBox(e.message)) };
  }
  if (currentPath !== path) { if (view.dispose) view.dispose(); return; }
  current = view;
  mount(main, view.node);
  docName.textContent = view.title;
  if (view.mounted) await view.mounted(view.node);
  updateDirty();
  document.documentElement.dataset.view = path;
}

function highlight(path) {
  if (!workspace || !path) return;
  let best = null;
  for (const a of workspace.nav.querySelectorAll("a[data-path]")) {
    a.classList.remove("active");
    const p = a.dataset.path;
    if ((path === p || path.startsWith(p + "/")) && (!best || p.length > best.dataset.path.length)) best = a;
  }
  if (best) best.classList.add("active");
}

async function refreshExplorer() {
  if (!workspace) return;
  const lists = await Promise.all(SECTIONS.map(([, , load]) => load().catch(() => [])));
  SECTIONS.forEach(([id], i) => {
    const ul = workspace.lists[id];
    ul.replaceChildren(...lists[i].map(([path, label, cls]) =>
      h("li", {}, h("a", { href: "#" + path, dataset: { path }, class: cls || "", text: label, title: label }))));
  });
  highlight(currentPath);
}

function buildWorkspace() {
  const lists = {};
  const nav = h("nav", { class: "explorer", "aria-label": "Explorer" },
    SECTIONS.map(([id, label]) => {
      lists[id] = h("ul", { class: "items", id: `nav-${id}` });
      return h("div", { class: "nav-section" }, h("a", { class: "nav-head", href: `#/${id}`, dataset: { path: `/${id}` }, text: label }), lists[id]);
    }),
    h("div", { class: "nav-section admin" }, ADMIN.map(([id, label]) => h("a", { class: "nav-head", href: `#/${id}`, dataset: { path: `/${id}` }, text: label }))));
  const main = h("main", { class: "main", id: "main" });
  const header = h("header", { class: "topbar" },
    h("span", { class: "brand", text: "WCE" }),
    h("span", { class: "cenv", title: cenv, text: cenv }),
    h("a", { class: "site-link", href: base + "/", target: "_blank", rel: "noopener", text: "site ↗" }),
    h("span", { class: "spacer" }),
    h("span", { class: "who", id: "who", text: `${me.username} · ${me.role}` }),
    h("button", { type: "button", class: "small", id: "sign-out", text: "Sign out", onclick: signOut }));
  const status = h("footer", { class: "statusbar" },
    vimToggle, code.vimStatus, docName, docState, h("span", { class: "spacer" }), statusMessage(), code.cursorStatus);
  workspace = { nav, main, lists };
  mount(root, h("div", { class: "workspace" }, header, h("div", { class: "body" }, nav, main), status));
}

async function showWorkspace() {
  if (me.role !== "admin") {
    mount(root, h("div", { class: "login" }, h("div", { class: "card" },
      h("h1", { text: "Admins only" }),
      h("p", { text: `You are signed in as ${me.username} (${me.role}). The editor is for this cenv's admins.` }),
      h("button", { type: "button", text: "Sign out", onclick: signOut }))));
    ready();
    return;
  }
  buildWorkspace();
  refreshExplorer();
  currentPath = null;
  await render(location.hash.slice(1) || "/pages");
  ready();
  preload();
}

function loginForm(onDone, message) {
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true, spellcheck: false });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const error = h("p", { class: "dialog-error", id: "login-error", role: "alert", text: message || "" });
  const form = h("form", { class: "login-form", id: "login-form" },
    h("label", { class: "field" }, h("span", { class: "field-label", text: "Username" }), username),
    h("label", { class: "field" }, h("span", { class: "field-label", text: "Password" }), password),
    error,
    h("button", { type: "submit", class: "primary", id: "sign-in", text: "Sign in" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const r = await post("/auth/login", { username: username.value, password: password.value });
      me = r.user;
      localStorage.setItem(SIGNED_IN, "1");
      onDone();
    } catch (err) {
      error.textContent = err.code === "invalid_credentials" ? "Wrong username or password." : err.message;
      password.select();
    }
  });
  return { form, username };
}

function showLogin(message) {
  localStorage.removeItem(SIGNED_IN);
  workspace = null;
  current = null;
  currentPath = null;
  const { form, username } = loginForm(() => showWorkspace(), message);
  mount(root, h("div", { class: "login" }, h("div", { class: "card" },
    h("div", { class: "brand big", text: "WCE" }),
    h("h1", { text: "Sign in" }),
    h("p", { class: "hint" }, "to the cenv ", h("code", { text: cenv })),
    form)));
  username.focus();
  document.title = "Sign in · WCE editor";
  ready();
  preload();
}

async function signOut() {
  if (workspace && !(await leaveOk())) return;
  if (current && current.dispose) current.dispose();
  try { await post("/auth/logout"); } catch { /* signed out either way */ }
  me = null;
  showLogin("You are signed out.");
}

// A 401 while working (the session expired or was revoked elsewhere): sign in again in a dialog,
// over the workspace, so whatever is being edited stays as it is.
let reauth = null;
whenSignedOut(() => {
  if (!workspace) return showLogin();
  if (reauth) return;
  const { form, username } = loginForm(() => {
    reauth.close();
    reauth.remove();
    reauth = null;
    toast("Signed in again: save to retry", "ok");
    if (!current && currentPath) render(currentPath); // the screen that was loading when the session ended
  }, "Your session has ended. Sign in again; your changes are kept.");
  reauth = h("dialog", { class: "dialog", id: "reauth" }, h("h2", { text: "Sign in again" }), form);
  reauth.addEventListener("cancel", (e) => e.preventDefault());
  document.body.appendChild(reauth);
  reauth.showModal();
  username.focus();
});

/** Load Monaco while the user reads the screen, so that opening a document does not wait. */
function preload() {
  const go = () => code.load();
  if (window.requestIdleCallback) requestIdleCallback(go, { timeout: 1500 });
  else setTimeout(go, 200);
}

function ready() { document.documentElement.dataset.ready = "1"; performance.mark("wce-ready"); }

export async function start() {
  window.addEventListener("hashchange", onHashChange);
  if (!localStorage.getItem(SIGNED_IN)) return showLogin();
  try {
    performance.mark("wce-start");
    me = await get("/auth/me", { quiet401: true });
    performance.mark("wce-me");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return showLogin();
    mount(root, h("div", { class: "login" }, h("div", { class: "card" }, errorBox(`The cenv did not answer: ${e.message}`))));
    return;
  }
  await showWorkspace();
}
