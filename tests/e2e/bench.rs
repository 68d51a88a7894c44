//! `tenantflow bench resync` on a small fleet: the bench runs on a clean checkout, and its
//! report is consistent with what the workflow wrote (the floor loop copies exactly the
//! events the runs left, a first resync's five each, and the sealer seals them all).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_resync_reports_the_workflow_the_bare_loop_and_the_floor_of_the_same_fleet() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let (ok, log, r) =
        crate::common::run_reporting(&db, &["bench", "resync", "--tenants", "12", "-c", "2"]).await;
    assert!(ok, "the bench failed:\n{log}");
    let r = r.expect("the JSON report");
    assert_eq!(r["tenants"], 12, "{r}");
    // A first resync writes five events (docs/SCALING.md); the floor loop wrote them again.
    assert_eq!(r["events_per_run"], 5.0, "{r}");
    assert!(r["event_bytes_per_run"].as_f64().unwrap() > 1_000.0, "{r}");
    for phase in ["bare_loop", "floor_loop"] {
        assert_eq!(r[phase]["operations"], 12, "{phase}: {r}");
        assert!(
            r[phase]["per_second"].as_f64().unwrap() > 0.0,
            "{phase}: {r}"
        );
    }
    let ratio = |name: &str| r[name].as_f64().unwrap();
    let rate = |phase: &str| r[phase]["per_second"].as_f64().unwrap();
    assert!(
        (ratio("floor_ratio") - rate("floor_loop") / rate("bare_loop")).abs() < 1e-9,
        "{r}"
    );
    assert!(
        (ratio("engine_ratio") - ratio("workflow_resyncs_per_second") / rate("floor_loop")).abs()
            < 1e-9,
        "{r}"
    );

    // The scratch database stays until the next bench: the floor's rows are the workflow's
    // phase again, row for row, and the sealer sealed every event.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let pool = store::connect(options.database("tenantflow_bench"), 2)
        .await
        .unwrap();
    let (floor, copies, events, seals): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE aggregate_id LIKE 'floor:%'), \
                (SELECT count(*) FROM events f JOIN events o \
                   ON f.aggregate_id = 'floor:' || o.aggregate_id AND f.aggregate_type = o.aggregate_type \
                  AND f.sequence = o.sequence AND f.event_type = o.event_type \
                  AND f.payload = o.payload AND f.metadata = o.metadata), \
                (SELECT count(*) FROM events), (SELECT count(*) FROM audit_seals)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((floor, copies), (60, 60), "{r}");
    assert_eq!(events, seals, "every event sealed");
    pool.close().await;
}
