// Against the real gateway (history of 4 publications): gaps in stream
// order for iterators and callbacks.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { HeraldClient } from "../dist/index.js";
import { freePort, mintToken, startHerald, waitFor } from "./harness.mjs";

let h;
const clients = [];

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
