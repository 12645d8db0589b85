// Against the real gateway: it restarts mid-stream (SIGTERM: close 1001,
// then a new process on the same ports under new epochs).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { HeraldClient } from "../dist/index.js";
import { mintToken, recordStates, startHerald, waitFor } from "./harness.mjs";

let h;
let c;

before(async () => {
  h = await startHerald();
});

after(async () => {
  c?.close();
  await h?.stop("SIGKILL");
});

test("gateway restart mid-stream: reconnect by itself, epoch_changed gap, the stream goes on", async () => {
  c = new HeraldClient({ url: h.wsUrl, WebSocket, token: mintToken({ sub: "rs" }), backoff: { baseMs: 100, maxMs: 500 } });
  const states = recordStates(c);
  const got = [];
  const gaps = [];
  c.connect();
  const cb = c.subscribe("rs.t", (p) => got.push([p.seq, p.epoch]));
  cb.on("gap", (g) => gaps.push(g));
  const it = c.subscribe("rs.it"); // an iterated subscription survives the restart too
  const itSeen = [];
  const reader = (async () => {
    for await (const p of it) itSeen.push(p.seq);
  })();
  const first = await cb.ready;
  await it.ready;

  for (let i = 0; i < 3; i++) {
    await h.publish("rs.t", `a${i}`);
    await h.publish("rs.it", `a${i}`);
  }
  await waitFor(() => got.length === 3 && itSeen.length === 3, 3000, "before the restart");

  await h.restart("SIGTERM");
  await waitFor(() => c.state === "open" && gaps.length === 1, 10_000, "open again with a gap");

  const tail = states.slice(2).map((s) => [s.state, s.reason, s.code]);
  assert.deepEqual(tail[0], ["reconnecting", "going_away", 1001]);
  assert.deepEqual(tail.at(-1), ["open", undefined, undefined]);
  assert.ok(tail.slice(1, -1).every(([s]) => s === "reconnecting"), JSON.stringify(tail));

  const second = await new Promise((r) => (cb.epoch !== first.epoch ? r(cb.epoch) : cb.once("subscribed", (s) => r(s.epoch))));
  assert.notEqual(second, first.epoch);
  assert.deepEqual(gaps, [{ topic: "rs.t", reason: "epoch_changed", lastSeq: 3, seq: 1, epoch: second }]);

  for (let i = 0; i < 2; i++) {
    await h.publish("rs.t", `b${i}`);
    await h.publish("rs.it", `b${i}`);
  }
  await waitFor(() => got.length === 5 && itSeen.length === 5, 3000, "after the restart");
  assert.deepEqual(got, [
    [1, first.epoch],
    [2, first.epoch],
    [3, first.epoch],
    [1, second],
    [2, second],
  ]);
  assert.deepEqual(itSeen, [1, 2, 3, 1, 2]);
  c.close();
  await reader;
});
