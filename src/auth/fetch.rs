//! `auth.jwks_url`: fetches the key set over HTTP(S) and keeps
//! [`RemoteKeys`] filled.
//!
//! One task per gateway ([`run`], on the control runtime) owns the client
//! and every fetch: at start, every `jwks_refresh_s`, and early when a
//! token names a `kid` no set holds. Early fetches are single-flight and
//! rate-limited (the bookkeeping is in [`RemoteKeys`]): two early fetches
//! are at least `jwks_min_refetch_s` apart, and requests made while one
//! runs join it, so a flood of made-up `kid`s costs at most one fetch per
//! that interval. A handshake whose `kid` started or joined a running fetch
//! may wait for it, briefly (`http::Gate::check_waiting`); one that comes
//! when no fetch may start is refused at once. No shard thread ever blocks
//! on the network.
//!
//! A fetch that fails (connect, status, timeout, size, a set that does not
//! parse) keeps the last good set, is logged with its reason and counted in
//! `herald_jwks_fetches_total{result}`; the next attempt comes after
//! `jwks_min_refetch_s` instead of the full refresh interval.
//!
//! The client is hyper's (already the server side of every listener) with
//! hyper-rustls on the ring provider (rustls and ring were in the tree via
//! async-nats), trusting the system's roots, or Mozilla's when the system
//! has none. Redirects are not followed: a 3xx is a failed fetch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::jwks::{self, JwksError, KeySet, MAX_JWKS_BYTES};
use super::token::RemoteKeys;
use crate::config::mask_url_secrets;

/// Bound on one fetch, connect to last body byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot set up the HTTPS client: {0}")]
    Tls(String),
    #[error("request failed: {0}")]
    Connect(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answer is over {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Invalid(#[from] JwksError),
}

impl FetchError {
    /// Bounded label for `herald_jwks_fetches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Tls(_) | FetchError::Connect(_) => "connect",
            FetchError::Status(_) => "http",
            FetchError::Timeout(_) => "timeout",
            FetchError::TooLarge => "too_large",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| "must be an http:// or https:// URL".to_owned())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(uri),
        _ => Err("must be an http:// or https:// URL".to_owned()),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One configured key set URL and its client.
pub struct JwksSource {
    uri: Uri,
    /// The URL as logs may show it (password and query masked).
    shown: String,
    refresh: Duration,
    min_refetch: Duration,
    client: HttpsClient,
}

impl JwksSource {
    pub fn new(url: &str, refresh: Duration, min_refetch: Duration) -> Result<Self, FetchError> {
        let uri = parse_url(url).map_err(FetchError::Connect)?;
        if uri.scheme_str() == Some("http") && !is_loopback_host(uri.host().unwrap_or("")) {
            tracing::warn!(
                url = %mask_url_secrets(url),
                "auth.jwks_url is plain http to another host: whoever can alter that traffic \
                 can add a key and mint tokens herald accepts; use https"
            );
        }
        // Deprecated only for lacking post-quantum key exchange, which a
        // JWKS fetch does not need; aws-lc-rs would add a C toolchain to
        // the build for it.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system CA certificates; trusting Mozilla's roots for auth.jwks_url");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| FetchError::Tls(e.to_string()))?
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(JwksSource {
            shown: mask_url_secrets(url),
            uri,
            refresh,
            min_refetch,
            client,
        })
    }

    /// The URL with its secrets masked, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// One GET, size- and time-limited, parsed.
    pub async fn fetch(&self) -> Result<KeySet, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(FETCH_TIMEOUT)),
        }
    }

    async fn fetch_unbounded(&self) -> Result<KeySet, FetchError> {
        let req = hyper::Request::get(self.uri.clone())
            .header(
                hyper::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(hyper::header::USER_AGENT, "herald")
            .body(Empty::new())
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError::Connect(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Connect(e.to_string())
                }
            })?
            .to_bytes();
        Ok(jwks::parse(&body)?)
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The refresh task. `first` gets the outcome of the start-up fetch (the
/// number of keys, or why it failed) so that `Server::start` can wait for
/// it; it never stops on its own.
pub async fn run(
    source: JwksSource,
    remote: Arc<RemoteKeys>,
    mut first: Option<std::sync::mpsc::SyncSender<Result<usize, String>>>,
) {
    let mut next = Instant::now();
    loop {
        let early = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = remote.next_early() => true,
        };
        let outcome = source.fetch().await;
        let ok = outcome.is_ok();
        let reported = match outcome {
            Ok(set) => {
                crate::metrics::jwks_fetch("ok");
                for (kid, why) in set.skipped() {
                    tracing::debug!(url = %source.shown, kid = ?kid, why, "key set: key skipped");
                }
                let before = remote.len();
                remote.install(&set);
                if before != set.len() || first.is_some() {
                    tracing::info!(url = %source.shown, keys = set.len(), early, "key set fetched");
                } else {
                    tracing::debug!(url = %source.shown, keys = set.len(), early, "key set fetched");
                }
                Ok(set.len())
            }
            Err(e) => {
                crate::metrics::jwks_fetch(e.label());
                tracing::warn!(
                    url = %source.shown,
                    error = %e,
                    keeping = remote.len(),
                    "key set fetch failed; keeping the last good set"
                );
                Err(e.to_string())
            }
        };
        remote.fetch_done();
        if let Some(tx) = first.take() {
            let _ = tx.send(reported);
        }
        next = Instant::now()
            + if ok {
                source.refresh
            } else {
                source.min_refetch.min(source.refresh)
            };
    }
}
