//! Helpers for the key-set tests: JWKs and tokens from the PEM keys in
//! `tests/keys`, a key-set file, a real HTTP server serving a key set it
//! counts requests for, and a debug-level log capture.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// A key of `tests/keys`: `rsa`, `ec_p256`, `ec_p384`, `ed25519`.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    Rsa,
    P256,
    P384,
    Ed,
}

impl Key {
    pub fn stem(self) -> &'static str {
        match self {
            Key::Rsa => "rsa",
            Key::P256 => "ec_p256",
            Key::P384 => "ec_p384",
            Key::Ed => "ed25519",
        }
    }

    pub fn alg(self) -> Algorithm {
        match self {
            Key::Rsa => Algorithm::RS256,
            Key::P256 => Algorithm::ES256,
            Key::P384 => Algorithm::ES384,
            Key::Ed => Algorithm::EdDSA,
        }
    }

    pub fn encoding(self) -> EncodingKey {
        let pem = std::fs::read(key_path(&format!("{}_private.pem", self.stem()))).unwrap();
        match self {
            Key::Rsa => EncodingKey::from_rsa_pem(&pem),
            Key::P256 | Key::P384 => EncodingKey::from_ec_pem(&pem),
            Key::Ed => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap()
    }

    pub fn public_pem(self) -> Vec<u8> {
        std::fs::read(key_path(&format!("{}_public.pem", self.stem()))).unwrap()
    }

    /// The public JWK, with `kid` and without `alg` (the type pins it).
    pub fn jwk(self, kid: &str) -> Value {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding(), self.alg()).unwrap();
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = json!(kid);
        v.as_object_mut().unwrap().remove("alg");
        v
    }

    /// A token for `sub`, valid for an hour, allowed everywhere.
    pub fn token(self, kid: Option<&str>, sub: &str) -> String {
        sign(self.alg(), kid, &self.encoding(), &claims(sub))
    }
}

/// An `oct` (HMAC) JWK and its secret.
pub fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
    use base64::Engine;
    json!({
        "kty": "oct",
        "kid": kid,
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    })
}

pub fn claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "exp": herald::auth::token::now_unix() + 3600,
        "topics": ["*"],
        "pub": ["*"],
    })
}

pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

pub fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

/// A key-set file unique to one test, removed on drop.
pub struct JwksFile(pub PathBuf);

impl JwksFile {
    pub fn new(name: &str, keys: &[Value]) -> JwksFile {
        let dir = std::env::temp_dir().join(format!("herald-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = JwksFile(dir.join(format!("{name}.json")));
        f.write(keys);
        f
    }

    /// Replaces the file in one rename, as a careful operator would.
    pub fn write(&self, keys: &[Value]) {
        self.write_raw(&jwks(keys));
    }

    pub fn write_raw(&self, bytes: &[u8]) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl Drop for JwksFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A real HTTP/1.1 server on a loopback port serving one document at every
/// path, with a status and body the test can change; counts requests.
pub struct JwksServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<(u16, Vec<u8>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(body: Vec<u8>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new((200u16, body)));
        let (h, a) = (hits.clone(), answer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, a) = (h.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = a.lock().unwrap().clone();
                        async move {
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            hits,
            answer,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn serve(&self, status: u16, body: Vec<u8>) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything every in-process gateway of this test binary logged, at
/// debug level and above, as text.
pub fn logs() -> String {
    let buf = log_buffer();
    let bytes = buf.lock().unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Installs the capture (once per test binary); call before starting a
/// gateway.
pub fn capture_logs() {
    let _ = log_buffer();
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = BufWriter(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
