//! `handshakes`: how fast the gateway upgrades connections, plain or TLS.
//!
//! Opens `--conns` connections with at most `--concurrency` in flight, each
//! with its own HS256 JWT (minted before the clock starts), and holds every
//! one that upgraded until all are done, as a connect storm would. With a
//! `wss://` URL each connection first does a full TLS handshake (no session
//! resumption: every client is new), checked against `--tls-ca`. Reports
//! upgrades/s, the connect→101 latency and, with `--server-pid`, the
//! server's CPU per upgrade — the figure that does not depend on how much
//! of the box the client took.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::cli::{parse_url, HandshakesArgs};
use crate::procstat;
use crate::ws::{self, FailCause};

#[derive(Serialize)]
struct Report {
    scheme: &'static str,
    conns: u64,
    upgraded: u64,
    failures: std::collections::BTreeMap<String, u64>,
    wall_s: f64,
    per_s: f64,
    latency_ms: Latency,
    /// Server CPU (user + system) per upgraded connection, µs.
    server_cpu_us_per_upgrade: Option<f64>,
    /// Server RSS growth per connection held, bytes.
    server_rss_per_conn: Option<f64>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

pub fn main(a: HandshakesArgs) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Either kind of connection, held open until the storm is over.
enum Held {
    // Only held so that the server keeps the connection; never read again.
    #[allow(dead_code)]
    Plain(tokio::net::TcpStream),
    #[allow(dead_code)]
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

async fn run(a: HandshakesArgs) -> Result<std::process::ExitCode, String> {
    let tls = a.url.starts_with("wss://");
    let (addr, host, path) = parse_url(&a.url, if tls { "wss" } else { "ws" }, "/ws")?;
    let connector = if tls {
        let ca = a
            .tls_ca
            .as_ref()
            .ok_or("a wss:// URL needs --tls-ca (the PEM the server's chain ends in)")?;
        Some(connector(ca)?)
    } else {
        None
    };
    let tokens: Vec<String> = (0..a.conns)
        .map(|i| {
            herald::auth::token::mint_hs256(
                &a.secret,
                &format!("hs-{i}"),
                herald::auth::token::now_unix() + 3600,
                Some(&["*"]),
                None,
            )
        })
        .collect();
    let requests: Vec<Vec<u8>> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ws::upgrade_request(&host, &path, i as u64, Some("herald.v1"), Some(t)))
        .collect();
    let requests = Arc::new(requests);
    let pids: Vec<u32> = a.server_pid.into_iter().collect();
    let before = if pids.is_empty() {
        None
    } else {
        Some(procstat::sample(&pids)?)
    };

    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let started = Instant::now();
    let deadline = Duration::from_secs(a.timeout_s);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.conns {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "semaphore closed")?;
        let requests = requests.clone();
        let connector = connector.clone();
        let src = Ipv4Addr::new(127, 0, 0, 1 + (i % a.source_ips.max(1) as u64) as u8);
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r =
                tokio::time::timeout(deadline, one(src, addr, connector, &requests[i as usize]))
                    .await
                    .unwrap_or(Err(FailCause::Timeout));
            drop(permit);
            r.map(|held| (held, t0.elapsed()))
        });
    }
    let mut held = Vec::with_capacity(a.conns as usize);
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut failures = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((h, took))) => {
                let _ = hist.record(took.as_micros().max(1) as u64);
                held.push(h);
            }
            Ok(Err(cause)) => *failures.entry(cause.label()).or_insert(0) += 1,
            Err(_) => *failures.entry("panic".to_string()).or_insert(0) += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let after = if pids.is_empty() {
        None
    } else {
        Some(procstat::sample(&pids)?)
    };
    let upgraded = held.len() as u64;
    let (cpu, rss) = match (before, after) {
        (Some(b), Some(e)) if upgraded > 0 => (
            Some((e.cpu_s - b.cpu_s) * 1e6 / upgraded as f64),
            Some((e.rss as f64 - b.rss as f64) / upgraded as f64),
        ),
        _ => (None, None),
    };
    drop(held);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        scheme: if tls { "wss" } else { "ws" },
        conns: a.conns,
        upgraded,
        failures,
        wall_s: wall,
        per_s: upgraded as f64 / wall.max(1e-9),
        latency_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            max: hist.max() as f64 / 1000.0,
        },
        server_cpu_us_per_upgrade: cpu,
        server_rss_per_conn: rss,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{}: {}/{} upgraded in {:.2} s = {:.0}/s, connect→101 p50 {:.1} ms p99 {:.1} ms, failures {:?}, server CPU {} µs/upgrade",
            report.scheme,
            report.upgraded,
            report.conns,
            report.wall_s,
            report.per_s,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.failures,
            cpu.map_or("n/a".into(), |c| format!("{c:.1}")),
        );
    }
    Ok(if upgraded == a.conns {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    // ring, as herald; X25519 first, as browsers offer it (rustls's ring
    // default leads with P-384, which would make every handshake pay for
    // ring's slow P-384 or a retry).
    #[allow(deprecated)]
    let provider = Arc::new({
        use rustls::crypto::ring::{default_provider, kx_group};
        rustls::crypto::CryptoProvider {
            kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
            ..default_provider()
        }
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a new client: no resumption, a full handshake each.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn one(
    src: Ipv4Addr,
    addr: std::net::SocketAddr,
    connector: Option<tokio_rustls::TlsConnector>,
    request: &[u8],
) -> Result<Held, FailCause> {
    let tcp = ws::connect(src, addr, 0)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    match connector {
        None => {
            let mut s = tcp;
            upgrade(&mut s, request).await?;
            Ok(Held::Plain(s))
        }
        Some(c) => {
            let name = ServerName::IpAddress(addr.ip().into());
            let mut s = c.connect(name, tcp).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => FailCause::Protocol,
                _ => FailCause::from_io(&e),
            })?;
            upgrade(&mut s, request).await?;
            Ok(Held::Tls(Box::new(s)))
        }
    }
}

/// Sends the upgrade request and reads the answer's head; 101 or a cause.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<(), FailCause> {
    s.write_all(request)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    let mut buf = Vec::with_capacity(256);
    ws::read_upgrade_answer(s, &mut buf).await.map(|_| ())
}
