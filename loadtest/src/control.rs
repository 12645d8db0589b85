//! The parent's side of the worker processes: spawn `herald-load worker`
//! children, hand each its plan, follow their events, stop and reap them.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use crate::report::count;
use crate::worker::{Event, Progress, Ready, WorkerPlan, WorkerResult};

pub enum Msg {
    Event(Event),
    /// The child's stdout closed (it exited or crashed).
    Exited,
}

pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Msg)>,
    pub ready: Vec<Option<Ready>>,
    pub progress: Vec<Progress>,
    pub results: Vec<Option<WorkerResult>>,
    pub exited: Vec<bool>,
}

impl Workers {
    pub async fn spawn(plans: &[WorkerPlan]) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let (tx, rx) = mpsc::channel(1024);
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawning worker {i}: {e}"))?;
            let mut stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let mut line = serde_json::to_string(plan).map_err(|e| format!("plan: {e}"))?;
            line.push('\n');
            stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("worker {i} stdin: {e}"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&l) {
                        Ok(ev) => {
                            if tx.send((i, Msg::Event(ev))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {i}: unreadable line ({e}): {l}"),
                    }
                }
                let _ = tx.send((i, Msg::Exited)).await;
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        let n = plans.len();
        Ok(Workers {
            children,
            stdins,
            rx,
            ready: vec![None; n],
            progress: vec![Progress::default(); n],
            results: vec![None; n],
            exited: vec![false; n],
        })
    }

    /// Next event, folded into the state. `None` when every child is gone.
    pub async fn next(&mut self) -> Option<usize> {
        let (i, msg) = self.rx.recv().await?;
        match msg {
            Msg::Event(Event::Ready(r)) => self.ready[i] = Some(r),
            Msg::Event(Event::Progress(p)) => self.progress[i] = p,
            Msg::Event(Event::Result(r)) => self.results[i] = Some(*r),
            Msg::Exited => self.exited[i] = true,
        }
        Some(i)
    }

    /// Follows the workers until every one is connected (or has exited),
    /// `deadline` passes or `ctrl_c` fires, printing progress on each
    /// `tick` unless `quiet`. Returns true if interrupted.
    pub async fn wait_ready<F: Future + Unpin>(
        &mut self,
        conns: u64,
        start: Instant,
        deadline: Instant,
        quiet: bool,
        tick: &mut Interval,
        ctrl_c: &mut F,
    ) -> bool {
        while !self.all_ready() {
            tokio::select! {
                r = self.next() => if r.is_none() { break },
                _ = tick.tick() => if !quiet {
                    eprintln!(
                        "[{:>4.0}s] connecting: {} / {} open",
                        start.elapsed().as_secs_f64(),
                        count(self.open()),
                        count(conns)
                    );
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut *ctrl_c => return true,
            }
        }
        false
    }

    pub fn all_ready(&self) -> bool {
        self.ready
            .iter()
            .zip(&self.exited)
            .all(|(r, &x)| r.is_some() || x)
    }

    pub fn all_done(&self) -> bool {
        self.results
            .iter()
            .zip(&self.exited)
            .all(|(r, &x)| r.is_some() || x)
    }

    pub fn open(&self) -> u64 {
        self.progress.iter().map(|p| p.open).sum()
    }

    pub fn received(&self) -> u64 {
        self.progress.iter().map(|p| p.received).sum()
    }

    /// The worst worker's p99 so far: a cheap stand-in for the merged one.
    pub fn p99_us(&self) -> u64 {
        self.progress.iter().map(|p| p.p99_us).max().unwrap_or(0)
    }

    /// Sends one command line to every child still listening.
    pub async fn tell_all(&mut self, line: &str) {
        for s in self.stdins.iter_mut().flatten() {
            let _ = s.write_all(format!("{line}\n").as_bytes()).await;
        }
    }

    /// Asks every child still running to report and exit.
    pub async fn stop_all(&mut self) {
        for s in self.stdins.iter_mut() {
            if let Some(mut stdin) = s.take() {
                let _ = stdin.write_all(b"stop\n").await;
                // Dropping stdin also signals EOF.
            }
        }
    }

    /// Collects results until all are in or `grace` passes.
    pub async fn collect(&mut self, grace: Duration) {
        let until = tokio::time::Instant::now() + grace;
        while !self.all_done() {
            match tokio::time::timeout_at(until, self.next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Waits for the children to exit; kills the ones that don't.
    pub async fn reap(&mut self) {
        self.stop_all().await;
        for c in self.children.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}
