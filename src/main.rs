//! The `herald` binary: CLI → config → run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald::config::{Config, LogFormat};
use herald::{demo, LogHandler, Server};

/// herald: a raw-WebSocket, high fan-out push gateway.
///
/// Every config key has a default; `HERALD_<SECTION>__<KEY>` environment
/// variables override the file (e.g. HERALD_LISTEN__WS=0.0.0.0:9000).
#[derive(Parser, Debug)]
#[command(name = "herald", version)]
struct Cli {
    /// TOML config file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective config (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
    /// Run with demo credentials (where the config sets none) and a demo
    /// feed publishing ticks to `demo.BTC-USD`, `demo.ETH-USD`, ...
    #[arg(long)]
    demo: bool,
    /// With --demo: the credentials, but no demo feed (for all nodes but
    /// one of a local cluster, where one feed is enough).
    #[arg(long, requires = "demo")]
    no_demo_feed: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.demo {
        demo::apply_defaults(&mut cfg);
    }
    if cli.print_config {
        print!("{}", cfg.to_toml_masked());
        return ExitCode::SUCCESS;
    }
    if cfg.auth.hs256_secret.is_empty() && cfg.auth.public_key_file.is_none() {
        eprintln!(
            "herald: config error: auth: no key configured; set auth.hs256_secret or \
             auth.public_key_file (or run with --demo)"
        );
        return ExitCode::from(2);
    }
    if cli.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    init_logs(&cfg);

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let secret = cfg.auth.hs256_secret.clone();
        let feed_token = cfg.ingest.tokens.first().cloned().unwrap_or_default();
        let server = match Server::start(cfg, Arc::new(LogHandler)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("herald: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        if cli.demo {
            announce_demo(&server, &secret);
        }
        let feed = (cli.demo && !cli.no_demo_feed).then(|| {
            tokio::spawn(demo::run_feed(
                server.ingest_addr(),
                feed_token,
                Duration::from_millis(200),
            ))
        });
        wait_for_signal().await;
        if let Some(feed) = feed {
            feed.abort();
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn announce_demo(server: &Server, secret: &str) {
    let exp = herald::auth::token::now_unix() + 24 * 3600;
    let token = herald::auth::token::mint_hs256(secret, "demo-user", exp, Some(&["demo.*"]), None);
    let ws = server.ws_addr();
    let host = if ws.ip().is_unspecified() {
        format!("127.0.0.1:{}", ws.port())
    } else {
        ws.to_string()
    };
    println!(
        "herald demo: ticks every 200 ms on demo.BTC-USD, demo.ETH-USD, demo.SOL-USD, demo.EUR-USD"
    );
    println!("watch them:  cargo run --release --example watch -- --url ws://{host}/ws --token {token} demo.BTC-USD demo.ETH-USD");
    println!(
        "stats:       curl -H 'Authorization: Bearer {}' http://{}/api/stats",
        demo::API_KEY,
        server.admin_addr()
    );
    println!("metrics:     curl http://{}/metrics", server.admin_addr());
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
