//! The real `herald` binary as a child process: a config file on free
//! loopback ports, start, readiness, signals, exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{api, wait_until, API_KEY, FEED_TOKEN, SECRET};

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
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
        std::fs::write(&path, text).expect("write the config file");
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills the child if the test ends without it having exited.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `herald` command with no `HERALD_*` variables inherited.
pub fn herald() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD") {
            c.env_remove(k);
        }
    }
    c
}

/// The three listening addresses of a gateway process.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub ws: SocketAddr,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn free() -> Ports {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Ports {
            ws: at(free_port()),
            ingest: at(free_port()),
            admin: at(free_port()),
        }
    }
}

/// A config with the test secrets on `ports`; `extra` is appended as is
/// (more sections, e.g. `[timeouts]`).
pub fn config_text(ports: Ports, extra: &str) -> String {
    format!(
        r#"
[listen]
ws = "{ws}"
ingest = "{ingest}"
admin = "{admin}"

[auth]
hs256_secret = "{SECRET}"

[ingest]
tokens = ["{FEED_TOKEN}"]

[api]
keys = ["{API_KEY}"]

[log]
level = "warn"

{extra}
"#,
        ws = ports.ws,
        ingest = ports.ingest,
        admin = ports.admin,
    )
}

/// A running `herald --config <file>`.
pub struct Proc {
    pub child: ChildGuard,
    pub ports: Ports,
    _config: TempConfig,
}

impl Proc {
    /// Starts the binary with `config_text(ports, extra)`; `tweak` may
    /// change the command (limits, environment) before it is spawned.
    pub fn spawn(ports: Ports, extra: &str, tweak: impl FnOnce(&mut Command)) -> Proc {
        let config = TempConfig::new(&config_text(ports, extra));
        let mut cmd = herald();
        cmd.arg("--config")
            .arg(&config.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("spawn herald");
        Proc {
            child: ChildGuard(child),
            ports,
            _config: config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        let admin = self.ports.admin;
        let up = wait_until(Duration::from_secs(10), || async move {
            match tokio::net::TcpStream::connect(admin).await {
                Ok(_) => api(admin, "GET", "/readyz", None, b"").await.status == 200,
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "herald did not come up on {admin}");
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with our own child's pid has no memory effects.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `within` for the process to exit.
    pub async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.0.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
