//! `--report DIR`: a self-contained HTML page (inline SVG, no script, no
//! network) with the latency percentile distribution and delivered
//! messages per second over time, plus the JSON summary next to it.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::series::Series;

/// One curve of the latency plot: (quantile in [0, 1], latency ms) points.
pub struct Curve {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// The HDR percentile distribution of a histogram (µs values), as in
/// HdrHistogram's `outputPercentileDistribution`: 5 steps per halving of
/// the distance to 100%, values in ms.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
            )
        })
        .collect();
    pts.dedup_by(|b, a| a.0 == b.0);
    pts
}

/// The report's rows: (name, value) pairs shown in a table.
pub struct Facts(pub Vec<(String, String)>);

pub struct Page<'a> {
    pub title: String,
    pub facts: Facts,
    pub curves: Vec<Curve>,
    pub delivered: &'a Series,
    pub published: &'a Series,
    pub summary_json: String,
}

/// Writes `dir/report.html` and `dir/summary.json`.
pub fn write(dir: &Path, page: &Page<'_>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--report {}: {e}", dir.display()))?;
    let json = dir.join("summary.json");
    std::fs::write(&json, format!("{}\n", page.summary_json))
        .map_err(|e| format!("{}: {e}", json.display()))?;
    let html = dir.join("report.html");
    std::fs::write(&html, render(page)).map_err(|e| format!("{}: {e}", html.display()))?;
    Ok(())
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

pub fn render(page: &Page<'_>) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}}\
         h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em}}\
         table{{border-collapse:collapse}} td{{padding:2px 12px 2px 0;vertical-align:top}}\
         td:first-child{{color:#666;white-space:nowrap}}\
         svg{{background:#fff;border:1px solid #ddd}} .axis{{stroke:#888}} .grid{{stroke:#eee}}\
         text{{font:11px system-ui,sans-serif;fill:#444}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}\
         </style></head><body>\n<h1>{t}</h1>\n<table>\n",
        t = esc(&page.title)
    );
    for (k, v) in &page.facts.0 {
        let _ = writeln!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    o.push_str("</table>\n<h2>Publish → receive latency by percentile</h2>\n");
    o.push_str(&latency_svg(&page.curves));
    o.push_str("\n<h2>Throughput over time</h2>\n");
    o.push_str(&throughput_svg(page.delivered, page.published));
    let _ = write!(
        o,
        "\n<h2>Summary (summary.json)</h2>\n<pre>{}</pre>\n</body></html>\n",
        esc(&page.summary_json)
    );
    o
}

const W: f64 = 900.0;
const H: f64 = 360.0;
const ML: f64 = 70.0;
const MR: f64 = 70.0;
const MT: f64 = 20.0;
const MB: f64 = 45.0;

/// A round step giving about `n` ticks up to `max`.
pub fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `1234567` → `1.23M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.3}k", v / 1e3)
    } else if a >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
    .replace(".000", "")
}

pub fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1000.0 {
        si(v)
    } else if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = (-step.log10().floor()) as usize;
        format!("{v:.d$}")
    }
}

fn svg_open(o: &mut String) {
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">"
    );
}

fn empty_svg(msg: &str) -> String {
    let mut o = String::new();
    svg_open(&mut o);
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text></svg>",
        W / 2.0,
        H / 2.0,
        esc(msg)
    );
    o
}

/// x = log10(1 / (1 − q)): 0 at 0%, 1 at 90%, 2 at 99%, ...
fn qx(q: f64, xmax: f64) -> f64 {
    if q >= 1.0 {
        xmax
    } else {
        (1.0 / (1.0 - q)).log10().min(xmax)
    }
}

pub fn latency_svg(curves: &[Curve]) -> String {
    let pts: Vec<&(f64, f64)> = curves.iter().flat_map(|c| &c.points).collect();
    if pts.is_empty() {
        return empty_svg("no deliveries");
    }
    // The x range ends one decade past the last finite quantile (max).
    let last_q = pts
        .iter()
        .map(|p| p.0)
        .filter(|&q| q < 1.0)
        .fold(0.0, f64::max);
    let xmax = (qx(last_q, 9.0).ceil() + 1.0).clamp(3.0, 7.0);
    let ymax_raw = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let ystep = nice_step(ymax_raw, 5.0);
    let ymax = ((ymax_raw / ystep).ceil() * ystep).max(ystep);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let sx = |x: f64| ML + x / xmax * pw;
    let sy = |y: f64| MT + ph - y / ymax * ph;
    let mut o = String::new();
    svg_open(&mut o);
    // Grid and axes.
    let mut y = 0.0;
    while y <= ymax + ystep / 2.0 {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{ML}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 6.0,
            sy(y) + 4.0,
            fmt_tick(y, ystep),
            py = sy(y)
        );
        y += ystep;
    }
    let labels = [
        (0.0, "0%"),
        (2f64.log10(), "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
        (6.0, "99.9999%"),
        (7.0, "99.99999%"),
    ];
    for (x, l) in labels.iter().filter(|(x, _)| *x <= xmax) {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{MT}\" y2=\"{}\"/>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{l}</text>",
            MT + ph,
            MT + ph + 16.0,
            px = sx(*x)
        );
    }
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{ML}\" x2=\"{ML}\" y1=\"{MT}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{ML}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\"/>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">percentile (log scale of 1/(1−p))</text>\
         <text transform=\"translate(16,{cy}) rotate(-90)\" text-anchor=\"middle\">latency, ms</text>",
        H - 6.0,
        b = MT + ph,
        r = ML + pw,
        cx = ML + pw / 2.0,
        cy = MT + ph / 2.0
    );
    // Curves: one point per percentile of the distribution.
    for (i, c) in curves.iter().enumerate() {
        if c.points.is_empty() {
            continue;
        }
        let d = c
            .points
            .iter()
            .map(|&(q, ms)| format!("{:.1},{:.1}", sx(qx(q, xmax)), sy(ms)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{d}\"/>\
             <rect x=\"{lx}\" y=\"{ly}\" width=\"12\" height=\"3\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            c.color,
            c.color,
            ML + 30.0,
            MT + 16.0 + 16.0 * i as f64,
            esc(&c.label),
            lx = ML + 14.0,
            ly = MT + 10.0 + 16.0 * i as f64,
        );
    }
    o.push_str("</svg>");
    o
}

pub fn throughput_svg(delivered: &Series, published: &Series) -> String {
    if delivered.counts.is_empty() && published.counts.is_empty() {
        return empty_svg("no deliveries");
    }
    let bms = |s: &Series| s.bucket_ms as f64;
    let starts = [delivered, published]
        .iter()
        .filter(|s| !s.counts.is_empty())
        .map(|s| s.bucket_start_ms(0))
        .min()
        .unwrap_or(0);
    let ends = [delivered, published]
        .iter()
        .filter(|s| !s.counts.is_empty())
        .map(|s| s.bucket_start_ms(s.counts.len()))
        .max()
        .unwrap_or(starts + 1000);
    let span_s = ((ends - starts) as f64 / 1000.0).max(0.001);
    let dmax_raw = delivered.per_second().fold(0.0, f64::max);
    let pmax_raw = published.per_second().fold(0.0, f64::max);
    let dstep = nice_step(dmax_raw, 5.0);
    let dmax = ((dmax_raw / dstep).ceil() * dstep).max(dstep);
    let pstep = nice_step(pmax_raw, 5.0);
    let pmax = ((pmax_raw / pstep).ceil() * pstep).max(pstep);
    let xstep = nice_step(span_s, 10.0);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let sx = |ms: u64| ML + (ms.saturating_sub(starts)) as f64 / 1000.0 / span_s * pw;
    let sy = |v: f64, max: f64| MT + ph - v / max * ph;
    let mut o = String::new();
    svg_open(&mut o);
    let mut y = 0.0;
    while y <= dmax + dstep / 2.0 {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{ML}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 6.0,
            sy(y, dmax) + 4.0,
            si(y),
            py = sy(y, dmax)
        );
        y += dstep;
    }
    let mut p = 0.0;
    while p <= pmax + pstep / 2.0 && !published.counts.is_empty() {
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{:.1}\" fill=\"#c60\" style=\"fill:#c60\">{}</text>",
            ML + pw + 6.0,
            sy(p, pmax) + 4.0,
            si(p)
        );
        p += pstep;
    }
    let mut x = 0.0;
    while x <= span_s + 1e-9 {
        let px = ML + x / span_s * pw;
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{MT}\" y2=\"{}\"/>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            MT + ph,
            MT + ph + 16.0,
            fmt_tick(x, xstep)
        );
        x += xstep;
    }
    // Delivered: filled bars, one per bucket.
    let bw = bms(delivered) / 1000.0 / span_s * pw;
    for (i, v) in delivered.per_second().enumerate() {
        if v <= 0.0 {
            continue;
        }
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"#4a7fc1\" fill-opacity=\"0.75\"/>",
            sx(delivered.bucket_start_ms(i)),
            sy(v, dmax),
            (bw - 0.5).max(0.5),
            MT + ph - sy(v, dmax)
        );
    }
    // Published: a step line on the right-hand axis.
    if !published.counts.is_empty() {
        let mut d = String::new();
        for (i, v) in published.per_second().enumerate() {
            let (x0, x1) = (
                sx(published.bucket_start_ms(i)),
                sx(published.bucket_start_ms(i + 1)),
            );
            let py = sy(v, pmax);
            let _ = write!(d, "{x0:.1},{py:.1} {x1:.1},{py:.1} ");
        }
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"#c60\" stroke-width=\"1.5\" points=\"{}\"/>",
            d.trim_end()
        );
    }
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{ML}\" x2=\"{ML}\" y1=\"{MT}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{ML}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\"/>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">seconds since the first bucket ({} ms buckets)</text>\
         <text transform=\"translate(14,{cy}) rotate(-90)\" text-anchor=\"middle\">delivered msgs/s</text>\
         <text transform=\"translate({},{cy}) rotate(90)\" text-anchor=\"middle\" style=\"fill:#c60\">published msgs/s</text>\
         <rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"8\" fill=\"#4a7fc1\"/><text x=\"{}\" y=\"{}\">delivered</text>\
         <rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#c60\"/><text x=\"{}\" y=\"{}\">published</text>",
        H - 6.0,
        delivered.bucket_ms.max(published.bucket_ms),
        W - 12.0,
        MT + 8.0,
        ML + 30.0,
        MT + 16.0,
        MT + 27.0,
        ML + 30.0,
        MT + 32.0,
        b = MT + ph,
        r = ML + pw,
        cx = ML + pw / 2.0,
        cy = MT + ph / 2.0,
        lx = ML + 14.0,
    );
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::new_histogram;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(95.0, 5.0), 20.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(si(1_500_000.0), "1.500M");
        assert_eq!(si(2_000.0), "2k");
        assert_eq!(si(12.0), "12");
    }

    #[test]
    fn percentiles_reach_the_max() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.saturating_record(v);
        }
        let pts = percentile_points(&h);
        assert!(pts.len() > 20);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let last = pts.last().expect("points");
        assert_eq!(last.0, 1.0);
        assert!((last.1 - 10.0).abs() < 0.02, "{last:?}");
    }

    #[test]
    fn page_is_self_contained() {
        let mut h = new_histogram();
        h.saturating_record(1500);
        h.saturating_record(2500);
        let mut d = Series::new(1000);
        d.add(2_000_000_000, 10);
        d.add(3_000_000_000, 20);
        let mut p = Series::new(1000);
        p.add(2_000_000_000, 1);
        let page = Page {
            title: "t <x>".into(),
            facts: Facts(vec![("a".into(), "b & c".into())]),
            curves: vec![Curve {
                label: "all".into(),
                color: "#000",
                points: percentile_points(&h),
            }],
            delivered: &d,
            published: &p,
            summary_json: "{\"k\":\"<v>\"}".into(),
        };
        let html = render(&page);
        assert!(html.contains("<svg") && html.contains("polyline") && html.contains("<rect"));
        assert!(html.contains("t &lt;x&gt;") && html.contains("b &amp; c"));
        assert!(html.contains("99.9%"));
        assert!(!html.contains("<script"));
        // The only URL is the SVG namespace: nothing is fetched.
        assert_eq!(
            html.matches("http").count(),
            html.matches("http://www.w3.org/2000/svg").count()
        );
        let empty = Series::new(1000);
        let none = Page {
            curves: Vec::new(),
            delivered: &empty,
            published: &empty,
            ..page
        };
        assert!(render(&none).contains("no deliveries"));
    }
}
