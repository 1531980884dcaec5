// Bundles the editor (static/editor/src) into static/dist/ with esbuild: content-hashed file names,
// a manifest.json the server reads to write the shell page, and .gz/.br copies of every file so
// the server sends them compressed without compressing per request. Run by `npm run build`
// (the Makefile's `build` step runs it when static/dist/manifest.json is missing or older than
// package-lock.json or the sources). Reproducible: the same lock and sources give the same bytes.
import { build } from "esbuild";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const src = join(root, "static/editor/src");
const dist = join(root, "static/dist");
const out = join(root, "static/dist.new"); // moved into place at the end: a failed build leaves dist as it was

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const result = await build({
  absWorkingDir: root,
  entryPoints: { app: join(src, "main.js"), style: join(src, "app.css"), "editor.worker": join(src, "editor.worker.js") },
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  outdir: out,
  splitting: true, // monaco.js is a dynamic import: the sign-in screen and the lists do not wait for it
  entryNames: "[name]-[hash]",
  chunkNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  loader: { ".ttf": "file" },
  // monaco-vim 0.4.4 imports the pre-0.53 path of the API module; point it at the same module
  // the app imports, so Monaco is bundled once.
  alias: { "monaco-editor/esm/vs/editor/editor.api": "monaco-editor/editor/editor.api" },
  metafile: true,
  logLevel: "warning",
});

// manifest.json, for the server's shell page: the entry, the worker, every stylesheet (Monaco's
// included, so nothing restyles when it arrives) and every script to preload.
const manifest = { css: [], preload: [] };
for (const [file, info] of Object.entries(result.metafile.outputs)) {
  const name = relative(out, join(root, file));
  if (info.entryPoint?.endsWith("editor.worker.js")) manifest.worker = name;
  else if (name.endsWith(".css")) manifest.css.push(name);
  else if (name.endsWith(".js")) {
    manifest.preload.push(name);
    if (info.entryPoint?.endsWith("src/main.js")) manifest.app = name;
  }
}
manifest.css.sort((a, b) => (a.startsWith("style-") ? 1 : b.startsWith("style-") ? -1 : a.localeCompare(b))); // ours last
manifest.preload.sort((a, b) => (a === manifest.app ? -1 : b === manifest.app ? 1 : a.localeCompare(b)));
if (!manifest.app || !manifest.worker || !manifest.css.length) throw new Error("build: missing outputs " + JSON.stringify(manifest));

// With code splitting esbuild may write the same stylesheet twice (for the entry and for the
// chunk it imports): keep one.
const seen = new Map();
for (const name of [...manifest.css]) {
  const data = await readFile(join(out, name));
  const key = data.toString("base64");
  if (seen.has(key)) {
    const [keep, drop] = name.startsWith("app-") ? [seen.get(key), name] : [name, seen.get(key)];
    await rm(join(out, drop));
    manifest.css = manifest.css.filter((c) => c !== drop);
    seen.set(key, keep);
  } else {
    seen.set(key, name);
  }
}

const sizes = {};
for (const name of await readdir(out)) {
  const data = await readFile(join(out, name));
  const gz = gzipSync(data, { level: 9 });
  const br = brotliCompressSync(data, { params: {
    [constants.BROTLI_PARAM_QUALITY]: 10, [constants.BROTLI_PARAM_SIZE_HINT]: data.length } });
  await writeFile(join(out, name + ".gz"), gz);
  await writeFile(join(out, name + ".br"), br);
  sizes[name] = { bytes: data.length, gzip: gz.length, br: br.length };
}
manifest.sizes = sizes;
await writeFile(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
await rm(dist, { recursive: true, force: true });
await rename(out, dist);
const total = (k) => Object.values(sizes).reduce((a, s) => a + s[k], 0);
console.log(`static/dist: ${Object.keys(sizes).length} files, ${total("bytes")} B, ${total("gzip")} B gzip, ${total("br")} B brotli`);
