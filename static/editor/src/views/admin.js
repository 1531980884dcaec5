// Users, configuration, the audit log and what scripts printed.
import { del, get, patch, post, seg } from "../api.js";
import { h, select, when } from "../dom.js";
import { button, confirmDialog, formDialog, toast, toolbar } from "../ui.js";

export async function usersView(ctx) {
  const body = h("tbody", {});
  async function load() {
    const { users } = await get("/api/users");
    body.replaceChildren(...users.map((u) => {
      const role = h("input", { class: "narrow", value: u.role, "aria-label": `role of ${u.username}` });
      return h("tr", { dataset: { user: u.username } },
        h("td", { text: String(u.id) }), h("td", {}, h("strong", { text: u.username })),
        h("td", {}, role, button("Set", () => change(u, { role: role.value.trim() }), "small")),
        h("td", { class: u.disabled ? "bad" : "ok", text: u.disabled ? "disabled" : "active" }),
        h("td", { text: when(u.created_at) }),
        h("td", { class: "actions" },
          button(u.disabled ? "Enable" : "Disable", () => change(u, { disabled: !u.disabled }), "small"),
          button("Password…", () => resetPassword(u), "small"),
          button("Delete", async () => {
            if (!(await confirmDialog("Delete user", `Delete ${u.username}? Their sessions end at once.`))) return;
            try { await del(`/api/users/${seg(u.id)}`); } catch (e) { toast(e.message, "error"); return; }
            toast(`Deleted ${u.username}`, "ok");
            load();
          }, "small danger")));
    }));
  }
  async function change(u, changes) {
    try { await patch(`/api/users/${seg(u.id)}`, changes); } catch (e) { toast(e.message, "error"); return; }
    toast(`Updated ${u.username}`, "ok");
    load();
  }
  async function resetPassword(u) {
    const pw = h("input", { type: "password", name: "password", autocomplete: "new-password", minLength: 8, required: true });
    const done = await formDialog(`New password for ${u.username}`, [{ name: "password", label: "Password", input: pw, hint: "their sessions end" }],
      "Set password", (v) => patch(`/api/users/${seg(u.id)}`, { password: v.password }));
    if (done) toast(`Password of ${u.username} changed`, "ok");
  }
  async function add() {
    const username = h("input", { name: "username", required: true, autocomplete: "off", spellcheck: false });
    const password = h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" });
    const role = h("input", { name: "role", value: "user", spellcheck: false });
    const done = await formDialog("New user", [
      { name: "username", label: "Username", input: username },
      { name: "password", label: "Password", input: password, hint: "at least 8 characters" },
      { name: "role", label: "Role", input: role, hint: "admin, user or any custom role" },
    ], "Create", (v) => post("/api/users", { username: v.username.trim(), password: v.password, role: v.role.trim() }));
    if (done) { toast(`Created ${done.username}`, "ok"); load(); }
  }
  await load();
  return {
    title: "Users",
    node: h("div", { class: "view list-view" },
      toolbar([h("h1", { text: "Users" })], [button("New user", add, "primary", { id: "new-user" })]),
      h("table", { class: "grid", id: "users" },
        h("thead", {}, h("tr", {}, ["Id", "Username", "Role", "State", "Created", ""].map((t) => h("th", { text: t })))), body)),
  };
}

const CONFIG = [
  ["registration", "Registration", "closed or open: may anyone create an account with POST auth/register?", ["closed", "open"]],
  ["default_role", "Default role", "the role of users who register"],
  ["session_ttl_seconds", "Session lifetime (s)", "how long a sign-in lasts"],
  ["rate_limit_per_minute", "Rate limit per minute", "requests per client address; 0 = off"],
  ["cpu_ms_per_request", "CPU ms per request", "a script's CPU budget per call"],
  ["memory_mb", "Memory (MiB)", "the worker's address space; applies when it next starts"],
  ["max_db_mb", "Database size cap (MiB)", ""],
];

export async function configView(ctx) {
  let config = await get("/api/config");
  const inputs = {};
  const formError = h("div", { class: "form-error", role: "alert" });
  const caps = config.caps ?? {};
  const fields = CONFIG.map(([key, label, hint, options]) => {
    inputs[key] = options
      ? select({ id: `cfg-${key}`, onchange: ctx.changed }, options, config[key])
      : h("input", { id: `cfg-${key}`, value: String(config[key] ?? ""), oninput: ctx.changed, class: "narrow", spellcheck: false });
    // a resource cap: this cenv may lower it, only the server's operator can raise it
    const cap = key in caps
      ? h("span", { class: "hint cap", id: `cfg-cap-${key}`, text: `at most ${caps[key]}, set by this server's operator` })
      : null;
    return h("label", { class: "field" }, h("span", { class: "field-label", text: label }), inputs[key], cap,
      hint ? h("span", { class: "hint", text: hint }) : null);
  });
  const changes = () => {
    const out = {};
    for (const [key] of CONFIG) {
      const raw = inputs[key].value.trim();
      const v = typeof config[key] === "number" && /^-?\d+$/.test(raw) ? Number(raw) : raw;
      if (v !== config[key]) out[key] = v;
    }
    return out;
  };
  async function save() {
    formError.textContent = "";
    const c = changes();
    if (!Object.keys(c).length) return true;
    try {
      config = await patch("/api/config", c);
    } catch (e) { formError.textContent = e.message; toast(e.message, "error"); return false; }
    toast("Configuration saved", "ok");
    ctx.changed();
    return true;
  }
  return {
    title: "Config", save, isDirty: () => Object.keys(changes()).length > 0,
    node: h("div", { class: "view" },
      toolbar([h("h1", { text: "Configuration" })], [button("Save", save, "primary", { id: "save" })]),
      h("section", { class: "panel form-panel" }, fields), formError),
  };
}

export async function auditView(ctx) {
  const body = h("tbody", {});
  const more = button("Older →", () => load(next), "small", { id: "audit-older" });
  const newest = button("Newest", () => load(null), "small");
  let next = null;
  async function load(before) {
    const q = new URLSearchParams({ limit: "50" });
    if (before) q.set("before", before);
    const data = await get(`/api/audit?${q}`);
    next = data.next;
    more.disabled = !next;
    body.replaceChildren(...data.entries.map((e) => h("tr", {},
      h("td", { text: String(e.id) }), h("td", { text: when(e.ts) }), h("td", { text: e.actor ?? "" }),
      h("td", {}, h("code", { text: e.action })), h("td", { text: e.target ?? "" }),
      h("td", {}, h("code", { class: "clip", text: e.detail === null || e.detail === undefined ? "" : JSON.stringify(e.detail) })),
      h("td", { text: e.ip ?? "" }))));
  }
  await load(null);
  const table = h("table", { class: "grid", id: "audit" },
    h("thead", {}, h("tr", {}, ["#", "Time", "Actor", "Action", "Target", "Detail", "Address"].map((t) => h("th", { text: t })))), body);
  return {
    title: "Audit log",
    node: h("div", { class: "view list-view" }, toolbar([h("h1", { text: "Audit log" })], [newest, more]), table),
  };
}

export async function logsView(ctx) {
  const { lines } = await get("/api/logs?limit=200");
  const text = lines.slice().reverse().map((l) => `${when(l.ts)}  ${l.kind} ${l.script_id}  ${l.line}`).join("\n");
  return {
    title: "Script output",
    node: h("div", { class: "view list-view" }, toolbar([h("h1", { text: "Script output" })], [button("Refresh", () => ctx.reload(), "small")]),
      h("p", { class: "lead", text: "What endpoints and triggers printed, newest last (the newest 1,000 lines are kept)." }),
      h("pre", { class: "out logs", text: text || "(nothing printed yet)" })),
  };
}
