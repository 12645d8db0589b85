// Small canvas charts shared by the demo page and the admin UI (no library).

export interface Series {
  label: string;
  color: string;
  /** [time ms, value]; value null = no sample (the line breaks). */
  points: Array<[number, number | null]>;
  dash?: boolean;
}

export const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#f85149", "#8b949e"];

/** Sizes the canvas backing store to its CSS box; returns the 2D context in CSS pixels. */
export function fit(canvas: HTMLCanvasElement): { ctx: CanvasRenderingContext2D; w: number; h: number } {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  const bw = Math.round(w * dpr);
  const bh = Math.round(h * dpr);
  if (canvas.width !== bw || canvas.height !== bh) {
    canvas.width = bw;
    canvas.height = bh;
  }
  const ctx = canvas.getContext("2d")!;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

/** Axis ticks from 0: a step of 1, 2 or 5 times a power of ten, at most ~5 steps up to the top. */
export function niceAxis(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

export function compact(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1).replace(/\.0$/, "");
  return String(Number(v.toPrecision(2)));
}

/** A time-series line chart over the last windowMs before now, y from 0. */
export function timeChart(canvas: HTMLCanvasElement, series: Series[], now: number, windowMs: number): void {
  const { ctx, w, h } = fit(canvas);
  const padL = 40, padR = 8, padT = 18, padB = 16;
  const pw = w - padL - padR, ph = h - padT - padB;
  let max = 0;
  for (const s of series) for (const [t, v] of s.points) if (v !== null && t >= now - windowMs && v > max) max = v;
  const { top, step } = niceAxis(max);
  const x = (t: number) => padL + ((t - (now - windowMs)) / windowMs) * pw;
  const y = (v: number) => padT + ph - (v / top) * ph;

  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = "#26313d";
  ctx.fillStyle = "#8595a6";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i * step <= top + step / 2; i++) {
    const v = i * step;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(padL, yy);
    ctx.lineTo(w - padR, yy);
    ctx.stroke();
    ctx.fillText(compact(v), padL - 4, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const minutes = Math.round(windowMs / 60000);
  for (let m = 0; m <= minutes; m++) {
    const t = now - m * 60000;
    ctx.fillText(m === 0 ? "now" : `-${m}m`, Math.min(Math.max(x(t), padL + 10), w - padR - 10), h - padB + 3);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(padL, padT - 1, pw, ph + 2);
  ctx.clip();
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash(s.dash ? [4, 3] : []);
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null) { pen = false; continue; }
      if (pen) ctx.lineTo(x(t), y(v));
      else { ctx.moveTo(x(t), y(v)); pen = true; }
    }
    ctx.stroke();
  }
  ctx.restore();
  ctx.setLineDash([]);

  // legend
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  let lx = padL;
  for (const s of series) {
    const last = [...s.points].reverse().find((p) => p[1] !== null);
    const text = `${s.label}${last ? " " + compact(last[1] as number) : ""}`;
    ctx.fillStyle = s.color;
    ctx.fillRect(lx, 6, 8, 3);
    ctx.fillStyle = "#c9d1d9";
    ctx.fillText(text, lx + 11, 8);
    lx += ctx.measureText(text).width + 24;
    if (lx > w - 40) break;
  }
}

/** A sparkline of the given values, scaled to their own min/max. */
export function sparkline(canvas: HTMLCanvasElement, values: number[], color: string): void {
  const { ctx, w, h } = fit(canvas);
  if (values.length < 2) return;
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const span = hi - lo || Math.abs(hi) * 1e-6 || 1;
  const n = values.length;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  ctx.beginPath();
  values.forEach((v, i) => {
    const xx = 1 + (i / (n - 1)) * (w - 2);
    const yy = 2 + (1 - (v - lo) / span) * (h - 4);
    if (i === 0) ctx.moveTo(xx, yy);
    else ctx.lineTo(xx, yy);
  });
  ctx.stroke();
}
