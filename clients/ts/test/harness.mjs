// Test harness: runs the real herald binary on free loopback ports, mints
// HS256 tokens, and drives the operator API.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");

export const SECRET = "herald-client-tests-secret-0123456789abcdef";
export const API_KEY = "test-key";

export function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  for (const p of ["target/release/herald", "target/debug/herald"]) {
    const full = resolve(repo, p);
    if (existsSync(full)) return full;
  }
  throw new Error("no herald binary: build it (cargo build --release) or set HERALD_BIN");
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (bind port 0, read it, release it). */
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

/** Polls `cond` every 20 ms until it is truthy or `ms` passed (then throws `what`). */
export async function waitFor(cond, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

const b64url = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");

/**
 * An HS256 JWT. `expIn` in seconds from now (may be negative), `topics`/`pub`
 * the claim lists (default everything), `secret` to sign with another key.
 */
export function mintToken({ sub = "alice", expIn = 3600, topics = ["*"], pub = ["*"], secret = SECRET, iat = true } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, exp: now + expIn, topics, pub };
  if (iat) claims.iat = now;
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const children = new Set();
process.on("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
});

/**
 * Starts herald on free ports. `env` adds HERALD_* overrides. Returns a
 * handle with the URLs, `publish`, `disconnect`, `stop(signal)`, `restart()`.
 */
export async function startHerald(env = {}) {
  const [ws, ingest, admin] = [await freePort(), await freePort(), await freePort()];
  const fullEnv = {
    ...process.env,
    HERALD_LISTEN__WS: `127.0.0.1:${ws}`,
    HERALD_LISTEN__INGEST: `127.0.0.1:${ingest}`,
    HERALD_LISTEN__ADMIN: `127.0.0.1:${admin}`,
    HERALD_AUTH__HS256_SECRET: SECRET,
    HERALD_API__KEYS: `["${API_KEY}"]`,
    HERALD_AUTH__LEEWAY_S: "0",
    HERALD_SHARDS__COUNT: "1",
    HERALD_TIMEOUTS__TICK_MS: "50",
    HERALD_LOG__LEVEL: "warn",
    ...env,
  };
  delete fullEnv.HERALD_LOG;
  const h = {
    wsUrl: `ws://127.0.0.1:${ws}/ws`,
    adminUrl: `http://127.0.0.1:${admin}`,
    proc: undefined,
    log: "",
    async start() {
      const proc = spawn(heraldBin(), [], { env: fullEnv, stdio: ["ignore", "ignore", "pipe"] });
      children.add(proc);
      proc.on("exit", () => children.delete(proc));
      proc.stderr.on("data", (d) => {
        h.log += d;
        if (h.log.length > 20000) h.log = h.log.slice(-20000);
      });
      h.proc = proc;
      let exited = false;
      proc.once("exit", () => (exited = true));
      await waitFor(
        async () => {
          if (exited) throw new Error(`herald exited at start:\n${h.log}`);
          try {
            const r = await fetch(`${h.adminUrl}/readyz`, { signal: AbortSignal.timeout(500) });
            return r.status === 200;
          } catch {
            return false;
          }
        },
        10_000,
        "herald /readyz",
      );
    },
    /** Sends `signal` and waits (at most 15 s, then SIGKILL) for the process to exit. */
    async stop(signal = "SIGTERM") {
      const proc = h.proc;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const done = new Promise((r) => proc.once("exit", r));
      proc.kill(signal);
      const t = setTimeout(() => proc.kill("SIGKILL"), 15_000);
      await done;
      clearTimeout(t);
    },
    async restart(signal = "SIGTERM") {
      await h.stop(signal);
      await h.start();
    },
    /** POST /api/publish/<topic>; returns the seq. */
    async publish(topic, body) {
      const r = await fetch(`${h.adminUrl}/api/publish/${topic}`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}` },
        body: typeof body === "string" ? Buffer.from(body) : body,
        signal: AbortSignal.timeout(5000),
      });
      if (r.status !== 202) throw new Error(`publish ${topic}: ${r.status} ${await r.text()}`);
      return (await r.json()).seq;
    },
    /** POST /api/disconnect {"user": sub}; returns how many sessions were closed. */
    async disconnect(user) {
      const r = await fetch(`${h.adminUrl}/api/disconnect`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ user }),
        signal: AbortSignal.timeout(5000),
      });
      if (r.status !== 200) throw new Error(`disconnect: ${r.status}`);
      return (await r.json()).closed;
    },
  };
  await h.start();
  return h;
}

/**
 * A `ws` WebSocket subclass that remembers its instances, so a test can cut
 * the client's connection from outside (`terminate()` = the network died).
 */
export async function trackedWebSocket() {
  const { WebSocket } = await import("ws");
  const instances = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      instances.push(this);
    }
  }
  return { WebSocket: Tracked, instances, last: () => instances[instances.length - 1] };
}

/** Records a client's state events. */
export function recordStates(client) {
  const states = [];
  client.on("state", (s) => states.push(s));
  return states;
}
