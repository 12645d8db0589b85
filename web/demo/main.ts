// herald live demo: one WebSocket (the TypeScript client of clients/ts),
// four tick topics, a 20 Hz game room and a chat. Tokens come from the
// gateway's /demo/token (120 s lifetime), so the page also shows refresh.
import { HeraldClient, type Publication as Pub, type Gap, type Subscribed, type StateEvent } from "../../clients/ts/src/index";
import { sparkline } from "../shared/chart";

const SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD"];
const ROOM = "demo.room.1";
const CHAT = "demo.chat";
const SPARK_POINTS = 90;
const BOT_COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf"];

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const utf8 = new TextDecoder();
const enc = new TextEncoder();
const clock = () => new Date().toLocaleTimeString("en-GB");

// ---------- event log ----------

function logEvent(text: string, cls: "" | "good" | "warn" | "bad" = ""): void {
  const ul = $("event-log");
  const li = document.createElement("li");
  if (cls) li.className = cls;
  const t = document.createElement("time");
  t.textContent = clock();
  li.append(t, text);
  ul.prepend(li);
  while (ul.children.length > 200) ul.lastElementChild!.remove();
}

// ---------- per-topic seq table ----------

const seqRows = new Map<string, HTMLTableRowElement>();
function showSeq(topic: string, seq: number, epoch?: string): void {
  let tr = seqRows.get(topic);
  if (!tr) {
    const tb = ($("seq-table") as HTMLTableElement).tBodies[0];
    tr = tb.insertRow();
    tr.dataset.topic = topic;
    tr.insertCell().textContent = topic;
    tr.insertCell().textContent = "–";
    tr.insertCell().textContent = "–";
    tr.cells[1].dataset.testid = `seq-${topic}`;
    seqRows.set(topic, tr);
  }
  tr.cells[1].textContent = String(seq);
  if (epoch !== undefined) {
    tr.cells[2].textContent = epoch;
    tr.cells[2].className = "mono dim";
  }
}

// ---------- quotes ----------

interface Quote { first: number | null; last: number | null; points: number[]; el: HTMLElement; dirty: boolean }
const quotes = new Map<string, Quote>();
for (const sym of SYMBOLS) {
  const el = document.createElement("div");
  el.className = "quote";
  el.dataset.symbol = sym;
  el.dataset.testid = `quote-${sym}`;
  el.innerHTML =
    `<span class="sym">${sym}</span><span class="seq" id="qseq-${sym}"></span>` +
    `<span class="price" id="price-${sym}" data-testid="price-${sym}">–</span>` +
    `<span class="chg" id="change-${sym}" data-testid="change-${sym}"></span>` +
    `<canvas id="spark-${sym}" data-testid="spark-${sym}"></canvas>`;
  $("quotes").append(el);
  quotes.set(sym, { first: null, last: null, points: [], el, dirty: false });
}

function decimals(p: number): number {
  return p >= 1000 ? 2 : p >= 10 ? 3 : 5;
}

function onTick(topic: string, seq: number, data: Uint8Array): void {
  let msg: { symbol?: string; price?: number };
  try { msg = JSON.parse(utf8.decode(data)); } catch { return; }
  const sym = msg.symbol ?? topic.slice(5);
  const q = quotes.get(sym);
  if (!q || typeof msg.price !== "number") return;
  const prev = q.last;
  q.last = msg.price;
  if (q.first === null) q.first = msg.price;
  q.points.push(msg.price);
  if (q.points.length > SPARK_POINTS) q.points.shift();
  const d = decimals(msg.price);
  $(`price-${sym}`).textContent = msg.price.toFixed(d);
  $(`qseq-${sym}`).textContent = `#${seq}`;
  const ch = msg.price - q.first;
  const pct = (ch / q.first) * 100;
  const chEl = $(`change-${sym}`);
  chEl.textContent = `${ch >= 0 ? "+" : ""}${ch.toFixed(d)} (${pct >= 0 ? "+" : ""}${pct.toFixed(3)}%)`;
  chEl.className = "chg " + (ch > 0 ? "up" : ch < 0 ? "down" : "");
  q.el.classList.toggle("flash-up", prev !== null && msg.price > prev);
  q.el.classList.toggle("flash-down", prev !== null && msg.price < prev);
  q.dirty = true;
}

// ---------- game room ----------

interface Player { id: string; x: number; y: number; score: number }
const trails = new Map<string, Array<[number, number]>>();
const roomTimes: number[] = [];
let lastRoom: { tick: number; ts_ms?: number; players: Player[] } | null = null;
let lastRoomAt = 0;
const roomDelays: number[] = [];

function onRoom(data: Uint8Array): void {
  let msg: { tick: number; ts_ms?: number; players: Player[] };
  try { msg = JSON.parse(utf8.decode(data)); } catch { return; }
  if (!msg || !Array.isArray(msg.players)) return;
  const now = performance.now();
  roomTimes.push(now);
  if (!firstRoomAt) firstRoomAt = now;
  while (roomTimes.length && roomTimes[0] < now - 2000) roomTimes.shift();
  lastRoom = msg;
  lastRoomAt = now;
  if (typeof msg.ts_ms === "number") {
    roomDelays.push(Date.now() - msg.ts_ms);
    if (roomDelays.length > 40) roomDelays.shift();
  }
  for (const p of msg.players) {
    let t = trails.get(p.id);
    if (!t) trails.set(p.id, (t = []));
    t.push([p.x, p.y]);
    if (t.length > 24) t.shift();
  }
  drawRoom();
  $("room-tick").textContent = String(msg.tick);
  const ul = $("room-scores");
  const sorted = [...msg.players].sort((a, b) => b.score - a.score || a.id.localeCompare(b.id));
  ul.replaceChildren(...sorted.map((p) => {
    const li = document.createElement("li");
    li.dataset.player = p.id;
    const name = document.createElement("span");
    const dot = document.createElement("i");
    dot.style.background = colorOf(p.id);
    name.append(dot, p.id);
    const s = document.createElement("b");
    s.textContent = String(p.score);
    li.append(name, s);
    return li;
  }));
}

const colorIdx = new Map<string, number>();
function colorOf(id: string): string {
  if (!colorIdx.has(id)) colorIdx.set(id, colorIdx.size);
  return BOT_COLORS[colorIdx.get(id)! % BOT_COLORS.length];
}

let firstRoomAt = 0;
/** Updates per second over the last 2 s (or since the first update, if sooner). */
function roomRate(): number {
  const now = performance.now();
  while (roomTimes.length && roomTimes[0] < now - 2000) roomTimes.shift();
  if (!firstRoomAt) return 0;
  const span = Math.min(2000, now - firstRoomAt);
  return span < 300 ? 0 : (roomTimes.length / span) * 1000;
}

function drawRoom(): void {
  const c = $("room") as HTMLCanvasElement;
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext("2d")!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#1d252f";
  ctx.lineWidth = 1;
  for (let i = 1; i < 8; i++) {
    const x = Math.round((w * i) / 8) + 0.5, y = Math.round((h * i) / 8) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
  }
  const pad = 12;
  const px = (x: number) => pad + x * (w - 2 * pad);
  const py = (y: number) => pad + y * (h - 2 * pad);
  for (const [id, t] of trails) {
    const col = colorOf(id);
    for (let i = 1; i < t.length; i++) {
      ctx.globalAlpha = (i / t.length) * 0.6;
      ctx.strokeStyle = col;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(px(t[i - 1][0]), py(t[i - 1][1]));
      ctx.lineTo(px(t[i][0]), py(t[i][1]));
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "center";
  for (const p of lastRoom?.players ?? []) {
    ctx.fillStyle = colorOf(p.id);
    ctx.beginPath();
    ctx.arc(px(p.x), py(p.y), 7, 0, Math.PI * 2);
    ctx.fill();
    ctx.fillStyle = "#d8dee6";
    ctx.fillText(`${p.id} · ${p.score}`, px(p.x), py(p.y) - 11);
  }
}

// ---------- chat ----------

function onChat(seq: number, data: Uint8Array): void {
  const ul = $("chat-log");
  const li = document.createElement("li");
  li.dataset.seq = String(seq);
  const t = document.createElement("span");
  t.className = "dim mono";
  t.textContent = `#${seq} `;
  li.append(t, utf8.decode(data));
  ul.append(li);
  while (ul.children.length > 100) ul.firstElementChild!.remove();
  ul.scrollTop = ul.scrollHeight;
}

// ---------- the connection ----------

let me = "";
let tokenExp = 0;
async function getToken(): Promise<string> {
  const r = await fetch("/demo/token", { cache: "no-store" });
  if (!r.ok) throw new Error(`/demo/token: HTTP ${r.status}`);
  const j = (await r.json()) as { token: string; exp: number };
  const sub = subOf(j.token);
  if (sub && sub !== me) {
    me = sub;
    $("user").textContent = `you are ${sub}`;
  }
  if (tokenExp) logEvent(`token refreshed (valid until ${new Date(j.exp * 1000).toLocaleTimeString("en-GB")})`);
  tokenExp = j.exp;
  return j.token;
}

function subOf(jwt: string): string | null {
  try {
    const b = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b + "===".slice((b.length + 3) % 4))).sub ?? null;
  } catch {
    return null;
  }
}

const client = new HeraldClient({ url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, getToken });

let countdown: ReturnType<typeof setInterval> | null = null;
let wasOpen = false;
let reconnecting = false;
client.on("state", (s: StateEvent) => {
  const pill = $("conn-state");
  pill.dataset.state = s.state;
  if (countdown) { clearInterval(countdown); countdown = null; }
  switch (s.state) {
    case "connecting":
      pill.textContent = "connecting";
      break;
    case "open":
      pill.textContent = "open";
      if (wasOpen) logEvent("reconnected", "good");
      else logEvent("connected", "good");
      wasOpen = true;
      reconnecting = false;
      break;
    case "reconnecting": {
      const until = Date.now() + (s.delayMs ?? 0);
      const why = s.reason ?? (s.code ? `close ${s.code}` : "connection lost");
      const show = () => {
        const left = Math.max(0, until - Date.now());
        pill.textContent = left > 0 ? `reconnecting in ${(left / 1000).toFixed(1)} s` : "reconnecting…";
      };
      show();
      countdown = setInterval(show, 100);
      if (!reconnecting) logEvent(`connection lost (${why}); reconnecting`, "warn");
      reconnecting = true;
      break;
    }
    case "closed":
      pill.textContent = `closed${s.reason ? ` (${s.reason})` : ""}`;
      logEvent(`closed: ${s.reason ?? "?"}`, "bad");
      break;
  }
});


function onGap(g: Gap): void {
  if (g.topic === ROOM) trails.clear(); // the room started over: old positions would draw a jump
  const where = `${g.topic}: `;
  const span = ` (had #${g.lastSeq}, goes on from #${g.seq})`;
  switch (g.reason) {
    case "epoch_changed":
      logEvent(`${where}epoch changed: data may be missing${span}`, "warn");
      break;
    case "not_recovered":
      logEvent(`${where}not recovered: data may be missing${span}`, "warn");
      break;
    case "seq_jump":
      logEvent(`${where}seq jump: data missing${span}`, "warn");
      break;
    default:
      logEvent(`${where}gap (${g.reason})${span}`, "warn");
  }
}

function track(topic: string, handler: (p: Pub) => void): void {
  const sub = client.subscribe(topic, (p: Pub) => {
    handler(p);
    showSeq(topic, p.seq, p.epoch);
  });
  sub.on("gap", onGap);
  let first = true;
  const onSubscribed = (r: Subscribed) => {
    showSeq(topic, r.seq, r.epoch);
    if (!first && r.recovered) logEvent(`reconnected; ${topic} recovered`, "good");
    first = false;
  };
  // "subscribed" comes with every REPLY to SUBSCRIBE: the first one and one after each reconnect
  sub.on("subscribed", onSubscribed);
  sub.ready.catch((e: Error) => logEvent(`${topic}: subscribe failed: ${e.message}`, "bad"));
}

for (const sym of SYMBOLS) track(`demo.${sym}`, (p) => onTick(p.topic, p.seq, p.data));
track(ROOM, (p) => onRoom(p.data));
track(CHAT, (p) => onChat(p.seq, p.data));

$("chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("chat-input") as HTMLInputElement;
  const text = input.value.trim();
  if (!text) return;
  try {
    await client.publish(CHAT, enc.encode(text));
    input.value = "";
  } catch (e) {
    logEvent(`chat: not sent (${(e as Error).message})`, "bad");
  }
});

// repaint sparklines and the room's rate at most 10 times a second
setInterval(() => {
  for (const [sym, q] of quotes) {
    if (!q.dirty) continue;
    q.dirty = false;
    const up = q.first !== null && q.last !== null && q.last >= q.first;
    sparkline($(`spark-${sym}`) as HTMLCanvasElement, q.points, up ? "#3fb950" : "#f85149");
  }
  const rate = roomRate();
  const rateEl = $("room-rate");
  rateEl.textContent = rate ? `${rate.toFixed(1)} Hz` : "–";
  rateEl.dataset.hz = rate.toFixed(2);
  $("room-age").textContent = lastRoomAt ? `${Math.round(performance.now() - lastRoomAt)} ms` : "–";
  if (roomDelays.length) {
    const sorted = [...roomDelays].sort((a, b) => a - b);
    $("room-delay").textContent = `${sorted[Math.floor(sorted.length / 2)]} ms`;
  }
}, 100);

window.addEventListener("resize", drawRoom);
client.connect();
