//! The soak's `report.html`: one self-contained page (inline SVG drawn
//! here, no script, nothing fetched) with the verdict, the run's
//! parameters and RSS, descriptors, latency, throughput and CPU over time.
//! The second and last quarters (the ones the verdict compares) are shaded,
//! feed restarts are marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::html::{esc, fmt_tick, nice_step};
use crate::soak::{Check, Sample, Verdict};

pub struct Report<'a> {
    pub title: String,
    pub params: &'a BTreeMap<String, String>,
    pub notes: &'a str,
    pub verdict: &'a Verdict,
    pub samples: &'a [Sample],
    pub duration_s: f64,
    pub restarts_s: &'a [f64],
    pub summary_json: &'a str,
}

struct Line<'a> {
    label: &'a str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 900.0;
const H: f64 = 260.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 14.0;
const MB: f64 = 36.0;

/// A time-series chart: x = seconds since the start (0 .. `span`).
fn chart(lines: &[Line<'_>], span: f64, y_unit: &str, restarts: &[f64]) -> String {
    let ymax_raw = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ystep = nice_step(ymax_raw, 5.0);
    let ymax = ((ymax_raw / ystep).ceil() * ystep).max(ystep);
    let span = span.max(1.0);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let sx = |t: f64| ML + t.clamp(0.0, span) / span * pw;
    let sy = |v: f64| MT + ph - (v / ymax).clamp(0.0, 1.0) * ph;
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">"
    );
    // Quarters 2 and 4: the verdict compares them.
    for q in [1.0, 3.0] {
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{MT}\" width=\"{:.1}\" height=\"{ph}\" fill=\"#f3f6fb\"/>",
            sx(span * q / 4.0),
            pw / 4.0
        );
    }
    let mut y = 0.0;
    while y <= ymax + ystep / 2.0 {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{ML}\" x2=\"{:.1}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 6.0,
            sy(y) + 4.0,
            fmt_tick(y, ystep),
            py = sy(y)
        );
        y += ystep;
    }
    // Minutes, or seconds for runs of three minutes or less.
    let (unit, xu) = if span > 180.0 {
        ("minutes", 60.0)
    } else {
        ("seconds", 1.0)
    };
    let xstep = nice_step(span / xu, 8.0);
    let mut x = 0.0;
    while x <= span / xu + 1e-9 {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{MT}\" y2=\"{:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            MT + ph,
            MT + ph + 14.0,
            fmt_tick(x, xstep),
            px = sx(x * xu)
        );
        x += xstep;
    }
    let _ = write!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{unit}</text>\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>\
         <line class=\"axis\" x1=\"{ML}\" x2=\"{ML}\" y1=\"{MT}\" y2=\"{:.1}\"/>\
         <line class=\"axis\" x1=\"{ML}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        ML + pw / 2.0,
        H - 4.0,
        MT + ph / 2.0,
        MT + ph / 2.0,
        esc(y_unit),
        MT + ph,
        ML + pw,
        MT + ph,
        MT + ph
    );
    for &r in restarts {
        let _ = write!(
            o,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c33\">feed restart</text>",
            MT + ph,
            sx(r) + 4.0,
            MT + 12.0,
            px = sx(r)
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let mut d = String::new();
        let mut pen_up = true;
        for &(t, v) in &l.points {
            if !v.is_finite() {
                pen_up = true;
                continue;
            }
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if pen_up { "M" } else { "L" },
                sx(t),
                sy(v)
            );
            pen_up = false;
        }
        let _ = write!(
            o,
            "<path d=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{c}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            d.trim_end(),
            ML + pw - 150.0,
            MT + 8.0 + 15.0 * i as f64,
            ML + pw - 136.0,
            MT + 12.0 + 15.0 * i as f64,
            esc(l.label),
            c = l.color
        );
    }
    o.push_str("</svg>");
    o
}

fn series(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    samples.iter().map(|s| (s.t_s, f(s))).collect()
}

fn check_row(o: &mut String, name: &str, c: &Check) {
    let _ = writeln!(
        o,
        "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
        esc(name),
        if c.pass { "ok" } else { "bad" },
        if c.pass { "pass" } else { "FAIL" },
        esc(&c.detail)
    );
}

pub fn render(r: &Report<'_>) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}}\
         h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em}}\
         table{{border-collapse:collapse}} td{{padding:2px 12px 2px 0;vertical-align:top}}\
         td:first-child{{color:#666;white-space:nowrap}} .ok{{color:#070;font-weight:600}}\
         .bad{{color:#b00;font-weight:600}}\
         svg{{background:#fff;border:1px solid #ddd}} .axis{{stroke:#888}} .grid{{stroke:#eee}}\
         text{{font:11px system-ui,sans-serif;fill:#444}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px;max-height:30em}}\
         </style></head><body>\n<h1>{t}</h1>\n",
        t = esc(&r.title)
    );
    let _ = writeln!(
        o,
        "<p>Verdict: <span class=\"{}\">{}</span></p>\n<table>",
        if r.verdict.pass { "ok" } else { "bad" },
        if r.verdict.pass { "PASS" } else { "FAIL" }
    );
    check_row(&mut o, "RSS flat", &r.verdict.rss);
    check_row(&mut o, "descriptors flat", &r.verdict.fds);
    check_row(&mut o, "no unexpected error", &r.verdict.errors);
    check_row(&mut o, "p99 steady", &r.verdict.p99);
    check_row(&mut o, "faults exercised", &r.verdict.coverage);
    check_row(&mut o, "server", &r.verdict.server);
    o.push_str("</table>\n");
    if !r.notes.is_empty() {
        let _ = writeln!(o, "<p><b>Notes:</b> {}</p>", esc(r.notes));
    }
    o.push_str("<h2>Parameters</h2>\n<table>\n");
    for (k, v) in r.params {
        let _ = writeln!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    o.push_str(
        "</table>\n<p>Shaded: the second and the last quarter of the run, which the verdict \
         compares (the first is warm-up). Dashed red: feed restarts.</p>\n",
    );
    let s = r.samples;
    let span = r.duration_s.max(s.last().map_or(0.0, |x| x.t_s));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let charts: Vec<(&str, &str, Vec<Line<'_>>)> = vec![
        (
            "herald RSS",
            "MiB",
            vec![Line {
                label: "VmRSS",
                color: "#1f77b4",
                points: series(s, |x| mib(x.rss_bytes)),
            }],
        ),
        (
            "herald open file descriptors",
            "descriptors",
            vec![Line {
                label: "open fds",
                color: "#2ca02c",
                points: series(s, |x| x.fds as f64),
            }],
        ),
        (
            "Steady subscribers: publish → receive latency per interval",
            "ms",
            vec![
                Line {
                    label: "p99",
                    color: "#d62728",
                    points: series(s, |x| x.p99_ms),
                },
                Line {
                    label: "p50",
                    color: "#1f77b4",
                    points: series(s, |x| x.p50_ms),
                },
            ],
        ),
        (
            "Throughput",
            "per second",
            vec![
                Line {
                    label: "steady deliveries/s",
                    color: "#1f77b4",
                    points: series(s, |x| x.deliveries_per_s),
                },
                Line {
                    label: "published/s",
                    color: "#ff7f0e",
                    points: series(s, |x| x.published_per_s),
                },
            ],
        ),
        (
            "CPU",
            "%",
            vec![
                Line {
                    label: "herald (% of a core)",
                    color: "#9467bd",
                    points: series(s, |x| x.herald_cpu_pct),
                },
                Line {
                    label: "herald-load (% of a core)",
                    color: "#e377c2",
                    points: series(s, |x| x.client_cpu_pct),
                },
                Line {
                    label: "box (% of all cores)",
                    color: "#8c564b",
                    points: series(s, |x| x.box_cpu_pct),
                },
            ],
        ),
        (
            "Connections, errors and slow-consumer closes",
            "count",
            vec![
                Line {
                    label: "herald_connections",
                    color: "#17becf",
                    points: series(s, |x| x.herald_connections),
                },
                Line {
                    label: "4008 closes (cumulative)",
                    color: "#7f7f7f",
                    points: series(s, |x| x.expected_closes as f64),
                },
                Line {
                    label: "errors (cumulative)",
                    color: "#d62728",
                    points: series(s, |x| x.errors as f64),
                },
            ],
        ),
    ];
    for (title, unit, lines) in &charts {
        let _ = writeln!(o, "<h2>{}</h2>", esc(title));
        o.push_str(&chart(lines, span, unit, r.restarts_s));
        o.push('\n');
    }
    let _ = write!(
        o,
        "<h2>Summary (summary.json, samples in samples.csv)</h2>\n<pre>{}</pre>\n</body></html>\n",
        esc(r.summary_json)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_skips_missing_points() {
        let l = Line {
            label: "p99",
            color: "#000",
            points: vec![(0.0, 1.0), (5.0, f64::NAN), (10.0, 2.0)],
        };
        let svg = chart(&[l], 10.0, "ms", &[5.0]);
        assert_eq!(svg.matches(" M").count() + svg.matches("\"M").count(), 2);
        assert!(svg.contains("feed restart") && svg.ends_with("</svg>"));
    }
}
