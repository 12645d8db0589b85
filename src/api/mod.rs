//! The operator HTTP API (PROTOCOL.md §3): publish, disconnect, stats,
//! metrics and health, on the admin listener only.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Backend;
use crate::http::site::asset;
use crate::hub::{Hub, HubError};
use crate::shard::Shared;
use crate::wire::topic::is_valid_topic;

static ADMIN_HTML: &[u8] = include_bytes!("../../web/dist/admin.html");
static ADMIN_JS: &[u8] = include_bytes!("../../web/dist/admin.js");

pub struct Api {
    pub shared: Arc<Shared>,
    pub hub: Hub,
    pub keys: Vec<String>,
    pub max_body: usize,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    rates: Mutex<RateSampler>,
}

/// Turns the monotonically growing counters into per-second rates between
/// two `/api/stats` calls (or over the last sampling period).
struct RateSampler {
    at: Instant,
    delivered: u64,
    published: u64,
    delivered_per_s: f64,
    published_per_s: f64,
}

impl Api {
    pub fn new(shared: Arc<Shared>, hub: Hub, prometheus: PrometheusHandle) -> Self {
        let keys = shared.config.api.keys.clone();
        let max_body = shared.config.api.max_body_bytes;
        Api {
            shared,
            hub,
            keys,
            max_body,
            prometheus,
            started: Instant::now(),
            rates: Mutex::new(RateSampler {
                at: Instant::now(),
                delivered: 0,
                published: 0,
                delivered_per_s: 0.0,
                published_per_s: 0.0,
            }),
        }
    }
}

pub async fn serve(listener: TcpListener, api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(&api, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = json_response(status, json!({ "error": message }));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

async fn route(api: &Api, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let (label, resp) = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => (
            "healthz",
            json_response(StatusCode::OK, json!({"status": "ok"})),
        ),
        (&Method::GET, "/readyz") => ("readyz", readyz(api)),
        (&Method::GET, "/metrics") => ("metrics", metrics(api)),
        // The admin UI: static, and no key needed to load it (it asks for
        // one and sends it with every `/api/` call it makes).
        (&Method::GET, "/ui") => ("ui", asset(ADMIN_HTML, "text/html; charset=utf-8")),
        (&Method::GET, "/ui/admin.js") => ("ui", asset(ADMIN_JS, "text/javascript; charset=utf-8")),
        (_, p) if p.starts_with("/api/") => {
            if !authorized(api, &req) {
                (
                    "unauthorized",
                    error(StatusCode::UNAUTHORIZED, "missing or wrong API key"),
                )
            } else {
                api_route(api, req, &path).await
            }
        }
        _ => ("not_found", error(StatusCode::NOT_FOUND, "no such route")),
    };
    crate::metrics::api_request(label, resp.status().as_u16());
    resp
}

async fn api_route(
    api: &Api,
    req: Request<Incoming>,
    path: &str,
) -> (&'static str, Response<Full<Bytes>>) {
    if let Some(topic) = path.strip_prefix("/api/publish/") {
        if req.method() != Method::POST {
            return ("publish", error(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
        }
        return ("publish", publish(api, req, topic.to_owned()).await);
    }
    match (req.method(), path) {
        (&Method::POST, "/api/disconnect") => ("disconnect", disconnect(api, req).await),
        (&Method::GET, "/api/stats") => ("stats", stats(api)),
        (&Method::GET, "/api/nodes") => ("nodes", nodes(api)),
        (_, "/api/disconnect") | (_, "/api/stats") | (_, "/api/nodes") => (
            "other",
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method"),
        ),
        _ => ("not_found", error(StatusCode::NOT_FOUND, "no such route")),
    }
}

fn authorized(api: &Api, req: &Request<Incoming>) -> bool {
    let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, key)) = v.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && api
            .keys
            .iter()
            .any(|k| !k.is_empty() && constant_time_eq(k.as_bytes(), key.trim().as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(api: &Api, req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), api.max_body).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over api.max_body_bytes",
            ))
        }
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "could not read body")),
    }
}

async fn publish(api: &Api, req: Request<Incoming>, topic: String) -> Response<Full<Bytes>> {
    if !is_valid_topic(&topic) {
        return error(StatusCode::BAD_REQUEST, "invalid topic name");
    }
    let body = match read_body(api, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    metrics::counter!("herald_published_total", "source" => "api").increment(1);
    match api.hub.publish(Arc::from(topic.as_str()), body).await {
        Ok(seq) => json_response(StatusCode::ACCEPTED, json!({ "seq": seq })),
        Err(HubError::Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster broker is unreachable",
        ),
        Err(HubError::TooLarge) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large for the cluster broker",
        ),
        Err(HubError::Closed) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

#[derive(serde::Deserialize)]
struct DisconnectBody {
    user: String,
}

async fn disconnect(api: &Api, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match read_body(api, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(d) = serde_json::from_slice::<DisconnectBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"user\": \"<sub>\"}");
    };
    match api.hub.disconnect_user(&d.user).await {
        Ok(n) => json_response(StatusCode::OK, json!({ "closed": n })),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

fn stats(api: &Api) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, stats_json(api))
}

/// Every node's stats: this one's, and in cluster mode the others' as they
/// last announced them (every [`ANNOUNCE_EVERY`]; one that has not for
/// [`PEER_MAX_AGE`] has left).
fn nodes(api: &Api) -> Response<Full<Bytes>> {
    let me = api.hub.backend().info();
    let node = if me.node_id.is_empty() {
        api.shared.config.cluster.node_id()
    } else {
        me.node_id
    };
    let mut nodes =
        vec![json!({"node": node, "self": true, "age_ms": 0, "stats": stats_json(api)})];
    if let Backend::Cluster(b) = api.hub.backend() {
        for p in b.peers(PEER_MAX_AGE) {
            // Another node's document, passed on as it came; one that does
            // not parse is shown as null rather than hiding the node.
            let stats: serde_json::Value =
                serde_json::from_slice(&p.stats).unwrap_or(serde_json::Value::Null);
            nodes.push(json!({
                "node": p.node_id, "self": false,
                "age_ms": p.age.as_millis() as u64, "stats": stats,
            }));
        }
    }
    json_response(StatusCode::OK, json!({ "nodes": nodes }))
}

pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
pub const PEER_MAX_AGE: Duration = Duration::from_secs(10);

/// Cluster mode: tells the other nodes this node's stats every
/// [`ANNOUNCE_EVERY`], for their `/api/nodes`.
pub async fn announce(api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    let Backend::Cluster(broker) = api.hub.backend().clone() else {
        return;
    };
    let mut iv = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            _ = iv.tick() => broker.announce(Bytes::from(stats_json(&api).to_string())),
            _ = stop.changed() => return,
        }
    }
}

fn stats_json(api: &Api) -> serde_json::Value {
    let mut shards = Vec::new();
    let (mut conns, mut subs, mut topics, mut delivered, mut published) = (0, 0, 0, 0, 0);
    let homes = api.hub.home_stats();
    for (i, s) in api.shared.stats.iter().enumerate() {
        let c = s.connections.load(Ordering::Relaxed);
        let sb = s.subscriptions.load(Ordering::Relaxed);
        // Partition i of the topics; there are as many as shards.
        let t = homes[i].topics.load(Ordering::Relaxed);
        let d = s.delivered.load(Ordering::Relaxed);
        let p = homes[i].published.load(Ordering::Relaxed);
        conns += c;
        subs += sb;
        topics += t;
        delivered += d;
        published += p;
        shards.push(json!({
            "shard": i, "connections": c, "subscriptions": sb, "topics": t,
            "local_topics": s.local_topics.load(Ordering::Relaxed),
            "delivered": d, "published": p,
        }));
    }
    let (dps, pps) = {
        let mut r = api.rates.lock();
        let now = Instant::now();
        let dt = now.duration_since(r.at).as_secs_f64();
        if dt >= 0.5 {
            r.delivered_per_s = delivered.saturating_sub(r.delivered) as f64 / dt;
            r.published_per_s = published.saturating_sub(r.published) as f64 / dt;
            r.at = now;
            r.delivered = delivered;
            r.published = published;
        }
        (r.delivered_per_s, r.published_per_s)
    };
    json!({
            "connections": conns,
            "subscriptions": subs,
            "topics": topics,
            "published": published,
            "delivered": delivered,
            "rates": { "published_per_s": pps, "delivered_per_s": dps },
            "draining": api.shared.gate.draining.load(Ordering::Relaxed),
            "broker": api.hub.backend().info(),
            "uptime_s": api.started.elapsed().as_secs(),
            "shards": shards,
    })
}

fn readyz(api: &Api) -> Response<Full<Bytes>> {
    if api.shared.gate.draining.load(Ordering::Relaxed) {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        )
    } else if !api.hub.backend().connected() {
        // Up (`/healthz`) and keeping its clients, but a new client could
        // neither publish nor open a topic here: send it elsewhere.
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "broker unavailable"}),
        )
    } else {
        json_response(StatusCode::OK, json!({"status": "ready"}))
    }
}

fn metrics(api: &Api) -> Response<Full<Bytes>> {
    api.prometheus.run_upkeep();
    let mut r = Response::new(Full::new(Bytes::from(api.prometheus.render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
