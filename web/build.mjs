// Builds the demo page and the admin UI into web/dist: exactly four files
// (demo.html, demo.js, admin.html, admin.js), committed because the gateway
// embeds them with include_bytes!. Deterministic: pinned esbuild, no
// sourcemaps, no timestamps, no absolute paths in the output.
//
//   node build.mjs          build
//   node build.mjs --check  build into memory and fail if web/dist differs
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const webDir = dirname(fileURLToPath(import.meta.url));
const distDir = join(webDir, "dist");
const check = process.argv.includes("--check");

// The TypeScript client lives in clients/ts; its one dependency is resolved
// from web/node_modules (pinned by web/package-lock.json), whatever
// clients/ts/node_modules holds, so the bundle depends on this lock file only.
const pinDeps = {
  name: "pin-deps",
  setup(b) {
    b.onResolve({ filter: /^@msgpack\/msgpack$/ }, async (args) => {
      if (args.resolveDir === webDir) return undefined;
      const r = await b.resolve(args.path, { kind: args.kind, resolveDir: webDir });
      if (r.errors.length) return { errors: r.errors };
      return { path: r.path };
    });
  },
};

async function bundle(entry) {
  const r = await build({
    entryPoints: [join(webDir, entry)],
    bundle: true,
    minify: true,
    format: "iife",
    target: ["es2020"],
    platform: "browser",
    charset: "utf8",
    legalComments: "none",
    sourcemap: false,
    write: false,
    absWorkingDir: webDir,
    nodePaths: [join(webDir, "node_modules")],
    // one explicit TypeScript setting for every file, web/ and clients/ts alike
    // (no tsconfig.json is read, so a change there cannot change the bundle)
    tsconfigRaw: { compilerOptions: { strict: true, useDefineForClassFields: true, verbatimModuleSyntax: false } },
    plugins: [pinDeps],
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "warning",
  });
  return r.outputFiles[0].text;
}

// HTML: drop indentation, blank lines and <!-- comments -->; CSS stays inline.
function html(file) {
  return readFileSync(join(webDir, file), "utf8")
    .replace(/<!--[\s\S]*?-->/g, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join("\n") + "\n";
}

const out = {
  "demo.html": html("demo/index.html"),
  "demo.js": await bundle("demo/main.ts"),
  "admin.html": html("admin/index.html"),
  "admin.js": await bundle("admin/main.ts"),
};

if (check) {
  let bad = 0;
  for (const [name, text] of Object.entries(out)) {
    let old = "";
    try { old = readFileSync(join(distDir, name), "utf8"); } catch { /* missing */ }
    if (old !== text) { console.error(`web/dist/${name} is out of date`); bad++; }
  }
  if (bad) { console.error("run: cd web && npm run build"); process.exit(1); }
  console.log("web/dist is up to date");
} else {
  mkdirSync(distDir, { recursive: true });
  for (const f of readdirSync(distDir)) if (!(f in out)) unlinkSync(join(distDir, f));
  for (const [name, text] of Object.entries(out)) {
    writeFileSync(join(distDir, name), text);
    console.log(`web/dist/${name}  ${Buffer.byteLength(text)} B`);
  }
}
