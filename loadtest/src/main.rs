//! `herald-load`: the load generator of herald.
//!
//! - `fanout`: many subscribers, a publisher, latency and throughput;
//! - `idle`: server memory per idle connection;
//! - `smoke`: one subscriber, ten messages, in order (CI);
//! - `handshakes`: upgrades/s and server CPU per upgrade, `ws://` or `wss://`;
//! - `soak`: a long run with churn, slow readers of every policy and feed
//!   restarts; RSS, descriptors and p99 over time, a verdict, an HTML report.
//!
//! Works against herald (`--url`, its protocol) and against the peer
//! servers of `shared/peers` (`--raw-url`: `GET /sub/<topic>`, `POST
//! /pub/<topic>`). The clients are bare TCP streams with a hand-written
//! RFC 6455 client side (see `ws`), so the generator spends little of the
//! CPU it shares with the server it measures. Connections live in worker
//! child processes (`--workers`), each single-threaded; the parent
//! publishes, follows progress and merges the results.

mod cli;
mod control;
mod fanout;
mod handshakes;
mod html;
mod idle;
mod plan;
mod procstat;
mod publish;
mod report;
mod scrape;
mod series;
mod smoke;
mod soak;
mod soak_html;
mod soak_worker;
mod worker;
mod ws;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker => worker::main(),
        Cmd::Fanout(a) => block_on(fanout::run(*a)),
        Cmd::Idle(a) => block_on(idle::run(a)),
        Cmd::Smoke(a) => block_on(smoke::run(a)),
        Cmd::Handshakes(a) => handshakes::main(a),
        Cmd::Soak(a) => block_on(soak::run(*a)),
        Cmd::SoakWorker => soak_worker::main(),
    }
}

/// The parent is light (a publisher and some bookkeeping): one thread.
fn block_on(fut: impl Future<Output = Result<ExitCode, String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(fut);
    // Don't wait on blocking helpers (none expected) at shutdown.
    rt.shutdown_background();
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald-load: {e}");
            ExitCode::FAILURE
        }
    }
}
