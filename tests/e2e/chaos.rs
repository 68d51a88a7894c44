//! The chaos harness's CI run (issue 20): `tenantflow chaos` for 45 seconds against the
//! test cluster. Two service instances are killed and restarted at random while the
//! simulator injects faults and every workflow runs; the harness then checks its invariants
//! (every run ended once, nothing done twice or lost, read models equal a rebuild) and
//! exits 1 on any violation. A long run is `tenantflow chaos --seconds 600`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaos_harness_finds_no_violation_in_a_short_run() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let (ok, log, report) = crate::common::run_reporting(
        &db,
        &[
            "chaos",
            "--seconds",
            "45",
            "--tenants",
            "8",
            "--kill-every",
            "5",
        ],
    )
    .await;
    assert!(ok, "the chaos run failed:\n{log}");
    let report = report.expect("the JSON report");
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
}
