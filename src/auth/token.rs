//! JWT verification into typed [`Claims`].
//!
//! This is the only module that names `jsonwebtoken`. Each configured key
//! pins exactly one algorithm, chosen from the key's type and never from the
//! token: the header's `alg` only selects which configured key to try, and
//! must then equal that key's algorithm. That closes `alg: none` and the
//! HS256-signed-with-the-RSA-public-key confusion by construction.
//!
//! Time checks (`exp`, `nbf`) are done here rather than by `jsonwebtoken`, so
//! that [`Verifier::verify_at`] takes `now` from the caller and tests need no
//! clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{JwksError, KeySet};
use crate::config::Auth;
use crate::wire::topic::{PatternError, Patterns};

/// Longer tokens are refused before any base64 or JSON work; a real token is
/// well under 2 KiB, and REFRESH lets a client send one in a message far
/// larger than the handshake header limit.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// What a verified token grants.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user id; per-user limits and REFRESH's same-user check key on it.
    pub sub: Arc<str>,
    /// Unix seconds; the session closes with 4001 when it passes.
    pub exp: u64,
    /// Topics the user may subscribe to.
    pub topics: Patterns,
    /// Topics the user may publish to (claim `pub`).
    pub publish: Patterns,
}

/// Why a token was refused. All are the client's fault (401 at the
/// handshake, ERROR 401 on REFRESH); none is worth more than a debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not accepted by any configured key")]
    Algorithm,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience does not match")]
    Audience,
    #[error("token issuer does not match")]
    Issuer,
    #[error("token claims are missing or ill-typed")]
    Claims,
    #[error("token names a key (kid) that no key set holds")]
    UnknownKey,
}

impl TokenError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Algorithm => "algorithm",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Audience => "audience",
            TokenError::Issuer => "issuer",
            TokenError::Claims => "claims",
            TokenError::UnknownKey => "unknown_kid",
        }
    }
}

/// Errors loading keys (at start or on reload); the operator's fault.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read public key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("public key {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("public key {}: is a private key; configure the public half", path.display())]
    PrivateKey { path: PathBuf },
    #[error("cannot read key set {}: {source}", path.display())]
    JwksIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key set {}: {source}", path.display())]
    Jwks { path: PathBuf, source: JwksError },
    #[error("auth.{key}: {source}")]
    Pattern {
        key: &'static str,
        source: PatternError,
    },
}

/// One configured key with its pinned algorithm and prebuilt validation.
#[derive(Debug, Clone)]
struct PinnedKey {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// What every key checks besides its signature (`aud`, `iss`).
#[derive(Debug, Clone, Default)]
struct Pinning {
    audience: Option<String>,
    issuer: Option<String>,
}

/// A key set with validations built once, so that a verification only
/// looks a key up.
#[derive(Debug)]
struct PinnedSet {
    keys: Vec<(Arc<str>, PinnedKey)>,
}

impl PinnedSet {
    fn new(set: &KeySet, pinning: &Pinning) -> PinnedSet {
        PinnedSet {
            keys: set
                .keys()
                .iter()
                .map(|k| (k.kid.clone(), pin(k.alg, k.key.clone(), pinning)))
                .collect(),
        }
    }

    fn get(&self, kid: &str) -> Option<&PinnedKey> {
        self.keys.iter().find(|(k, _)| &**k == kid).map(|(_, p)| p)
    }

    /// A token without `kid` may use a set only when there is no choice.
    fn sole(&self) -> Option<&PinnedKey> {
        match self.keys.as_slice() {
            [(_, only)] => Some(only),
            _ => None,
        }
    }
}

/// The keys read from configuration and files; replaced whole on reload.
#[derive(Debug, Default)]
struct LocalKeys {
    hs256: Option<PinnedKey>,
    public: Option<PinnedKey>,
    file: Option<PinnedSet>,
}

/// What one load of the local keys produced, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySummary {
    pub hs256: bool,
    pub public_key: Option<&'static str>,
    pub jwks_file_keys: Option<usize>,
}

impl std::fmt::Display for KeySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hs256 {}, public key {}, jwks file {}",
            if self.hs256 { "set" } else { "none" },
            self.public_key.unwrap_or("none"),
            match self.jwks_file_keys {
                Some(n) => format!("{n} keys"),
                None => "none".to_owned(),
            }
        )
    }
}

/// The key set fetched from `auth.jwks_url`, shared between the verifier
/// (reads it, asks for an early fetch on an unknown `kid`) and the refresh
/// task in [`super::fetch`] (fetches, installs).
///
/// Early fetches: the first unknown `kid` after `min_refetch` has passed
/// since the last early fetch starts one at once (`in_flight`); unknown
/// `kid`s while it runs join it (a handshake may wait for it, bounded);
/// unknown `kid`s after it, within `min_refetch`, are refused at once and
/// leave one request that the task serves when the interval is over.
pub struct RemoteKeys {
    pinning: Pinning,
    min_refetch: Duration,
    set: RwLock<Option<Arc<PinnedSet>>>,
    early: Mutex<Early>,
    wanted: tokio::sync::Notify,
    /// Bumped after every fetch, good or bad: what joiners wait for.
    fetched: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Early {
    /// When the last early fetch started.
    last: Option<Instant>,
    /// A fetch is running that an unknown `kid` may wait for.
    in_flight: bool,
}

impl RemoteKeys {
    fn new(pinning: Pinning, min_refetch: Duration) -> RemoteKeys {
        RemoteKeys {
            pinning,
            min_refetch,
            set: RwLock::new(None),
            early: Mutex::new(Early::default()),
            wanted: tokio::sync::Notify::new(),
            fetched: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Replaces the fetched set.
    pub fn install(&self, set: &KeySet) {
        let pinned = Arc::new(PinnedSet::new(set, &self.pinning));
        *self.set.write() = Some(pinned);
    }

    /// How many keys the last good fetch installed (0 before any).
    pub fn len(&self) -> usize {
        self.set.read().as_ref().map_or(0, |s| s.keys.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks for an early fetch (a token named an unknown `kid`). Starts one
    /// now when none ran within `min_refetch`, joins the one running, or
    /// else leaves a single request for when the interval is over: any
    /// number of calls cost at most one fetch per `min_refetch`.
    pub fn want_refetch(&self) {
        let mut e = self.early.lock();
        if e.in_flight {
            return;
        }
        let now = Instant::now();
        if e.last.is_none_or(|t| now >= t + self.min_refetch) {
            e.in_flight = true;
            e.last = Some(now);
        }
        drop(e);
        // One stored permit however many calls: the task wakes once.
        self.wanted.notify_one();
    }

    /// While an early fetch runs: a receiver that changes when it is done.
    pub fn in_flight(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let e = self.early.lock();
        e.in_flight.then(|| self.fetched.subscribe())
    }

    /// For the refresh task: waits for [`RemoteKeys::want_refetch`], then
    /// until an early fetch may start (at once, or when `min_refetch` since
    /// the last one is over), and marks it started.
    pub async fn next_early(&self) {
        self.wanted.notified().await;
        loop {
            let ready = {
                let mut e = self.early.lock();
                let now = Instant::now();
                match e.last {
                    _ if e.in_flight => return,
                    Some(t) if now < t + self.min_refetch => t + self.min_refetch,
                    _ => {
                        e.in_flight = true;
                        e.last = Some(now);
                        return;
                    }
                }
            };
            tokio::time::sleep_until(ready.into()).await;
        }
    }

    /// For the refresh task: a fetch is over (installed or failed). Wakes
    /// the handshakes waiting for it, and forgets requests made while it
    /// ran, which it served.
    pub fn fetch_done(&self) {
        self.early.lock().in_flight = false;
        self.fetched.send_modify(|n| *n += 1);
        use futures_util::FutureExt as _;
        let _ = self.wanted.notified().now_or_never();
    }

    fn current(&self) -> Option<Arc<PinnedSet>> {
        self.set.read().clone()
    }
}

/// Verifies tokens against every configured key source. Shared by all
/// shards; the keys can be swapped underneath ([`Verifier::reload`], the
/// URL refresh) while verifications run, each of which reads one snapshot.
pub struct Verifier {
    local: RwLock<Arc<LocalKeys>>,
    remote: Option<Arc<RemoteKeys>>,
    auth: Auth,
    pinning: Pinning,
    leeway_s: u64,
    default_topics: Patterns,
    default_publish: Patterns,
}

/// The claims we read, kept as raw JSON so that an ill-typed claim is
/// reported as [`TokenError::Claims`] rather than as a malformed token.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Value,
    #[serde(default)]
    exp: Value,
    #[serde(default)]
    nbf: Value,
    #[serde(default)]
    topics: Value,
    #[serde(default, rename = "pub")]
    publish: Value,
}

impl Verifier {
    pub fn new(cfg: &Auth) -> Result<Verifier, KeyError> {
        let pinning = Pinning {
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        };
        if !cfg.hs256_secret.is_empty() && cfg.hs256_secret.len() < 32 {
            tracing::warn!(
                "auth.hs256_secret is shorter than 32 bytes; HS256 tokens can be brute-forced"
            );
        }
        let local = load_local(cfg, &pinning)?;
        let default_topics =
            Patterns::parse(&cfg.default_topics).map_err(|source| KeyError::Pattern {
                key: "default_topics",
                source,
            })?;
        let default_publish =
            Patterns::parse(&cfg.default_publish).map_err(|source| KeyError::Pattern {
                key: "default_publish",
                source,
            })?;
        let remote = cfg.jwks_url.as_ref().map(|_| {
            Arc::new(RemoteKeys::new(
                pinning.clone(),
                Duration::from_secs(cfg.jwks_min_refetch_s),
            ))
        });
        Ok(Verifier {
            local: RwLock::new(Arc::new(local)),
            remote,
            auth: cfg.clone(),
            pinning,
            leeway_s: cfg.leeway_s,
            default_topics,
            default_publish,
        })
    }

    /// Reads the key files again (`auth.public_key_file`,
    /// `auth.jwks_file`) and swaps them in whole. On error nothing changes:
    /// the last good keys stay. Verifications in flight finish with the
    /// keys they started with; open sessions are not touched.
    pub fn reload(&self) -> Result<KeySummary, KeyError> {
        let local = load_local(&self.auth, &self.pinning)?;
        let summary = summarize(&local);
        *self.local.write() = Arc::new(local);
        Ok(summary)
    }

    /// The local keys now in use.
    pub fn summary(&self) -> KeySummary {
        summarize(&self.local.read())
    }

    /// The slot the `auth.jwks_url` refresh task fills; `None` without a URL.
    pub fn remote(&self) -> Option<Arc<RemoteKeys>> {
        self.remote.clone()
    }

    /// After [`TokenError::UnknownKey`]: while the early fetch that token
    /// asked for (or joined) runs, a receiver that changes when it is done.
    pub fn fetch_in_flight(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.remote.as_ref().and_then(|r| r.in_flight())
    }

    /// Without keys every token is refused with [`TokenError::Algorithm`];
    /// whether that is acceptable is the caller's decision. A configured
    /// URL counts, fetched or not.
    pub fn has_keys(&self) -> bool {
        let l = self.local.read();
        l.hs256.is_some() || l.public.is_some() || l.file.is_some() || self.remote.is_some()
    }

    /// The algorithm pinned by the public key, if one is configured.
    pub fn public_key_algorithm(&self) -> Option<&'static str> {
        self.local.read().public.as_ref().map(|k| alg_name(k.alg))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_unix())
    }

    /// [`Verifier::verify`] at a given time (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| classify_bad_header(token))?;
        // We implement no JWS extension, and RFC 7515 §4.1.11 says a token
        // naming one we do not understand must be refused.
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        // One snapshot of each source for the whole verification: a reload
        // or fetch that lands meanwhile is seen by the next token.
        let local = self.local.read().clone();
        let remote = self.remote.as_ref().and_then(|r| r.current());
        let pinned = match header.kid.as_deref() {
            // A kid names a key of a set. Without any set configured there
            // is nothing it could name, and the kid is not ours to judge
            // (many issuers stamp one on every token).
            Some(kid) if local.file.is_some() || self.remote.is_some() => {
                let found = local
                    .file
                    .as_ref()
                    .and_then(|s| s.get(kid))
                    .or_else(|| remote.as_deref().and_then(|s| s.get(kid)));
                match found {
                    Some(k) if k.alg == header.alg => k,
                    Some(_) => return Err(TokenError::Algorithm),
                    None => {
                        if let Some(r) = &self.remote {
                            r.want_refetch();
                        }
                        return Err(TokenError::UnknownKey);
                    }
                }
            }
            _ => [
                local.hs256.as_ref(),
                local.public.as_ref(),
                local.file.as_ref().and_then(PinnedSet::sole),
                remote.as_deref().and_then(PinnedSet::sole),
            ]
            .into_iter()
            .flatten()
            .find(|k| k.alg == header.alg)
            .ok_or(TokenError::Algorithm)?,
        };

        let data = jsonwebtoken::decode::<RawClaims>(token, &pinned.key, &pinned.validation)
            .map_err(|e| map_error(e.kind()))?;
        let raw = data.claims;

        let exp = numeric_date(&raw.exp)?.ok_or(TokenError::Claims)?;
        if exp.saturating_add(self.leeway_s) < now {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = numeric_date(&raw.nbf)? {
            if nbf > now.saturating_add(self.leeway_s) {
                return Err(TokenError::NotYetValid);
            }
        }
        let sub = match raw.sub {
            Value::String(s) if !s.is_empty() => Arc::<str>::from(s),
            _ => return Err(TokenError::Claims),
        };
        Ok(Claims {
            sub,
            exp,
            topics: patterns_claim(&raw.topics, &self.default_topics)?,
            publish: patterns_claim(&raw.publish, &self.default_publish)?,
        })
    }
}

// By hand: the derived forms would print HMAC secrets (`DecodingKey` and
// `Auth` show their bytes), and a `{:?}` in a log line must not leak them.
impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.summary().to_string())
            .field("jwks_url_keys", &self.remote.as_ref().map(|r| r.len()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

fn summarize(l: &LocalKeys) -> KeySummary {
    KeySummary {
        hs256: l.hs256.is_some(),
        public_key: l.public.as_ref().map(|k| alg_name(k.alg)),
        jwks_file_keys: l.file.as_ref().map(|s| s.keys.len()),
    }
}

fn load_local(cfg: &Auth, pinning: &Pinning) -> Result<LocalKeys, KeyError> {
    let hs256 = (!cfg.hs256_secret.is_empty()).then(|| {
        pin(
            Algorithm::HS256,
            DecodingKey::from_secret(cfg.hs256_secret.as_bytes()),
            pinning,
        )
    });
    let public = match &cfg.public_key_file {
        Some(path) => {
            let (alg, key) = load_public_key(path)?;
            Some(pin(alg, key, pinning))
        }
        None => None,
    };
    let file = match &cfg.jwks_file {
        Some(path) => {
            let bytes = read_bounded(path).map_err(|source| KeyError::JwksIo {
                path: path.to_path_buf(),
                source,
            })?;
            let set = super::jwks::parse(&bytes).map_err(|source| KeyError::Jwks {
                path: path.to_path_buf(),
                source,
            })?;
            for (kid, why) in set.skipped() {
                tracing::info!(path = %path.display(), kid = ?kid, why, "key set: key skipped");
            }
            Some(PinnedSet::new(&set, pinning))
        }
        None => None,
    };
    Ok(LocalKeys {
        hs256,
        public,
        file,
    })
}

/// Reads at most one byte more than a key set may hold, so that a huge
/// file (or `/dev/zero`) is refused by `parse` instead of filling memory.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(super::jwks::MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

fn pin(alg: Algorithm, key: DecodingKey, cfg: &Pinning) -> PinnedKey {
    let mut validation = Validation::new(alg);
    // Time claims are checked in verify_at against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    // jsonwebtoken only checks aud/iss when the token carries them, so a
    // configured value must also make the claim required. With no audience
    // configured a token's `aud` is not ours to judge.
    validation.validate_aud = cfg.audience.is_some();
    if let Some(aud) = &cfg.audience {
        validation.set_audience(&[aud]);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    if let Some(iss) = &cfg.issuer {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    PinnedKey {
        alg,
        key,
        validation,
    }
}

/// Reads a PEM public key and pins its algorithm: RSA→RS256, EC P-256→ES256,
/// EC P-384→ES384, Ed25519→EdDSA. The key is exercised here so that a bad
/// key fails at startup, not on the first handshake.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), KeyError> {
    let parse_err = |message: &str| KeyError::Parse {
        path: path.to_path_buf(),
        message: message.to_owned(),
    };
    let pem = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&pem);
    let label = text
        .split_once("-----BEGIN ")
        .and_then(|(_, rest)| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or_else(|| parse_err("not a PEM file (no -----BEGIN line)"))?;
    // A private key would parse (the public half is derivable), but it means
    // the signing secret was copied onto the gateway.
    if label.contains("PRIVATE") {
        return Err(KeyError::PrivateKey {
            path: path.to_path_buf(),
        });
    }

    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        let alg = match key_params(&key).map_err(|e| parse_err(&e))? {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            _ => return Err(parse_err("unsupported EC curve (use P-256 or P-384)")),
        };
        (alg, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, key)
    } else {
        return Err(parse_err(
            "not an RSA, EC (P-256/P-384) or Ed25519 public key",
        ));
    };

    // from_*_pem only unwraps the PEM/ASN.1 envelope. Converting to JWK
    // parameters parses RSA keys and checks EC/Ed key lengths (the
    // rust_crypto EdDSA verifier would panic on a short key); building a
    // verifier then checks that EC points are on the curve.
    key_params(&key).map_err(|e| parse_err(&format!("invalid key material: {e}")))?;
    jsonwebtoken::crypto::verify("AA", b"probe", &key, alg)
        .map_err(|e| parse_err(&format!("invalid key material: {e}")))?;
    Ok((alg, key))
}

fn key_params(key: &DecodingKey) -> Result<jsonwebtoken::jwk::AlgorithmParameters, String> {
    jsonwebtoken::jwk::Jwk::from_decoding_key(key, None)
        .map(|j| j.algorithm)
        .map_err(|e| e.to_string())
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

/// The header did not decode. When the token is otherwise JWT-shaped and its
/// header names an `alg` jsonwebtoken does not know (`none`, `HS1`, …), that
/// is an algorithm refusal, which metrics should tell apart from garbage.
fn classify_bad_header(token: &str) -> TokenError {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return TokenError::Malformed;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return TokenError::Malformed;
    };
    let unknown_alg = serde_json::from_slice::<Value>(&bytes).is_ok_and(|h| {
        h.get("alg")
            .and_then(Value::as_str)
            .is_some_and(|alg| alg.parse::<Algorithm>().is_err())
    });
    if unknown_alg {
        TokenError::Algorithm
    } else {
        TokenError::Malformed
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => TokenError::Claims,
        _ => TokenError::Malformed,
    }
}

/// RFC 7519 NumericDate: seconds, possibly fractional. `Ok(None)` when absent.
fn numeric_date(v: &Value) -> Result<Option<u64>, TokenError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(TokenError::Claims),
                }
            }
        }
        _ => Err(TokenError::Claims),
    }
}

/// A `topics`/`pub` claim: absent (or null) means the configured default.
fn patterns_claim(v: &Value, default: &Patterns) -> Result<Patterns, TokenError> {
    match v {
        Value::Null => Ok(default.clone()),
        Value::Array(items) => {
            let list = items
                .iter()
                .map(|i| i.as_str().ok_or(TokenError::Claims))
                .collect::<Result<Vec<&str>, TokenError>>()?;
            Patterns::parse(&list).map_err(|_| TokenError::Claims)
        }
        _ => Err(TokenError::Claims),
    }
}

/// Mints an HS256 token, for tests, the demo and the load generator.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    exp: u64,
    topics: Option<&[&str]>,
    publish: Option<&[&str]>,
) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("iat".into(), now_unix().into());
    if let Some(t) = topics {
        claims.insert("topics".into(), t.into());
    }
    if let Some(p) = publish {
        claims.insert("pub".into(), p.into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 with an HMAC key of any length and a JSON map always signs")
}

type KeyLoader = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// Mints a token signed with a PEM private key, the algorithm pinned by the
/// key type as the verifier pins it (RSA → RS256, P-256 → ES256, P-384 →
/// ES384, Ed25519 → EdDSA). For benches, tests and tools; `None` if the key
/// is none of those.
pub fn mint_with_private_pem(pem: &[u8], sub: &str, exp: u64) -> Option<String> {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("exp".into(), exp.into());
    let attempts: [(Algorithm, KeyLoader); 4] = [
        (Algorithm::RS256, EncodingKey::from_rsa_pem),
        (Algorithm::ES256, EncodingKey::from_ec_pem),
        (Algorithm::ES384, EncodingKey::from_ec_pem),
        (Algorithm::EdDSA, EncodingKey::from_ed_pem),
    ];
    attempts.into_iter().find_map(|(alg, load)| {
        let key = load(pem).ok()?;
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).ok()
    })
}

/// Unix seconds now; 0 if the clock is before 1970, which makes every token
/// look valid-from-the-future rather than panicking.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn key_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn hs_auth() -> Auth {
        Auth {
            hs256_secret: SECRET.into(),
            ..Auth::default()
        }
    }

    fn verifier(cfg: &Auth) -> Verifier {
        Verifier::new(cfg).expect("verifier")
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
    }

    fn hs(claims: Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims,
        )
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn hs256_token_yields_typed_claims() {
        let v = verifier(&hs_auth());
        let token = mint_hs256(
            SECRET,
            "alice",
            NOW + 60,
            Some(&["md.*", "news"]),
            Some(&["chat.*"]),
        );
        let c = v.verify_at(&token, NOW).expect("valid");
        assert_eq!(&*c.sub, "alice");
        assert_eq!(c.exp, NOW + 60);
        assert!(c.topics.allows("md.BTC-USD"));
        assert!(c.topics.allows("news"));
        assert!(!c.topics.allows("other"));
        assert!(c.publish.allows("chat.room1"));
        assert!(!c.publish.allows("md.BTC-USD"));
    }

    #[test]
    fn verify_uses_the_wall_clock() {
        let v = verifier(&hs_auth());
        let token = mint_hs256(SECRET, "alice", now_unix() + 60, None, None);
        assert!(v.verify(&token).is_ok());
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let v = verifier(&hs_auth());
        let token = mint_hs256(
            "another-secret-another-secret-xx",
            "a",
            NOW + 60,
            None,
            None,
        );
        assert_eq!(
            v.verify_at(&token, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let v = verifier(&hs_auth());
        let token = mint_hs256(SECRET, "alice", NOW + 60, None, None);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&json!({"sub": "mallory", "exp": NOW + 60}));
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            v.verify_at(&tampered, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn expiry_honours_leeway() {
        let v = verifier(&hs_auth()); // leeway 5 s
        let token = mint_hs256(SECRET, "a", NOW, None, None);
        assert!(v.verify_at(&token, NOW).is_ok());
        assert!(v.verify_at(&token, NOW + 5).is_ok(), "within leeway");
        assert_eq!(
            v.verify_at(&token, NOW + 6).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn future_nbf_is_not_yet_valid() {
        let v = verifier(&hs_auth());
        let token = hs(json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 60}));
        assert_eq!(
            v.verify_at(&token, NOW).unwrap_err(),
            TokenError::NotYetValid
        );
        let token = hs(json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 5}));
        assert!(v.verify_at(&token, NOW).is_ok(), "within leeway");
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = verifier(&Auth {
            audience: Some("herald".into()),
            issuer: Some("https://idp".into()),
            ..hs_auth()
        });
        let ok = json!({"sub": "a", "exp": NOW + 60, "aud": "herald", "iss": "https://idp"});
        assert!(v.verify_at(&hs(ok), NOW).is_ok());
        let aud_list =
            json!({"sub": "a", "exp": NOW + 60, "aud": ["x", "herald"], "iss": "https://idp"});
        assert!(v.verify_at(&hs(aud_list), NOW).is_ok());

        let cases = [
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "other", "iss": "https://idp"}),
                TokenError::Audience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "iss": "https://idp"}),
                TokenError::Audience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "herald", "iss": "https://evil"}),
                TokenError::Issuer,
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "herald"}),
                TokenError::Issuer,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(
                v.verify_at(&hs(claims.clone()), NOW).unwrap_err(),
                want,
                "{claims}"
            );
        }
    }

    #[test]
    fn unconfigured_audience_and_issuer_are_ignored() {
        let v = verifier(&hs_auth());
        let token = hs(json!({"sub": "a", "exp": NOW + 60, "aud": "whatever", "iss": "anyone"}));
        assert!(v.verify_at(&token, NOW).is_ok());
    }

    #[test]
    fn missing_or_ill_typed_required_claims_are_claims_errors() {
        let v = verifier(&hs_auth());
        for claims in [
            json!({"exp": NOW + 60}),
            json!({"sub": "", "exp": NOW + 60}),
            json!({"sub": 42, "exp": NOW + 60}),
            json!({"sub": "a"}),
            json!({"sub": "a", "exp": "tomorrow"}),
            json!({"sub": "a", "exp": -1}),
            json!({"sub": "a", "exp": NOW + 60, "nbf": "now"}),
            json!({"sub": "a", "exp": NOW + 60, "topics": "md.*"}),
            json!({"sub": "a", "exp": NOW + 60, "topics": [1]}),
            json!({"sub": "a", "exp": NOW + 60, "topics": ["bad topic"]}),
            json!({"sub": "a", "exp": NOW + 60, "pub": {"x": 1}}),
        ] {
            assert_eq!(
                v.verify_at(&hs(claims.clone()), NOW).unwrap_err(),
                TokenError::Claims,
                "{claims}"
            );
        }
    }

    #[test]
    fn fractional_exp_is_accepted() {
        let v = verifier(&hs_auth());
        let token = hs(json!({"sub": "a", "exp": (NOW + 60) as f64 + 0.5}));
        assert_eq!(v.verify_at(&token, NOW).expect("valid").exp, NOW + 60);
    }

    #[test]
    fn absent_topic_claims_fall_back_to_configured_defaults() {
        let v = verifier(&hs_auth());
        let c = v
            .verify_at(&mint_hs256(SECRET, "a", NOW + 60, None, None), NOW)
            .unwrap();
        assert!(c.topics.is_empty(), "no default configured: deny");
        assert!(c.publish.is_empty());

        let v = verifier(&Auth {
            default_topics: vec!["public.*".into()],
            default_publish: vec!["echo".into()],
            ..hs_auth()
        });
        let c = v
            .verify_at(&mint_hs256(SECRET, "a", NOW + 60, None, None), NOW)
            .unwrap();
        assert!(c.topics.allows("public.x"));
        assert!(!c.topics.allows("private.x"));
        assert!(c.publish.allows("echo"));

        // A present claim replaces the default, even when empty.
        let c = v
            .verify_at(
                &mint_hs256(SECRET, "a", NOW + 60, Some(&[]), Some(&["*"])),
                NOW,
            )
            .unwrap();
        assert!(!c.topics.allows("public.x"));
        assert!(c.publish.allows("anything"));
    }

    #[test]
    fn alg_none_is_rejected() {
        let v = verifier(&hs_auth());
        let claims = b64(&json!({"sub": "a", "exp": NOW + 60}));
        for header in [json!({"alg": "none"}), json!({"alg": "none", "typ": "JWT"})] {
            for sig in ["", "AAAA"] {
                let token = format!("{}.{claims}.{sig}", b64(&header));
                assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Algorithm);
            }
        }
    }

    #[test]
    fn malformed_tokens_are_malformed_and_empty_is_missing() {
        let v = verifier(&hs_auth());
        assert_eq!(v.verify_at("", NOW).unwrap_err(), TokenError::Missing);
        let good = mint_hs256(SECRET, "a", NOW + 60, None, None);
        let parts: Vec<&str> = good.split('.').collect();
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        for bad in [
            "garbage",
            "a.b",
            "a.b.c.d",
            "!!!.???.###",
            &format!("{}.{}", parts[0], parts[1]),
            &format!("{}.!!!.{}", parts[0], parts[2]),
            &format!("{}.{}.{}", parts[0], b64(&json!([1, 2])), parts[2]),
            &format!("{}.{}.{}", b64(&json!({"typ": "JWT"})), parts[1], parts[2]),
            &long,
        ] {
            let e = v.verify_at(bad, NOW).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed | TokenError::BadSignature),
                "{bad:.40}: {e:?}"
            );
        }
        assert_eq!(
            v.verify_at("garbage", NOW).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn crit_header_is_refused() {
        let v = verifier(&hs_auth());
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-ext".into()]);
        let token = jsonwebtoken::encode(
            &header,
            &json!({"sub": "a", "exp": NOW + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused_when_only_a_public_key_is_configured() {
        let path = key_path("rsa_public.pem");
        let v = verifier(&Auth {
            public_key_file: Some(path.clone()),
            ..Auth::default()
        });
        let pem = std::fs::read(&path).unwrap();
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem),
            &json!({"sub": "a", "exp": NOW + 60}),
        );
        assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Algorithm);
    }

    #[test]
    fn other_algorithms_than_the_pinned_ones_are_refused() {
        let v = verifier(&hs_auth());
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &json!({"sub": "a", "exp": NOW + 60}),
        );
        assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Algorithm);
    }

    fn public_key_round_trip(stem: &str, alg: Algorithm) {
        let private = std::fs::read(key_path(&format!("{stem}_private.pem"))).unwrap();
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
            _ => unreachable!("test only covers public-key algorithms"),
        }
        .expect("private key");
        let v = verifier(&Auth {
            public_key_file: Some(key_path(&format!("{stem}_public.pem"))),
            ..hs_auth()
        });
        assert_eq!(v.public_key_algorithm(), Some(alg_name(alg)));
        let claims = json!({"sub": "bob", "exp": NOW + 60, "topics": ["md.*"]});
        let c = v.verify_at(&sign(alg, &enc, &claims), NOW).expect("valid");
        assert_eq!(&*c.sub, "bob");
        assert!(c.topics.allows("md.x"));

        // HS256 still works alongside, with its own key.
        assert!(v
            .verify_at(&mint_hs256(SECRET, "a", NOW + 60, None, None), NOW)
            .is_ok());

        let mut tampered = sign(alg, &enc, &claims);
        tampered.truncate(tampered.len() - 4);
        tampered.push_str("AAAA");
        assert_eq!(
            v.verify_at(&tampered, NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn rs256_token_verifies_with_rsa_public_key() {
        public_key_round_trip("rsa", Algorithm::RS256);
    }

    #[test]
    fn es256_token_verifies_with_p256_public_key() {
        public_key_round_trip("ec_p256", Algorithm::ES256);
    }

    #[test]
    fn es384_token_verifies_with_p384_public_key() {
        public_key_round_trip("ec_p384", Algorithm::ES384);
    }

    #[test]
    fn eddsa_token_verifies_with_ed25519_public_key() {
        public_key_round_trip("ed25519", Algorithm::EdDSA);
    }

    #[test]
    fn token_for_another_public_key_type_is_refused() {
        let v = verifier(&Auth {
            public_key_file: Some(key_path("ed25519_public.pem")),
            ..Auth::default()
        });
        let private = std::fs::read(key_path("ec_p256_private.pem")).unwrap();
        let token = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(&private).unwrap(),
            &json!({"sub": "a", "exp": NOW + 60}),
        );
        assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Algorithm);
    }

    #[test]
    fn key_errors_name_the_file() {
        let missing = key_path("nope.pem");
        let e = Verifier::new(&Auth {
            public_key_file: Some(missing.clone()),
            ..Auth::default()
        })
        .unwrap_err();
        assert!(matches!(e, KeyError::Io { .. }));
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let e = Verifier::new(&Auth {
            public_key_file: Some(key_path("rsa_private.pem")),
            ..Auth::default()
        })
        .unwrap_err();
        assert!(matches!(e, KeyError::PrivateKey { .. }), "{e}");

        let e = Verifier::new(&Auth {
            public_key_file: Some(key_path("README.md")),
            ..Auth::default()
        })
        .unwrap_err();
        assert!(matches!(e, KeyError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("README.md"), "{e}");
    }

    #[test]
    fn bad_default_patterns_fail_construction() {
        let e = Verifier::new(&Auth {
            default_topics: vec!["bad topic".into()],
            ..hs_auth()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("auth.default_topics: "), "{e}");
    }

    #[test]
    fn verifier_without_keys_refuses_everything() {
        let v = verifier(&Auth::default());
        assert!(!v.has_keys());
        let token = mint_hs256(SECRET, "a", NOW + 60, None, None);
        assert_eq!(v.verify_at(&token, NOW).unwrap_err(), TokenError::Algorithm);
        assert!(verifier(&hs_auth()).has_keys());
    }

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let all = [
            TokenError::Missing,
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Algorithm,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::Audience,
            TokenError::Issuer,
            TokenError::Claims,
            TokenError::UnknownKey,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    // --- key sets ---------------------------------------------------------

    const OCT_K: &str = "a2V5LXNldC1obWFjLXNlY3JldC1rZXktc2V0LWhtYWMtc2VjcmV0";

    fn private(stem: &str) -> Vec<u8> {
        std::fs::read(key_path(&format!("{stem}_private.pem"))).unwrap()
    }

    fn enc_key(stem: &str, alg: Algorithm) -> EncodingKey {
        let pem = private(stem);
        match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap()
    }

    fn public_jwk(stem: &str, alg: Algorithm, kid: &str) -> Value {
        let mut v = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&enc_key(stem, alg), alg).unwrap(),
        )
        .unwrap();
        v["kid"] = json!(kid);
        v
    }

    fn oct_jwk(kid: &str) -> Value {
        json!({"kty": "oct", "kid": kid, "k": OCT_K})
    }

    fn oct_secret() -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(OCT_K)
            .unwrap()
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, &json!({"sub": "k", "exp": NOW + 60}), key).unwrap()
    }

    /// A JWKS file unique to one test, removed on drop.
    struct SetFile(PathBuf);

    impl SetFile {
        fn new(name: &str, keys: &[Value]) -> SetFile {
            let path = std::env::temp_dir()
                .join(format!("herald-token-{}-{name}.json", std::process::id()));
            let f = SetFile(path);
            f.write(keys);
            f
        }

        fn write(&self, keys: &[Value]) {
            std::fs::write(&self.0, json!({ "keys": keys }).to_string()).unwrap();
        }
    }

    impl Drop for SetFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn set_auth(file: &SetFile) -> Auth {
        Auth {
            jwks_file: Some(file.0.clone()),
            ..Auth::default()
        }
    }

    #[test]
    fn kid_selects_exactly_one_key_of_the_set() {
        let f = SetFile::new(
            "kid",
            &[
                public_jwk("rsa", Algorithm::RS256, "rsa-1"),
                public_jwk("ed25519", Algorithm::EdDSA, "ed-1"),
                oct_jwk("hmac-1"),
            ],
        );
        let v = verifier(&set_auth(&f));
        assert_eq!(v.summary().jwks_file_keys, Some(3));
        let rsa = enc_key("rsa", Algorithm::RS256);
        let ed = enc_key("ed25519", Algorithm::EdDSA);
        let hmac = EncodingKey::from_secret(&oct_secret());
        assert!(v
            .verify_at(&signed(Algorithm::RS256, Some("rsa-1"), &rsa), NOW)
            .is_ok());
        assert!(v
            .verify_at(&signed(Algorithm::EdDSA, Some("ed-1"), &ed), NOW)
            .is_ok());
        assert!(v
            .verify_at(&signed(Algorithm::HS256, Some("hmac-1"), &hmac), NOW)
            .is_ok());

        let cases = [
            // The kid's key pins the algorithm; the header cannot change it.
            (
                signed(Algorithm::EdDSA, Some("rsa-1"), &ed),
                TokenError::Algorithm,
            ),
            (
                signed(Algorithm::RS256, Some("nobody"), &rsa),
                TokenError::UnknownKey,
            ),
            // An oct key never accepts an RS token, an RSA key never an HS
            // one, even signed with its own public JWK/PEM as HMAC secret.
            (
                signed(Algorithm::RS256, Some("hmac-1"), &rsa),
                TokenError::Algorithm,
            ),
            (
                signed(
                    Algorithm::HS256,
                    Some("rsa-1"),
                    &EncodingKey::from_secret(&std::fs::read(key_path("rsa_public.pem")).unwrap()),
                ),
                TokenError::Algorithm,
            ),
            // Three keys: a token without kid has no key to use.
            (signed(Algorithm::RS256, None, &rsa), TokenError::Algorithm),
            (
                signed(
                    Algorithm::HS256,
                    Some("hmac-1"),
                    &EncodingKey::from_secret(b"some-other-secret-some-other-secret"),
                ),
                TokenError::BadSignature,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify_at(&token, NOW).unwrap_err(), want);
        }
    }

    #[test]
    fn token_without_kid_uses_a_single_key_set_or_the_configured_keys() {
        let f = SetFile::new("sole", &[public_jwk("ec_p256", Algorithm::ES256, "only")]);
        let v = verifier(&Auth {
            hs256_secret: SECRET.into(),
            ..set_auth(&f)
        });
        let ec = enc_key("ec_p256", Algorithm::ES256);
        assert!(v
            .verify_at(&signed(Algorithm::ES256, None, &ec), NOW)
            .is_ok());
        assert!(v
            .verify_at(&mint_hs256(SECRET, "a", NOW + 60, None, None), NOW)
            .is_ok());
        // With a set configured, a kid must name one of its keys, even for
        // a token the HS256 secret would verify.
        let hs = signed(
            Algorithm::HS256,
            Some("elsewhere"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert_eq!(v.verify_at(&hs, NOW).unwrap_err(), TokenError::UnknownKey);
    }

    #[test]
    fn kid_is_ignored_when_no_key_set_is_configured() {
        let v = verifier(&hs_auth());
        let hs = signed(
            Algorithm::HS256,
            Some("issuer-stamp"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert!(v.verify_at(&hs, NOW).is_ok());
    }

    #[test]
    fn reload_swaps_the_set_and_a_broken_file_keeps_the_old_one() {
        let f = SetFile::new("reload", &[public_jwk("rsa", Algorithm::RS256, "a")]);
        let v = verifier(&set_auth(&f));
        let rsa = enc_key("rsa", Algorithm::RS256);
        let ed = enc_key("ed25519", Algorithm::EdDSA);
        let a = signed(Algorithm::RS256, Some("a"), &rsa);
        let b = signed(Algorithm::EdDSA, Some("b"), &ed);
        assert!(v.verify_at(&a, NOW).is_ok());
        assert_eq!(v.verify_at(&b, NOW).unwrap_err(), TokenError::UnknownKey);

        f.write(&[public_jwk("ed25519", Algorithm::EdDSA, "b")]);
        assert_eq!(v.reload().expect("reload").jwks_file_keys, Some(1));
        assert!(v.verify_at(&b, NOW).is_ok());
        assert_eq!(v.verify_at(&a, NOW).unwrap_err(), TokenError::UnknownKey);

        std::fs::write(&f.0, "{\"keys\": [").unwrap();
        let e = v.reload().unwrap_err();
        assert!(matches!(e, KeyError::Jwks { .. }), "{e}");
        assert!(v.verify_at(&b, NOW).is_ok(), "the last good set stays");
        std::fs::remove_file(&f.0).unwrap();
        assert!(matches!(v.reload().unwrap_err(), KeyError::JwksIo { .. }));
        assert!(v.verify_at(&b, NOW).is_ok());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let f = SetFile::new("debug", &[oct_jwk("h")]);
        let v = verifier(&Auth {
            hs256_secret: SECRET.into(),
            ..set_auth(&f)
        });
        let shown = format!("{v:?}");
        assert!(
            shown.contains("hs256 set") && shown.contains("1 keys"),
            "{shown}"
        );
        let secret_bytes = format!("{:?}", SECRET.as_bytes());
        let oct_bytes = format!("{:?}", oct_secret());
        for leak in [SECRET, OCT_K, &secret_bytes[1..20], &oct_bytes[1..20]] {
            assert!(!shown.contains(leak), "{shown}");
        }
    }

    #[test]
    fn bad_key_in_a_set_fails_construction_naming_file_and_kid() {
        let mut bad = public_jwk("ed25519", Algorithm::EdDSA, "broken-kid");
        bad["x"] = json!("AAAA");
        let f = SetFile::new("bad", &[bad]);
        let e = Verifier::new(&set_auth(&f)).unwrap_err().to_string();
        assert!(e.contains("broken-kid") && e.contains(".json"), "{e}");
    }
}
