//! Read models as an auditor checks them: caught up with the event log, and equal to what
//! `tenantflow rebuild --all` replays from it.

use testkit::{has_read_everything, within, CATCH_UP, READ_MODEL_TABLES};

/// Waits (bounded) until every read model has consumed every event.
pub async fn projections_caught_up(db: &testkit::TestDb) {
    let pool = db.pool().await;
    for projection in projections::all() {
        let name = projection.name();
        if within(CATCH_UP, || has_read_everything(&pool, name))
            .await
            .is_none()
        {
            let checkpoints: Vec<String> =
                sqlx::query_scalar("SELECT row_to_json(c)::text FROM consumer_checkpoints c")
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            panic!(
                "the projection {name} did not catch up; checkpoints:\n{}",
                checkpoints.join("\n")
            );
        }
    }
}

/// Every row of every read model, as JSON, in key order.
pub async fn read_model_rows(db: &testkit::TestDb) -> Vec<Vec<String>> {
    let pool = db.pool().await;
    let mut all = Vec::new();
    for (table, key) in READ_MODEL_TABLES {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {table} t ORDER BY {key}"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        all.push(rows);
    }
    all
}

/// Waits for the projections and for the log to be readable by a rebuild (below the oldest
/// running transaction of the shared cluster), runs `tenantflow rebuild --all` and asserts
/// that every read model has the same rows afterwards. Returns what the rebuild logged.
pub async fn assert_rebuild_reproduces_read_models(db: &testkit::TestDb) -> String {
    projections_caught_up(db).await;
    testkit::log_below_horizon(&db.pool().await).await;
    let live = read_model_rows(db).await;
    let url = db.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantflow"))
            .args(["rebuild", "--all"])
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rebuild failed: {printed}");
    let rebuilt = read_model_rows(db).await;
    for (((table, _), live), rebuilt) in READ_MODEL_TABLES.iter().zip(&live).zip(&rebuilt) {
        if live != rebuilt {
            let differing: Vec<_> = live
                .iter()
                .zip(rebuilt)
                .filter(|(a, b)| a != b)
                .take(3)
                .collect();
            panic!(
                "{table}: the rebuilt rows differ from the live ones ({} live, {} rebuilt); \
                 first differences (live, rebuilt): {differing:#?}",
                live.len(),
                rebuilt.len()
            );
        }
    }
    printed
}
