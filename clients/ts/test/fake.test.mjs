// The client against a scripted in-process WebSocket: cases the real gateway
// does not produce on demand (duplicates, seq jumps, a dead peer, 1008).
import { decode, encode } from "@msgpack/msgpack";
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { HeraldClient, HeraldError } from "../dist/index.js";
import { mintToken, recordStates, sleep, waitFor } from "./harness.mjs";

class FakeWS {
  static all = [];
  constructor(url, protocols, options) {
    Object.assign(this, { url, protocols, options, sent: [], readyState: 0, binaryType: "blob" });
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWS.all.push(this);
  }
  send(b) {
    this.sent.push(decode(b));
  }
  close(code = 1000) {
    this.closedWith = code;
  }
  // ---- the test plays the gateway ----
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(msg) {
    const b = encode(msg);
    this.onmessage?.({ data: b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  refuse(status) {
    this.onerror?.({ message: `Unexpected server response: ${status}` });
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
  lastRequest(type) {
    return [...this.sent].reverse().find((m) => m[0] === type);
  }
}

const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeWS.all = [];
});

function fake(opts = {}) {
  const c = new HeraldClient({ url: "ws://fake/ws", WebSocket: FakeWS, token: "t.e.st", random: () => 1, ...opts });
  clients.push(c);
  return c;
}

const last = () => FakeWS.all[FakeWS.all.length - 1];

test("duplicates are dropped; a seq jump is a gap; the REPLY's epoch is on each publication", async () => {
  const c = fake();
  const seqs = [];
  const gaps = [];
  const sub = c.subscribe("t", (p) => seqs.push([p.seq, p.epoch]));
  sub.on("gap", (g) => gaps.push(g));
  c.connect();
  const ws = last();
  assert.deepEqual(ws.protocols, ["herald.v1"]);
  assert.deepEqual(ws.options, { headers: { Authorization: "Bearer t.e.st" } });
  assert.equal(ws.binaryType, "arraybuffer");
  ws.open();
  const [, id, topic, opts] = ws.lastRequest(1);
  assert.equal(topic, "t");
  assert.equal(opts, undefined);
  ws.push([17, id, { seq: 4, epoch: "e1", recovered: false }]);
  assert.deepEqual(await sub.ready, { topic: "t", seq: 4, epoch: "e1", recovered: false });
  for (const s of [3, 4, 5, 5, 6, 9, 8, 10]) ws.push([16, "t", s, new Uint8Array([s])]);
  ws.push([16, "other", 11, new Uint8Array([1])]); // not subscribed: ignored
  assert.deepEqual(
    seqs.map(([s]) => s),
    [5, 6, 9, 10],
  );
  assert.ok(seqs.every(([, e]) => e === "e1"));
  assert.deepEqual(gaps, [{ topic: "t", reason: "seq_jump", lastSeq: 6, seq: 9, epoch: "e1" }]);
});

test("resubscribe after a reconnect sends since/epoch; recovered replays overlap without duplicates", async () => {
  const c = fake({ backoff: { baseMs: 10, maxMs: 10 } });
  const seqs = [];
  const gaps = [];
  const sub = c.subscribe("t", (p) => seqs.push(p.seq));
  sub.on("gap", (g) => gaps.push(g));
  c.connect();
  let ws = last();
  ws.open();
  ws.push([17, ws.lastRequest(1)[1], { seq: 0, epoch: "e1", recovered: false }]);
  for (const s of [1, 2, 3]) ws.push([16, "t", s, new Uint8Array()]);
  ws.serverClose(1006);
  assert.equal(c.state, "reconnecting");
  await waitFor(() => FakeWS.all.length === 2, 1000, "second socket");
  ws = last();
  ws.open();
  const [, id, , opts] = ws.lastRequest(1);
  assert.deepEqual(opts, { since: 3, epoch: "e1" });
  ws.push([17, id, { seq: 5, epoch: "e1", recovered: true }]);
  for (const s of [3, 4, 5, 6]) ws.push([16, "t", s, new Uint8Array()]);
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(gaps, []);

  // Next time the history does not reach back: not_recovered, then live from seq + 1.
  ws.serverClose(1012);
  await waitFor(() => FakeWS.all.length === 3, 1000, "third socket");
  ws = last();
  ws.open();
  assert.deepEqual(ws.lastRequest(1)[3], { since: 6, epoch: "e1" });
  ws.push([17, ws.lastRequest(1)[1], { seq: 500, epoch: "e1", recovered: false }]);
  ws.push([16, "t", 501, new Uint8Array()]);
  assert.deepEqual(gaps, [{ topic: "t", reason: "not_recovered", lastSeq: 6, seq: 501, epoch: "e1" }]);
  assert.deepEqual(seqs.slice(-1), [501]);
});

test("since/epoch given by the app: recovered → no gap; epoch gone → epoch_changed", async () => {
  const c = fake();
  const a = c.subscribe("a", () => {}, { since: 10, epoch: "old" });
  const b = c.subscribe("b", { since: 10, epoch: "old" });
  const gaps = [];
  a.on("gap", (g) => gaps.push(g));
  b.on("gap", (g) => gaps.push(g));
  c.connect();
  const ws = last();
  ws.open();
  const reqs = ws.sent.filter((m) => m[0] === 1);
  assert.deepEqual(
    reqs.map((m) => [m[2], m[3]]),
    [
      ["a", { since: 10, epoch: "old" }],
      ["b", { since: 10, epoch: "old" }],
    ],
  );
  ws.push([17, reqs[0][1], { seq: 12, epoch: "old", recovered: true }]);
  ws.push([17, reqs[1][1], { seq: 2, epoch: "new", recovered: false }]);
  assert.equal(a.lastSeq, 10);
  assert.equal(b.lastSeq, 2);
  // b is iterated: its gap comes when the reader gets there (at once, nothing is buffered before it).
  assert.deepEqual(gaps, []);
  const it = b[Symbol.asyncIterator]();
  const next = it.next();
  assert.deepEqual(gaps, [{ topic: "b", reason: "epoch_changed", lastSeq: 10, seq: 3, epoch: "new" }]);
  ws.push([16, "b", 3, new Uint8Array([3])]);
  assert.equal((await next).value.seq, 3);
});

test("no reply to the heartbeat PING: the connection counts as lost", async () => {
  const c = fake({ heartbeatMs: 100, requestTimeoutMs: 100, backoff: { baseMs: 5000, maxMs: 5000 } });
  const states = [];
  c.on("state", (s) => states.push(s));
  c.connect();
  const ws = last();
  ws.open();
  await waitFor(() => ws.lastRequest(3), 1000, "heartbeat ping");
  await waitFor(() => c.state === "reconnecting", 1000, "reconnecting");
  assert.deepEqual(states.at(-1), { state: "reconnecting", reason: "connection_lost", delayMs: 5000, attempt: 0 });
  assert.equal(ws.closedWith, 1000);
});

test("requests: REPLY and ERROR by id, timeout, connection_lost", async () => {
  const c = fake({ requestTimeoutMs: 50, heartbeatMs: 0 });
  c.connect();
  const ws = last();
  ws.open();
  const p1 = c.publish("t", new Uint8Array([1, 2]));
  const p2 = c.publish("t", new Uint8Array([3]));
  const [r1, r2] = ws.sent.filter((m) => m[0] === 5);
  assert.deepEqual([...r1[3]], [1, 2]);
  ws.push([18, r2[1], 403, "publishing to this topic is not allowed"]);
  ws.push([17, r1[1], { seq: 42 }]);
  assert.equal(await p1, 42);
  await assert.rejects(p2, (e) => e instanceof HeraldError && e.code === 403 && e.fromServer);
  await assert.rejects(c.ping(), (e) => e.code === "timeout" && !e.fromServer);
  const p3 = c.ping();
  ws.serverClose(1006);
  await assert.rejects(p3, (e) => e.code === "connection_lost");
  await assert.rejects(c.ping(), (e) => e.code === "not_connected");
});

test("1008 closes for good (refused); subscriptions and iterators end with the error", async () => {
  const c = fake();
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const sub = c.subscribe("t");
  const reading = (async () => {
    for await (const _ of sub);
  })();
  c.connect();
  last().open();
  last().serverClose(1008, "no");
  assert.equal(c.state, "closed");
  await assert.rejects(reading, (e) => e.code === "refused");
  await assert.rejects(sub.ready, (e) => e.code === "refused");
  assert.deepEqual(errors, ["refused"]);
  assert.throws(() => c.subscribe("u"), (e) => e.code === "closed");
});

test("handshake 429 waits slow; 503 backs off; 403 closes (refused)", async () => {
  const c = fake({ backoff: { baseMs: 10, maxMs: 10, slowMinMs: 20, slowMaxMs: 40 } });
  const states = [];
  c.on("state", (s) => states.push(s));
  c.connect();
  last().refuse(429);
  await waitFor(() => FakeWS.all.length === 2, 1000, "after 429");
  last().refuse(503);
  await waitFor(() => FakeWS.all.length === 3, 1000, "after 503");
  last().refuse(403);
  assert.deepEqual(
    states.map((s) => [s.state, s.reason, s.status, s.delayMs]),
    [
      ["connecting", undefined, undefined, undefined],
      ["reconnecting", "rate_limited", 429, 40],
      ["reconnecting", "unavailable", 503, 10],
      ["closed", "refused", 403, undefined],
    ],
  );
});

test("without a WebSocket constructor passed in, the token goes in the bearer subprotocol", async () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = FakeWS;
  try {
    const c = new HeraldClient({ url: "ws://fake/ws", token: "a.b.c" });
    clients.push(c);
    c.connect();
    assert.deepEqual(last().protocols, ["herald.v1", "bearer.a.b.c"]);
    assert.equal(last().options, undefined);
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("unsubscribe while disconnected: nothing is sent, the next connection does not resubscribe", async () => {
  const c = fake();
  const a = c.subscribe("a", () => {});
  c.subscribe("b", () => {});
  await a.unsubscribe();
  assert.equal(a.active, false);
  await assert.rejects(a.ready, (e) => e.code === "closed");
  c.connect();
  last().open();
  assert.deepEqual(
    last().sent.map((m) => [m[0], m[2]]),
    [[1, "b"]],
  );
  await sleep(1);
});

test("a throwing callback is reported as an error event, the stream goes on", async () => {
  const c = fake();
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const seen = [];
  const sub = c.subscribe("t", (p) => {
    seen.push(p.seq);
    if (p.seq === 1) throw new Error("boom");
  });
  c.connect();
  const ws = last();
  ws.open();
  ws.push([17, ws.lastRequest(1)[1], { seq: 0, epoch: "e", recovered: false }]);
  ws.push([16, "t", 1, new Uint8Array()]);
  ws.push([16, "t", 2, new Uint8Array()]);
  await sub.ready;
  assert.deepEqual(seen, [1, 2]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "callback");
});

/** The token a scripted socket was opened with (header or subprotocol). */
function tokenOf(ws) {
  const h = ws.options?.headers?.Authorization;
  if (h) return h.replace(/^Bearer /, "");
  return ws.protocols.find((p) => p.startsWith("bearer."))?.slice("bearer.".length);
}

for (const tokenIn of ["header", "protocol"]) {
  test(`before every reconnect attempt a token expiring within 30 s is replaced, whatever ended the last one (${tokenIn})`, async () => {
    const issued = [];
    let life = 20; // seconds: within the 30 s margin
    const getToken = async () => {
      const t = mintToken({ sub: `u${issued.length}`, expIn: life });
      issued.push(t);
      return t;
    };
    const c = fake({
      token: mintToken({ sub: "first", expIn: 20 }),
      getToken,
      tokenIn,
      backoff: { baseMs: 1, maxMs: 1, slowMinMs: 1, slowMaxMs: 1 },
    });
    const states = recordStates(c);
    c.connect();
    const endings = [
      ["lost before open", (ws) => ws.serverClose(1006)],
      ["1006", (ws) => (ws.open(), ws.serverClose(1006))],
      ["1000", (ws) => (ws.open(), ws.serverClose(1000))],
      ["1001", (ws) => (ws.open(), ws.serverClose(1001))],
      ["1011", (ws) => (ws.open(), ws.serverClose(1011))],
      ["4008", (ws) => (ws.open(), ws.serverClose(4008))],
      ["4029", (ws) => (ws.open(), ws.serverClose(4029))],
      ["handshake 503", (ws) => ws.refuse(503)],
      ["handshake 429", (ws) => ws.refuse(429)],
      ["handshake 502", (ws) => ws.refuse(502)],
    ];
    for (let i = 0; i < endings.length; i++) {
      await waitFor(() => FakeWS.all.length === i + 1, 2000, `attempt ${i + 1}`);
      const ws = last();
      assert.equal(issued.length, i + 1, `getToken before attempt ${i + 1}`);
      assert.equal(tokenOf(ws), issued.at(-1), `attempt ${i + 1} uses the new token`);
      endings[i][1](ws);
    }
    assert.deepEqual(
      states.filter((s) => s.state === "reconnecting").map((s) => s.reason),
      ["connection_lost", "connection_lost", "server_closed", "going_away", "server_closed", "slow_consumer", "rate_limited", "unavailable", "rate_limited", "http_502"],
    );
    // A token that does not expire soon is kept.
    await waitFor(() => FakeWS.all.length === endings.length + 1, 2000, "next attempt");
    life = 3600;
    last().serverClose(1006); // this attempt used a 20 s token: the next one gets a 1 h token
    await waitFor(() => FakeWS.all.length === endings.length + 2, 2000, "attempt with a long token");
    const n = issued.length;
    assert.equal(tokenOf(last()), issued.at(-1));
    last().open();
    last().serverClose(1006);
    await waitFor(() => FakeWS.all.length === endings.length + 3, 2000, "attempt after");
    assert.equal(issued.length, n, "no getToken for a token good for an hour");
    assert.equal(tokenOf(last()), issued.at(-1));
  });
}

test("handshake 401: a second 401 in a row closes; any other outcome in between starts the count over", async () => {
  let fail = false;
  const issued = [];
  const c = fake({
    getToken: () => {
      if (fail) {
        fail = false;
        throw new Error("token service down");
      }
      const t = mintToken({ sub: `v${issued.length}` });
      issued.push(t);
      return t;
    },
    backoff: { baseMs: 1, maxMs: 1 },
  });
  const states = recordStates(c);
  c.connect();
  let n = 0;
  const next = async () => {
    n++;
    await waitFor(() => FakeWS.all.length === n, 2000, `attempt ${n}`);
    return last();
  };
  (await next()).refuse(401); // 1st: at once, new token
  (await next()).refuse(503); // something else
  (await next()).refuse(401); // counts as the first again
  const ws4 = await next();
  ws4.open(); // an open connection
  ws4.serverClose(1006);
  (await next()).refuse(401); // the first again
  fail = true; // the next getToken throws: token_error, then backoff
  await waitFor(() => states.at(-1).reason === "token_error", 2000, "token_error");
  (await next()).refuse(401); // the first again
  (await next()).refuse(401); // the second in a row
  assert.equal(c.state, "closed");
  assert.deepEqual(
    states.map((s) => [s.state, s.reason, s.status]),
    [
      ["connecting", undefined, undefined],
      ["reconnecting", "unauthorized", 401],
      ["reconnecting", "unavailable", 503],
      ["reconnecting", "unauthorized", 401],
      ["open", undefined, undefined],
      ["reconnecting", "connection_lost", undefined],
      ["reconnecting", "unauthorized", 401],
      ["reconnecting", "token_error", undefined],
      ["reconnecting", "unauthorized", 401],
      ["closed", "unauthorized", 401],
    ],
  );
  // Each 401 is answered with a new token, at once.
  assert.ok(states.filter((s) => s.reason === "unauthorized" && s.state === "reconnecting").every((s) => s.delayMs === 0));
  assert.equal(tokenOf(FakeWS.all[0]), "t.e.st");
  assert.equal(tokenOf(FakeWS.all[1]), issued[0]);
});

test("reconnecting and closed reasons: every row of the table through the client", async () => {
  const rows = [
    // [what ends the attempt, state, reason]
    [(ws) => ws.serverClose(1006), "reconnecting", "connection_lost"],
    [(ws) => (ws.open(), ws.serverClose(1006)), "reconnecting", "connection_lost"],
    [(ws) => (ws.open(), ws.serverClose(1000)), "reconnecting", "server_closed"],
    [(ws) => (ws.open(), ws.serverClose(1001)), "reconnecting", "going_away"],
    [(ws) => (ws.open(), ws.serverClose(1013)), "reconnecting", "server_closed"],
    [(ws) => (ws.open(), ws.serverClose(4008)), "reconnecting", "slow_consumer"],
    [(ws) => (ws.open(), ws.serverClose(4029)), "reconnecting", "rate_limited"],
    [(ws) => (ws.open(), ws.serverClose(4001)), "reconnecting", "token_expired"],
    [(ws) => (ws.open(), ws.serverClose(4003)), "reconnecting", "disconnected"],
    [(ws) => ws.refuse(401), "reconnecting", "unauthorized"],
    [(ws) => ws.refuse(429), "reconnecting", "rate_limited"],
    [(ws) => ws.refuse(503), "reconnecting", "unavailable"],
    [(ws) => ws.refuse(504), "reconnecting", "http_504"],
  ];
  const c = fake({ getToken: () => mintToken({ sub: "r" }), backoff: { baseMs: 1, maxMs: 1, slowMinMs: 1, slowMaxMs: 1 } });
  const states = recordStates(c);
  c.connect();
  for (let i = 0; i < rows.length; i++) {
    await waitFor(() => FakeWS.all.length === i + 1, 2000, `attempt ${i + 1}`);
    rows[i][0](last());
    const s = states.at(-1);
    assert.deepEqual([s.state, s.reason], [rows[i][1], rows[i][2]], `row ${i}`);
  }
  const terminal = [
    [(ws) => (ws.open(), ws.serverClose(1002)), "protocol"],
    [(ws) => (ws.open(), ws.serverClose(1008)), "refused"],
    [(ws) => ws.refuse(404), "refused"],
    [(ws) => (ws.open(), ws.serverClose(4003)), "disconnected", { getToken: undefined }],
    [(ws) => (ws.open(), ws.serverClose(4001)), "unauthorized", { getToken: undefined }],
    [(ws) => ws.refuse(401), "unauthorized", { getToken: undefined }],
    [(ws, c) => (ws.open(), c.close()), "client"],
  ];
  for (const [end, reason, opts] of terminal) {
    const d = fake({ token: "t.e.st", getToken: () => mintToken({ sub: "r" }), ...opts });
    const ds = recordStates(d);
    d.connect();
    await waitFor(() => FakeWS.all.at(-1)?.onopen && d.state !== "idle", 2000, "socket");
    end(last(), d);
    assert.deepEqual([ds.at(-1).state, ds.at(-1).reason], ["closed", reason]);
  }
});

test("close() while a PUBLISH and a PING wait: they fail with closed; a dropped connection fails them with connection_lost", async () => {
  const c = fake({ heartbeatMs: 0 });
  c.connect();
  last().open();
  const pub = c.publish("t", new Uint8Array([1]));
  const ping = c.ping();
  c.close();
  await assert.rejects(pub, (e) => e instanceof HeraldError && e.code === "closed");
  await assert.rejects(ping, (e) => e instanceof HeraldError && e.code === "closed");

  const d = fake({ heartbeatMs: 0 });
  d.connect();
  last().open();
  const pub2 = d.publish("t", new Uint8Array([1]));
  last().serverClose(1001);
  await assert.rejects(pub2, (e) => e.code === "connection_lost");
});

test("heartbeat: a PING once the connection was quiet for heartbeatMs (30 s); no answer within 10 s is a lost connection", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  const flush = () => new Promise((r) => setImmediate(r));
  const c = fake({ backoff: { baseMs: 60_000, maxMs: 60_000 } }); // the defaults: heartbeatMs 30 s, requestTimeoutMs 10 s
  const states = recordStates(c);
  c.connect();
  const ws = last();
  ws.open();
  const pings = () => ws.sent.filter((m) => m[0] === 3);
  t.mock.timers.tick(10_000);
  ws.push([16, "other", 1, new Uint8Array()]); // something came at 10 s
  t.mock.timers.tick(29_999);
  assert.equal(pings().length, 0, "quiet for less than 30 s");
  t.mock.timers.tick(1);
  assert.equal(pings().length, 1, "a PING at 40 s, 30 s after the last message");
  t.mock.timers.tick(5_000);
  ws.push([17, pings()[0][1], {}]); // answered at 45 s
  await flush();
  t.mock.timers.tick(29_999);
  assert.equal(pings().length, 1);
  t.mock.timers.tick(1);
  assert.equal(pings().length, 2, "the next PING 30 s after the answer");
  t.mock.timers.tick(9_999);
  await flush();
  assert.equal(c.state, "open", "still waiting for the answer");
  t.mock.timers.tick(1);
  await flush();
  assert.equal(c.state, "reconnecting");
  assert.deepEqual(states.at(-1), { state: "reconnecting", reason: "connection_lost", delayMs: 60_000, attempt: 0 });
});

test("an upgrade that gets no answer within requestTimeoutMs counts as a lost connection", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const c = fake({ requestTimeoutMs: 10_000, backoff: { baseMs: 60_000, maxMs: 60_000 } });
  const states = recordStates(c);
  c.connect();
  t.mock.timers.tick(9_999);
  assert.equal(c.state, "connecting");
  t.mock.timers.tick(1);
  assert.deepEqual(states.at(-1), { state: "reconnecting", reason: "connection_lost", delayMs: 60_000, attempt: 0 });
  assert.equal(FakeWS.all.length, 1);
});
