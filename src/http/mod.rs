//! The public listener's HTTP side: binding, and the checks a WebSocket
//! upgrade request must pass *before* any 101 is sent; with `--demo`, the
//! demo page (`site`). The only module that names hyper on the WebSocket
//! port.

pub mod accept;
pub mod limits;
pub mod site;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::{Claims, OriginPolicy, TokenError, Verifier};
use limits::{ConnLimits, ConnPermit, LimitError};

pub const SUBPROTOCOL: &str = "herald.v1";

/// The echo route the `autobahn` feature adds beside `/ws` (see
/// `scripts/autobahn.sh`): the same upgrade, framing, limits and write
/// path, no token, and every message comes back as sent.
#[cfg(feature = "autobahn")]
pub const ECHO_PATH: &str = "/echo";

// The echo route takes no token: it must never reach a build that serves
// real clients. Debug builds only (scripts/autobahn.sh builds one).
#[cfg(all(feature = "autobahn", not(debug_assertions)))]
compile_error!(
    "the `autobahn` feature (an unauthenticated echo route) is for debug test builds only"
);
const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Everything the upgrade check needs; shared by all shards.
pub struct Gate {
    pub verifier: Verifier,
    pub origin: OriginPolicy,
    pub allow_query_token: bool,
    pub limits: Arc<ConnLimits>,
    pub draining: AtomicBool,
    /// The demo page, served beside `/ws` (only with `--demo`).
    pub site: Option<site::DemoSite>,
    /// `[tls]`: the listener speaks TLS only.
    pub tls: Option<Arc<crate::transport::tls::Tls>>,
}

/// A request that passed every check; the connection keeps `permit`.
pub struct Accepted {
    pub claims: Claims,
    pub permit: ConnPermit,
    accept_key: String,
    echo_protocol: bool,
    /// The connection came in on [`ECHO_PATH`]: its session echoes.
    #[cfg(feature = "autobahn")]
    pub echo: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not found")]
    NotFound,
    #[error("malformed upgrade: {0}")]
    BadRequest(&'static str),
    #[error("unsupported websocket version")]
    Version,
    #[error("subprotocol herald.v1 not offered")]
    Subprotocol,
    #[error("token: {0:?}")]
    Token(TokenError),
    #[error("origin not allowed")]
    Origin,
    #[error("{0}")]
    Limit(LimitError),
    #[error("draining")]
    Draining,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::BadRequest(_) | Rejection::Version | Rejection::Subprotocol => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Token(_) => StatusCode::UNAUTHORIZED,
            Rejection::Origin => StatusCode::FORBIDDEN,
            Rejection::Limit(LimitError::Capacity) | Rejection::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A metric label from a closed set.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Version => "bad_version",
            Rejection::Subprotocol => "bad_subprotocol",
            Rejection::Token(e) => match e {
                TokenError::Missing => "token_missing",
                TokenError::Expired => "token_expired",
                TokenError::BadSignature => "token_bad_signature",
                TokenError::UnknownKey => "token_unknown_kid",
                _ => "token_invalid",
            },
            Rejection::Origin => "origin",
            Rejection::Limit(l) => l.label(),
            Rejection::Draining => "draining",
        }
    }

    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = text_response(self.status(), self.to_string());
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        match self {
            Rejection::Token(TokenError::Missing) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Rejection::Token(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Rejection::Version => {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        resp
    }
}

pub fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Accepted {
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&self.accept_key) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if self.echo_protocol {
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        resp
    }
}

impl Gate {
    /// The whole admission decision for `GET /ws`, cheapest checks first so
    /// a flood of bad requests never reaches the signature check.
    pub fn check<B>(&self, req: &Request<B>, peer: SocketAddr) -> Result<Accepted, Rejection> {
        #[cfg(feature = "autobahn")]
        if req.uri().path() == ECHO_PATH {
            return self.check_echo(req, peer);
        }
        if req.uri().path() != "/ws" {
            return Err(Rejection::NotFound);
        }
        let key = self.check_upgrade(req)?;
        let h = req.headers();

        let mut offered_any = false;
        let mut offered_ours = false;
        let mut protocol_token = None;
        for p in protocols(h) {
            offered_any = true;
            if p == SUBPROTOCOL {
                offered_ours = true;
            } else if let Some(t) = p.strip_prefix(BEARER_PROTOCOL_PREFIX) {
                protocol_token.get_or_insert(t);
            }
        }
        if offered_any && !offered_ours {
            return Err(Rejection::Subprotocol);
        }

        self.check_origin(h)?;

        let mut permit = self.limits.admit(peer.ip()).map_err(Rejection::Limit)?;

        let token = bearer_header(h)
            .or(protocol_token)
            .or_else(|| {
                self.allow_query_token
                    .then(|| query_token(req.uri().query()))
                    .flatten()
            })
            .ok_or(Rejection::Token(TokenError::Missing))?;
        let claims = self.verifier.verify(token).map_err(Rejection::Token)?;
        permit.add_user(&claims.sub).map_err(Rejection::Limit)?;

        Ok(Accepted {
            claims,
            permit,
            accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            echo_protocol: offered_ours,
            #[cfg(feature = "autobahn")]
            echo: false,
        })
    }

    /// The checks every upgrade passes before its route's own: not
    /// draining, a well-formed RFC 6455 request. Returns the client's key.
    fn check_upgrade<'r, B>(&self, req: &'r Request<B>) -> Result<&'r HeaderValue, Rejection> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Rejection::Draining);
        }
        let h = req.headers();
        if req.method() != Method::GET {
            return Err(Rejection::BadRequest("method must be GET"));
        }
        if !header_has_token(h, header::UPGRADE, "websocket") {
            return Err(Rejection::BadRequest("missing Upgrade: websocket"));
        }
        if !header_has_token(h, header::CONNECTION, "upgrade") {
            return Err(Rejection::BadRequest("missing Connection: Upgrade"));
        }
        match h.get(header::SEC_WEBSOCKET_VERSION) {
            Some(v) if v.as_bytes() == b"13" => {}
            Some(_) => return Err(Rejection::Version),
            None => return Err(Rejection::BadRequest("missing Sec-WebSocket-Version")),
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::BadRequest("missing Sec-WebSocket-Key"))?;
        let key_ok = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .map(|k| k.len() == 16)
            .unwrap_or(false);
        if !key_ok {
            return Err(Rejection::BadRequest("invalid Sec-WebSocket-Key"));
        }
        Ok(key)
    }

    /// The `auth.allowed_origins` list, when set, against `Origin`.
    fn check_origin(&self, h: &HeaderMap) -> Result<(), Rejection> {
        let origin = match h.get(header::ORIGIN) {
            Some(v) => Some(v.to_str().map_err(|_| Rejection::Origin)?),
            None => None,
        };
        if self.origin.allows(origin) {
            Ok(())
        } else {
            Err(Rejection::Origin)
        }
    }

    /// `GET /echo` (feature `autobahn`): the upgrade checks, Origin and the
    /// connection limits as for `/ws`, but no token and no subprotocol (the
    /// Autobahn fuzzing client offers none): the session belongs to nobody,
    /// may use no topic and never expires.
    #[cfg(feature = "autobahn")]
    fn check_echo<B>(&self, req: &Request<B>, peer: SocketAddr) -> Result<Accepted, Rejection> {
        let key = self.check_upgrade(req)?;
        self.check_origin(req.headers())?;
        let permit = self.limits.admit(peer.ip()).map_err(Rejection::Limit)?;
        Ok(Accepted {
            claims: Claims {
                sub: Arc::from("autobahn-echo"),
                exp: u64::MAX,
                topics: crate::wire::topic::Patterns::none(),
                publish: crate::wire::topic::Patterns::none(),
            },
            permit,
            accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            echo_protocol: false,
            echo: true,
        })
    }
}

/// How long a handshake whose token names an unknown `kid` may wait for the
/// key-set fetch it started or joined. Short, because it holds a handshake
/// slot, and only a fetch already running is waited for (at most one per
/// `auth.jwks_min_refetch_s`), so made-up `kid`s cannot keep slots busy.
pub const KEY_FETCH_WAIT: Duration = Duration::from_secs(2);

impl Gate {
    /// [`Gate::check`], except that a token naming a `kid` no key set holds,
    /// while a fetch of `auth.jwks_url` runs, waits for that fetch (at most
    /// [`KEY_FETCH_WAIT`]) and is checked once more: the issuer may just
    /// have published the key. The second check admits again (a second
    /// handshake-rate token); the first permit is already released.
    pub async fn check_waiting<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Accepted, Rejection> {
        match self.check(req, peer) {
            Err(Rejection::Token(TokenError::UnknownKey)) => {
                match self.verifier.fetch_in_flight() {
                    Some(mut done) => {
                        let _ = tokio::time::timeout(KEY_FETCH_WAIT, done.changed()).await;
                        self.check(req, peer)
                    }
                    None => Err(Rejection::Token(TokenError::UnknownKey)),
                }
            }
            other => other,
        }
    }
}

/// True if a comma-separated header contains `token` (case-insensitive),
/// across repeated header lines.
fn header_has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn protocols(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn bearer_header(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_places() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer_header(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer_header(&h), None);
        assert_eq!(query_token(Some("a=1&token=t.k.n")), Some("t.k.n"));
        assert_eq!(query_token(Some("token=")), None);
        assert_eq!(query_token(None), None);
    }

    #[test]
    fn protocol_lists_span_lines() {
        let mut h = HeaderMap::new();
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("herald.v1, bearer.x.y.z"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("other"),
        );
        let v: Vec<_> = protocols(&h).collect();
        assert_eq!(v, ["herald.v1", "bearer.x.y.z", "other"]);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&h, header::CONNECTION, "upgrade"));
    }
}
