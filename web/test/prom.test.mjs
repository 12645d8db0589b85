// Unit tests of the admin UI's Prometheus parsing and per-interval quantiles.
import { test } from "node:test";
import assert from "node:assert/strict";
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const out = await build({
  entryPoints: [fileURLToPath(new URL("../shared/prom.ts", import.meta.url))],
  bundle: true, format: "esm", write: false, platform: "neutral", logLevel: "silent",
});
const { parseProm, quantile } = await import("data:text/javascript;base64," + Buffer.from(out.outputFiles[0].text).toString("base64"));

const text = `# HELP herald_delivery_latency_seconds x
# TYPE herald_delivery_latency_seconds histogram
herald_delivery_latency_seconds_bucket{le="0.001"} 10
herald_delivery_latency_seconds_bucket{le="0.01"} 90
herald_delivery_latency_seconds_bucket{le="0.1"} 100
herald_delivery_latency_seconds_bucket{le="+Inf"} 100
herald_delivery_latency_seconds_sum 0.5
herald_delivery_latency_seconds_count 100
herald_closes_total{code="4008"} 3
herald_api_requests_total{route="publish",status="202"} 7
herald_ingest_feeds 1
`;
const buckets = (samples) => new Map(samples.filter((s) => s.name.endsWith("_bucket")).map((s) => [s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), s.value]));

test("parses names, labels and values", () => {
  const s = parseProm(text);
  assert.equal(s.length, 9);
  assert.deepEqual(s.find((x) => x.name === "herald_closes_total"), { name: "herald_closes_total", labels: { code: "4008" }, value: 3 });
  assert.deepEqual(s.find((x) => x.name === "herald_api_requests_total").labels, { route: "publish", status: "202" });
  assert.equal(s.find((x) => x.name === "herald_ingest_feeds").value, 1);
});

test("quantiles interpolate within a bucket", () => {
  const cur = buckets(parseProm(text));
  assert.equal(quantile(null, cur, 0.1), 0.001);
  assert.ok(Math.abs(quantile(null, cur, 0.5) - (0.001 + 0.009 * 0.5)) < 1e-12);
  assert.ok(Math.abs(quantile(null, cur, 0.95) - 0.055) < 1e-12);
});

test("quantiles over an interval use bucket deltas; none when nothing was observed", () => {
  const prev = new Map([[0.001, 10], [0.01, 90], [0.1, 100], [Infinity, 100]]);
  const cur = new Map([[0.001, 10], [0.01, 90], [0.1, 200], [Infinity, 200]]);
  // the interval's 100 observations all fell in (0.01, 0.1]
  assert.ok(Math.abs(quantile(prev, cur, 0.5) - 0.055) < 1e-12);
  assert.equal(quantile(cur, cur, 0.5), null);
  // beyond the last finite bucket: its bound is all that is known
  const inf = new Map([[0.001, 10], [0.01, 90], [0.1, 200], [Infinity, 300]]);
  assert.equal(quantile(cur, inf, 0.99), 0.1);
  // a restart (counters went down) counts from zero
  assert.equal(quantile(cur, new Map([[0.001, 4], [0.01, 4], [0.1, 4], [Infinity, 4]]), 0.5), 0.001 / 2);
});
