//! Token keys from key sets (PROTOCOL.md "Token keys"): a JWKS file chosen
//! by `kid`, swapped by `Server::reload` and by a real `SIGHUP` to the real
//! binary without dropping open connections, and a JWKS URL served by a
//! real HTTP server, with the early re-fetch bound.

mod auth_support;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use auth_support::*;
use common::*;

/// The status of one upgrade attempt carrying `token`.
async fn upgrade_status(addr: std::net::SocketAddr, token: &str) -> RawResponse {
    raw_upgrade(addr, "/ws", &upgrade_headers_with_token(token))
        .await
        .0
}

fn assert_401(r: &RawResponse) {
    assert_eq!(r.status, 401, "{} {}", r.status_line, r.body_str());
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(challenge.starts_with("Bearer"), "{:?}", r.headers);
}

/// A subscribed session still delivers: the proof that it stayed open.
async fn still_delivers(ws: &mut Ws, admin: std::net::SocketAddr, topic: &str) {
    let seq = api_publish(admin, topic, b"after-rotation").await;
    let (t, got, payload) = next_publication(ws).await;
    assert_eq!(
        (t.as_str(), got, payload.as_slice()),
        (topic, seq, &b"after-rotation"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_keys_are_chosen_by_kid_at_the_handshake() {
    let f = JwksFile::new(
        "by-kid",
        &[
            Key::Rsa.jwk("rsa-2024"),
            Key::P384.jwk("p384"),
            Key::Ed.jwk("ed"),
            oct_jwk("hmac", b"an-hmac-key-from-the-key-set-0123456789"),
        ],
    );
    let path = f.0.clone();
    let server = start(move |c| {
        c.auth.hs256_secret.clear();
        c.auth.jwks_file = Some(path);
    });
    for (key, kid) in [(Key::Rsa, "rsa-2024"), (Key::P384, "p384"), (Key::Ed, "ed")] {
        let r = upgrade_status(server.ws(), &key.token(Some(kid), "alice")).await;
        assert_eq!(r.status, 101, "{kid}: {}", r.status_line);
    }
    let hmac = jsonwebtoken::EncodingKey::from_secret(b"an-hmac-key-from-the-key-set-0123456789");
    let t = sign(
        jsonwebtoken::Algorithm::HS256,
        Some("hmac"),
        &hmac,
        &claims("h"),
    );
    assert_eq!(upgrade_status(server.ws(), &t).await.status, 101);

    let before = metric_sum(
        &metrics_text(server.admin()).await,
        "herald_handshakes_total",
        &["result=\"token_unknown_kid\""],
    );
    // Unknown kid; a kid naming a key of another type; four keys and no kid.
    for token in [
        Key::Rsa.token(Some("rsa-2025"), "alice"),
        Key::Rsa.token(Some("ed"), "alice"),
        Key::Rsa.token(None, "alice"),
    ] {
        assert_401(&upgrade_status(server.ws(), &token).await);
    }
    let after = metric_sum(
        &metrics_text(server.admin()).await,
        "herald_handshakes_total",
        &["result=\"token_unknown_kid\""],
    );
    // Other tests of this binary count unknown kids too, in parallel.
    assert!(after - before >= 1.0, "an unknown kid is counted");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_keys_and_keeps_open_connections() {
    let f = JwksFile::new("rotate", &[Key::Rsa.jwk("key-a")]);
    let path = f.0.clone();
    let server = start(move |c| {
        c.auth.hs256_secret.clear();
        c.auth.jwks_file = Some(path);
    });
    let a = Key::Rsa.token(Some("key-a"), "alice");
    let b = Key::Ed.token(Some("key-b"), "bob");
    let mut open = ws_connect(server.ws(), &a).await;
    subscribe(&mut open, 1, "rot.a").await;
    assert_401(&upgrade_status(server.ws(), &b).await);

    let reloads = |text: &str, result: &str| {
        metric_sum(
            text,
            "herald_key_reloads_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    let before = metrics_text(server.admin()).await;

    f.write(&[Key::Ed.jwk("key-b")]);
    let done = server.reload().expect("reload succeeds");
    assert_eq!(done.auth.jwks_file_keys, Some(1));
    assert_eq!(upgrade_status(server.ws(), &b).await.status, 101);
    assert_401(&upgrade_status(server.ws(), &a).await);
    still_delivers(&mut open, server.admin(), "rot.a").await;

    // A broken file changes nothing.
    f.write_raw(b"{\"keys\": [{\"kty\": \"RSA\"");
    let e = server.reload().expect_err("a broken file fails the reload");
    assert!(e.to_string().contains("rotate.json"), "{e}");
    assert_eq!(upgrade_status(server.ws(), &b).await.status, 101);
    assert_401(&upgrade_status(server.ws(), &a).await);
    still_delivers(&mut open, server.admin(), "rot.a").await;

    // Only this test reloads in this process: the deltas are exact.
    let after = metrics_text(server.admin()).await;
    assert_eq!(reloads(&after, "ok") - reloads(&before, "ok"), 1.0);
    assert_eq!(reloads(&after, "error") - reloads(&before, "error"), 1.0);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_unknown_kids_cause_at_most_one_early_fetch() {
    let idp = JwksServer::start(jwks(&[Key::Rsa.jwk("a")])).await;
    let url = idp.url();
    let server = start(move |c| {
        c.auth.hs256_secret.clear();
        c.auth.jwks_url = Some(url);
        c.auth.jwks_min_refetch_s = 30;
    });
    assert_eq!(idp.hits(), 1, "fetched once at start");
    let a = Key::Rsa.token(Some("a"), "alice");
    assert_eq!(upgrade_status(server.ws(), &a).await.status, 101);

    // The issuer adds key b. The first b token starts an early fetch and
    // waits for it; a flood of made-up kids right after it fetches nothing
    // more and is refused at once.
    idp.serve(200, jwks(&[Key::Rsa.jwk("a"), Key::Ed.jwk("b")]));
    let b = Key::Ed.token(Some("b"), "bob");
    assert_eq!(
        upgrade_status(server.ws(), &b).await.status,
        101,
        "the first token with the new kid waits for the fetch it started"
    );
    assert_eq!(idp.hits(), 2);
    let flood: Vec<String> = (0..40)
        .map(|i| Key::Ed.token(Some(&format!("made-up-{i}")), "mallory"))
        .collect();
    for t in &flood {
        assert_401(&upgrade_status(server.ws(), t).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idp.hits(), 2, "one early fetch per jwks_min_refetch_s");
    assert_eq!(upgrade_status(server.ws(), &a).await.status, 101);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_within_the_interval_is_fetched_for_when_it_ends() {
    let idp = JwksServer::start(jwks(&[Key::Rsa.jwk("a")])).await;
    let url = idp.url();
    let server = start(move |c| {
        c.auth.hs256_secret.clear();
        c.auth.jwks_url = Some(url);
        c.auth.jwks_min_refetch_s = 1;
    });
    let late = Key::Ed.token(Some("late"), "carol");
    let other = Key::Ed.token(Some("other"), "carol");
    // Not published yet: the early fetch runs (hit 2) and does not have it.
    assert_401(&upgrade_status(server.ws(), &late).await);
    assert_eq!(idp.hits(), 2);
    // Within the interval: refused at once, one fetch left for later.
    assert_401(&upgrade_status(server.ws(), &other).await);
    idp.serve(200, jwks(&[Key::Rsa.jwk("a"), Key::Ed.jwk("late")]));
    let fetched = wait_until(T, || async { idp.hits() >= 3 }).await;
    assert!(fetched, "the deferred fetch ran when the interval ended");
    assert_eq!(upgrade_status(server.ws(), &late).await.status, 101);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_keeps_the_last_good_set() {
    let idp = JwksServer::start(jwks(&[Key::P256.jwk("good")])).await;
    let url = idp.url();
    let server = start(move |c| {
        c.auth.hs256_secret.clear();
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh_s = 1;
        c.auth.jwks_min_refetch_s = 1;
    });
    let good = Key::P256.token(Some("good"), "alice");
    assert_eq!(upgrade_status(server.ws(), &good).await.status, 101);

    let failures: [(u16, Vec<u8>, &str); 3] = [
        (503, b"busy".to_vec(), "http"),
        (200, b"{\"keys\": \"nope\"}".to_vec(), "invalid"),
        (
            200,
            vec![b' '; herald::auth::jwks::MAX_JWKS_BYTES + 10],
            "too_large",
        ),
    ];
    for (status, body, label) in failures {
        idp.serve(status, body);
        let seen = idp.hits();
        let admin = server.admin();
        let counted = wait_until(Duration::from_secs(5), || async move {
            metric_sum(
                &metrics_text(admin).await,
                "herald_jwks_fetches_total",
                &[&format!("result=\"{label}\"")],
            ) >= 1.0
        })
        .await;
        assert!(counted, "a {label} failure is counted");
        assert!(idp.hits() > seen);
        assert_eq!(
            upgrade_status(server.ws(), &good).await.status,
            101,
            "after a {label} failure the last good set is still used"
        );
    }
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// The real binary and a real SIGHUP

struct Gateway {
    child: Child,
    ws: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Gateway {
    /// Starts `herald --config <file>` and reads its address from its log.
    fn spawn(config: &std::path::Path) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(config)
            .env("HERALD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains("herald listening") {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("herald logs its addresses");
        let addr = |name: &str| -> std::net::SocketAddr {
            let at = line.find(&format!("{name}=")).expect("address in the log") + name.len() + 1;
            line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Gateway {
            ws: addr("ws_addr"),
            admin: addr("admin_addr"),
            child,
            log,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_keys_of_the_running_binary() {
    let f = JwksFile::new("sighup", &[Key::Rsa.jwk("key-a")]);
    let config = f.0.with_file_name("sighup.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nws = \"127.0.0.1:0\"\ningest = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [auth]\njwks_file = {:?}\n[api]\nkeys = [\"{API_KEY}\"]\n[shards]\ncount = 1\n",
            f.0.display().to_string()
        ),
    )
    .unwrap();
    let mut gw = Gateway::spawn(&config);
    let a = Key::Rsa.token(Some("key-a"), "alice");
    let b = Key::Ed.token(Some("key-b"), "bob");
    let mut open = ws_connect(gw.ws, &a).await;
    subscribe(&mut open, 1, "hup.a").await;
    assert_401(&upgrade_status(gw.ws, &b).await);

    f.write(&[Key::Ed.jwk("key-b")]);
    gw.signal(libc::SIGHUP);
    let ws = gw.ws;
    let rotated = wait_until(T, || {
        let b = b.clone();
        async move { upgrade_status(ws, &b).await.status == 101 }
    })
    .await;
    assert!(rotated, "B is accepted after SIGHUP:\n{}", gw.log());
    assert_401(&upgrade_status(gw.ws, &a).await);
    still_delivers(&mut open, gw.admin, "hup.a").await;

    // A broken file: the gateway lives on with the set it had.
    f.write_raw(b"not json");
    gw.signal(libc::SIGHUP);
    let logged = wait_until(T, || {
        let l = gw.log();
        async move { l.contains("reload failed") }
    })
    .await;
    assert!(logged, "a failed reload is logged:\n{}", gw.log());
    assert!(gw.alive(), "SIGHUP never stops the gateway");
    assert_eq!(upgrade_status(gw.ws, &b).await.status, 101);
    assert_401(&upgrade_status(gw.ws, &a).await);
    ping(&mut open, 7).await;
    still_delivers(&mut open, gw.admin, "hup.a").await;

    gw.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = gw.child.try_wait().unwrap() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.expect("exits after SIGTERM").success());
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_url_that_fails_tls_is_a_counted_failure_not_a_failed_start() {
    // A plain-HTTP server behind an https:// URL: the TLS client (rustls,
    // ring) really runs and fails its handshake.
    let idp = JwksServer::start(jwks(&[Key::Rsa.jwk("a")])).await;
    let url = format!("https://{}/jwks.json", idp.addr);
    let server = start(move |c| {
        c.auth.jwks_url = Some(url);
        c.auth.jwks_min_refetch_s = 30;
    });
    let admin = server.admin();
    let counted = wait_until(T, || async move {
        metric_sum(
            &metrics_text(admin).await,
            "herald_jwks_fetches_total",
            &["result=\"connect\""],
        ) >= 1.0
    })
    .await;
    assert!(counted, "the TLS failure is counted");
    assert_eq!(idp.hits(), 0, "no HTTP request got through");
    assert_401(&upgrade_status(server.ws(), &Key::Rsa.token(Some("a"), "alice")).await);
    // The other key sources keep working.
    assert_eq!(
        upgrade_status(server.ws(), &token_all("bob")).await.status,
        101
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_nothing_to_reload_keeps_the_binary_running() {
    let dir = std::env::temp_dir().join(format!("herald-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("hup-plain.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nws = \"127.0.0.1:0\"\ningest = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [auth]\nhs256_secret = \"{SECRET}\"\n[shards]\ncount = 1\n"
        ),
    )
    .unwrap();
    let mut gw = Gateway::spawn(&config);
    let mut open = ws_connect(gw.ws, &token_all("alice")).await;
    for _ in 0..3 {
        gw.signal(libc::SIGHUP);
    }
    let logged = wait_until(T, || {
        let l = gw.log();
        async move { l.matches("SIGHUP: reloaded").count() >= 1 }
    })
    .await;
    assert!(logged, "the reload is logged:\n{}", gw.log());
    assert!(gw.alive(), "SIGHUP never stops the gateway");
    ping(&mut open, 1).await;
    assert_eq!(upgrade_status(gw.ws, &token_all("bob")).await.status, 101);
    let _ = std::fs::remove_file(config);
}

#[test]
fn check_config_loads_the_key_files() {
    let mut bad = Key::Ed.jwk("short-key");
    bad["x"] = serde_json::json!("AAAA");
    let good = JwksFile::new("check-good", &[Key::Ed.jwk("fine")]);
    let broken = JwksFile::new("check-bad", &[Key::Rsa.jwk("ok"), bad]);
    let run = |f: &JwksFile| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--check-config")
            .env("HERALD_AUTH__JWKS_FILE", &f.0)
            .output()
            .expect("run herald --check-config")
    };
    let out = run(&good);
    assert!(out.status.success(), "{out:?}");
    let out = run(&broken);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("short-key") && err.contains("check-bad.json"),
        "{err}"
    );
}
