// `npm ci` / `npm install` in this folder builds dist/. When an app installs
// this folder (`npm install path/to/clients/ts`), npm runs this without our
// dev dependencies: then dist/ must already have been built here.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
let tsc;
try {
  tsc = require.resolve("typescript/bin/tsc");
} catch {
  if (existsSync(new URL("../dist/index.js", import.meta.url))) process.exit(0);
  console.error("herald-client: dist/ is not built and TypeScript is not installed; run `npm ci` in clients/ts first");
  process.exit(1);
}
const r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.json"], { stdio: "inherit", cwd: new URL("..", import.meta.url) });
process.exit(r.status ?? 1);
