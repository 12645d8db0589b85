//! A `nats-server` of the test's own (JetStream on, free loopback port,
//! store in a temporary directory), never the one a machine may run on
//! 4222; and a TCP proxy that can cut one node off from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{api, start, wait_until, TestServer};

// ---------------------------------------------------------------------------
// Cluster nodes

/// Node `i` of a cluster on `url`: one shard per node keeps the thread
/// count of three nodes in one process modest.
pub fn node(url: &str, i: usize, tweak: impl FnOnce(&mut Config)) -> TestServer {
    start(|c| {
        c.cluster.nats_url = url.to_owned();
        c.cluster.node_id = format!("node-{i}");
        c.cluster.request_timeout_ms = 1000;
        c.shards.count = if i == 0 { 2 } else { 1 };
        tweak(c);
    })
}

pub async fn ready(s: &TestServer) {
    let ok = wait_until(Duration::from_secs(10), || async {
        api(s.admin(), "GET", "/readyz", None, b"").await.status == 200
    })
    .await;
    assert!(ok, "node ready (connected to NATS) within 10 s");
}

pub async fn cluster(url: &str, tweak: impl Fn(&mut Config)) -> Vec<TestServer> {
    let nodes: Vec<TestServer> = (0..3).map(|i| node(url, i, &tweak)).collect();
    for n in &nodes {
        ready(n).await;
    }
    nodes
}

pub async fn stop_all(nodes: Vec<TestServer>) {
    for n in nodes {
        n.stop().await;
    }
}

// ---------------------------------------------------------------------------
// nats-server

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/bin",
    ]) {
        let p = PathBuf::from(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server not found: install it (Debian: apt-get install nats-server) or set HERALD_TEST_NATS_SERVER");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = std::env::temp_dir().join(format!(
            "herald-nats-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = NatsServer {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port with an empty store (a NATS that
    /// lost its data).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("temp dir");
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A TCP proxy to one address whose connections can be cut (and new ones
/// refused) and then allowed again: a node cut off from NATS while the
/// others go on.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = l.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (o, c) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cut }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
