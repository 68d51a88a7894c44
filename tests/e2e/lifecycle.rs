//! Starting and stopping cleanly: what can be refused is refused before PostgreSQL starts
//! or a row is written, and a stop has a deadline.

use crate::common::graphql::start_server_with;
use crate::common::postgres_processes_for;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `tenantflow <args>` with `env` (and no DATABASE_URL unless given) and waits, at most
/// a minute, for it to exit: its exit code and stderr. A binary that starts serving instead
/// of refusing is killed and fails the test.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantflow"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn tenantflow");
    let pid = child.id();
    // Waited for on a thread, so the wait itself is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("tenantflow's output"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("tenantflow {args:?} did not exit");
        }
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tenantflow-e2e-{}", uuid::Uuid::new_v4().simple()))
}

/// Whether a PostgreSQL cluster was ever created under `dir`.
fn has_cluster(dir: &std::path::Path) -> bool {
    fn walk(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let path = e.path();
                path.file_name().is_some_and(|n| n == "PG_VERSION")
                    || (path.is_dir() && walk(&path))
            })
    }
    walk(dir)
}

#[test]
fn a_bad_vault_key_is_refused_before_postgresql_starts() {
    let dir = temp_data_dir();
    let dir_arg = dir.to_string_lossy().to_string();
    let (code, stderr) = run_to_exit(
        &["--data-dir", &dir_arg, "serve", "--listen", "127.0.0.1:0"],
        &[("TENANTFLOW_VAULT_KEY", "not a key")],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("key"), "{stderr}");
    assert!(!has_cluster(&dir), "no cluster was created: {stderr}");
    assert_eq!(postgres_processes_for(&dir), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_misspelled_configuration_key_is_refused_naming_the_key_it_meant() {
    let dir = temp_data_dir();
    let dir_arg = dir.to_string_lossy().to_string();
    let (code, stderr) = run_to_exit(
        &["--data-dir", &dir_arg, "serve"],
        &[("TENANTFLOW_LISEN", "127.0.0.1:0")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`lisen`") && stderr.contains("did you mean `listen`?"),
        "{stderr}"
    );
    assert!(stderr.contains("TENANTFLOW_LISEN"), "{stderr}");
    assert!(!has_cluster(&dir), "no cluster was created");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_busy_port_is_refused_before_the_demo_writes_anything() {
    let db = testkit::TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = temp_data_dir();
    let dir_arg = dir.to_string_lossy().to_string();
    let url = db.url();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        run_to_exit(
            &["--data-dir", &dir_arg, "serve", "--listen", &addr],
            &[
                ("DATABASE_URL", &url),
                ("TENANTFLOW_DEMO", "true"),
                ("TENANTFLOW_JWT_SECRET", testkit::JWT_SECRET),
                ("TENANTFLOW_VAULT_KEY", testkit::VAULT_KEY),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(events, 0, "the demo registered nothing");
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_with_a_stuck_request_exits_at_the_shutdown_deadline() {
    let (mut server, _db, _sim) =
        start_server_with(&[("TENANTFLOW_SHUTDOWN_GRACE_SECONDS", "1")]).await;
    let host = server.base_url.trim_start_matches("http://").to_owned();
    // A request whose body never finishes arriving: the handler waits for it.
    let mut stuck = std::net::TcpStream::connect(&host).expect("connect");
    let token = testkit::token("acme", domain::Role::Owner);
    write!(
        stuck,
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"query\":"
    )
    .expect("send the start of a request");
    stuck.flush().unwrap();
    // Let the server take the request in before the signal (bounded: its log says
    // nothing about it, so give it a moment by asking for health on another connection).
    assert_eq!(
        reqwest::get(format!("{}/healthz", server.base_url))
            .await
            .unwrap()
            .status(),
        200
    );

    let signalled = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    let exited = testkit::within(Duration::from_secs(30), || {
        let done = matches!(server.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await
    .is_some();
    let took = signalled.elapsed();
    assert!(
        exited,
        "still running 30 s after SIGTERM:\n{}",
        server.log_text()
    );
    // The grace period is 1 s; the rest is closing the pool and the simulator.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let log = server.log_text();
    assert!(log.contains("shutdown deadline"), "{log}");
    drop(stuck);
}
