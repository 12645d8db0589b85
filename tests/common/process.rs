//! The real `herald` binary as a child process, for tests that measure it
//! from outside (RSS, signals, exit codes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file in the temp dir, removed on drop.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(text: &str) -> TempConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "herald-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running gateway process on free loopback ports; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub ws: SocketAddr,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
    _config: TempConfig,
}

impl Gateway {
    /// Starts the binary with the test credentials, free ports and `extra`
    /// TOML appended (sections other than `[listen]`, `[auth]`, `[ingest]`,
    /// `[api]`), and waits until `/readyz` answers.
    pub async fn start(extra: &str) -> Gateway {
        let (ws, ingest, admin) = (free_port(), free_port(), free_port());
        let config = TempConfig::new(&format!(
            r#"
[listen]
ws = "127.0.0.1:{ws}"
ingest = "127.0.0.1:{ingest}"
admin = "127.0.0.1:{admin}"

[auth]
hs256_secret = "{secret}"

[ingest]
tokens = ["{feed}"]

[api]
keys = ["{key}"]

{extra}
"#,
            secret = super::SECRET,
            feed = super::FEED_TOKEN,
            key = super::API_KEY,
        ));
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&config.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        let g = Gateway {
            child,
            ws: ([127, 0, 0, 1], ws).into(),
            ingest: ([127, 0, 0, 1], ingest).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            _config: config,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(g.admin).await.is_ok()
                && super::api(g.admin, "GET", "/readyz", None, b"")
                    .await
                    .status
                    == 200
            {
                return g;
            }
            assert!(Instant::now() < deadline, "herald did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/<pid>/status")
            * 1024
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
