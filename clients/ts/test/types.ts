// Compiled with `tsc --noEmit` by `npm test`: the public API as a TypeScript
// app on Node would use it (ws's constructor fits WebSocketCtor).
import { WebSocket } from "ws";
import { HeraldClient, HeraldError, type Gap, type Publication, type StateEvent } from "../dist/index.js";

export async function example(): Promise<void> {
  const c = new HeraldClient({
    url: "ws://127.0.0.1:8780/ws",
    WebSocket,
    getToken: async () => "jwt",
    backoff: { baseMs: 250, maxMs: 30_000 },
    bufferSize: 1024,
    requestTimeoutMs: 10_000,
  });
  c.on("state", (s: StateEvent) => void s.delayMs);
  c.on("error", (e: HeraldError) => void (typeof e.code === "number" ? e.code + 1 : e.code.toUpperCase()));
  c.connect();
  const sub = c.subscribe("demo.BTC-USD", (p: Publication) => void p.data.byteLength, { since: 3, epoch: "e" });
  sub.on("gap", (g: Gap) => void g.reason);
  const r = await sub.ready;
  void (r.seq + (r.recovered ? 1 : 0));
  for await (const p of c.subscribe("x")) void p.seq;
  await sub.unsubscribe();
  const seq: number = await c.publish("demo.chat", new TextEncoder().encode("hi"));
  void seq;
  await c.ping();
  c.close();
  // The DOM's WebSocket fits too.
  new HeraldClient({ url: "wss://x/ws", WebSocket: globalThis.WebSocket, tokenIn: "protocol" });
}
