//! `tenantflow bench resync` on a small fleet: the bench runs on a clean checkout, and its
//! report is consistent with what the workflow wrote (the floor loop copies exactly the
//! events the runs left, a first resync's five each, and the sealer seals them all; the
//! leased floor does too, leasing and freeing a task per tenant).

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
    for phase in ["bare_loop", "floor_loop", "leased_floor_loop"] {
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
    assert!(
        (ratio("leased_floor_ratio") - rate("leased_floor_loop") / rate("bare_loop")).abs() < 1e-9,
        "{r}"
    );
    assert!(
        (ratio("engine_beyond_lease_ratio")
            - ratio("workflow_resyncs_per_second") / rate("leased_floor_loop"))
        .abs()
            < 1e-9,
        "{r}"
    );

    // The scratch database stays until the next bench: the floor's rows are the workflow's
    // phase again, row for row, and the sealer sealed every event.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let pool = store::connect(options.database("tenantflow_bench"), 2)
        .await
        .unwrap();
    let copies = |prefix: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT (SELECT count(*) FROM events WHERE aggregate_id LIKE $1 || '%'), \
                        (SELECT count(*) FROM events f JOIN events o \
                           ON f.aggregate_id = $1 || o.aggregate_id AND f.aggregate_type = o.aggregate_type \
                          AND f.sequence = o.sequence AND f.event_type = o.event_type \
                          AND f.payload = o.payload AND f.metadata = o.metadata)",
            )
            .bind(prefix)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(copies("floor:").await, (60, 60), "{r}");
    assert_eq!(copies("leased:").await, (60, 60), "{r}");
    let (events, seals, tasks): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_seals), \
                (SELECT count(*) FROM workflow_tasks WHERE run_type = 'bench.leased_floor')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, seals, "every event sealed");
    // Each leased task was freed by the write it fenced.
    assert_eq!(tasks, 0, "{r}");
    pool.close().await;
}

/// `tenantflow bench graphql` on a small workspace: every page answered through the
/// service's HTTP path (its load generator checks each answer), at both concurrencies, with
/// the floor, the list pages without their rows' fields and without GraphQL (the JSON floor),
/// and the CPU each request cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_graphql_reports_every_page_the_floors_and_the_list_pages_without_fields() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let (ok, log, r) = crate::common::run_reporting(
        &db,
        &["bench", "graphql", "--tenants", "25", "--requests", "40"],
    )
    .await;
    assert!(ok, "the bench failed:\n{log}");
    let r = r.expect("the JSON report");
    assert_eq!(r["tenants"], 25, "{r}");
    let runs = r["runs"].as_array().expect("runs");
    let mut seen = Vec::new();
    for run in runs {
        let (page, concurrency) = (run["page"].as_str().unwrap(), run["concurrency"].as_u64());
        seen.push((page.to_owned(), concurrency.unwrap()));
        for side in ["graphql", "sql"] {
            assert_eq!(run[side]["operations"], 40, "{page}: {run}");
            assert!(run[side]["per_second"].as_f64().unwrap() > 0.0, "{run}");
        }
        let ratio = run["graphql"]["per_second"].as_f64().unwrap()
            / run["sql"]["per_second"].as_f64().unwrap();
        assert!(
            (run["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
            "{run}"
        );
        assert!(run["graphql_cpu"]["process_ms"].as_f64().is_some(), "{run}");
    }
    let pages = ["tenants", "runs", "run"];
    let wanted: Vec<(String, u64)> = pages
        .iter()
        .flat_map(|p| [(p.to_string(), 1), (p.to_string(), 32)])
        .collect();
    assert_eq!(seen, wanted, "{r}");
    for (at, count) in [("floor", 2), ("without_fields", 4)] {
        let rows = r[at].as_array().expect(at);
        assert_eq!(rows.len(), count, "{at}: {r}");
        for row in rows {
            assert_eq!(row["graphql"]["operations"], 40, "{at}: {row}");
        }
    }
    // Each list page without fields is compared with its page's SQL at its concurrency.
    let bare: Vec<(&str, u64)> = r["without_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["page"].as_str().unwrap(),
                x["concurrency"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bare,
        [("tenants", 1), ("tenants", 32), ("runs", 1), ("runs", 32)],
        "{r}"
    );
    // The JSON floor (the same pages without GraphQL, and one run) likewise, each answer
    // checked by the load generator as the service's are, and the first against the
    // service's own.
    let floor: Vec<(&str, u64)> = r["json_floor"]
        .as_array()
        .expect("json_floor")
        .iter()
        .map(|x| {
            assert_eq!(x["http"]["operations"], 40, "{x}");
            (
                x["page"].as_str().unwrap(),
                x["concurrency"].as_u64().unwrap(),
            )
        })
        .collect();
    // Every list page, and one run with its steps.
    let mut pages_with_floor = bare.clone();
    pages_with_floor.extend([("run", 1), ("run", 32)]);
    assert_eq!(floor, pages_with_floor, "{r}");
    let measured = r["without_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row, "graphql"))
        .chain(
            r["json_floor"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| (row, "http")),
        );
    // Each against its page's SQL measured in turns with it: as many of those, and the
    // ratio of the two rates.
    for (row, side) in measured {
        assert_eq!(row["page_sql"]["operations"], 40, "{row}");
        let sql = row["page_sql"]["per_second"].as_f64().unwrap();
        let ratio = row[side]["per_second"].as_f64().unwrap() / sql;
        assert!(
            (row["ratio_to_page_sql"].as_f64().unwrap() - ratio).abs() < 1e-9,
            "{row}"
        );
    }
}

#[tokio::test]
async fn bench_runs_reports_every_filter_of_the_run_list_over_a_long_history() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let (ok, log, r) = crate::common::run_reporting(
        &db,
        &["bench", "runs", "--runs", "5000", "--requests", "10"],
    )
    .await;
    assert!(ok, "the bench failed:\n{log}");
    let r = r.expect("the JSON report");
    // Nine in ten runs are the bench workspace's.
    assert_eq!(
        (r["runs"].as_u64(), r["workspace_runs"].as_u64()),
        (Some(5000), Some(4500)),
        "{r}"
    );
    let pages: Vec<(&str, u64)> = r["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| {
            assert_eq!(p["graphql"]["operations"], 10, "{p}");
            assert!(p["graphql"]["p99_ms"].as_f64().unwrap() > 0.0, "{p}");
            // A page reads about its own rows, not the workspace's 4,500 runs: at most its
            // 21 per outcome merged, or the 45 runs not yet ended the status filters read.
            let read = p["rows_read"].as_u64().unwrap();
            assert!(
                (p["rows"].as_u64().unwrap()..=60).contains(&read),
                "{read} rows read: {p}"
            );
            (p["page"].as_str().unwrap(), p["rows"].as_u64().unwrap())
        })
        .collect();
    // The bench checked every answer against a count in SQL; these are those counts.
    assert_eq!(
        pages,
        [
            ("newest", 20),
            ("a year back", 20),
            ("running", 0),
            ("queued", 20),
            ("pending", 20),
            ("failed or blocked", 20),
            ("cancelled", 0),
            ("contact syncs", 20),
            ("one tenant", 5),
            ("one tenant's failures", 0),
        ],
        "{r}"
    );
    let sizes: Vec<&str> = r["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [
            "rm_runs",
            "rm_runs_active",
            "rm_runs_newest",
            "rm_runs_pkey",
            "rm_runs_tenant_newest",
            "rm_runs_type",
            "rm_runs_unsuccessful"
        ],
        "{r}"
    );
}

#[tokio::test]
async fn bench_audit_reports_every_filter_of_the_audit_log_over_a_long_history() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let (ok, log, r) = crate::common::run_reporting(
        &db,
        &["bench", "audit", "--rows", "5000", "--requests", "10"],
    )
    .await;
    assert!(ok, "the bench failed:\n{log}");
    let r = r.expect("the JSON report");
    // Nine in ten rows are the bench workspace's.
    assert_eq!(
        (r["rows"].as_u64(), r["workspace_rows"].as_u64()),
        (Some(5000), Some(4500)),
        "{r}"
    );
    let pages: Vec<(&str, u64, bool)> = r["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| {
            assert_eq!(p["graphql"]["operations"], 10, "{p}");
            assert!(p["graphql"]["p99_ms"].as_f64().unwrap() > 0.0, "{p}");
            (
                p["page"].as_str().unwrap(),
                p["rows"].as_u64().unwrap(),
                p["targeted"].as_bool().unwrap(),
            )
        })
        .collect();
    // The bench checked every answer against a count in SQL. The fixed ones: a page of the
    // workspace's rows; the one person's ten rows less the one in the other workspace; the
    // operator's 14; no connection disabled in 5,000 rows; the tenant's five.
    let fixed: Vec<_> = pages.iter().take(5).copied().collect();
    assert_eq!(
        fixed,
        [
            ("newest", 50, true),
            ("one person's actions", 9, true),
            ("a frequent actor", 14, true),
            ("a rare action", 0, true),
            ("one tenant", 5, true),
        ],
        "{r}"
    );
    // The windows: a row every five hours or so, nine in ten the workspace's.
    let windows: Vec<_> = pages.iter().skip(5).map(|(p, _, t)| (*p, *t)).collect();
    assert_eq!(
        windows,
        [
            ("a day, 1.5 years back", true),
            ("three days, 2 years back", true),
            ("a tenant's day", true),
            ("a month, 1.5 years back", false),
            ("before 2 years back", false),
        ],
        "{r}"
    );
    for (page, rows, _) in &pages[5..] {
        let expected = match *page {
            "a tenant's day" => 0..=1,
            "a day, 1.5 years back" => 3..=5,
            "three days, 2 years back" => 11..=13,
            _ => 50..=50,
        };
        assert!(expected.contains(rows), "{page}: {rows} rows: {r}");
    }
}
