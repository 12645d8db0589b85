//! The demo page on the public listener (`herald --demo` only): `GET /`,
//! its script, and `GET /demo/token`, which mints a short-lived token the
//! way an application's backend would. The page and its script are built
//! from `web/` (on the TypeScript client) and embedded, so the binary alone
//! serves them. Outside `--demo` none of this exists and every path but
//! `/ws` is a 404, as before.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::token::{mint_hs256, now_unix};

pub static DEMO_HTML: &[u8] = include_bytes!("../../web/dist/demo.html");
pub static DEMO_JS: &[u8] = include_bytes!("../../web/dist/demo.js");

/// Lifetime of a page's token: short, so the page shows a REFRESH (the
/// client asks `/demo/token` again before it runs out).
pub const TOKEN_TTL_S: u64 = 120;

/// What a guest of the demo page may do.
const TOPICS: [&str; 1] = ["demo.*"];
const PUBLISH: [&str; 1] = [crate::demo::CHAT];

/// The demo site; holds the HS256 secret its tokens are signed with.
pub struct DemoSite {
    secret: String,
}

impl DemoSite {
    pub fn new(secret: String) -> DemoSite {
        DemoSite { secret }
    }

    /// The response for a non-`/ws` request, or `None` when the path is not
    /// the site's (the caller answers 404).
    pub fn serve<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let page = match req.uri().path() {
            "/" | "/index.html" => Page::Static(DEMO_HTML, "text/html; charset=utf-8"),
            "/demo.js" => Page::Static(DEMO_JS, "text/javascript; charset=utf-8"),
            "/demo/token" => Page::Token,
            _ => return None,
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = super::text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(r);
        }
        Some(match page {
            Page::Static(body, kind) => asset(body, kind),
            Page::Token => self.token(),
        })
    }

    fn token(&self) -> Response<Full<Bytes>> {
        let exp = now_unix() + TOKEN_TTL_S;
        let sub = format!("guest-{:08x}", rand::random::<u32>());
        let token = mint_hs256(&self.secret, &sub, exp, Some(&TOPICS), Some(&PUBLISH));
        let body = serde_json::json!({ "token": token, "exp": exp, "sub": sub }).to_string();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

enum Page {
    Static(&'static [u8], &'static str),
    Token,
}

/// An embedded page or script, with the headers every one of them gets:
/// no caching (a new binary may carry a new page), and a policy that lets
/// it load nothing and connect nowhere but its own origin.
pub fn asset(body: &'static [u8], kind: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;

    fn get(site: &DemoSite, path: &str) -> Option<Response<Full<Bytes>>> {
        site.serve(&Request::get(path).body(()).expect("request"))
    }

    #[test]
    fn serves_the_page_its_script_and_nothing_else() {
        let site = DemoSite::new("s".repeat(32));
        let page = get(&site, "/").expect("page");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(get(&site, "/demo.js").is_some());
        assert!(get(&site, "/other").is_none());
        let post = site
            .serve(&Request::post("/demo/token").body(()).expect("request"))
            .expect("answered");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn tokens_verify_with_the_secret_and_only_allow_the_demo() {
        use http_body_util::BodyExt;
        let secret = "s".repeat(32);
        let site = DemoSite::new(secret.clone());
        let r = get(&site, "/demo/token").expect("token");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let body = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let auth = crate::config::Auth {
            hs256_secret: secret,
            ..Default::default()
        };
        let claims = Verifier::new(&auth)
            .expect("key")
            .verify(v["token"].as_str().expect("token"))
            .expect("the token verifies");
        assert!(claims.sub.starts_with("guest-"));
        assert_eq!(Some(claims.exp), v["exp"].as_u64());
        assert!(claims.exp <= now_unix() + TOKEN_TTL_S);
        assert!(claims.topics.allows("demo.BTC-USD"));
        assert!(!claims.topics.allows("md.BTC-USD"));
        assert!(claims.publish.allows(crate::demo::CHAT));
        assert!(!claims.publish.allows("demo.BTC-USD"));
    }
}
