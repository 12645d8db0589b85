// Against the real gateway: the heartbeat PING is answered while the
// gateway runs; a stopped gateway (SIGSTOP: the TCP connection stays up,
// nothing answers) is noticed as a lost connection.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { decode } from "@msgpack/msgpack";
import { HeraldClient } from "../dist/index.js";
import { mintToken, recordStates, sleep, startHerald, trackedWebSocket, waitFor } from "./harness.mjs";

let h;
let c;

before(async () => {
  h = await startHerald();
});

after(async () => {
  c?.close();
  h?.proc?.kill("SIGCONT");
  await h?.stop("SIGKILL");
});

test("heartbeat: PINGs while quiet are answered; a gateway that stops answering is a lost connection", async () => {
  const tracked = await trackedWebSocket();
  const pings = [];
  class Counting extends tracked.WebSocket {
    send(b) {
      if (decode(b)[0] === 3) pings.push(Date.now());
      super.send(b);
    }
  }
  c = new HeraldClient({
    url: h.wsUrl,
    WebSocket: Counting,
    token: mintToken({ sub: "hb" }),
    heartbeatMs: 200,
    requestTimeoutMs: 2000,
    backoff: { baseMs: 50, maxMs: 100 },
  });
  const states = recordStates(c);
  c.connect();
  await waitFor(() => c.state === "open", 3000, "open");
  await sleep(900);
  assert.ok(pings.length >= 2, `${pings.length} heartbeat PINGs in 900 ms`);
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "open"],
  );

  h.proc.kill("SIGSTOP");
  const stoppedAt = Date.now();
  try {
    await waitFor(() => c.state === "reconnecting", 8000, "the lost connection noticed");
    // ≥ the PING's timeout after the last answer the gateway could give.
    assert.ok(Date.now() - stoppedAt >= 1500, `noticed after ${Date.now() - stoppedAt} ms`);
    assert.deepEqual(states[2], { state: "reconnecting", reason: "connection_lost", delayMs: states[2].delayMs, attempt: 0 });
  } finally {
    h.proc.kill("SIGCONT");
  }
  await waitFor(() => c.state === "open", 10_000, "open again");
  await c.ping();
  c.close();
});
