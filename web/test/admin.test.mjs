// The admin UI in a real browser, served by the gateway at /ui on its admin port.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Gateway, RawClient, launchBrowser, mintToken, until, API_KEY } from "./harness.mjs";

let gw, browser, page, dev;
const num = (s) => Number(String(s).replace(/[^0-9.]/g, ""));

before(async () => {
  gw = await (await new Gateway().init()).start();
  let origin = gw.admin;
  if (process.env.HERALD_WEB_DEV) {
    const { startDevServer } = await import("./devserver.mjs");
    dev = await startDevServer({ wsPort: gw.wsPort, adminPort: gw.adminPort, room: false });
    origin = dev.url;
  }
  browser = await launchBrowser();
  page = await browser.page();
  await page.goto(`${origin}/ui#key=${API_KEY}`, { timeout: 10000 });
});

after(async () => {
  await browser?.close();
  dev?.close();
  await gw?.stop();
});

test("the gateway serves the committed web/dist", { skip: !!process.env.HERALD_WEB_DEV && "HERALD_WEB_DEV: pages come from the Node front" }, async () => {
  const get = async (path) => Buffer.from(await (await fetch(`${gw.admin}${path}`, { signal: AbortSignal.timeout(5000) })).arrayBuffer());
  assert.ok((await get("/ui")).equals(readFileSync(new URL("../dist/admin.html", import.meta.url))), "/ui is web/dist/admin.html: rebuild the gateway after npm run build");
  assert.ok((await get("/ui/admin.js")).equals(readFileSync(new URL("../dist/admin.js", import.meta.url))), "/ui/admin.js is web/dist/admin.js: rebuild the gateway after npm run build");
});

test("the key from the fragment is used and removed from the URL; live numbers appear", async () => {
  await until("the connection count", async () => /^\d/.test(await page.textContent("#total-connections")), 10000);
  assert.ok(!page.url().includes("key="), `the key stays out of the URL: ${page.url()}`);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("herald.admin.key")), API_KEY);
  // the demo feed is connected and ticking
  await until("feeds connected = 1", async () => (await page.textContent("#feeds")).trim() === "1", 5000);
  await until("publications/s > 0", async () => num(await page.textContent("#total-pub-rate")) > 0, 8000);
  const shards = await page.$$eval("#shards-table tbody tr", (rows) => rows.length);
  assert.ok(shards >= 1, "one row per shard");
  const nodes = await page.$$eval("#nodes-table tbody tr", (rows) => rows.length);
  assert.equal(nodes, 1, "one node");
});

test("the connection count rises by >= 100 when a hundred clients connect", async () => {
  const base = num(await page.textContent("#total-connections"));
  const clients = [];
  try {
    for (let batch = 0; batch < 4; batch++) {
      clients.push(...(await Promise.all(Array.from({ length: 25 }, (_, i) =>
        RawClient.open(gw.wsUrl, mintToken({ sub: `load-${batch}-${i}` }))))));
    }
    assert.equal(clients.length, 100);
    const seen = await until("the admin UI to show >= base + 100 connections", async () => {
      const n = num(await page.textContent("#total-connections"));
      return n >= base + 100 ? n : false;
    }, 10000);
    assert.ok(seen >= base + 100, `${seen} >= ${base} + 100`);
  } finally {
    for (const c of clients) c.close();
  }
  await until("the count to fall back", async () => num(await page.textContent("#total-connections")) <= base + 5, 10000);
  // their closes (1000, echoed) are counted by code
  await until("closes by code to list 1000", async () => (await page.$$eval("#closes-table tbody tr", (rows) => rows.map((r) => r.dataset.code))).includes("1000"), 5000);
});

test("the publish form reaches a subscriber", async () => {
  const sub = await RawClient.open(gw.wsUrl, mintToken({ sub: "admin-test-sub" }));
  try {
    const topic = "demo.admin-test";
    await sub.subscribe(topic);
    const payload = `hello from the admin UI ${Date.now()}`;
    await page.fill("#pub-topic", topic);
    await page.fill("#pub-payload", payload);
    await page.click("#publish-form button[type=submit]");
    const got = await sub.waitFor((p) => p.topic === topic, 5000);
    assert.equal(got.data.toString("utf8"), payload);
    await until("the form's result", async () => /seq \d+/.test(await page.textContent("#pub-result")), 5000);
    assert.match(await page.textContent("#pub-result"), new RegExp(`seq ${got.seq}\\b`));
  } finally {
    sub.close();
  }
});

test("the disconnect form closes that user's sessions with 4003", async () => {
  const victim = await RawClient.open(gw.wsUrl, mintToken({ sub: "kick-me" }));
  const closed = new Promise((r) => victim.ws.once("close", (code) => r(code)));
  await page.fill("#dc-user", "kick-me");
  await page.click("#disconnect-form button[type=submit]");
  await until("the form's result", async () => /1 session closed/.test(await page.textContent("#dc-result")), 5000);
  const code = await Promise.race([closed, new Promise((r) => setTimeout(() => r("timeout"), 5000))]);
  assert.equal(code, 4003);
  await until("closes by code to list 4003", async () => (await page.$$eval("#closes-table tbody tr", (rows) => rows.map((r) => r.dataset.code))).includes("4003"), 5000);
});

test("latency percentiles and charts are drawn", async () => {
  await until("latency percentiles", async () => /\d.* ms$/.test((await page.textContent("#latency")).trim()), 8000);
  const painted = await page.evaluate(() => {
    const c = document.getElementById("chart-connections");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
    return n;
  });
  assert.ok(painted > 100, `the connections chart has pixels (${painted})`);
});

test("no console errors on the admin page", () => {
  assert.deepEqual(page.consoleErrors, []);
});

test("a wrong key gets a clear message", async () => {
  const p = await browser.page();
  try {
    await p.goto(`${dev ? dev.url : gw.admin}/ui#key=not-the-key`, { timeout: 10000 });
    await until("the 401 message", async () => /401/.test((await p.textContent("#key-error")) ?? ""), 5000);
    assert.ok(await p.isVisible("#key-form"), "the key form is shown again");
    assert.ok(!(await p.isVisible("#main")), "no data without a key");
    assert.equal(await p.evaluate(() => sessionStorage.getItem("herald.admin.key")), null, "a refused key is not kept");
    // entering the right key brings the data
    await p.fill("#key-input", API_KEY);
    await p.click("#key-form button[type=submit]");
    await until("live numbers", async () => /^\d/.test(await p.textContent("#total-connections")), 5000);
  } finally {
    await p.close();
  }
});

test("a cluster's nodes are listed with their shards (answers of /api/nodes stubbed in the browser)", async () => {
  const p = await browser.page();
  const stats = (conns, node) => ({
    connections: conns, subscriptions: conns * 2, topics: 5, published: 100, delivered: 1000,
    rates: { published_per_s: 10, delivered_per_s: conns * 10 }, draining: node === "n3", uptime_s: 60,
    broker: { kind: "nats", node_id: node, connected: node !== "n2" },
    shards: [0, 1].map((s) => ({ shard: s, connections: conns / 2, subscriptions: conns, topics: 3, local_topics: 2, delivered: 500, published: 50 })),
  });
  try {
    await p.route("**/api/nodes", (route) => route.fulfill({
      status: 200,
      contentType: "application/json",
      body: JSON.stringify({ nodes: [
        { node: "n1", self: true, age_ms: 0, stats: stats(10, "n1") },
        { node: "n2", self: false, age_ms: 800, stats: stats(20, "n2") },
        { node: "n3", self: false, age_ms: 1200, stats: stats(30, "n3") },
      ] }),
    }));
    await p.goto(`${dev ? dev.url : gw.admin}/ui#key=${API_KEY}`, { timeout: 10000 });
    await until("three node rows", async () => (await p.$$("#nodes-table tbody tr")).length === 3, 5000);
    assert.equal((await p.textContent("#total-connections")).trim(), "60");
    assert.match(await p.textContent("#node-label"), /node n1 · cluster of 3/);
    const rows = await p.$$eval("#nodes-table tbody tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    assert.deepEqual(rows.map((r) => r[0]), ["n1 (this)", "n2", "n3"]);
    assert.equal(rows[1][1], "0.8 s");
    assert.equal(rows[1][7], "nats DOWN");
    assert.equal(rows[2][8], "draining");
    const shards = await p.$$eval("#shards-table tbody tr", (trs) => trs.map((tr) => tr.dataset.shard));
    assert.deepEqual(shards, ["n1/0", "n1/1", "n2/0", "n2/1", "n3/0", "n3/1"]);
    assert.deepEqual(p.consoleErrors, []);
  } finally {
    await p.close();
  }
});
