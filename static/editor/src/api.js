// The cenv's HTTP API, as the signed-in browser: the session cookie (HttpOnly, SameSite=Lax) is
// the credential, so nothing secret is ever held in script or storage.

// Path mode: the editor is at /{cenv}/_/ on the server's origin. Subdomain mode: at /_/ on the
// cenv's own host, {cenv}.{domain}.
const inPath = location.pathname.match(/^\/([a-z2-7]{26})\/_\//);
export const cenv = inPath ? inPath[1] : location.hostname.split(".")[0];
export const base = inPath ? `/${cenv}` : "";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onSignedOut = () => {};
/** Called when an answer says the session is gone (401 on anything but the login itself). */
export function whenSignedOut(fn) { onSignedOut = fn; }

export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(base + path, init);
  const text = r.status === 204 ? "" : await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!r.ok) {
    const err = data && data.error ? data.error : {};
    const e = new ApiError(r.status, err.code || `http_${r.status}`, err.message || r.statusText || "request failed");
    if (r.status === 401 && !quiet401 && e.code !== "invalid_credentials") onSignedOut(e);
    throw e;
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/** encodeURIComponent for one path segment. */
export const seg = (s) => encodeURIComponent(String(s));

/** "line L, column C" (the last one in the message), or null. */
export function position(message) {
  const all = [...String(message).matchAll(/line (\d+)(?:, column (\d+))?/g)];
  if (!all.length) return null;
  const m = all[all.length - 1];
  return { line: Number(m[1]), column: m[2] ? Number(m[2]) : 1 };
}
