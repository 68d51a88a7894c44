//! The chaos harness's CI run (issue 20): `tenantflow chaos` for 45 seconds against the
//! test cluster. Two service instances are killed and restarted at random while the
//! simulator injects faults and every workflow runs; the harness then checks its invariants
//! (every run ended once, nothing done twice or lost, read models equal a rebuild) and
//! exits 1 on any violation. A long run is `tenantflow chaos --seconds 600`.

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaos_harness_finds_no_violation_in_a_short_run() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let dir = std::env::temp_dir().join(format!(
        "tenantflow-chaos-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let json = dir.join("chaos.json");
    let (url, out_dir, json_path) = (db.url(), dir.clone(), json.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tenantflow"))
            .arg("--data-dir")
            .arg(&out_dir)
            .args([
                "chaos",
                "--seconds",
                "45",
                "--tenants",
                "8",
                "--kill-every",
                "5",
            ])
            .arg("--json")
            .arg(&json_path)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .output()
            .expect("run tenantflow chaos")
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the chaos run failed:\n{log}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).unwrap();
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    assert!(report["kills"].as_u64().unwrap() >= 3, "{report}");
    assert!(
        report["faults_injected"].as_u64().unwrap() >= 10,
        "{report}"
    );
    for kind in ["policy.resync", "provider.health_check", "contacts.sync"] {
        assert!(
            report["runs_started"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} run: {report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
