//! The attack table: forged, confused and malformed credentials, each sent
//! through a real handshake (or REFRESH, API call, feed HELLO) to a gateway
//! that holds every kind of key at once. Each must get the answer
//! PROTOCOL.md gives (status, `WWW-Authenticate: Bearer` on 401), be counted
//! under its label in `herald_handshakes_total`, and leave no token, secret,
//! feed token or API key in the gateway's debug-level logs.
//!
//! One test drives every handshake so that the metric deltas are exact; the
//! log capture is process-wide (a tracing subscriber writing to a buffer).

mod auth_support;
mod common;

use std::collections::BTreeMap;

use auth_support::*;
use base64::Engine;
use common::*;
use herald::auth::token::{now_unix, MAX_TOKEN_BYTES};
use herald::wire::client;
use herald::wire::feed;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const HS_SECRET: &str = "attack-table-hs256-secret-0123456789abcdef";
const OCT_SECRET: &[u8] = b"attack-table-oct-key-in-the-set-0123456789";
const FEED_SECRET: &str = "feed-secret-7f3a9c11d2";
const API_SECRET: &str = "api-secret-91b2e4aa07";
const AUD: &str = "herald-attacks";
const ISS: &str = "https://idp.attacks.test";
const ORIGIN: &str = "https://app.attacks.test";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn good_claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "exp": now_unix() + 3600,
        "aud": AUD,
        "iss": ISS,
        "topics": ["*"],
    })
}

/// A token with exactly this header JSON, signed with `key` under `alg`
/// (`None`: an empty signature).
fn raw_token(header: &Value, claims: &Value, sig: Option<(Algorithm, &EncodingKey)>) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let s = match sig {
        Some((alg, key)) => jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{msg}.{s}")
}

fn rs(kid: Option<&str>, claims: &Value) -> String {
    sign(Algorithm::RS256, kid, &Key::Rsa.encoding(), claims)
}

fn hs_with(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        &EncodingKey::from_secret(secret),
        claims,
    )
}

/// How a case reaches the gateway.
enum Send {
    Bearer(String),
    Query(String),
    BearerWithOrigin(String, &'static str),
}

struct Case {
    name: &'static str,
    send: Send,
    status: u16,
    label: &'static str,
}

fn case(name: &'static str, token: String, status: u16, label: &'static str) -> Case {
    Case {
        name,
        send: Send::Bearer(token),
        status,
        label,
    }
}

fn table() -> Vec<Case> {
    let c = good_claims("mallory");
    let rsa = Key::Rsa.encoding();
    let rsa_pub = Key::Rsa.public_pem();
    let ec_pub = Key::P256.public_pem();
    let none = |h: Value| raw_token(&h, &c, None);
    let rs_header = |kid: Value| {
        raw_token(
            &json!({"alg": "RS256", "kid": kid}),
            &c,
            Some((Algorithm::RS256, &rsa)),
        )
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        f(&mut v);
        v
    };
    vec![
        // Controls: the keys work, so the refusals below are the attacks'.
        case("control: RS256 by kid", rs(Some("rsa-1"), &c), 101, "ok"),
        case(
            "control: RS256 via public_key_file",
            rs(None, &c),
            101,
            "ok",
        ),
        case(
            "control: HS256 via hs256_secret",
            hs_with(HS_SECRET.as_bytes(), None, &c),
            101,
            "ok",
        ),
        case(
            "control: HS256 by kid (oct)",
            hs_with(OCT_SECRET, Some("hmac-1"), &c),
            101,
            "ok",
        ),
        case(
            "control: ES256 by kid",
            sign(Algorithm::ES256, Some("ec-1"), &Key::P256.encoding(), &c),
            101,
            "ok",
        ),
        // alg: none, with and without signature or kid.
        case(
            "alg none",
            none(json!({"alg": "none"})),
            401,
            "token_invalid",
        ),
        case(
            "alg none, typ JWT",
            none(json!({"alg": "none", "typ": "JWT"})),
            401,
            "token_invalid",
        ),
        case(
            "alg none naming a kid",
            none(json!({"alg": "none", "kid": "rsa-1"})),
            401,
            "token_invalid",
        ),
        case(
            "alg None (case)",
            none(json!({"alg": "None"})),
            401,
            "token_invalid",
        ),
        // Key confusion: the public key as an HMAC secret.
        case(
            "HS256 signed with the RSA public PEM",
            hs_with(&rsa_pub, None, &c),
            401,
            "token_bad_signature",
        ),
        case(
            "HS256 with the RSA public PEM, RSA kid",
            hs_with(&rsa_pub, Some("rsa-1"), &c),
            401,
            "token_invalid",
        ),
        case(
            "HS256 signed with the EC public PEM",
            hs_with(&ec_pub, None, &c),
            401,
            "token_bad_signature",
        ),
        case(
            "HS256 with the EC public PEM, EC kid",
            hs_with(&ec_pub, Some("ec-1"), &c),
            401,
            "token_invalid",
        ),
        // An oct key never takes an RS token, an RSA key never an HS one.
        case(
            "RS256 naming the oct key",
            rs(Some("hmac-1"), &c),
            401,
            "token_invalid",
        ),
        case(
            "HS256 (oct secret) naming the RSA key",
            hs_with(OCT_SECRET, Some("rsa-1"), &c),
            401,
            "token_invalid",
        ),
        case(
            "HS512 naming the oct key",
            sign(
                Algorithm::HS512,
                Some("hmac-1"),
                &EncodingKey::from_secret(OCT_SECRET),
                &c,
            ),
            401,
            "token_invalid",
        ),
        // kids: unknown and malicious; all signed with a real key.
        case(
            "unknown kid",
            rs(Some("rsa-2"), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid path traversal",
            rs(Some("../../etc/passwd"), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid absolute path",
            rs(Some("/dev/zero"), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid very long",
            rs(Some(&"k".repeat(3000)), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid SQL",
            rs(Some("' OR '1'='1' --"), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid control characters",
            rs(Some("rsa-1\u{0}\r\n\u{1b}[31m"), &c),
            401,
            "token_unknown_kid",
        ),
        case(
            "kid URL",
            rs(Some("http://127.0.0.1:1/evil.json"), &c),
            401,
            "token_unknown_kid",
        ),
        case("kid number", rs_header(json!(42)), 401, "token_invalid"),
        case(
            "kid object",
            rs_header(json!({"$ne": null})),
            401,
            "token_invalid",
        ),
        case(
            "kid array",
            rs_header(json!(["rsa-1"])),
            401,
            "token_invalid",
        ),
        // Claims.
        case(
            "expired",
            rs(
                Some("rsa-1"),
                &with(&|v| v["exp"] = json!(now_unix() - 3600)),
            ),
            401,
            "token_expired",
        ),
        case(
            "not yet valid (nbf)",
            rs(
                Some("rsa-1"),
                &with(&|v| v["nbf"] = json!(now_unix() + 3600)),
            ),
            401,
            "token_invalid",
        ),
        case(
            "wrong aud",
            rs(Some("rsa-1"), &with(&|v| v["aud"] = json!("someone-else"))),
            401,
            "token_invalid",
        ),
        case(
            "no aud",
            rs(
                Some("rsa-1"),
                &with(&|v| {
                    v.as_object_mut().unwrap().remove("aud");
                }),
            ),
            401,
            "token_invalid",
        ),
        case(
            "wrong iss",
            rs(
                Some("rsa-1"),
                &with(&|v| v["iss"] = json!("https://evil.test")),
            ),
            401,
            "token_invalid",
        ),
        case(
            "no sub",
            rs(
                Some("rsa-1"),
                &with(&|v| {
                    v.as_object_mut().unwrap().remove("sub");
                }),
            ),
            401,
            "token_invalid",
        ),
        // Shape.
        case(
            "oversized",
            rs(
                Some("rsa-1"),
                &with(&|v| v["pad"] = json!("x".repeat(MAX_TOKEN_BYTES))),
            ),
            401,
            "token_invalid",
        ),
        case("garbage base64", "!!!.@@@.###".into(), 401, "token_invalid"),
        case(
            "two segments",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0".into(),
            401,
            "token_invalid",
        ),
        case(
            "tampered payload",
            {
                let t = rs(Some("rsa-1"), &c);
                let p: Vec<&str> = t.split('.').collect();
                format!(
                    "{}.{}.{}",
                    p[0],
                    b64(good_claims("admin").to_string().as_bytes()),
                    p[2]
                )
            },
            401,
            "token_bad_signature",
        ),
        case(
            "crit header",
            raw_token(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["x"], "x": 1}),
                &c,
                Some((Algorithm::RS256, &rsa)),
            ),
            401,
            "token_invalid",
        ),
        // Where the token comes from.
        Case {
            name: "query token while disabled",
            send: Send::Query(rs(Some("rsa-1"), &c)),
            status: 401,
            label: "token_missing",
        },
        Case {
            name: "Origin not allowed",
            send: Send::BearerWithOrigin(rs(Some("rsa-1"), &c), "https://evil.attacks.test"),
            status: 403,
            label: "origin",
        },
        Case {
            name: "Origin allowed",
            send: Send::BearerWithOrigin(rs(Some("rsa-1"), &c), ORIGIN),
            status: 101,
            label: "ok",
        },
    ]
}

fn handshake_counts(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("herald_handshakes_total{"))
    {
        let Some(at) = line.find("result=\"") else {
            continue;
        };
        let label = line[at + 8..].split('"').next().unwrap_or("").to_owned();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry(label).or_default() += value;
    }
    out
}

/// Every string of `secrets` (and, for a JWT, its signature) absent from
/// `logs`.
fn assert_nothing_leaked(logs: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!logs.contains(s.as_str()), "leaked into the logs: {s:.60}");
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() == 3 && parts[2].len() >= 16 {
            assert!(
                !logs.contains(parts[2]),
                "a token signature leaked into the logs: {:.60}",
                parts[2]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_table() {
    capture_logs();
    let set = JwksFile::new(
        "attacks",
        &[
            Key::Rsa.jwk("rsa-1"),
            Key::P256.jwk("ec-1"),
            oct_jwk("hmac-1", OCT_SECRET),
        ],
    );
    let path = set.0.clone();
    let server = start(move |c| {
        c.auth.hs256_secret = HS_SECRET.into();
        c.auth.public_key_file = Some(key_path("rsa_public.pem"));
        c.auth.jwks_file = Some(path);
        c.auth.audience = Some(AUD.into());
        c.auth.issuer = Some(ISS.into());
        c.auth.allowed_origins = vec![ORIGIN.into()];
        c.auth.allow_query_token = false;
        c.ingest.tokens = vec![FEED_SECRET.into()];
        c.api.keys = vec![API_SECRET.into()];
        // Room for the oversized token: it must meet the token check, not
        // the header limit.
        c.limits.max_header_bytes = 64 * 1024;
    });

    let cases = table();
    let before = handshake_counts(&metrics_text(server.admin()).await);
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    let mut secrets: Vec<String> = vec![
        HS_SECRET.into(),
        String::from_utf8(OCT_SECRET.to_vec()).unwrap(),
        b64(OCT_SECRET),
        FEED_SECRET.into(),
        API_SECRET.into(),
    ];
    for c in &cases {
        let mut h = upgrade_headers();
        let (path, token) = match &c.send {
            Send::Bearer(t) => {
                h.push(("Authorization".into(), format!("Bearer {t}")));
                ("/ws".to_owned(), t)
            }
            Send::Query(t) => (format!("/ws?token={t}"), t),
            Send::BearerWithOrigin(t, origin) => {
                h.push(("Authorization".into(), format!("Bearer {t}")));
                h.push(("Origin".into(), (*origin).into()));
                ("/ws".to_owned(), t)
            }
        };
        secrets.push(token.clone());
        let (r, _stream) = raw_upgrade(server.ws(), &path, &h).await;
        assert_eq!(
            r.status,
            c.status,
            "{}: {} {}",
            c.name,
            r.status_line,
            r.body_str()
        );
        if c.status == 401 {
            let challenge = r.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Bearer"),
                "{}: 401 without a Bearer challenge: {:?}",
                c.name,
                r.headers
            );
        }
        if c.status != 101 {
            assert!(r.header("sec-websocket-accept").is_none(), "{}", c.name);
            assert!(
                !r.body_str().contains(token.as_str()),
                "{}: the answer echoes the token",
                c.name
            );
        }
        *expected.entry(c.label.to_owned()).or_default() += 1.0;
    }

    // The connections above that got 101 are closed by now or soon; the
    // counters were bumped before each answer was written.
    let after = handshake_counts(&metrics_text(server.admin()).await);
    for (label, want) in &expected {
        let got =
            after.get(label).copied().unwrap_or(0.0) - before.get(label).copied().unwrap_or(0.0);
        assert_eq!(got, *want, "herald_handshakes_total{{result=\"{label}\"}}");
    }
    let total = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
    assert_eq!(
        total(&after) - total(&before),
        cases.len() as f64,
        "nothing else counted"
    );

    // REFRESH with bad tokens: ERROR 401 on the open session.
    let good = rs(Some("rsa-1"), &good_claims("alice"));
    secrets.push(good.clone());
    let mut ws = ws_connect(server.ws(), &good).await;
    let bad_refresh = [
        hs_with(&Key::Rsa.public_pem(), Some("rsa-1"), &good_claims("alice")),
        rs(Some("no-such-kid"), &good_claims("alice")),
        raw_token(&json!({"alg": "none"}), &good_claims("alice"), None),
        rs(Some("rsa-1"), &{
            let mut v = good_claims("alice");
            v["exp"] = json!(now_unix() - 3600);
            v
        }),
    ];
    for (i, t) in bad_refresh.iter().enumerate() {
        secrets.push(t.clone());
        let id = 10 + i as u32;
        send_bin(&mut ws, client::encode_refresh(id, t)).await;
        expect_error(&mut ws, id, 401).await;
    }
    ping(&mut ws, 99).await;

    // The operator API with a wrong key: 401.
    let wrong_key = "api-secret-91b2e4aa08-wrong";
    secrets.push(wrong_key.into());
    let r = api(server.admin(), "GET", "/api/stats", Some(wrong_key), b"").await;
    assert_eq!(r.status, 401, "{}", r.status_line);
    let r = api(server.admin(), "GET", "/api/stats", Some(API_SECRET), b"").await;
    assert_eq!(r.status, 200, "control: the right key works");

    // A feed HELLO with a wrong token: ERROR 401, then close.
    let wrong_feed = "feed-secret-7f3a9c11d2-wrong";
    secrets.push(wrong_feed.into());
    let mut f = Feed::connect(server.ingest()).await;
    f.send(&feed::encode_hello(wrong_feed, "intruder")).await;
    assert_eq!(f.expect_error_then_close().await.0, 401);
    let mut f = Feed::connect(server.ingest()).await;
    f.send(&feed::encode_hello(FEED_SECRET, "control")).await;
    assert_eq!(f.read().await, Some(feed::GatewayFrame::HelloOk));
    drop(f);
    drop(ws);
    assert!(server.stop().await);

    let logs = logs();
    // The capture works and saw what happened, or this test proves nothing.
    for seen in [
        "handshake rejected",
        "reason=token",
        "origin not allowed",
        "feed closed",
    ] {
        assert!(logs.contains(seen), "log capture lacks {seen:?}:\n{logs}");
    }
    assert_nothing_leaked(&logs, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_ingest_off_loopback_are_warned_about() {
    capture_logs();
    let server = start(|c| {
        c.listen.admin = "0.0.0.0:0".parse().unwrap();
        c.listen.ingest = "0.0.0.0:0".parse().unwrap();
    });
    let admin_port = format!(":{}", server.admin().port());
    let ingest_port = format!(":{}", server.ingest().port());
    assert!(server.stop().await);
    let logs = logs();
    let warned = |what: &str, port: &str| {
        logs.lines().any(|l| {
            l.contains("WARN")
                && l.contains(what)
                && l.contains("not on loopback")
                && l.contains(port)
        })
    };
    assert!(
        warned("listen.admin", &admin_port),
        "no admin warning:\n{logs}"
    );
    assert!(
        warned("listen.ingest", &ingest_port),
        "no ingest warning:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_admin_and_ingest_are_not_warned_about() {
    capture_logs();
    let server = start(|_| {});
    let (admin, ingest) = (server.admin(), server.ingest());
    assert!(server.stop().await);
    let logs = logs();
    for addr in [admin, ingest] {
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("not on loopback") && l.contains(&addr.to_string())),
            "{addr} is loopback:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_jwks_url_to_another_host_is_warned_about() {
    capture_logs();
    // 0.0.0.0 is not loopback as a name, and connecting to it fails at
    // once on Linux, so start does not wait for a fetch.
    let server = start(|c| {
        c.auth.jwks_url = Some("http://0.0.0.0:1/jwks.json?key=jwks-query-secret".into());
    });
    assert!(server.stop().await);
    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("plain http") && l.contains("0.0.0.0:1")),
        "no warning:\n{logs}"
    );
    assert!(
        !logs.contains("jwks-query-secret"),
        "the URL's query leaked"
    );
}
