// The demo page in a real browser, served by the gateway (`herald --demo`) at /.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { Gateway, RawClient, launchBrowser, mintToken, until, sleep } from "./harness.mjs";

let gw, browser, page, dev;

before(async () => {
  gw = await (await new Gateway().init()).start();
  let origin = gw.origin;
  if (process.env.HERALD_WEB_DEV) {
    const { startDevServer } = await import("./devserver.mjs");
    dev = await startDevServer({ wsPort: gw.wsPort, adminPort: gw.adminPort, room: false });
    origin = dev.url;
  }
  browser = await launchBrowser();
  page = await browser.page();
  await page.goto(`${origin}/`, { timeout: 10000 });
  // record every connection state the page shows, in order
  await page.evaluate(() => {
    const pill = document.getElementById("conn-state");
    window.__states = [pill.dataset.state];
    new MutationObserver(() => {
      const s = pill.dataset.state;
      if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
    }).observe(pill, { attributes: true, attributeFilter: ["data-state"] });
  });
});

after(async () => {
  await browser?.close();
  dev?.close();
  await gw?.stop();
});

const text = (sel) => page.textContent(sel).then((t) => (t ?? "").trim());

test("the gateway serves the committed web/dist", { skip: !!process.env.HERALD_WEB_DEV && "HERALD_WEB_DEV: pages come from the Node front" }, async () => {
  const get = async (path) => Buffer.from(await (await fetch(`${gw.origin}${path}`, { signal: AbortSignal.timeout(5000) })).arrayBuffer());
  assert.ok((await get("/")).equals(readFileSync(new URL("../dist/demo.html", import.meta.url))), "/ is web/dist/demo.html: rebuild the gateway after npm run build");
  assert.ok((await get("/demo.js")).equals(readFileSync(new URL("../dist/demo.js", import.meta.url))), "/demo.js is web/dist/demo.js: rebuild the gateway after npm run build");
});

test("the page connects and shows ticks changing", async () => {
  await until("state open", async () => (await page.getAttribute("#conn-state", "data-state")) === "open", 10000);
  assert.match(await text("#user"), /guest-[0-9a-f]{8}/, "a guest token from /demo/token");
  const first = await until("a BTC-USD price", async () => {
    const t = await text("#price-BTC-USD");
    return /\d/.test(t) ? t : false;
  }, 5000);
  const later = await until("the BTC-USD price to change", async () => {
    const t = await text("#price-BTC-USD");
    return t !== first ? t : false;
  }, 8000);
  assert.notEqual(later, first);
  for (const sym of ["ETH-USD", "SOL-USD", "EUR-USD"]) assert.match(await text(`#price-${sym}`), /\d/, `${sym} has a price`);
  // the per-topic seq grows and the sparkline is drawn
  const seq1 = Number(await text('#seq-table tr[data-topic="demo.BTC-USD"] td:nth-child(2)'));
  await sleep(600);
  const seq2 = Number(await text('#seq-table tr[data-topic="demo.BTC-USD"] td:nth-child(2)'));
  assert.ok(seq2 > seq1, `seq grows (${seq1} → ${seq2})`);
  const spark = () => page.evaluate(() => document.getElementById("spark-BTC-USD").toDataURL());
  const s1 = await spark();
  await sleep(500);
  assert.notEqual(await spark(), s1, "the sparkline moves");
});

test("the game room updates at >= 15 Hz", async () => {
  const hz = await until("a room rate >= 15 Hz", async () => {
    const v = Number(await page.getAttribute("#room-rate", "data-hz"));
    return v >= 15 ? v : false;
  }, 8000);
  assert.ok(hz >= 15 && hz < 40, `measured ${hz} Hz`);
  const players = await page.$$eval("#room-scores li", (li) => li.map((x) => x.dataset.player));
  assert.equal(players.length, 4, `four bots: ${players}`);
  const tick1 = Number(await text("#room-tick"));
  await sleep(300);
  assert.ok(Number(await text("#room-tick")) > tick1, "ticks advance");
});

test("chat messages go out through demo.chat and come back", async () => {
  const node = await RawClient.open(gw.wsUrl, mintToken({ sub: "chat-watcher" }));
  try {
    await node.subscribe("demo.chat");
    const msg = `hi from the browser ${Date.now()}`;
    await page.fill("#chat-input", msg);
    await page.click("#chat-send");
    const got = await node.waitFor((p) => p.topic === "demo.chat", 5000);
    assert.equal(got.data.toString("utf8"), msg);
    await until("the message in the page's chat log", async () => (await text("#chat-log")).includes(msg), 5000);
  } finally {
    node.close();
  }
});

test("no console errors on the demo page", () => {
  assert.deepEqual(page.consoleErrors, []);
});

test("a dropped connection is recovered from the gateway's history, without a gap", async (t) => {
  // Abort the browser's TCP connection to the gateway (ss -K: root and a
  // kernel with INET_DIAG_DESTROY); the page sees a 1006 and reconnects to the
  // same process, so every topic's epoch is unchanged.
  const before = await page.evaluate(() => window.__states.length);
  const logBefore = await text("#event-log");
  try {
    execFileSync("ss", ["-K", "-t", "state", "established", `( dport = :${gw.wsPort} )`], { stdio: "pipe", timeout: 5000 });
  } catch (e) {
    t.skip(`ss -K is not available here: ${e.message}`);
    return;
  }
  const aborted = await until("the page to notice", async () => (await page.evaluate(() => window.__states.length)) > before, 5000).catch(() => false);
  if (!aborted) {
    t.skip("ss -K did not abort the connection on this kernel");
    return;
  }
  await until("open again", async () => (await page.evaluate(() => window.__states.slice(-1)[0])) === "open", 10000);
  const log = await until("every tick topic recovered", async () => {
    const l = await text("#event-log");
    return ["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD"].every((s) => l.includes(`reconnected; demo.${s} recovered`)) ? l : false;
  }, 5000);
  const added = log.slice(0, log.length - logBefore.length);
  assert.doesNotMatch(added, /data may be missing|seq jump/, `no gap: ${added}`);
  page.consoleErrors.length = 0; // an aborted socket may be reported; the restart test checks its own window
});

test("after a gateway restart the page reconnects by itself and reports the epoch change", async () => {
  const errorsBefore = page.consoleErrors.length;
  await gw.restart();
  await until("reconnecting then open", async () => {
    const states = await page.evaluate(() => window.__states);
    const i = states.lastIndexOf("reconnecting");
    return i >= 0 && states.slice(i + 1).includes("open");
  }, 20000);
  assert.equal(await page.getAttribute("#conn-state", "data-state"), "open");
  const log = await until("the epoch change in the event log", async () => {
    const t = await text("#event-log");
    return /demo\.BTC-USD: epoch changed: data may be missing/.test(t) ? t : false;
  }, 5000);
  assert.match(log, /reconnected/);
  assert.match(log, /connection lost/);
  // ticks flow again, on the new epoch
  const p1 = await text("#price-BTC-USD");
  await until("ticks after the restart", async () => (await text("#price-BTC-USD")) !== p1, 8000);
  // while the gateway was down the browser may log failed WebSocket attempts; nothing else
  const unexpected = page.consoleErrors.slice(errorsBefore).filter((e) => !/^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/.test(e));
  assert.deepEqual(unexpected, []);
});
