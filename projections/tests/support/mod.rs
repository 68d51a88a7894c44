//! A history made through the real use cases, and helpers to drive projections over it
//! and read their tables.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use app::Started;
use domain::connection::{ConnectionCommand, HealthStatus};
use domain::run::{FailureSummary, OperationRun, RunCommand};
use domain::schedule_tick::{tick_key, FanOutCounts, ScheduleTick, TickCommand};
use domain::tenant::{SnapshotSource, Tenant, TenantCommand};
use domain::{ConnectionId, Provider, ReasonCode, Role, RunId, Services, TenantKey};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use store::log::{ConsumerRunner, RunnerOptions};
use store::{CommandBus, Consumer, Metadata, Metrics, Progress};
use testkit::TestDb;

pub const CONTOSO: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CONTOSO_PARTNER: &str = "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1";
pub const FABRIKAM: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
pub const NORTHWIND: &str = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a";

/// The client secret given to the vault; it must never appear in a read model.
pub const SECRET: &str = "s3cr3t-Value~that-must-not-leak";

pub use testkit::READ_MODEL_TABLES as TABLES;
pub use testkit::{guid, vault};

pub fn owner(workspace: &str) -> Metadata {
    Metadata::new(workspace, "alice", Role::Owner)
}

/// The workflow engine acting on `workspace`.
pub fn engine(workspace: &str) -> Metadata {
    Metadata::new(workspace, "engine", Role::System)
}

pub async fn bus(db: &TestDb) -> CommandBus {
    CommandBus::new(db.pool().await, Services::system(), Metrics::new())
}

/// A fresh database with [`history`] in it.
pub async fn with_history() -> (TestDb, CommandBus, History) {
    let db = TestDb::new().await;
    let bus = bus(&db).await;
    let history = history(&bus).await;
    (db, bus, history)
}

/// A fresh database with [`history`] in it and every read model caught up.
pub async fn projected_history() -> (TestDb, CommandBus, History) {
    let (db, bus, history) = with_history().await;
    catch_up_all(bus.pool()).await;
    (db, bus, history)
}

/// What [`history`] made.
pub struct History {
    /// acme's tenant with two connections and three runs.
    pub contoso: TenantKey,
    /// acme's tenant without a connection: its run is blocked.
    pub fabrikam: TenantKey,
    /// acme's tenant, renamed and archived.
    pub northwind: TenantKey,
    /// globex's tenant for the same Entra tenant as contoso.
    pub globex_contoso: TenantKey,
    /// contoso's default connection: credential (rotated), consent, health, an error.
    pub primary: ConnectionId,
    /// contoso's second connection: default for a while, disabled and enabled again.
    pub partner: ConnectionId,
    /// globex's connection.
    pub globex_connection: ConnectionId,
    /// Ran three step attempts and succeeded.
    pub succeeded: RunId,
    /// Cancelled while queued.
    pub cancelled_queued: RunId,
    /// Cancelled while running.
    pub cancelled_running: RunId,
    /// Blocked at start: fabrikam has no connection.
    pub blocked: RunId,
    /// acme's resync schedule: set hourly, one tick fired and fanned out, re-timed to
    /// every 30 minutes, then disabled.
    pub schedule: String,
    /// The due time of the schedule's tick.
    pub tick_due_at: chrono::DateTime<chrono::Utc>,
}

/// A history touching every event type the read models show, in two workspaces.
pub async fn history(bus: &CommandBus) -> History {
    let acme = owner("acme");
    let contoso = app::register_tenant(bus, &acme, guid(CONTOSO), "Contoso", "contoso.com")
        .await
        .unwrap();
    let fabrikam = app::register_tenant(bus, &acme, guid(FABRIKAM), "Fabrikam", "fabrikam.com")
        .await
        .unwrap();
    let northwind = app::register_tenant(bus, &acme, guid(NORTHWIND), "Northwind", "nw.com")
        .await
        .unwrap();
    app::change_tenant(
        bus,
        &acme,
        &northwind,
        TenantCommand::Rename {
            display_name: "Northwind Traders".into(),
        },
    )
    .await
    .unwrap();
    app::change_tenant(bus, &acme, &northwind, TenantCommand::Archive)
        .await
        .unwrap();
    bus.execute::<Tenant>(
        &contoso.to_string(),
        TenantCommand::RecordResync {
            at: chrono::Utc::now(),
        },
        &engine("acme"),
    )
    .await
    .unwrap();

    // Two snapshots (the second with a diff and a drift alert), an import (a third
    // snapshot, no second alert within the hour, and the policy intent) and a license
    // refresh.
    for (state, source) in [
        ("enabled", SnapshotSource::Graph),
        ("disabled", SnapshotSource::Graph),
        ("enabled", SnapshotSource::Import),
    ] {
        let raw = serde_json::json!({
            "id": "p1", "displayName": "MFA for admins", "state": state,
            "conditions": {"users": {"includeUsers": ["All"]}},
            "grantControls": {"operator": "OR", "builtInControls": ["mfa"]}
        });
        bus.execute::<Tenant>(
            &contoso.to_string(),
            TenantCommand::RecordSnapshot {
                snapshot_id: uuid::Uuid::now_v7(),
                policies: domain::policy::curate(&[raw]).unwrap(),
                source,
            },
            &engine("acme"),
        )
        .await
        .unwrap();
    }
    bus.execute::<Tenant>(
        &contoso.to_string(),
        TenantCommand::RecordLicenses {
            capabilities: domain::policy::capabilities(&[]),
        },
        &engine("acme"),
    )
    .await
    .unwrap();

    let primary = ready_connection(bus, &acme, &contoso, CONTOSO, "Contoso Graph").await;
    let partner = app::create_connection(
        bus,
        &acme,
        &contoso,
        Provider::Microsoft,
        guid(CONTOSO_PARTNER),
        "Contoso partner",
    )
    .await
    .unwrap();
    // The default moves to the partner connection and back.
    app::make_default(bus, &acme, partner).await.unwrap();
    app::make_default(bus, &acme, primary).await.unwrap();
    app::change_connection(bus, &acme, partner, ConnectionCommand::Disable)
        .await
        .unwrap();
    app::change_connection(bus, &acme, partner, ConnectionCommand::Enable)
        .await
        .unwrap();
    // Rotation: a second credential for the primary connection.
    set_credential(bus, &acme, primary).await;
    for command in [
        ConnectionCommand::RecordHealthCheck {
            health: HealthStatus::Degraded,
            scopes_granted: vec!["Policy.Read.All".into(), "User.Read.All".into()],
        },
        ConnectionCommand::RecordError {
            reason: ReasonCode::GraphThrottled,
            message: "429 from graph".into(),
        },
        ConnectionCommand::RecordHealthCheck {
            health: HealthStatus::Healthy,
            scopes_granted: vec!["Policy.Read.All".into()],
        },
    ] {
        app::change_connection(bus, &engine("acme"), primary, command)
            .await
            .unwrap();
    }

    let succeeded = queued(bus, &contoso).await;
    for command in [
        RunCommand::Start,
        start_step("fetch", 1),
        RunCommand::CompleteStep {
            step: "fetch".into(),
            attempt: 1,
            summary: serde_json::json!({ "policies": 12 }),
        },
        start_step("store", 1),
        RunCommand::FailStep {
            step: "store".into(),
            attempt: 1,
            reason: ReasonCode::GraphThrottled,
            message: "throttled".into(),
            retry_at: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
        },
        // Completed without a recorded start.
        RunCommand::CompleteStep {
            step: "store".into(),
            attempt: 2,
            summary: serde_json::json!({ "stored": 12 }),
        },
        RunCommand::Succeed {
            summary_counts: BTreeMap::from([("policies".to_owned(), 12)]),
        },
    ] {
        progress(bus, succeeded, command).await;
    }
    release(bus, succeeded).await;

    let cancelled_queued = queued(bus, &contoso).await;
    app::cancel_run(bus, &acme, cancelled_queued).await.unwrap();

    let cancelled_running = queued(bus, &contoso).await;
    progress(bus, cancelled_running, RunCommand::Start).await;
    progress(bus, cancelled_running, start_step("fetch", 1)).await;
    app::cancel_run(bus, &acme, cancelled_running)
        .await
        .unwrap();
    progress(bus, cancelled_running, RunCommand::Cancel).await;
    release(bus, cancelled_running).await;

    let blocked = match app::start_operation(bus, &acme, &fabrikam, "policy.resync", "policies")
        .await
        .unwrap()
    {
        Started::Blocked(run, _) => run,
        other => panic!("fabrikam has no connection, yet {other:?}"),
    };

    let (schedule, tick_due_at) = schedule_history(bus, &acme).await;

    let globex = owner("globex");
    let globex_contoso = app::register_tenant(
        bus,
        &globex,
        guid(CONTOSO),
        "Contoso (globex)",
        "contoso.com",
    )
    .await
    .unwrap();
    let globex_connection =
        ready_connection(bus, &globex, &globex_contoso, CONTOSO, "Globex view").await;

    History {
        contoso,
        fabrikam,
        northwind,
        globex_contoso,
        primary,
        partner,
        globex_connection,
        succeeded,
        cancelled_queued,
        cancelled_running,
        blocked,
        schedule,
        tick_due_at,
    }
}

/// What the fan-out of the history's schedule tick reports.
pub const FAN_OUT: FanOutCounts = FanOutCounts {
    started: 1,
    deduplicated: 0,
    busy: 0,
    blocked: 1,
    skipped: 0,
};

/// A schedule's life without the scheduler: set, one tick fired and fanned out (as the
/// scheduler records them), re-timed, disabled. Returns its id and the tick's due time.
async fn schedule_history(
    bus: &CommandBus,
    acme: &Metadata,
) -> (String, chrono::DateTime<chrono::Utc>) {
    use chrono::{Duration, SubsecRound, Utc};
    let first = (Utc::now() - Duration::minutes(150)).trunc_subsecs(0);
    let id = app::set_schedule(bus, acme, "policy.resync", 60, true, Some(first))
        .await
        .unwrap();
    let due_at = first + Duration::minutes(120);
    let tick = tick_key(&id, due_at);
    let fire = TickCommand::Fire {
        workspace: "acme".parse().unwrap(),
        schedule_id: id.clone(),
        run_type: "policy.resync".into(),
        due_at,
    };
    for command in [fire, TickCommand::CompleteFanOut { counts: FAN_OUT }] {
        bus.execute::<ScheduleTick>(&tick, command, &engine("acme"))
            .await
            .unwrap();
    }
    app::set_schedule(bus, acme, "policy.resync", 30, true, None)
        .await
        .unwrap();
    app::disable_schedule(bus, acme, &id).await.unwrap();
    (id, due_at)
}

/// A connection with a credential and consent.
async fn ready_connection(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    entra: &str,
    name: &str,
) -> ConnectionId {
    let c = app::create_connection(bus, meta, tenant, Provider::Microsoft, guid(entra), name)
        .await
        .unwrap();
    set_credential(bus, meta, c).await;
    app::change_connection(
        bus,
        meta,
        c,
        ConnectionCommand::GrantConsent {
            scopes: vec!["Policy.Read.All".into()],
        },
    )
    .await
    .unwrap();
    c
}

async fn set_credential(bus: &CommandBus, meta: &Metadata, c: ConnectionId) {
    app::set_credential(
        bus,
        &vault(),
        meta,
        c,
        "client-1",
        &SecretString::from(SECRET.to_owned()),
        None,
    )
    .await
    .unwrap();
}

pub async fn queued(bus: &CommandBus, tenant: &TenantKey) -> RunId {
    match app::start_operation(bus, &owner("acme"), tenant, "policy.resync", "policies")
        .await
        .unwrap()
    {
        Started::Queued(run) => run,
        other => panic!("contoso is ready, yet {other:?}"),
    }
}

fn start_step(step: &str, attempt: u32) -> RunCommand {
    RunCommand::StartStep {
        step: step.into(),
        attempt,
    }
}

pub async fn progress(bus: &CommandBus, run: RunId, command: RunCommand) {
    bus.execute::<OperationRun>(&run.to_string(), command, &engine("acme"))
        .await
        .unwrap();
}

/// What the workflow does when a run completes: frees its scope for the next run.
pub async fn release(bus: &CommandBus, run: RunId) {
    let mut uow = bus.begin().await.unwrap();
    let state = uow
        .load::<OperationRun>(&run.to_string())
        .await
        .unwrap()
        .aggregate;
    app::release_scope(&mut uow, &state, run, &engine("acme"))
        .await
        .unwrap();
    uow.commit().await.unwrap();
}

/// Fails a run: the last run event type the history does not cover.
pub async fn fail(bus: &CommandBus, run: RunId) {
    progress(
        bus,
        run,
        RunCommand::Fail {
            failure: FailureSummary {
                reason: ReasonCode::GraphUnavailable,
                message: "502".into(),
                step: Some("fetch".into()),
            },
        },
    )
    .await;
}

/// Applies batches until the consumer has consumed every event in the log. Bounded: other
/// tests' open transactions on the same cluster may hold the log back for a moment.
pub async fn catch_up(pool: &PgPool, consumer: Arc<dyn Consumer>) {
    let name = consumer.name().to_owned();
    let runner = ConsumerRunner::new(
        pool.clone(),
        consumer,
        RunnerOptions::default(),
        Metrics::new(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let progress = runner.step().await.unwrap();
        if progress == Progress::Idle && consumed(pool, &name).await == log_length(pool).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not catch up"
        );
        tokio::task::yield_now().await;
    }
}

/// Catches up every read model.
pub async fn catch_up_all(pool: &PgPool) {
    for consumer in consumers() {
        catch_up(pool, consumer).await;
    }
}

/// The read models as consumers (the runner takes an `Arc<dyn Consumer>`).
pub fn consumers() -> Vec<Arc<dyn Consumer>> {
    vec![
        Arc::new(projections::Tenants),
        Arc::new(projections::Connections),
        Arc::new(projections::Runs),
        Arc::new(projections::AuditLog),
        Arc::new(projections::Policies),
        Arc::new(projections::Schedules),
    ]
}

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
