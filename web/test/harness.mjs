// Test harness: runs the real gateway (`herald --demo`) on free loopback
// ports, a headless Debian Chromium through playwright-core, and Node
// WebSocket clients. Every wait is bounded.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { encode, decode } from "@msgpack/msgpack";
import WebSocket from "ws";

const webDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(webDir, "..");

export const DEMO_SECRET = "herald-demo-secret-not-for-production";
export const API_KEY = "demo-api-key";

export function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const rel = join(repo, "target/release/herald");
  if (existsSync(rel)) return rel;
  return join(repo, "target/debug/herald");
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value; throws after timeoutMs. */
export async function until(what, fn, timeoutMs = 10000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(everyMs);
  }
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** The gateway with --demo on three free ports; restartable on the same ports. */
export class Gateway {
  constructor() {
    this.proc = null;
    this.log = [];
  }
  async init() {
    this.wsPort = await freePort();
    this.ingestPort = await freePort();
    this.adminPort = await freePort();
    this.origin = `http://127.0.0.1:${this.wsPort}`;
    this.admin = `http://127.0.0.1:${this.adminPort}`;
    this.wsUrl = `ws://127.0.0.1:${this.wsPort}/ws`;
    return this;
  }
  async start() {
    const bin = heraldBin();
    if (!existsSync(bin)) throw new Error(`no gateway binary at ${bin} (set HERALD_BIN)`);
    const env = {
      ...process.env,
      HERALD_LISTEN__WS: `127.0.0.1:${this.wsPort}`,
      HERALD_LISTEN__INGEST: `127.0.0.1:${this.ingestPort}`,
      HERALD_LISTEN__ADMIN: `127.0.0.1:${this.adminPort}`,
      HERALD_LOG: process.env.HERALD_LOG ?? "warn",
    };
    const p = spawn(bin, ["--demo"], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc = p;
    const keep = (b) => {
      this.log.push(b.toString());
      if (this.log.length > 200) this.log.shift();
    };
    p.stdout.on("data", keep);
    p.stderr.on("data", keep);
    const exited = new Promise((r) => p.once("exit", (code, sig) => r({ code, sig })));
    this.exited = exited;
    let dead = null;
    exited.then((x) => { dead = x; });
    await until("the gateway's /readyz", async () => {
      if (dead) throw new Error(`gateway exited early (${JSON.stringify(dead)}): ${this.log.join("").slice(-2000)}`);
      const r = await fetch(`${this.admin}/readyz`, { signal: AbortSignal.timeout(1000) });
      return r.status === 200;
    }, 15000, 50).catch((e) => {
      if (dead) throw new Error(`gateway exited early (${JSON.stringify(dead)}): ${this.log.join("").slice(-2000)}`);
      throw e;
    });
    return this;
  }
  /** SIGTERM, then SIGKILL if it has not exited within timeoutMs. */
  async stop(timeoutMs = 15000) {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }
  async restart() {
    await this.stop();
    await this.start();
  }
  /** Operator API call with the demo key. */
  async api(path, init = {}) {
    return fetch(`${this.admin}${path}`, {
      ...init,
      headers: { Authorization: `Bearer ${API_KEY}`, ...(init.headers ?? {}) },
      signal: AbortSignal.timeout(5000),
    });
  }
}

const b64u = (x) => Buffer.from(x).toString("base64url");

/** An HS256 token for the demo secret. */
export function mintToken({ sub = "test-" + randomBytes(4).toString("hex"), ttlS = 600, topics = ["demo.*"], pub } = {}) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttlS, topics };
  if (pub) claims.pub = pub;
  const head = b64u(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64u(JSON.stringify(claims));
  const sig = createHmac("sha256", DEMO_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A minimal protocol client for Node tests (the page under test uses the real TS client). */
export class RawClient {
  static async open(url, token, timeoutMs = 5000) {
    const ws = new WebSocket(url, ["herald.v1"], { headers: { Authorization: `Bearer ${token}` }, handshakeTimeout: timeoutMs });
    ws.binaryType = "nodebuffer";
    const c = new RawClient(ws);
    await new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error("ws open timed out")), timeoutMs);
      ws.once("open", () => { clearTimeout(t); res(); });
      ws.once("error", (e) => { clearTimeout(t); rej(e); });
      ws.once("unexpected-response", (_q, r) => { clearTimeout(t); rej(new Error(`handshake HTTP ${r.statusCode}`)); });
    });
    return c;
  }
  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.pending = new Map();
    this.publications = [];
    this.waiters = [];
    ws.on("error", () => {});
    ws.on("message", (data) => {
      const m = decode(data);
      if (m[0] === 16) {
        this.publications.push({ topic: m[1], seq: Number(m[2]), data: Buffer.from(m[3]) });
        for (const w of this.waiters.splice(0)) w();
      } else if (m[0] === 17 || m[0] === 18) {
        const p = this.pending.get(m[1]);
        if (p) {
          this.pending.delete(m[1]);
          if (m[0] === 17) p.res(m[2]);
          else p.rej(new Error(`ERROR ${m[2]} ${m[3]}`));
        }
      }
    });
  }
  request(arr, timeoutMs = 5000) {
    const id = this.nextId++;
    arr.splice(1, 0, id);
    return new Promise((res, rej) => {
      const t = setTimeout(() => { this.pending.delete(id); rej(new Error("request timed out")); }, timeoutMs);
      this.pending.set(id, { res: (v) => { clearTimeout(t); res(v); }, rej: (e) => { clearTimeout(t); rej(e); } });
      this.ws.send(encode(arr));
    });
  }
  subscribe(topic) { return this.request([1, topic]); }
  async waitFor(pred, timeoutMs = 5000) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.publications.find(pred);
      if (hit) return hit;
      const left = end - Date.now();
      if (left <= 0) throw new Error("publication not received in time");
      await new Promise((r) => { const t = setTimeout(r, left); this.waiters.push(() => { clearTimeout(t); r(); }); });
    }
  }
  close() {
    try { this.ws.close(1000); } catch { /* already closed */ }
  }
  terminate() {
    try { this.ws.terminate(); } catch { /* already gone */ }
  }
}

/** Headless Debian Chromium with a fresh profile; pages collect console errors. */
export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "herald-web-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 30000,
  });
  return {
    ctx,
    async page() {
      const page = await ctx.newPage();
      page.consoleErrors = [];
      page.on("console", (m) => { if (m.type() === "error") page.consoleErrors.push(m.text()); });
      page.on("pageerror", (e) => page.consoleErrors.push(`pageerror: ${e.message}`));
      return page;
    },
    async close() {
      await ctx.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
