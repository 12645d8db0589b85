// The reconnect table, backoff and refresh timing: pure functions, no sockets.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  attemptAfter,
  backoffDelay,
  decide,
  plan,
  refreshDelay,
  tokenExpiresSoon,
  tokenTimes,
  waitDelay,
} from "../dist/index.js";
import { mintToken } from "./harness.mjs";

const withGT = { hasGetToken: true, previous401s: 0 };
const noGT = { hasGetToken: false, previous401s: 0 };
const close = (code) => ({ kind: "close", code });
const hs = (status) => ({ kind: "handshake", status });
const again = (wait, token, reason, resetAttempts = false) => ({ reconnect: true, wait, token, resetAttempts, reason });
const stop = (reason) => ({ reconnect: false, reason });

// One row per line of the table in clients/README.md.
const rows = [
  ["connection lost", { kind: "lost" }, noGT, again("backoff", "same", "connection_lost")],
  ["1006", close(1006), noGT, again("backoff", "same", "connection_lost")],
  ["1000 not asked for", close(1000), noGT, again("backoff", "same", "server_closed")],
  ["1001 going away", close(1001), noGT, again("backoff", "same", "going_away")],
  ["1011", close(1011), noGT, again("backoff", "same", "server_closed")],
  ["1012", close(1012), withGT, again("backoff", "same", "server_closed")],
  ["1013", close(1013), noGT, again("backoff", "same", "server_closed")],
  ["1014", close(1014), noGT, again("backoff", "same", "server_closed")],
  ["4999 (unknown)", close(4999), noGT, again("backoff", "same", "server_closed")],
  ["1005 (no status)", close(1005), noGT, again("backoff", "same", "server_closed")],
  ["4008", close(4008), noGT, again("backoff", "same", "slow_consumer")],
  ["4029", close(4029), noGT, again("slow", "same", "rate_limited")],
  ["4001 with getToken", close(4001), withGT, again("immediate", "new", "token_expired", true)],
  ["4001 without", close(4001), noGT, stop("unauthorized")],
  ["4003 with getToken", close(4003), withGT, again("slow", "new", "disconnected")],
  ["4003 without", close(4003), noGT, stop("disconnected")],
  ["1002", close(1002), withGT, stop("protocol")],
  ["1003", close(1003), withGT, stop("protocol")],
  ["1007", close(1007), withGT, stop("protocol")],
  ["1009", close(1009), withGT, stop("protocol")],
  ["1008", close(1008), withGT, stop("refused")],
  ["401 with getToken, first", hs(401), withGT, again("immediate", "new", "unauthorized")],
  ["401 with getToken, second in a row", hs(401), { hasGetToken: true, previous401s: 1 }, stop("unauthorized")],
  ["401 without", hs(401), noGT, stop("unauthorized")],
  ["403", hs(403), withGT, stop("refused")],
  ["400", hs(400), withGT, stop("refused")],
  ["404", hs(404), withGT, stop("refused")],
  ["429", hs(429), withGT, again("slow", "same", "rate_limited")],
  ["503", hs(503), noGT, again("backoff", "same", "unavailable")],
  ["502 (not in the table)", hs(502), noGT, again("backoff", "same", "http_502")],
  ["close() by the app", { kind: "client" }, withGT, stop("client")],
  ["getToken failed", { kind: "token_error" }, withGT, again("backoff", "new", "token_error")],
];

for (const [name, ev, ctx, want] of rows) {
  test(`table: ${name}`, () => assert.deepEqual(decide(ev, ctx), want));
}

test("backoff: full jitter in [0, min(max, base·2ⁿ)]", () => {
  const o = { baseMs: 250, maxMs: 30_000 };
  assert.deepEqual(
    [0, 1, 2, 3, 7, 8, 20, 1000].map((n) => backoffDelay(n, o, () => 1)),
    [250, 500, 1000, 2000, 30_000, 30_000, 30_000, 30_000],
  );
  assert.equal(backoffDelay(5, o, () => 0), 0);
  assert.equal(backoffDelay(2, o, () => 0.5), 500);
  // Defaults are the README's: base 250, max 30 s.
  assert.equal(backoffDelay(0, {}, () => 1), 250);
  assert.equal(backoffDelay(99, {}, () => 1), 30_000);
  // A broken random source stays in range.
  assert.equal(backoffDelay(1, o, () => 7), 500);
  assert.equal(backoffDelay(1, o, () => NaN), 0);
});

test("slow waits are in [15 s, 30 s]; immediate is 0", () => {
  assert.equal(waitDelay("slow", 0, {}, () => 0), 15_000);
  assert.equal(waitDelay("slow", 9, {}, () => 1), 30_000);
  assert.equal(waitDelay("slow", 0, {}, () => 0.5), 22_500);
  assert.equal(waitDelay("immediate", 9, {}, () => 1), 0);
  assert.equal(waitDelay("slow", 0, { slowMinMs: 100, slowMaxMs: 200 }, () => 0.5), 150);
});

test("the attempt counter resets only after a connection stayed open 10 s", () => {
  assert.equal(attemptAfter(6, 9_999, {}), 6);
  assert.equal(attemptAfter(6, 10_000, {}), 0);
  assert.equal(attemptAfter(6, 0, {}), 6);
  assert.equal(attemptAfter(6, 500, { resetAfterMs: 400 }), 0);
});

test("plan: 4008 in a loop keeps backing off; a long-lived connection starts over", () => {
  const r = () => 1;
  let attempt = 0;
  const delays = [];
  for (let i = 0; i < 5; i++) {
    const p = plan(close(4008), { ...noGT, attempt, openMs: 50 }, {}, r);
    delays.push(p.delayMs);
    attempt = p.nextAttempt;
  }
  assert.deepEqual(delays, [250, 500, 1000, 2000, 4000]);
  const p = plan(close(4008), { ...noGT, attempt, openMs: 10_000 }, {}, r);
  assert.equal(p.delayMs, 250);
  assert.equal(p.nextAttempt, 1);
});

test("plan: 4001 with getToken goes at once and resets the counter; terminal rows keep it", () => {
  const p = plan(close(4001), { ...withGT, attempt: 5, openMs: 100 }, {}, () => 1);
  assert.equal(p.delayMs, 0);
  assert.equal(p.nextAttempt, 0);
  assert.equal(p.decision.token, "new");
  const q = plan(close(1008), { ...withGT, attempt: 3, openMs: 100 }, {}, () => 1);
  assert.deepEqual(q, { decision: stop("refused"), delayMs: 0, nextAttempt: 3 });
  const s = plan(hs(429), { ...noGT, attempt: 2, openMs: 0 }, {}, () => 0);
  assert.equal(s.delayMs, 15_000);
  assert.equal(s.nextAttempt, 3);
});

test("refresh at 80% of the lifetime, at least 5 s before exp, never sooner than 1 s", () => {
  const now = 1_000_000_000_000;
  const exp = now / 1000 + 3600; // a one-hour token issued now
  assert.equal(refreshDelay(now, now, exp), 0.8 * 3600_000);
  // 20 s token: 80% = 16 s, but exp - 5 s = 15 s wins.
  assert.equal(refreshDelay(now, now, now / 1000 + 20), 15_000);
  // Half-way through a 100 s token.
  assert.equal(refreshDelay(now + 50_000, now, now / 1000 + 100), 30_000);
  // About to expire or expired: soon, but not in a loop.
  assert.equal(refreshDelay(now, now, now / 1000 + 3), 1000);
  assert.equal(refreshDelay(now, now, now / 1000 - 10), 1000);
});

test("a token is renewed before connecting when it expires within 30 s", () => {
  const now = 1_000_000_000_000;
  assert.equal(tokenExpiresSoon(now, now / 1000 + 29), true);
  assert.equal(tokenExpiresSoon(now, now / 1000 + 31), false);
  assert.equal(tokenExpiresSoon(now, undefined), false);
});

test("tokenTimes reads exp and iat; garbage gives {}", () => {
  const t = mintToken({ expIn: 100 });
  const { exp, iat } = tokenTimes(t);
  assert.equal(exp - iat, 100);
  assert.deepEqual(tokenTimes("nope"), {});
  assert.deepEqual(tokenTimes("a.b.c"), {});
  assert.deepEqual(tokenTimes(`x.${Buffer.from('{"exp":"soon","sub":"ü"}').toString("base64url")}.y`), {});
});

test("the reasons decide() gives are exactly those listed at the end of clients/README.md", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8").replace(/\s+/g, " ");
  const m = /The `reason` of the `reconnecting` event names the row: (.*?)\. The reason of `closed` is one of (.*?)\./.exec(readme);
  assert.ok(m, "clients/README.md lists the reasons");
  const names = (s) => new Set([...s.matchAll(/`([^`]+)`/g)].map((x) => x[1]));
  const wantReconnecting = names(m[1]);
  const wantClosed = names(m[2]);
  assert.ok(wantReconnecting.has("http_<status>") && wantClosed.has("client"));

  const events = [{ kind: "lost" }, { kind: "client" }, { kind: "token_error" }];
  for (let code = 1000; code <= 1015; code++) events.push(close(code));
  for (let code = 3000; code <= 4999; code++) events.push(close(code));
  for (let status = 100; status <= 599; status++) events.push(hs(status));
  const gotReconnecting = new Set();
  const gotClosed = new Set();
  for (const ev of events) {
    for (const ctx of [noGT, withGT, { hasGetToken: true, previous401s: 1 }]) {
      const d = decide(ev, ctx);
      if (d.reconnect) gotReconnecting.add(/^http_\d{3}$/.test(d.reason) ? "http_<status>" : d.reason);
      else gotClosed.add(d.reason);
      if (d.reconnect && d.reason.startsWith("http_")) assert.equal(d.reason, `http_${ev.status}`);
    }
  }
  assert.deepEqual([...gotReconnecting].sort(), [...wantReconnecting].sort());
  assert.deepEqual([...gotClosed].sort(), [...wantClosed].sort());
});
