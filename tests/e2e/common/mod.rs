//! Running the real `tenantflow` binary as a child process.
pub mod graphql;
pub mod read_models;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Fleet tests start many server processes on the machine's two cores: they run alone, so
/// their timing (leases, the moment of a kill) does not depend on what other tests do
/// meanwhile. Every other test that starts a server shares its turn with the others.
static TURNS: RwLock<()> = RwLock::const_new(());

/// Waits until no other test runs a server; holds them off while the guard lives.
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    TURNS.write().await
}

/// Waits until no fleet test runs; holds fleet tests off while the guard lives.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    TURNS.read().await
}

/// A running `tenantflow serve`.
pub struct Server {
    pub child: Child,
    pub base_url: String,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The turn (see [`shared`]) the test holds while the server runs, if it took one.
    pub turn: Option<RwLockReadGuard<'static, ()>>,
}

impl Server {
    /// Starts `tenantflow serve --listen 127.0.0.1:0` with `args` and `env`, and waits
    /// until it says where it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantflow"));
        cmd.args(args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tenantflow");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on ".len()..];
                    let url: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(url);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base_url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tenantflow did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            base_url,
            log,
            turn: None,
        }
    }

    /// A GraphQL client for someone with `role` in `workspace`.
    pub fn client(&self, workspace: &str, role: domain::Role) -> testkit::GraphqlClient {
        testkit::GraphqlClient::new(&self.base_url, workspace, role)
    }

    /// Sends `signal` (e.g. "INT", "TERM", "KILL") and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        self.child.wait().expect("wait for tenantflow")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tenantflow <args>` on `db` to its end (an operator's command, not the service):
/// whether it succeeded, its stdout and its stderr.
pub fn run_cli(db: &testkit::TestDb, args: &[&str]) -> (bool, String, String) {
    let out = tenantflow_on(db, args).output().expect("run tenantflow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tenantflow --data-dir <a directory of its own> <args> --json <file>` on `db` to its
/// end, logging at info (a bench, the chaos harness): whether it succeeded, its stderr, and
/// the JSON report it wrote, if it wrote one. The directory is removed afterwards.
pub async fn run_reporting(
    db: &testkit::TestDb,
    args: &[&str],
) -> (bool, String, Option<serde_json::Value>) {
    let dir = std::env::temp_dir().join(format!(
        "tenantflow-report-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let json = dir.join("report.json");
    let mut command = tenantflow_on(db, &["--data-dir"]);
    command
        .arg(&dir)
        .args(args)
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "info");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run tenantflow");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("the JSON report"));
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    )
}

/// `tenantflow <args>` with `DATABASE_URL` pointing at `db`.
fn tenantflow_on(db: &testkit::TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantflow"));
    command.args(args).env("DATABASE_URL", db.url());
    command
}

/// PostgreSQL processes serving the cluster in `dir`.
pub fn postgres_processes_for(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| {
            let exe = c.split(' ').next().unwrap_or_default();
            exe.ends_with("postgres") && c.contains(&needle)
        })
        .count()
}
