//! The admission checks of a WebSocket upgrade (`http::Gate::check`): path,
//! method, `Upgrade`/`Connection`/`Sec-WebSocket-Version`/`-Key`, the
//! offered subprotocols with a `bearer.<jwt>` token among them, `Origin`
//! against an allow-list, the token from `Authorization`, the subprotocol
//! or `?token=`, and its verification. Also `auth::origin::normalize` on
//! every `Origin` value.
//!
//! Input: text lines; the first is `METHOD URI` (or only a URI, for GET),
//! the others `Name: value` headers. Lines hyper would refuse (invalid
//! header names or values, URIs) are skipped, as hyper never passes them
//! on.
//!
//! Checks: never panics; an accepted request is a GET of `/ws` carrying
//! `Upgrade: websocket`, version 13 and an allowed (or no) `Origin`, and
//! gets a 101; a refusal's response builds; no connection slot leaks (every
//! permit is given back); `normalize` is idempotent and an origin allows
//! itself.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use herald::auth::origin::{normalize, OriginPolicy};
use herald::auth::Verifier;
use herald::config::Auth;
use herald::http::limits::ConnLimits;
use herald::http::Gate;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "herald-fuzz-hs256-secret-32-bytes-long!";

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate {
        verifier: Verifier::new(&Auth {
            hs256_secret: SECRET.into(),
            default_topics: vec!["public.*".into()],
            ..Auth::default()
        })
        .expect("verifier"),
        origin: OriginPolicy::new(&[
            "https://app.example".to_owned(),
            "http://localhost:8080".to_owned(),
            "http://[::1]:3000".to_owned(),
        ]),
        allow_query_token: true,
        // No limit a run could reach, and no rate (it reads the clock).
        limits: ConnLimits::new(1 << 30, 0, 0, 0),
        draining: AtomicBool::new(false),
        site: None,
        tls: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let (method, uri) = match first.split_once(' ') {
        Some((m, u)) => (m, u),
        None => ("GET", first),
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut req = Request::builder().method(method).uri(uri);
    let mut origins = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        if name == hyper::header::ORIGIN {
            origins.push(value.to_str().unwrap_or("").to_owned());
        }
        req = req.header(name, value);
    }
    // Headers were checked above, so only an invalid URI ends up here.
    let Ok(req) = req.body(()) else {
        return;
    };

    for o in &origins {
        if let Some(n) = normalize(o) {
            assert_eq!(
                normalize(&n).as_deref(),
                Some(&*n),
                "normalize not idempotent"
            );
            assert!(OriginPolicy::new(&[o.clone()]).allows(Some(o)));
            assert!(OriginPolicy::new(&[n.clone()]).allows(Some(o)));
        }
    }

    let g = gate();
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);
    match g.check(&req, peer) {
        Ok(accepted) => {
            assert_eq!(req.uri().path(), "/ws");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.headers()["sec-websocket-version"], "13");
            let origin = req
                .headers()
                .get("origin")
                .map(|v| v.to_str().expect("checked"));
            assert!(g.origin.allows(origin));
            assert!(!accepted.claims.sub.is_empty());
            assert_eq!(
                accepted.response().status(),
                StatusCode::SWITCHING_PROTOCOLS
            );
            assert_eq!(g.limits.open(), 1);
        }
        Err(rejection) => {
            let resp = rejection.response();
            assert_eq!(resp.status(), rejection.status());
            assert!(resp.status().is_client_error() || resp.status().is_server_error());
            let _ = rejection.label();
        }
    }
    assert_eq!(g.limits.open(), 0, "a connection slot leaked");
});
