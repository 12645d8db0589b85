// Against the real gateway: round trip, errors, handshake 401, 4001 without a
// token source, the async iterator's bound.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { HeraldClient, HeraldError } from "../dist/index.js";
import { mintToken, recordStates, sleep, startHerald, waitFor } from "./harness.mjs";

let h;
const clients = [];
const te = new TextEncoder();
const td = new TextDecoder();

function client(opts) {
  const c = new HeraldClient({ url: h.wsUrl, WebSocket, backoff: { baseMs: 50, maxMs: 200 }, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  h = await startHerald();
});

after(async () => {
  for (const c of clients) c.close();
  await h?.stop("SIGKILL");
});

test("subscribe, publish, unsubscribe and ping round trip", async () => {
  const c = client({ token: mintToken({ sub: "rt" }) });
  const states = recordStates(c);
  const got = [];
  c.connect();
  const sub = c.subscribe("rt.chat", (p) => got.push(p));
  const r = await sub.ready;
  assert.equal(r.seq, 0);
  assert.equal(r.recovered, false);
  assert.equal(typeof r.epoch, "string");
  assert.equal(states.map((s) => s.state).join(","), "connecting,open");

  const rtt = await c.ping();
  assert.ok(rtt >= 0);

  assert.equal(await c.publish("rt.chat", te.encode("hi")), 1);
  assert.equal(await h.publish("rt.chat", "from the api"), 2);
  await waitFor(() => got.length === 2, 3000, "two publications");
  assert.deepEqual(
    got.map((p) => [p.topic, p.seq, td.decode(p.data), p.epoch]),
    [
      ["rt.chat", 1, "hi", r.epoch],
      ["rt.chat", 2, "from the api", r.epoch],
    ],
  );
  assert.ok(got[0].data instanceof Uint8Array);

  await sub.unsubscribe();
  assert.equal(sub.active, false);
  await h.publish("rt.chat", "after unsubscribe");
  await c.ping(); // the gateway answers in order: anything for rt.chat would be here by now
  await sleep(50);
  assert.equal(got.length, 2);

  // The topic can be subscribed again; it goes on from the topic's seq.
  const again = c.subscribe("rt.chat", () => {});
  assert.equal((await again.ready).seq, 3);

  c.close();
  assert.equal(c.state, "closed");
  assert.deepEqual(states.at(-1), { state: "closed", reason: "client" });
  await assert.rejects(c.ping(), (e) => e instanceof HeraldError && e.code === "closed");
});

test("publish and ping before the connection is open fail with not_connected", async () => {
  const c = client({ token: mintToken({ sub: "nc" }) });
  await assert.rejects(c.publish("nc.x", te.encode("x")), (e) => e instanceof HeraldError && e.code === "not_connected");
  c.connect();
  await assert.rejects(c.ping(), (e) => e instanceof HeraldError && e.code === "not_connected");
  await waitFor(() => c.state === "open", 3000, "open");
  await c.ping();
  c.close();
});

test("a forbidden subscribe rejects ready with HeraldError 403; a forbidden publish too", async () => {
  const c = client({ token: mintToken({ sub: "fb", topics: ["allowed.*"], pub: [] }) });
  const errors = [];
  c.on("error", (e) => errors.push(e));
  c.connect();
  const ok = c.subscribe("allowed.x", () => {});
  const bad = c.subscribe("secret.x", () => {});
  const subErrors = [];
  bad.on("error", (e) => subErrors.push(e));
  await ok.ready;
  await assert.rejects(bad.ready, (e) => e instanceof HeraldError && e.code === 403 && /topic not allowed/.test(e.message));
  assert.equal(bad.active, false);
  assert.equal(subErrors.length, 1);
  assert.ok(errors.some((e) => e.code === 403));
  await assert.rejects(c.publish("allowed.x", te.encode("x")), (e) => e instanceof HeraldError && e.code === 403);
  // The connection stays open (ERROR never closes it).
  await c.ping();
  assert.equal(c.state, "open");
  c.close();
});

test("handshake 401 with a bad token and no getToken: closed (unauthorized)", async () => {
  const c = client({ token: mintToken({ sub: "bad", secret: "another-secret-another-secret-xx" }) });
  const states = recordStates(c);
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const sub = c.subscribe("any.topic", () => {});
  c.connect();
  await waitFor(() => c.state === "closed", 5000, "closed");
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "closed"],
  );
  assert.equal(states.at(-1).reason, "unauthorized");
  assert.equal(states.at(-1).status, 401);
  assert.ok(errors.some((e) => e.code === "unauthorized"));
  await assert.rejects(sub.ready, (e) => e.code === "unauthorized");
});

test("handshake 401 with getToken: one new token at once; a second 401 in a row closes", async () => {
  let calls = 0;
  const c = client({
    token: mintToken({ sub: "r401", expIn: -60 }), // expired: the handshake answers 401
    getToken: () => {
      calls++;
      return calls === 1 ? mintToken({ sub: "r401" }) : "still.not.valid";
    },
  });
  const states = recordStates(c);
  c.connect();
  // expIn -60 < 30 s: the client already asks getToken before the first attempt.
  await waitFor(() => c.state === "open", 5000, "open with the token from getToken");
  assert.equal(calls, 1);
  c.close();

  const d = client({ token: mintToken({ sub: "r401b", secret: "wrong-secret-wrong-secret-wrong!!" }), getToken: () => "a.b.c" });
  const ds = recordStates(d);
  d.connect();
  await waitFor(() => d.state === "closed", 5000, "closed");
  assert.deepEqual(
    ds.map((s) => [s.state, s.reason, s.delayMs]),
    [
      ["connecting", undefined, undefined],
      ["reconnecting", "unauthorized", 0],
      ["closed", "unauthorized", undefined],
    ],
  );
  assert.equal(states.filter((s) => s.state === "reconnecting").length, 0);
});

test("4001 without a token source ends in closed (unauthorized)", async () => {
  const c = client({ token: mintToken({ sub: "exp", expIn: 2 }) });
  const states = recordStates(c);
  c.connect();
  const sub = c.subscribe("exp.t", () => {});
  await sub.ready;
  await waitFor(() => c.state === "closed", 5000, "closed after exp");
  assert.deepEqual(
    states.map((s) => [s.state, s.reason, s.code]),
    [
      ["connecting", undefined, undefined],
      ["open", undefined, undefined],
      ["closed", "unauthorized", 4001],
    ],
  );
  assert.equal(sub.active, false);
});

test("async iterator: a slow reader gets the newest bufferSize publications and a dropped gap", async () => {
  const c = client({ token: mintToken({ sub: "it" }), bufferSize: 4 });
  c.connect();
  const sub = c.subscribe("it.feed");
  const gaps = [];
  sub.on("gap", (g) => gaps.push(g));
  await sub.ready;
  for (let i = 1; i <= 20; i++) await h.publish("it.feed", `m${i}`);
  await waitFor(() => sub.lastSeq === 20, 3000, "all 20 received");
  const seen = [];
  for await (const p of sub) {
    seen.push(p.seq);
    if (seen.length === 3) await h.publish("it.feed", "m21");
    if (p.seq === 21) break; // return() unsubscribes
  }
  assert.deepEqual(seen, [17, 18, 19, 20, 21]);
  assert.deepEqual(gaps, [{ topic: "it.feed", reason: "dropped", lastSeq: 0, seq: 17, epoch: sub.epoch, dropped: 16 }]);
  await waitFor(() => !sub.active, 1000, "unsubscribed by break");
  c.close();
});

test("async iterator ends when the client closes; a reader that keeps up loses nothing", async () => {
  const c = client({ token: mintToken({ sub: "it2" }), bufferSize: 1 });
  c.connect();
  const sub = c.subscribe("it2.feed");
  await sub.ready;
  const seen = [];
  const reader = (async () => {
    for await (const p of sub) seen.push(p.seq);
  })();
  // One at a time: ws may hand several messages over in one tick, and a
  // burst larger than bufferSize would rightly drop the oldest.
  for (let i = 1; i <= 10; i++) {
    await h.publish("it2.feed", `m${i}`);
    await waitFor(() => seen.length === i, 3000, `${i} read`);
  }
  c.close();
  await reader; // ends without throwing
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});
