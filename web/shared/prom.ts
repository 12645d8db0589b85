// Prometheus text format: parsing, and quantiles from histogram bucket deltas.

export interface Sample { name: string; labels: Record<string, string>; value: number }
export function parseProm(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l: RegExpExecArray | null;
      while ((l = re.exec(m[2]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    const v = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    out.push({ name: m[1], labels, value: v });
  }
  return out;
}

/** Quantile q of the observations between two snapshots of a cumulative histogram (linear within a bucket, as Prometheus does). */
export function quantile(prev: Map<number, number> | null, cur: Map<number, number>, q: number): number | null {
  const les = [...cur.keys()].sort((a, b) => a - b);
  // a counter that went down means the process restarted: count from zero
  const before = prev;
  if (before && les.some((le) => (cur.get(le) ?? 0) < (before.get(le) ?? 0))) prev = null;
  const d = les.map((le) => (cur.get(le) ?? 0) - (prev?.get(le) ?? 0));
  const total = d[d.length - 1];
  if (!total) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (d[i] >= rank) {
      const lo = i === 0 ? 0 : les[i - 1];
      const hi = les[i];
      if (hi === Infinity) return lo; // beyond the last finite bucket: its bound is all we know
      const below = i === 0 ? 0 : d[i - 1];
      const inBucket = d[i] - below;
      return inBucket > 0 ? lo + ((hi - lo) * (rank - below)) / inBucket : hi;
    }
  }
  return null;
}
