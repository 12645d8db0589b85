// Writes docs/demo.png and docs/admin.png (1280×800): starts `herald --demo`
// on free ports, opens both pages in headless Chromium, lets a few seconds of
// live data arrive (plus 60 Node clients and a chat line, so the admin UI
// has something to show), and takes the screenshots.
//
//   cd web && npm run screenshots       (HERALD_BIN picks the binary)
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Gateway, RawClient, launchBrowser, mintToken, sleep, until, API_KEY } from "./test/harness.mjs";

const docs = resolve(dirname(fileURLToPath(import.meta.url)), "..", "docs");
const gw = await (await new Gateway().init()).start();
let dev = null;
let demoOrigin = gw.origin, adminOrigin = gw.admin;
if (process.env.HERALD_WEB_DEV) {
  const { startDevServer } = await import("./test/devserver.mjs");
  dev = await startDevServer({ wsPort: gw.wsPort, adminPort: gw.adminPort, room: false });
  demoOrigin = adminOrigin = dev.url;
}
const browser = await launchBrowser();
const clients = [];
const watchdog = setTimeout(() => { console.error("screenshots: timed out"); process.exit(1); }, 90000);
try {
  const admin = await browser.page();
  await admin.goto(`${adminOrigin}/ui#key=${API_KEY}`, { timeout: 10000 });
  const demo = await browser.page();
  await demo.goto(`${demoOrigin}/`, { timeout: 10000 });
  await until("the demo page to be open", async () => (await demo.getAttribute("#conn-state", "data-state")) === "open", 10000);

  // some load for the admin UI: 60 subscribers over a few seconds
  for (let i = 0; i < 60; i++) {
    const c = await RawClient.open(gw.wsUrl, mintToken({ sub: `viewer-${i}` }));
    await c.subscribe(i % 3 === 0 ? "demo.room.1" : `demo.${["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD"][i % 4]}`);
    clients.push(c);
    if (i % 10 === 9) await sleep(500);
  }
  await demo.fill("#chat-input", "hello from the demo page");
  await demo.click("#chat-send");
  await sleep(300);
  await demo.fill("#chat-input", "ticks, the room and this chat share one WebSocket");
  await demo.click("#chat-send");
  await sleep(4000);
  await demo.screenshot({ path: join(docs, "demo.png") });
  await admin.bringToFront();
  await admin.fill("#pub-topic", "demo.chat");
  await admin.fill("#pub-payload", "a message from the operator");
  await admin.click("#publish-form button[type=submit]");
  await admin.fill("#dc-user", "viewer-7");
  await admin.click("#disconnect-form button[type=submit]");
  await sleep(2500);
  await admin.evaluate(() => window.scrollTo(0, 0));
  await admin.screenshot({ path: join(docs, "admin.png") });
  console.log(`wrote ${join(docs, "demo.png")} and ${join(docs, "admin.png")}`);
} finally {
  clearTimeout(watchdog);
  for (const c of clients) c.terminate();
  await browser.close();
  dev?.close();
  await gw.stop();
}
