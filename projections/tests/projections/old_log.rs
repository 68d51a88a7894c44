//! A log written by an earlier version (`tests/fixtures/log_v1.ndjson`: a few resyncs,
//! an import, a retried, a partial, a failed and a cancelled run, as the engine wrote them
//! before issue 13's event economy) still reads: rebuilt into a fresh database, it gives
//! the read models, run timelines and aggregate states that version gave
//! (`tests/fixtures/log_v1_read_models.json`, recorded by it).

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use domain::run::OperationRun;
use domain::tenant::Tenant;
use serde_json::{json, Value};
use sqlx::PgPool;
use testkit::TestDb;

use crate::support::*;

const LOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log_v1.ndjson");
const EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/log_v1_read_models.json"
);

/// Inserts the fixture's events as they were recorded: each of its transactions in one
/// transaction, with its global positions and times.
async fn load_the_old_log(pool: &PgPool) -> usize {
    let text = std::fs::read_to_string(LOG).unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut by_tx: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        by_tx.entry(e["tx"].as_i64().unwrap()).or_default().push(e);
    }
    for rows in by_tx.values() {
        let mut tx = pool.begin().await.unwrap();
        for e in rows {
            sqlx::query(
                "INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, \
                     event_type, event_version, payload, metadata, recorded_at) \
                 OVERRIDING SYSTEM VALUE \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ($9::text)::timestamptz)",
            )
            .bind(e["global_position"].as_i64())
            .bind(e["aggregate_type"].as_str())
            .bind(e["aggregate_id"].as_str())
            .bind(e["sequence"].as_i64())
            .bind(e["event_type"].as_str())
            .bind(e["event_version"].as_str())
            .bind(&e["payload"])
            .bind(&e["metadata"])
            .bind(e["recorded_at"].as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    events.len()
}

/// Every read model, every run's timeline and every run's and tenant's state, as JSON.
async fn what_the_log_gives(pool: &PgPool) -> Value {
    let tables: BTreeMap<&str, Vec<Value>> = snapshot_of(pool).await.into_iter().collect();
    let mut conn = pool.acquire().await.unwrap();
    let ids = |t: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = $1 ORDER BY 1",
        )
        .bind(t)
    };
    let runs = ids(OperationRun::TYPE).fetch_all(&mut *conn).await.unwrap();
    let tenants = ids(Tenant::TYPE).fetch_all(&mut *conn).await.unwrap();
    let mut timelines = BTreeMap::new();
    let mut run_states = BTreeMap::new();
    for id in &runs {
        let run_id = domain::RunId(uuid::Uuid::parse_str(id).unwrap());
        let history = store::history::run_history(&mut conn, run_id)
            .await
            .unwrap();
        timelines.insert(id.clone(), serde_json::to_value(history).unwrap());
        let events = store::history::stream(&mut conn, OperationRun::TYPE, id, None)
            .await
            .unwrap();
        let state = store::history::fold::<OperationRun>(&events).unwrap();
        run_states.insert(id.clone(), serde_json::to_value(state).unwrap());
    }
    let mut tenant_states = BTreeMap::new();
    for id in &tenants {
        let events = store::history::stream(&mut conn, Tenant::TYPE, id, None)
            .await
            .unwrap();
        let state = store::history::fold::<Tenant>(&events).unwrap();
        tenant_states.insert(id.clone(), serde_json::to_value(state).unwrap());
    }
    json!({
        "read_models": tables,
        "run_timelines": timelines,
        "run_states": run_states,
        "tenant_states": tenant_states,
    })
}

#[tokio::test]
async fn a_log_written_by_the_previous_version_rebuilds_into_the_same_read_models() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let loaded = load_the_old_log(&pool).await;
    assert!(loaded > 50, "the fixture holds the runs it names");
    let all = projections::all();
    log_below_horizon(&pool).await;
    let replayed = projections::rebuild(&pool, &all, 1000, &Quiet)
        .await
        .unwrap();
    assert_eq!(
        replayed as usize, loaded,
        "every read model rebuilt from the whole log"
    );
    let got = what_the_log_gives(&pool).await;
    if std::env::var_os("TENANTFLOW_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&got).unwrap();
        std::fs::write(EXPECTED, text + "\n").unwrap();
        return;
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(EXPECTED).unwrap()).unwrap();
    // Part by part, so a difference names where it is.
    for part in [
        "read_models",
        "run_timelines",
        "run_states",
        "tenant_states",
    ] {
        let (got, expected) = (&got[part], &expected[part]);
        let keys: std::collections::BTreeSet<&String> = got
            .as_object()
            .unwrap()
            .keys()
            .chain(expected.as_object().unwrap().keys())
            .collect();
        for key in keys {
            assert_eq!(
                got.get(key),
                expected.get(key),
                "{part} {key} differs from what the previous version gave"
            );
        }
    }
    // Its scopes were locked by events, each acquired a batch before its run was queued
    // when a batch holds one event: the audit log fills their rows in by position from
    // its filler's memory, or through its index once the filler remembers no more.
    let scope_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_audit_log WHERE aggregate_type = 'scope_lock'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(scope_rows > 0, "the old log locks scopes with events");
    let audit_remembering = |limit| -> Vec<std::sync::Arc<dyn projections::Projection>> {
        vec![std::sync::Arc::new(AuditLogRemembering { limit })]
    };
    for (read_models, batch_size, what) in [
        (all.clone(), 1, "every read model, batches of 1"),
        (audit_remembering(0), 1, "the audit log remembering nothing"),
        (
            audit_remembering(3),
            2,
            "the audit log remembering 3 aggregates",
        ),
    ] {
        log_below_horizon(&pool).await;
        projections::rebuild(&pool, &read_models, batch_size, &Quiet)
            .await
            .unwrap();
        assert_eq!(what_the_log_gives(&pool).await, got, "{what}");
    }
}
