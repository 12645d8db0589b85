//! The real binary: SIGTERM drains (PROTOCOL.md §4), and configuration
//! errors are reported with exit code 2.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, herald, ChildGuard, TempConfig};
use common::*;
use futures_util::future::join_all;

fn run_with_timeout(mut cmd: Command, within: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(within)
        .expect("herald exited in time")
        .expect("herald output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0_within_the_drain_time() {
    let (ws_port, ingest_port, admin_port) = (free_port(), free_port(), free_port());
    let cfg = TempConfig::new(&format!(
        r#"
[listen]
ws = "127.0.0.1:{ws_port}"
ingest = "127.0.0.1:{ingest_port}"
admin = "127.0.0.1:{admin_port}"

[auth]
hs256_secret = "{SECRET}"

[ingest]
tokens = ["{FEED_TOKEN}"]

[api]
keys = ["{API_KEY}"]

[shards]
count = 2

[timeouts]
drain_ms = 3000

[log]
level = "warn"
"#
    ));
    let child = herald()
        .arg("--config")
        .arg(&cfg.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn herald");
    let mut child = ChildGuard(child);
    let pid = child.0.id();

    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let ws_addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse().unwrap();
    let up = wait_until(Duration::from_secs(10), || async move {
        match tokio::net::TcpStream::connect(admin).await {
            Ok(_) => api(admin, "GET", "/readyz", None, b"").await.status == 200,
            Err(_) => false,
        }
    })
    .await;
    assert!(up, "herald did not come up");

    let tok = token_all("drain");
    let mut clients = join_all((0..20).map(|i| {
        let tok = tok.clone();
        async move {
            let mut ws = ws_connect(ws_addr, &tok).await;
            subscribe(&mut ws, 1, &format!("drain.{}", i % 3)).await;
            ws
        }
    }))
    .await;
    // Something queued right before the signal is still delivered first.
    api_publish(admin, "drain.0", b"last words").await;

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let signalled = Instant::now();

    let closes = join_all(
        clients
            .iter_mut()
            .map(|ws| async move { expect_close(ws).await }),
    )
    .await;
    for (i, &(code, before)) in closes.iter().enumerate() {
        assert_eq!(code, 1001, "client {i}: {closes:?}");
        let want = usize::from(i % 3 == 0);
        assert_eq!(
            before, want,
            "client {i} publications before the close: {closes:?}"
        );
    }
    // Answer the closes (tungstenite flushes the reply on the next poll).
    for ws in &mut clients {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            futures_util::StreamExt::next(ws),
        )
        .await;
    }

    let exit = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(3000 + 2000),
            "herald still running {:?} after SIGTERM (drain_ms = 3000)",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert!(
        signalled.elapsed() <= Duration::from_millis(3000 + 500),
        "exited after {:?}, drain_ms = 3000",
        signalled.elapsed()
    );
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let cfg = TempConfig::new("[listen]\nwss = \"127.0.0.1:1\"\n");
    let mut cmd = herald();
    cmd.arg("--config").arg(&cfg.0);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("wss"),
        "stderr does not name the key: {stderr}"
    );

    let cfg = TempConfig::new("[lsten]\nws = \"127.0.0.1:1\"\n");
    let mut cmd = herald();
    cmd.arg("--config").arg(&cfg.0);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("lsten"),
        "stderr does not name the section: {stderr}"
    );
}

#[test]
fn print_config_masks_secrets() {
    let cfg = TempConfig::new(
        "[auth]\nhs256_secret = \"s3cr3t-value\"\n[ingest]\ntokens = [\"feed-s3cr3t\"]\n[api]\nkeys = [\"api-s3cr3t\"]\n",
    );
    let mut cmd = herald();
    cmd.arg("--config").arg(&cfg.0).arg("--print-config");
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["s3cr3t-value", "feed-s3cr3t", "api-s3cr3t"] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
    assert!(stdout.contains("hs256_secret"), "{stdout}");
    assert!(stdout.contains("***"), "{stdout}");
    // The output is a valid config again.
    let back: toml::Table = stdout.parse().expect("printed config is TOML");
    assert!(back.contains_key("listen"));
}

#[test]
fn invalid_env_value_exits_2_naming_the_key() {
    let mut cmd = herald();
    cmd.env("HERALD_LISTEN__WS", "nonsense")
        .env("HERALD_AUTH__HS256_SECRET", "x");
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("listen.ws") || stderr.contains("HERALD_LISTEN__WS"),
        "stderr names neither listen.ws nor its variable: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_connected_feed_503_before_closing_it() {
    let server = start(|_| {});
    let mut feed = Feed::open(server.ingest(), "f").await;
    feed.publish("t", b"x").await;
    feed.barrier(1).await;
    let reader = tokio::spawn(async move { feed.expect_error_then_close().await });
    assert!(server.stop().await);
    let (code, message) = reader.await.expect("reader");
    assert_eq!(code, 503, "{message}");
}
