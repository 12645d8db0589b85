// Against the real gateway (history of 4 publications): gaps in stream
// order for iterators and callbacks, requests in flight when the
// connection drops.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { HeraldClient } from "../dist/index.js";
import { freePort, mintToken, startHerald, trackedWebSocket, waitFor } from "./harness.mjs";

let h;
const clients = [];
const te = new TextEncoder();

before(async () => {
  h = await startHerald({ HERALD_HUB__HISTORY_SIZE: "4" });
});

after(async () => {
  for (const c of clients) c.close();
  await h?.stop("SIGKILL");
});

/**
 * A ws WebSocket whose connections go to a port nobody listens on while
 * `gate.open` is false: the client keeps trying (and failing) until the
 * test opens the gate.
 */
async function gatedWebSocket() {
  const { WebSocket } = await import("ws");
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  const gate = { open: true, instances: [] };
  class Gated extends WebSocket {
    constructor(url, ...rest) {
      super(gate.open ? url : dead, ...rest);
      gate.instances.push(this);
    }
  }
  gate.WebSocket = Gated;
  return gate;
}

test("not_recovered after a reconnect: the gap comes after the publications buffered before it, for iterators and callbacks", async () => {
  const gate = await gatedWebSocket();
  const c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: gate.WebSocket,
    token: mintToken({ sub: "ord" }),
    backoff: { baseMs: 20, maxMs: 50 },
  });
  clients.push(c);
  const itLog = [];
  const cbLog = [];
  const it = c.subscribe("ord.it"); // iterated, but nobody reads yet
  const cb = c.subscribe("ord.cb", (p) => cbLog.push(["pub", p.seq]));
  for (const [sub, log] of [
    [it, itLog],
    [cb, cbLog],
  ]) {
    sub.on("gap", (g) => log.push(["gap", g.reason, g.lastSeq, g.seq, g.epoch]));
  }
  c.connect();
  const { epoch } = await it.ready;
  const cbEpoch = (await cb.ready).epoch;
  const replies = [];
  it.on("subscribed", (r) => replies.push(r));

  for (let i = 1; i <= 3; i++) {
    await h.publish("ord.it", `a${i}`);
    await h.publish("ord.cb", `a${i}`);
  }
  await waitFor(() => it.lastSeq === 3 && cbLog.length === 3, 3000, "three of each");

  gate.open = false;
  gate.instances.at(-1).terminate(); // the network dies; reconnecting fails until the gate opens
  await waitFor(() => c.state === "reconnecting", 2000, "reconnecting");
  for (let i = 4; i <= 10; i++) {
    await h.publish("ord.it", `b${i}`); // the history keeps 7..10 only
    await h.publish("ord.cb", `b${i}`);
  }
  gate.open = true;
  await waitFor(() => replies.length === 1 && cb.lastSeq === 10, 5000, "resubscribed");
  assert.deepEqual(replies, [{ topic: "ord.it", seq: 10, epoch, recovered: false }]);

  // The callback subscription got the gap at once (nothing was held back)…
  assert.deepEqual(cbLog.slice(3), [["gap", "not_recovered", 3, 11, cbEpoch]]);
  // …the iterated one holds it behind 1, 2, 3 until the reader gets there.
  assert.deepEqual(itLog, []);

  await h.publish("ord.it", "live");
  await h.publish("ord.cb", "live");
  await waitFor(() => it.lastSeq === 11 && cbLog.length === 5, 3000, "the live publications");
  for await (const p of it) {
    itLog.push(["pub", p.seq]);
    if (p.seq === 11) break;
  }
  const want = (ep) => [["pub", 1], ["pub", 2], ["pub", 3], ["gap", "not_recovered", 3, 11, ep], ["pub", 11]];
  assert.deepEqual(itLog, want(epoch));
  assert.deepEqual(cbLog, want(cbEpoch));
  c.close();
});

test("a PUBLISH and a PING sent when the connection drops fail with connection_lost; pending at close() they fail with closed", async () => {
  const tracked = await trackedWebSocket();
  const c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: tracked.WebSocket,
    token: mintToken({ sub: "cl" }),
    backoff: { baseMs: 20, maxMs: 50 },
  });
  clients.push(c);
  c.connect();
  await waitFor(() => c.state === "open", 3000, "open");
  assert.equal(await c.publish("cl.t", te.encode("first")), 1);

  const pub = c.publish("cl.t", te.encode("in flight"));
  const ping = c.ping();
  tracked.last().terminate(); // sent, but the replies can no longer come
  await assert.rejects(pub, (e) => e.code === "connection_lost");
  await assert.rejects(ping, (e) => e.code === "connection_lost");
  await assert.rejects(c.ping(), (e) => e.code === "not_connected");

  // The client goes on; whether "in flight" was stored is for the app to find out.
  await waitFor(() => c.state === "open", 3000, "open again");
  const seq = await c.publish("cl.t", te.encode("again"));
  assert.ok(seq === 2 || seq === 3, `seq ${seq}`);

  const pub2 = c.publish("cl.t", te.encode("at close"));
  const ping2 = c.ping();
  c.close();
  await assert.rejects(pub2, (e) => e.code === "closed");
  await assert.rejects(ping2, (e) => e.code === "closed");
});
