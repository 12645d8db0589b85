// Development front for the pages, for a gateway binary without the web
// routes (or to iterate without rebuilding it): serves web/dist the way the
// gateway does (/, /demo.js, /demo/token, /ui, /ui/admin.js), proxies /ws to
// the gateway's WebSocket port and /api, /metrics, /healthz, /readyz to its
// admin port, and publishes the demo game room (demo.room.1, 20 Hz) through
// the operator API when `room` is set.
//
//   node test/devserver.mjs             starts `herald --demo` on free ports too
// The tests never use it: they go through the gateway's own routes.
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { Gateway, mintToken, API_KEY, freePort } from "./harness.mjs";

const dist = resolve(dirname(fileURLToPath(import.meta.url)), "..", "dist");

export async function startDevServer({ wsPort, adminPort, port = 0, room = true }) {
  const files = {
    "/": ["demo.html", "text/html; charset=utf-8"],
    "/demo.js": ["demo.js", "text/javascript; charset=utf-8"],
    "/ui": ["admin.html", "text/html; charset=utf-8"],
    "/ui/admin.js": ["admin.js", "text/javascript; charset=utf-8"],
  };
  const server = createServer((req, res) => {
    const path = req.url.split("?")[0];
    if (files[path]) {
      res.writeHead(200, {
        "content-type": files[path][1],
        "cache-control": "no-store",
        // the gateway's own policy (src/http/site.rs), so violations show here too
        "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
      });
      return res.end(readFileSync(join(dist, files[path][0])));
    }
    if (path === "/demo/token") {
      const exp = Math.floor(Date.now() / 1000) + 120;
      const token = mintToken({ sub: "guest-" + randomBytes(4).toString("hex"), ttlS: 120, topics: ["demo.*"], pub: ["demo.chat"] });
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ token, exp }));
    }
    if (/^\/(api\/|metrics$|healthz$|readyz$)/.test(path)) {
      const up = request({ host: "127.0.0.1", port: adminPort, path: req.url, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on("error", () => { res.writeHead(502); res.end(); });
      return req.pipe(up);
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  server.on("upgrade", (req, sock, head) => {
    const up = connect(wsPort, "127.0.0.1", () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(raw + "\r\n");
      if (head.length) up.write(head);
      up.pipe(sock);
      sock.pipe(up);
    });
    up.on("error", () => sock.destroy());
    sock.on("error", () => up.destroy());
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  let timer = null;
  if (room) {
    const bots = [0, 1, 2, 3].map((i) => ({ id: `bot-${i + 1}`, a: i * 1.7, s: 0.6 + i * 0.15, score: 0 }));
    let tick = 0;
    timer = setInterval(() => {
      tick++;
      const players = bots.map((b) => {
        b.a += 0.05 * b.s;
        if (Math.random() < 0.02) b.score++;
        return { id: b.id, x: 0.5 + 0.4 * Math.cos(b.a) * Math.sin(b.a * 0.7 + 1), y: 0.5 + 0.4 * Math.sin(b.a * 1.3), score: b.score };
      });
      fetch(`http://127.0.0.1:${adminPort}/api/publish/demo.room.1`, {
        method: "POST",
        headers: { Authorization: `Bearer ${API_KEY}` },
        body: JSON.stringify({ tick, ts_ms: Date.now(), players }),
      }).catch(() => {});
    }, 50);
  }
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close() {
      if (timer) clearInterval(timer);
      server.closeAllConnections?.();
      server.close();
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const gw = await (await new Gateway().init()).start();
  const port = Number(process.env.PORT ?? (await freePort()));
  const dev = await startDevServer({ wsPort: gw.wsPort, adminPort: gw.adminPort, port });
  console.log(`demo:  ${dev.url}/\nadmin: ${dev.url}/ui#key=${API_KEY}\ngateway ws ${gw.wsUrl}, admin ${gw.admin}`);
  const stop = async () => { dev.close(); await gw.stop(); process.exit(0); };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
