// herald admin UI: polls the operator API of the node that serves it once a
// second and draws what it sees. The API key is asked once (or taken from the
// URL fragment #key=..., which is never sent to a server) and kept in this
// tab's sessionStorage.
import { timeChart, PALETTE, type Series } from "../shared/chart";
import { parseProm, quantile, type Sample } from "../shared/prom";

interface Shard {
  shard: number; connections: number; subscriptions: number; topics: number;
  local_topics: number; delivered: number; published: number;
}
interface Stats {
  connections: number; subscriptions: number; topics: number; published: number; delivered: number;
  rates?: { published_per_s: number; delivered_per_s: number };
  draining: boolean; uptime_s: number;
  broker?: { kind?: string; node_id?: string; connected?: boolean };
  shards?: Shard[];
}
interface NodeEntry { node: string; self: boolean; age_ms: number; stats: Stats }

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
const KEY_STORE = "herald.admin.key";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const fmt = (n: number | undefined | null) => (n === undefined || n === null || !isFinite(n) ? "–" : Math.round(n).toLocaleString("en-US"));
const fmtRate = (n: number | undefined | null) =>
  n === undefined || n === null || !isFinite(n) ? "–" : n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1);

// ---------- the API key ----------

function takeKeyFromFragment(): void {
  const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (m) {
    try { sessionStorage.setItem(KEY_STORE, decodeURIComponent(m[1])); } catch { /* storage off */ }
    history.replaceState(null, "", location.pathname + location.search);
  }
}
function apiKey(): string | null {
  try { return sessionStorage.getItem(KEY_STORE); } catch { return null; }
}
function showLogin(message: string): void {
  stopPolling();
  try { sessionStorage.removeItem(KEY_STORE); } catch { /* ignore */ }
  $("login").hidden = false;
  $("main").hidden = true;
  $("key-error").textContent = message;
  setStatus(message ? "key refused" : "no key", "bad");
  ($("key-input") as HTMLInputElement).focus();
}
function showMain(): void {
  $("login").hidden = true;
  $("main").hidden = false;
  $("key-error").textContent = "";
}

class Unauthorized extends Error {}

async function api(path: string, init: RequestInit = {}, auth = true): Promise<Response> {
  const headers = new Headers(init.headers);
  if (auth) headers.set("Authorization", `Bearer ${apiKey() ?? ""}`);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 4000);
  try {
    const r = await fetch(path, { ...init, headers, signal: ctl.signal, cache: "no-store" });
    if (r.status === 401 && auth) throw new Unauthorized();
    return r;
  } finally {
    clearTimeout(timer);
  }
}

// ---------- metrics ----------

interface MetricsView {
  buckets: Map<number, number>; // le -> cumulative count
  dropsSlow: number;
  closes: Map<string, number>;
  feeds: number | null;
}
function viewOf(samples: Sample[]): MetricsView {
  const v: MetricsView = { buckets: new Map(), dropsSlow: 0, closes: new Map(), feeds: null };
  for (const s of samples) {
    switch (s.name) {
      case "herald_delivery_latency_seconds_bucket": {
        const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        v.buckets.set(le, (v.buckets.get(le) ?? 0) + s.value);
        break;
      }
      case "herald_dropped_total":
        if (s.labels.reason === "slow_consumer") v.dropsSlow += s.value;
        break;
      case "herald_closes_total":
        v.closes.set(s.labels.code ?? "?", (v.closes.get(s.labels.code ?? "?") ?? 0) + s.value);
        break;
      case "herald_ingest_feeds":
        v.feeds = (v.feeds ?? 0) + s.value;
        break;
    }
  }
  return v;
}

const CLOSE_MEANING: Record<string, string> = {
  "1000": "normal", "1001": "going away", "1002": "protocol error", "1003": "text frame",
  "1006": "dropped transport", "1007": "bad close reason", "1008": "refused by handler", "1009": "message too big",
  "4001": "token expired", "4003": "kicked by operator", "4008": "slow consumer", "4029": "rate limited",
};

// ---------- samples ----------

interface Point {
  t: number;
  nodes: Map<string, { conns: number; pub: number | null; deliv: number | null }>;
  shards: Map<string, number | null>; // "node/shard" -> deliveries/s
  p50: number | null; p90: number | null; p99: number | null;
}
const samples: Point[] = [];
let prevShardCounters = new Map<string, { t: number; delivered: number; published: number }>();
let prevMetrics: MetricsView | null = null;
let nodesRoute: "nodes" | "stats" = "nodes";

function setStatus(text: string, cls: "" | "ok" | "bad"): void {
  const el = $("poll-status");
  el.textContent = text;
  el.className = "pill" + (cls ? " " + cls : "");
}

async function fetchNodes(): Promise<NodeEntry[]> {
  if (nodesRoute === "nodes") {
    const r = await api("/api/nodes");
    if (r.status === 404) nodesRoute = "stats"; // an older gateway: one node, from /api/stats
    else {
      if (!r.ok) throw new Error(`/api/nodes: HTTP ${r.status}`);
      const j = await r.json();
      return j.nodes as NodeEntry[];
    }
  }
  const r = await api("/api/stats");
  if (!r.ok) throw new Error(`/api/stats: HTTP ${r.status}`);
  const stats = (await r.json()) as Stats;
  return [{ node: stats.broker?.node_id || "this node", self: true, age_ms: 0, stats }];
}

async function fetchMetrics(): Promise<MetricsView | null> {
  const r = await api("/metrics", {}, false);
  if (!r.ok) return null;
  return viewOf(parseProm(await r.text()));
}

function cell(tr: HTMLTableRowElement, text: string, title?: string): HTMLTableCellElement {
  const td = tr.insertCell();
  td.textContent = text;
  if (title) td.title = title;
  return td;
}

function render(nodes: NodeEntry[], m: MetricsView | null, t: number): void {
  const sum = (f: (s: Stats) => number) => nodes.reduce((a, n) => a + (f(n.stats) || 0), 0);
  const self = nodes.find((n) => n.self) ?? nodes[0];
  $("node-label").textContent = self ? `node ${self.node}${nodes.length > 1 ? ` · cluster of ${nodes.length}` : ""}` : "";
  $("nodes-count").textContent = nodes.length > 1 ? `(${nodes.length} nodes)` : "";
  $("total-connections").textContent = fmt(sum((s) => s.connections));
  $("total-subscriptions").textContent = fmt(sum((s) => s.subscriptions));
  $("total-topics").textContent = fmt(nodes.length > 1 ? Math.max(...nodes.map((n) => n.stats.topics)) : sum((s) => s.topics));
  $("total-topics").title = nodes.length > 1 ? "largest per-node count (nodes share topics)" : "";
  $("total-pub-rate").textContent = fmtRate(nodes.length > 1 ? Math.max(...nodes.map((n) => n.stats.rates?.published_per_s ?? 0)) : sum((s) => s.rates?.published_per_s ?? 0));
  $("total-deliv-rate").textContent = fmtRate(sum((s) => s.rates?.delivered_per_s ?? 0));
  if (self) {
    const b = self.stats.broker;
    $("broker").textContent = b ? `${b.kind ?? "?"}${b.kind === "nats" ? (b.connected ? " ✓" : " ✗") : ""}` : "–";
    $("broker").title = b ? JSON.stringify(b) : "";
    $("uptime").textContent = uptime(self.stats.uptime_s);
  }

  // per-interval latency percentiles and counters from /metrics
  let p50: number | null = null, p90: number | null = null, p99: number | null = null;
  if (m) {
    if (prevMetrics) {
      p50 = quantile(prevMetrics.buckets, m.buckets, 0.5);
      p90 = quantile(prevMetrics.buckets, m.buckets, 0.9);
      p99 = quantile(prevMetrics.buckets, m.buckets, 0.99);
    }
    const ms = (v: number | null) => (v === null ? "–" : v * 1000 >= 10 ? (v * 1000).toFixed(0) : (v * 1000).toFixed(2));
    $("latency").textContent = prevMetrics ? `${ms(p50)} / ${ms(p90)} / ${ms(p99)} ms` : "…";
    $("latency").title = "from herald_delivery_latency_seconds bucket deltas over the last interval";
    const dd = prevMetrics ? m.dropsSlow - prevMetrics.dropsSlow : 0;
    $("drops").textContent = fmt(m.dropsSlow) + (dd > 0 ? ` (+${fmt(dd)})` : "");
    $("feeds").textContent = fmt(m.feeds);
    const tb = ($("closes-table") as HTMLTableElement).tBodies[0];
    tb.replaceChildren();
    const codes = [...m.closes.keys()].sort();
    for (const code of codes) {
      const tr = tb.insertRow();
      tr.dataset.code = code;
      cell(tr, code);
      cell(tr, CLOSE_MEANING[code] ?? "").className = "l";
      cell(tr, fmt(m.closes.get(code)));
      const d = prevMetrics ? (m.closes.get(code) ?? 0) - (prevMetrics.closes.get(code) ?? 0) : 0;
      cell(tr, d > 0 ? `+${fmt(d)}` : "");
    }
    if (!codes.length) cell(tb.insertRow(), "no session closed yet").colSpan = 4;
    prevMetrics = m;
  }

  // nodes table
  const ntb = ($("nodes-table") as HTMLTableElement).tBodies[0];
  ntb.replaceChildren();
  for (const n of nodes) {
    const tr = ntb.insertRow();
    tr.dataset.node = n.node;
    cell(tr, n.node + (n.self ? " (this)" : ""));
    cell(tr, n.self ? "" : `${(n.age_ms / 1000).toFixed(1)} s`, "age of this node's last report");
    cell(tr, fmt(n.stats.connections));
    cell(tr, fmt(n.stats.subscriptions));
    cell(tr, fmt(n.stats.topics));
    cell(tr, fmtRate(n.stats.rates?.published_per_s));
    cell(tr, fmtRate(n.stats.rates?.delivered_per_s));
    const b = n.stats.broker;
    cell(tr, b ? `${b.kind ?? ""}${b.kind === "nats" ? (b.connected ? " up" : " DOWN") : ""}` : "–");
    cell(tr, n.stats.draining ? "draining" : "serving");
  }

  // shards table, with per-shard rates from counter deltas
  const stb = ($("shards-table") as HTMLTableElement).tBodies[0];
  stb.replaceChildren();
  const nextCounters = new Map<string, { t: number; delivered: number; published: number }>();
  const shardRates = new Map<string, number | null>();
  for (const n of nodes) {
    for (const s of n.stats.shards ?? []) {
      const key = nodes.length > 1 ? `${n.node}/${s.shard}` : `shard ${s.shard}`;
      const prev = prevShardCounters.get(key);
      const dt = prev ? (t - prev.t) / 1000 : 0;
      const dRate = prev && dt > 0.2 ? Math.max(0, s.delivered - prev.delivered) / dt : null;
      const pRate = prev && dt > 0.2 ? Math.max(0, s.published - prev.published) / dt : null;
      nextCounters.set(key, { t, delivered: s.delivered, published: s.published });
      shardRates.set(key, dRate);
      const tr = stb.insertRow();
      tr.dataset.shard = key;
      cell(tr, key);
      cell(tr, fmt(s.connections));
      cell(tr, fmt(s.subscriptions));
      cell(tr, fmt(s.topics));
      cell(tr, fmt(s.local_topics));
      cell(tr, fmtRate(pRate));
      cell(tr, fmtRate(dRate));
    }
  }
  prevShardCounters = nextCounters;

  // samples and charts
  const pt: Point = { t, nodes: new Map(), shards: shardRates, p50, p90, p99 };
  for (const n of nodes) {
    pt.nodes.set(n.node, {
      conns: n.stats.connections,
      pub: n.stats.rates?.published_per_s ?? null,
      deliv: n.stats.rates?.delivered_per_s ?? null,
    });
  }
  samples.push(pt);
  while (samples.length && samples[0].t < t - WINDOW_MS - 5000) samples.shift();
  draw(t);
}

function uptime(s: number | undefined): string {
  if (s === undefined) return "–";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s` : `${Math.floor(s)}s`;
}

function draw(now: number): void {
  const nodeIds = [...new Set(samples.flatMap((p) => [...p.nodes.keys()]))];
  const multi = nodeIds.length > 1;
  const conns: Series[] = nodeIds.map((id, i) => ({
    label: multi ? id : "connections",
    color: PALETTE[i % PALETTE.length],
    points: samples.map((p) => [p.t, p.nodes.get(id)?.conns ?? null]),
  }));
  timeChart($("chart-connections") as HTMLCanvasElement, conns, now, WINDOW_MS);

  const rates: Series[] = [];
  nodeIds.forEach((id, i) => {
    const c = PALETTE[(i * 2) % PALETTE.length];
    rates.push({ label: multi ? `${id} deliv/s` : "deliveries/s", color: c, points: samples.map((p) => [p.t, p.nodes.get(id)?.deliv ?? null]) });
    rates.push({ label: multi ? `${id} pub/s` : "publications/s", color: PALETTE[(i * 2 + 1) % PALETTE.length], dash: true, points: samples.map((p) => [p.t, p.nodes.get(id)?.pub ?? null]) });
  });
  timeChart($("chart-rates") as HTMLCanvasElement, rates, now, WINDOW_MS);

  const toMs = (v: number | null) => (v === null ? null : v * 1000);
  timeChart($("chart-latency") as HTMLCanvasElement, [
    { label: "p50", color: PALETTE[1], points: samples.map((p) => [p.t, toMs(p.p50)]) },
    { label: "p90", color: PALETTE[2], points: samples.map((p) => [p.t, toMs(p.p90)]) },
    { label: "p99", color: PALETTE[6], points: samples.map((p) => [p.t, toMs(p.p99)]) },
  ], now, WINDOW_MS);

  const shardIds = [...new Set(samples.flatMap((p) => [...p.shards.keys()]))];
  timeChart($("chart-shards") as HTMLCanvasElement, shardIds.map((id, i) => ({
    label: id,
    color: PALETTE[i % PALETTE.length],
    points: samples.map((p) => [p.t, p.shards.has(id) ? p.shards.get(id)! : null]),
  })), now, WINDOW_MS);
}

// ---------- polling ----------

let timer: ReturnType<typeof setTimeout> | null = null;
let polling = false;
let failures = 0;

function stopPolling(): void {
  polling = false;
  if (timer) clearTimeout(timer);
  timer = null;
}
function startPolling(): void {
  stopPolling();
  polling = true;
  samples.length = 0;
  prevMetrics = null;
  prevShardCounters = new Map();
  void tick();
}

async function tick(): Promise<void> {
  if (!polling) return;
  const started = Date.now();
  try {
    const [nodes, m] = await Promise.all([fetchNodes(), fetchMetrics().catch(() => null)]);
    if (!polling) return;
    showMain();
    render(nodes, m, Date.now());
    failures = 0;
    setStatus(`live · ${new Date().toLocaleTimeString("en-GB")}`, "ok");
  } catch (e) {
    if (e instanceof Unauthorized) {
      showLogin("The gateway refused this API key (401). Enter a key from its api.keys.");
      return;
    }
    failures++;
    setStatus(`gateway unreachable (${failures})`, "bad");
    samples.push({ t: Date.now(), nodes: new Map(), shards: new Map(), p50: null, p90: null, p99: null });
    prevMetrics = null;
    if (!$("main").hidden) draw(Date.now());
  }
  if (polling) timer = setTimeout(tick, Math.max(50, POLL_MS - (Date.now() - started)));
}

// ---------- forms ----------

function result(el: HTMLElement, ok: boolean, text: string): void {
  el.className = ok ? "ok" : "bad";
  el.textContent = text;
}

async function errorText(r: Response): Promise<string> {
  try {
    const j = await r.json();
    if (j && typeof j.error === "string") return j.error;
  } catch { /* not JSON */ }
  return r.statusText;
}

$("publish-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("pub-result");
  const topic = ($("pub-topic") as HTMLInputElement).value.trim();
  const payload = ($("pub-payload") as HTMLTextAreaElement).value;
  out.className = "";
  out.textContent = "publishing…";
  try {
    const r = await api(`/api/publish/${encodeURIComponent(topic)}`, { method: "POST", body: new TextEncoder().encode(payload) });
    if (r.status === 202) {
      const j = await r.json();
      result(out, true, `published to ${topic}: seq ${j.seq} (${new TextEncoder().encode(payload).length} bytes)`);
    } else result(out, false, `HTTP ${r.status}: ${await errorText(r)}`);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The gateway refused this API key (401). Enter a key from its api.keys.");
    result(out, false, `failed: ${(e as Error).message}`);
  }
});

$("disconnect-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("dc-result");
  const user = ($("dc-user") as HTMLInputElement).value.trim();
  out.className = "";
  out.textContent = "disconnecting…";
  try {
    const r = await api("/api/disconnect", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }) });
    if (r.ok) {
      const j = await r.json();
      result(out, true, `${user}: ${j.closed} session${j.closed === 1 ? "" : "s"} closed (4003)`);
    } else result(out, false, `HTTP ${r.status}: ${await errorText(r)}`);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The gateway refused this API key (401). Enter a key from its api.keys.");
    result(out, false, `failed: ${(e as Error).message}`);
  }
});

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("key-input") as HTMLInputElement;
  const key = input.value.trim();
  if (!key) return;
  try { sessionStorage.setItem(KEY_STORE, key); } catch { /* ignore */ }
  input.value = "";
  $("key-error").textContent = "";
  setStatus("connecting…", "");
  startPolling();
});

$("change-key").addEventListener("click", () => showLogin(""));

window.addEventListener("resize", () => { if (!$("main").hidden && samples.length) draw(Date.now()); });

takeKeyFromFragment();
if (apiKey()) startPolling();
else showLogin("");
