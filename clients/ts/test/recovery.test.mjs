// Against the real gateway: a dropped connection recovers with no gap and no
// duplicate; a token is refreshed before it expires; 4003 with getToken.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { HeraldClient } from "../dist/index.js";
import { mintToken, recordStates, sleep, startHerald, trackedWebSocket, waitFor } from "./harness.mjs";

let h;
const clients = [];

before(async () => {
  h = await startHerald();
});

after(async () => {
  for (const c of clients) c.close();
  await h?.stop("SIGKILL");
});

test("a dropped connection recovers: every seq 1..N exactly once, no gap", async () => {
  const tracked = await trackedWebSocket();
  // random() = 1: every backoff wait is its whole window (base 1500 ms), so
  // the publications below land while the client is away.
  const c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: tracked.WebSocket,
    token: mintToken({ sub: "rec" }),
    backoff: { baseMs: 1500, maxMs: 1500 },
    random: () => 1,
  });
  clients.push(c);
  const states = recordStates(c);
  const seqs = [];
  const gaps = [];
  c.connect();
  const sub = c.subscribe("rec.t", (p) => seqs.push(p.seq));
  sub.on("gap", (g) => gaps.push(g));
  const first = await sub.ready;
  const replies = [];
  sub.on("subscribed", (s) => replies.push(s));

  for (let i = 0; i < 5; i++) await h.publish("rec.t", `a${i}`);
  await waitFor(() => seqs.length === 5, 3000, "first five");

  tracked.last().terminate(); // the network dies under the client
  await waitFor(() => c.state === "reconnecting", 2000, "reconnecting");
  for (let i = 0; i < 5; i++) await h.publish("rec.t", `b${i}`); // while away
  await waitFor(() => c.state === "open", 3000, "open again");
  for (let i = 0; i < 5; i++) await h.publish("rec.t", `c${i}`); // live again
  await waitFor(() => seqs.length >= 15, 3000, "fifteen");
  await c.ping();
  await sleep(50);

  assert.deepEqual(seqs, Array.from({ length: 15 }, (_, i) => i + 1));
  assert.deepEqual(gaps, []);
  assert.deepEqual(replies, [{ topic: "rec.t", seq: 10, epoch: first.epoch, recovered: true }]);
  assert.deepEqual(
    states.map((s) => [s.state, s.reason, s.delayMs]),
    [
      ["connecting", undefined, undefined],
      ["open", undefined, undefined],
      ["reconnecting", "connection_lost", 1500],
      ["open", undefined, undefined],
    ],
  );
  assert.equal(tracked.instances.length, 2);
  c.close();
});

test("the token is refreshed before it expires: no 4001, no reconnect", async () => {
  const tracked = await trackedWebSocket();
  let calls = 0;
  const first = mintToken({ sub: "ref", expIn: 7 });
  const firstExp = JSON.parse(Buffer.from(first.split(".")[1], "base64url")).exp;
  const c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: tracked.WebSocket,
    token: first,
    getToken: () => {
      calls++;
      return mintToken({ sub: "ref", expIn: 7 });
    },
    backoff: { baseMs: 50, maxMs: 100 },
  });
  clients.push(c);
  const states = recordStates(c);
  const errors = [];
  c.on("error", (e) => errors.push(e));
  c.connect();
  const sub = c.subscribe("ref.t", () => {});
  await sub.ready;
  // Run past the first token's exp (the gateway's leeway is 0, its tick 50 ms).
  await waitFor(() => Date.now() > firstExp * 1000 + 1500, 10_000, "past the first exp");
  await c.ping();
  assert.deepEqual(errors, []);
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "open"],
  );
  assert.equal(tracked.instances.length, 1);
  // A 7 s token is within 30 s of its exp, so the client already asked
  // getToken for the first connection; the REFRESHes came on top of that.
  assert.ok(calls >= 2, `getToken was called ${calls} times`);
  c.close();
});

test("4003 with getToken: reconnects after the slow wait with a new token", async () => {
  let calls = 0;
  const tracked = await trackedWebSocket();
  const c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: tracked.WebSocket,
    token: mintToken({ sub: "kick" }),
    getToken: () => {
      calls++;
      return mintToken({ sub: "kick" });
    },
    backoff: { slowMinMs: 300, slowMaxMs: 300 },
  });
  clients.push(c);
  const states = recordStates(c);
  c.connect();
  await waitFor(() => c.state === "open", 3000, "open");
  assert.equal(await h.disconnect("kick"), 1);
  await waitFor(() => states.filter((s) => s.state === "open").length === 2, 3000, "open again");
  const r = states.find((s) => s.state === "reconnecting");
  assert.deepEqual(r, { state: "reconnecting", reason: "disconnected", delayMs: 300, attempt: 0, code: 4003 });
  assert.equal(calls, 1);
  c.close();
});

test("4003 without getToken: closed (disconnected)", async () => {
  const c = new HeraldClient({ url: h.wsUrl, WebSocket: (await trackedWebSocket()).WebSocket, token: mintToken({ sub: "kick2" }) });
  clients.push(c);
  const states = recordStates(c);
  c.connect();
  await waitFor(() => c.state === "open", 3000, "open");
  assert.equal(await h.disconnect("kick2"), 1);
  await waitFor(() => c.state === "closed", 3000, "closed");
  assert.deepEqual(states.at(-1), { state: "closed", reason: "disconnected", code: 4003 });
});
