//! The `herald` binary: CLI → config → run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use herald::config::{Config, LogFormat};
use herald::{demo, LogHandler, Server, StartOptions};

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
    let a = &cfg.auth;
    if a.hs256_secret.is_empty()
        && a.public_key_file.is_none()
        && a.jwks_file.is_none()
        && a.jwks_url.is_none()
    {
        eprintln!(
            "herald: config error: auth: no key configured; set auth.hs256_secret, \
             auth.public_key_file, auth.jwks_file or auth.jwks_url (or run with --demo)"
        );
        return ExitCode::from(2);
    }
    if cli.check_config {
        // Load the key files as a start (or a SIGHUP) would, so that a key
        // set can be checked before it is rolled out.
        if let Err(e) = herald::auth::Verifier::new(&cfg.auth) {
            eprintln!("herald: config error: auth: {e}");
            return ExitCode::from(2);
        }
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
        // Before the (slow) start: a SIGHUP's default action is to end the
        // process, and a reload must never do that.
        let mut hangup = Hangup::install();
        let secret = cfg.auth.hs256_secret.clone();
        let feed_token = cfg.ingest.tokens.first().cloned().unwrap_or_default();
        let api_demo = cfg.api.keys.iter().any(|k| k == demo::API_KEY);
        let options = StartOptions {
            demo_site: cli.demo,
        };
        let server = match Server::start_with(cfg, Arc::new(LogHandler), options) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("herald: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        if cli.demo {
            announce_demo(
                &server,
                &secret,
                &feed_token,
                api_demo.then_some(demo::API_KEY),
                !cli.no_demo_feed,
            );
        }
        let feed = (cli.demo && !cli.no_demo_feed)
            .then(|| tokio::spawn(demo::run_feed(server.ingest_addr(), feed_token)));
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hangup.recv() => match server.reload() {
                    Ok(loaded) => tracing::info!(%loaded, "SIGHUP: reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: reload failed; keeping what was loaded"),
                },
            }
        }
        if let Some(feed) = feed {
            feed.abort();
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn announce_demo(
    server: &Server,
    secret: &str,
    feed_token: &str,
    api_key: Option<&str>,
    feed: bool,
) {
    let exp = herald::auth::token::now_unix() + 24 * 3600;
    let token = herald::auth::token::mint_hs256(
        secret,
        "demo-user",
        exp,
        Some(&["demo.*"]),
        Some(&[demo::CHAT]),
    );
    let host = |a: std::net::SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let (ws, admin, ingest) = (
        host(server.ws_addr()),
        host(server.admin_addr()),
        host(server.ingest_addr()),
    );
    // Only the demo's own credentials are printed; a secret the config set
    // stays out of the terminal.
    let shown = |value: &str, demo_value: &str| {
        if value == demo_value {
            format!("\"{value}\"")
        } else {
            "(from your config)".to_owned()
        }
    };
    println!("herald demo: never run --demo in production, its secrets are in the source");
    println!("  page       http://{ws}/   (the public port is bound to {ws} in demo mode)");
    let key = api_key.unwrap_or("<your API key>");
    println!("  admin UI   http://{admin}/ui#key={key}");
    if feed {
        println!("  topics     demo.BTC-USD demo.ETH-USD demo.SOL-USD demo.EUR-USD every 200 ms, {} at 20 Hz; clients may publish to {}", demo::ROOM, demo::CHAT);
    } else {
        println!(
            "  topics     none published here (--no-demo-feed); clients may publish to {}",
            demo::CHAT
        );
    }
    println!("  token      {token}");
    println!(
        "             user demo-user, topics demo.*, pub {}, 24 h, HS256 secret {}",
        demo::CHAT,
        shown(secret, demo::SECRET)
    );
    println!("  watch      cargo run --release --example watch -- --url ws://{ws}/ws --token <token> demo.BTC-USD");
    println!(
        "  feeds      TCP ingest on {ingest}, feed token {}",
        shown(feed_token, demo::FEED_TOKEN)
    );
    println!("  API        curl -H 'Authorization: Bearer {key}' http://{admin}/api/stats");
    println!("  metrics    curl http://{admin}/metrics");
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn install() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("herald: cannot handle SIGHUP (reload is unavailable): {e}");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
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
    // Colour codes only on a terminal: in a pipe, a file or journald they
    // are noise a newcomer has to strip before grepping.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
