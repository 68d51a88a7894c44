//! Driving the projections over a [`History`] and reading their tables.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use store::{CommandBus, Consumer};
use testkit::{History, SteppedConsumer, TestDb};

pub use testkit::log_below_horizon;
pub use testkit::READ_MODEL_TABLES as TABLES;

/// A fresh database with the complete [`History`] in it.
pub async fn with_history() -> (TestDb, CommandBus, History) {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let history = History::complete(&bus).await;
    (db, bus, history)
}

/// A fresh database with the complete [`History`] in it and every read model caught up.
pub async fn projected_history() -> (TestDb, CommandBus, History) {
    let (db, bus, history) = with_history().await;
    for consumer in consumers() {
        catch_up(bus.pool(), consumer).await;
    }
    (db, bus, history)
}

/// Applies batches until `consumer` has read every event in the log.
pub async fn catch_up(pool: &PgPool, consumer: Arc<dyn Consumer>) {
    SteppedConsumer::new(pool, consumer).catch_up().await
}

/// The read models as consumers (the runner takes an `Arc<dyn Consumer>`).
pub fn consumers() -> Vec<Arc<dyn Consumer>> {
    projections::all()
        .into_iter()
        .map(|p| p as Arc<dyn Consumer>)
        .collect()
}

/// How many events the consumer `name` has read.
pub async fn consumed(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT events_consumed FROM consumer_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

pub async fn log_length(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A table's rows as JSON, in key order.
pub async fn rows(conn: &mut PgConnection, table: &str) -> Vec<Value> {
    let key = TABLES
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, k)| *k)
        .unwrap();
    sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::jsonb FROM {table} t ORDER BY {key}"
    ))
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Every read-model table's rows.
pub async fn snapshot(conn: &mut PgConnection) -> HashMap<&'static str, Vec<Value>> {
    let mut all = HashMap::new();
    for (table, _) in TABLES {
        all.insert(*table, rows(conn, table).await);
    }
    all
}

/// Every read-model table's rows, on a connection of `pool`.
pub async fn snapshot_of(pool: &PgPool) -> HashMap<&'static str, Vec<Value>> {
    snapshot(&mut pool.acquire().await.unwrap()).await
}

/// One row by key, as JSON.
pub async fn row(pool: &PgPool, table: &str, key_column: &str, key: &str) -> Value {
    sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::jsonb FROM {table} t WHERE {key_column}::text = $1"
    ))
    .bind(key)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("no {table} row {key}: {e}"))
}

/// A timestamp in a row, to the microsecond PostgreSQL keeps.
pub fn micros(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

/// A rebuild's progress that nobody follows.
pub struct Quiet;

impl projections::RebuildProgress for Quiet {
    fn start(&self, _read_models: &[&str], _total: u64) {}
    fn advance(&self, _applied: u64) {}
    fn finish(&self, _applied: u64) {}
}

/// The audit log, with a rebuild filler that remembers at most `limit` aggregates.
pub struct AuditLogRemembering {
    pub limit: usize,
}

#[async_trait::async_trait]
impl Consumer for AuditLogRemembering {
    fn name(&self) -> &str {
        Consumer::name(&projections::AuditLog)
    }
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[store::StoredEvent],
    ) -> Result<(), store::ConsumerError> {
        Consumer::handle(&projections::AuditLog, tx, events).await
    }
}

#[async_trait::async_trait]
impl projections::Projection for AuditLogRemembering {
    fn tables(&self) -> &'static [&'static str] {
        projections::Projection::tables(&projections::AuditLog)
    }
    fn indexes_built_after_rebuild(&self) -> &'static [&'static str] {
        projections::Projection::indexes_built_after_rebuild(&projections::AuditLog)
    }
    fn shadow_filler(&self) -> Option<Box<dyn projections::ShadowFiller>> {
        Some(projections::AuditLog::filler_remembering_at_most(
            self.limit,
        ))
    }
}
