//! The binary with no DATABASE_URL: embedded PostgreSQL, health, readiness, clean stop,
//! and a second start that reuses the cluster.

use crate::common::{postgres_processes_for, shared, Server};
use std::time::Duration;

fn temp_data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tenantflow-e2e-{}", uuid::Uuid::new_v4().simple()))
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Waits (bounded) until PostgreSQL has let go of `dir`; returns how many of its processes
/// are left.
async fn wait_no_postgres(dir: &std::path::Path) -> usize {
    let gone = || async { postgres_processes_for(dir) == 0 };
    let _ = testkit::within(Duration::from_secs(10), gone).await;
    postgres_processes_for(dir)
}

#[tokio::test]
async fn serve_runs_embedded_postgres_answers_health_and_stops_it_on_ctrl_c() {
    let _turn = shared().await;
    let dir = temp_data_dir();
    let dir_arg = dir.to_string_lossy().to_string();

    let env = [("TENANTFLOW_JWT_SECRET", testkit::JWT_SECRET)];
    let mut server = Server::start(&["--data-dir", &dir_arg], &env);
    assert_eq!(get(&format!("{}/healthz", server.base_url)).await.0, 200);
    let (status, body) = get(&format!("{}/readyz", server.base_url)).await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = get(&format!("{}/metrics", server.base_url)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tenantflow_http_requests_total"),
        "{metrics}"
    );
    // The partitions' maintenance counts them: the moved old table, the one being filled
    // and two ahead.
    let metrics_url = format!("{}/metrics", server.base_url);
    testkit::eventually(
        "the log's partitions counted",
        Duration::from_secs(30),
        || async {
            get(&metrics_url)
                .await
                .1
                .lines()
                .any(|l| l == "tenantflow_event_partitions 4")
        },
    )
    .await;
    assert!(
        postgres_processes_for(&dir) > 0,
        "PostgreSQL runs from the data directory"
    );
    assert!(server
        .log_text()
        .contains("initialised a new PostgreSQL cluster"));

    // The demo: the simulator's fleet is registered with ready connections.
    let demo = server.client("demo", domain::Role::Readonly);
    let q = "{ tenants { edges { node { id connections { status isDefault graphEndpoint } } } } }";
    let data = demo
        .eventually(q, serde_json::json!({}), |d| {
            let edges = d["tenants"]["edges"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            edges.len() == 5
                && edges
                    .iter()
                    .all(|e| e["node"]["connections"][0]["status"] == "connected")
        })
        .await;
    assert_eq!(data["tenants"]["edges"].as_array().unwrap().len(), 5);
    // The demo's connections say they talk to the simulator, not to Microsoft.
    assert_eq!(
        data["tenants"]["edges"][0]["node"]["connections"][0]["graphEndpoint"],
        "simulator"
    );
    // ... and each resync runs to success against the simulator, as do the contact sync's
    // discovery and first sync.
    let runs = "{ runs(first: 50) { edges { node { type outcome } } } }";
    demo.eventually(runs, serde_json::json!({}), |d| {
        let succeeded = |t: &str| crate::common::graphql::succeeded_runs(d, t);
        succeeded("policy.resync") == 5
            && succeeded("contacts.discover") == 1
            && succeeded("contacts.sync") == 1
    })
    .await;

    let status = server.signal_and_wait("INT");
    assert!(status.success(), "clean exit on SIGINT: {status}");
    assert_eq!(
        wait_no_postgres(&dir).await,
        0,
        "no stray postgres processes"
    );

    // A second start reuses the cluster (no initdb) and its data.
    let mut again = Server::start(&["--data-dir", &dir_arg], &env);
    assert_eq!(get(&format!("{}/readyz", again.base_url)).await.0, 200);
    assert!(!again
        .log_text()
        .contains("initialised a new PostgreSQL cluster"));
    assert!(
        again.log_text().contains("added=0"),
        "the demo adds nothing on a restart"
    );
    assert!(again.signal_and_wait("TERM").success());
    assert_eq!(wait_no_postgres(&dir).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_crashed_server_leaves_no_postgres_behind_and_the_next_start_recovers() {
    let _turn = shared().await;
    let dir = temp_data_dir();
    let dir_arg = dir.to_string_lossy().to_string();
    let mut server = Server::start(&["--data-dir", &dir_arg], &[]);
    assert_eq!(get(&format!("{}/readyz", server.base_url)).await.0, 200);
    server.signal_and_wait("KILL");
    // The watchdog notices the dead parent and stops PostgreSQL.
    assert_eq!(
        wait_no_postgres(&dir).await,
        0,
        "no stray postgres after kill -9"
    );

    let mut again = Server::start(&["--data-dir", &dir_arg], &[]);
    assert_eq!(get(&format!("{}/readyz", again.base_url)).await.0, 200);
    assert!(again.signal_and_wait("INT").success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_config_file_is_a_clear_error_and_exit_code_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantflow"))
        .args(["--config", "/nonexistent/tenantflow.toml", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
