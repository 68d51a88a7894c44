//! Each read model against a history made through the real use cases: what its rows show,
//! that they match the aggregates, carry their workspace, never hold a secret, and that a
//! reader sees only its workspace's rows.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::run::{FailureSummary, OperationRun, RunCommand};
use domain::tenant::Tenant;
use domain::{ConnectionId, ReasonCode, Role, RunId};
use projections::RUNS_CHANNEL;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use store::CommandBus;
use testkit::{engine, meta, owner, queued_resync, record_progress, release_scope};
use testkit::{History, TestDb, CLIENT_SECRET, CONTOSO};

use crate::support::*;

/// A fresh database with the chapters of a [`History`] that `tell` asks for.
async fn with_chapters(
    tell: impl FnOnce(testkit::HistoryBuilder<'_>) -> testkit::HistoryBuilder<'_>,
) -> (TestDb, CommandBus, History) {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let history = tell(History::of(&bus)).build().await;
    (db, bus, history)
}

#[tokio::test]
async fn every_read_model_is_listed_once_with_the_tables_it_owns() {
    let all = projections::all();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "tenants",
            "connections",
            "runs",
            "audit_log",
            "policies",
            "schedules",
            "contacts",
            "mailboxes"
        ]
    );
    let owned: Vec<&str> = all
        .iter()
        .flat_map(|p| p.tables().iter().copied())
        .collect();
    let expected: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
    assert_eq!(owned, expected, "each table has exactly one owner");
}

#[tokio::test]
async fn the_tenants_read_model_shows_registrations_renames_archives_resyncs_and_the_intent() {
    let (_db, bus, h) = with_chapters(|h| h.policies().other_workspace()).await;
    catch_up(bus.pool(), Arc::new(projections::Tenants)).await;

    let contoso = row(
        bus.pool(),
        "rm_tenants",
        "tenant_key",
        &h.contoso.to_string(),
    )
    .await;
    assert_eq!(contoso["workspace_id"], "acme");
    assert_eq!(contoso["entra_tenant_id"], CONTOSO);
    assert_eq!(contoso["display_name"], "Contoso");
    assert_eq!(contoso["primary_domain"], "contoso.com");
    assert_eq!(contoso["status"], "active");
    assert!(contoso["registered_at"].is_string());
    assert!(contoso["last_resynced_at"].is_string());
    assert!(contoso["archived_at"].is_null());

    // The history's last contoso snapshot is an import: the tenant's policy intent.
    let imported = bus
        .load::<Tenant>(&h.contoso.to_string())
        .await
        .unwrap()
        .aggregate
        .last_snapshot
        .unwrap();
    assert_eq!(
        contoso["intent_snapshot_id"],
        imported.snapshot_id.to_string()
    );
    assert_eq!(contoso["intent_hash"], imported.hash);
    let seeded_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE aggregate_id = $1 AND event_type = 'PolicyIntentSeeded'",
    )
    .bind(h.contoso.to_string())
    .fetch_one(bus.pool())
    .await
    .unwrap();
    assert_eq!(
        micros(&contoso["intent_seeded_at"]),
        seeded_at.timestamp_micros()
    );

    let northwind = row(
        bus.pool(),
        "rm_tenants",
        "tenant_key",
        &h.northwind.to_string(),
    )
    .await;
    assert_eq!(northwind["display_name"], "Northwind Traders");
    assert_eq!(northwind["status"], "archived");
    assert!(northwind["archived_at"].is_string());
    assert!(northwind["intent_snapshot_id"].is_null() && northwind["intent_seeded_at"].is_null());

    for key in [&h.contoso, &h.fabrikam, &h.northwind, &h.globex().contoso] {
        let loaded = bus.load::<Tenant>(&key.to_string()).await.unwrap();
        let row = row(bus.pool(), "rm_tenants", "tenant_key", &key.to_string()).await;
        assert_eq!(row["status"], json!(loaded.aggregate.status));
        assert_eq!(row["display_name"], loaded.aggregate.display_name);
        assert_eq!(
            row["version"], loaded.version,
            "{key}: every tenant event advances the row"
        );
        let resynced = loaded
            .aggregate
            .last_resynced_at
            .map(|t| t.timestamp_micros());
        assert_eq!(
            Some(&row["last_resynced_at"])
                .filter(|v| !v.is_null())
                .map(micros),
            resynced
        );
    }
}

/// Compares a connection's row with the aggregate's state, field by field.
async fn assert_connection_row_matches_the_aggregate(bus: &CommandBus, id: ConnectionId) {
    let loaded = bus
        .load::<ProviderConnection>(&id.to_string())
        .await
        .unwrap();
    let c = loaded.aggregate;
    let row = row(
        bus.pool(),
        "rm_connections",
        "connection_id",
        &id.to_string(),
    )
    .await;
    let at = |v: &Value| Some(v).filter(|v| !v.is_null()).map(micros);
    assert_eq!(row["workspace_id"], json!(c.workspace));
    assert_eq!(row["tenant_key"], json!(c.tenant_key));
    assert_eq!(row["provider"], json!(c.provider));
    assert_eq!(row["entra_tenant_id"], json!(c.entra_tenant_id));
    assert_eq!(row["display_name"], c.display_name);
    assert_eq!(row["status"], json!(c.status), "{id}");
    assert_eq!(row["health_status"], json!(c.health_status));
    assert_eq!(row["is_default"], c.is_default);
    assert_eq!(row["consent_granted"], c.consent_granted);
    assert_eq!(row["scopes_granted"], json!(c.scopes_granted));
    let credential = c.credential.as_ref();
    assert_eq!(
        row["credential_ref"],
        json!(credential.map(|k| k.credential_ref))
    );
    assert_eq!(
        row["credential_fingerprint"],
        json!(credential.map(|k| &k.fingerprint))
    );
    assert_eq!(
        at(&row["credential_set_at"]),
        credential.map(|k| k.set_at.timestamp_micros())
    );
    assert_eq!(
        at(&row["last_health_check_at"]),
        c.last_health_check_at.map(|t| t.timestamp_micros())
    );
    assert_eq!(
        row["last_error_reason_code"],
        json!(c.last_error_reason_code)
    );
    assert_eq!(row["last_error_message"], json!(c.last_error_message));
    assert_eq!(row["version"], loaded.version);
}

#[tokio::test]
async fn the_connections_read_model_follows_each_connections_status_default_and_credential() {
    let (_db, bus, h) = with_chapters(|h| h.connections().other_workspace()).await;
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::Connections)).await;

    let primary = row(
        &pool,
        "rm_connections",
        "connection_id",
        &h.primary.to_string(),
    )
    .await;
    assert_eq!(primary["status"], "connected");
    assert_eq!(primary["health_status"], "healthy");
    assert_eq!(primary["is_default"], true);
    assert_eq!(primary["credential_set_by"], "alice");
    assert_eq!(primary["last_error_reason_code"], "graph_throttled");
    let partner = row(
        &pool,
        "rm_connections",
        "connection_id",
        &h.partner().to_string(),
    )
    .await;
    assert_eq!(partner["status"], "needs_consent");
    assert_eq!(partner["is_default"], false);
    assert!(partner["credential_ref"].is_null());

    // The two statuses the history leaves out: a standing error, and disabled.
    let engine = engine("acme");
    let errored = ConnectionCommand::RecordError {
        reason: ReasonCode::ProviderAuthFailed,
        message: "invalid_client".into(),
    };
    app::change_connection(&bus, &engine, h.partner(), errored)
        .await
        .unwrap();
    let globex = meta("globex", Role::Owner);
    app::change_connection(
        &bus,
        &globex,
        h.globex().connection,
        ConnectionCommand::Disable,
    )
    .await
    .unwrap();
    catch_up(&pool, Arc::new(projections::Connections)).await;

    let statuses: BTreeSet<String> = sqlx::query_scalar("SELECT status FROM rm_connections")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["connected".into(), "error".into(), "disabled".into()])
    );
    for id in [h.primary, h.partner(), h.globex().connection] {
        assert_connection_row_matches_the_aggregate(&bus, id).await;
    }
}

#[tokio::test]
async fn no_read_model_ever_contains_the_client_secret() {
    let (_db, bus, _) = projected_history().await;

    let mut conn = bus.pool().acquire().await.unwrap();
    let tables = snapshot(&mut conn).await;
    let fingerprints: Vec<&str> = tables["rm_connections"]
        .iter()
        .filter_map(|c| c["credential_fingerprint"].as_str())
        .collect();
    assert_eq!(fingerprints.len(), 2, "two connections have a credential");
    assert!(fingerprints.iter().all(|f| f.starts_with("hmac-sha256:")));
    for (table, rows) in tables {
        let text = serde_json::to_string(&rows).unwrap();
        assert!(!rows.is_empty(), "{table} has rows");
        assert!(!text.contains(CLIENT_SECRET), "{table} holds the secret");
    }
}

#[tokio::test]
async fn the_runs_read_model_shows_each_runs_status_outcome_and_step_attempts() {
    let (_db, bus, h) = with_chapters(|h| h.runs()).await;
    // The two endings the history leaves out.
    let failed = queued_resync(&bus, &h.contoso).await;
    let fail = RunCommand::Fail {
        failure: FailureSummary {
            reason: ReasonCode::GraphUnavailable,
            message: "502".into(),
            step: Some("fetch".into()),
        },
    };
    record_progress(&bus, failed, [RunCommand::Start, fail]).await;
    release_scope(&bus, failed).await;
    let partial = queued_resync(&bus, &h.contoso).await;
    record_progress(&bus, partial, [RunCommand::Start]).await;
    let partially = RunCommand::PartiallySucceed {
        summary_counts: BTreeMap::from([("policies".to_owned(), 3)]),
        failures: vec![FailureSummary {
            reason: ReasonCode::GraphNotFound,
            message: "one policy vanished".into(),
            step: Some("fetch".into()),
        }],
    };
    record_progress(&bus, partial, [partially]).await;
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::Runs)).await;

    let run = |id: RunId| {
        let pool = pool.clone();
        async move { row(&pool, "rm_runs", "run_id", &id.to_string()).await }
    };
    let succeeded = run(h.runs().succeeded).await;
    assert_eq!(succeeded["workspace_id"], "acme");
    assert_eq!(succeeded["run_type"], "policy.resync");
    assert_eq!(succeeded["tenant_key"], h.contoso.to_string());
    assert_eq!(succeeded["context"]["tenant_key"], h.contoso.to_string());
    assert_eq!(succeeded["context"]["module"], "policies");
    assert_eq!(succeeded["initiator"], "alice");
    assert_eq!(
        (&succeeded["status"], &succeeded["outcome"]),
        (&json!("completed"), &json!("succeeded"))
    );
    assert_eq!(succeeded["summary_counts"], json!({ "policies": 12 }));
    assert!(succeeded["started_at"].is_string() && succeeded["completed_at"].is_string());

    let steps: Vec<Value> = rows(&mut pool.acquire().await.unwrap(), "rm_run_steps")
        .await
        .into_iter()
        .filter(|s| s["run_id"] == h.runs().succeeded.to_string())
        .collect();
    let attempts: Vec<(&Value, &Value, &Value, &Value)> = steps
        .iter()
        .map(|s| (&s["step"], &s["attempt"], &s["status"], &s["reason_code"]))
        .collect();
    assert_eq!(
        attempts,
        [
            (
                &json!("fetch"),
                &json!(1),
                &json!("completed"),
                &Value::Null
            ),
            (
                &json!("store"),
                &json!(1),
                &json!("failed"),
                &json!("graph_throttled")
            ),
            (
                &json!("store"),
                &json!(2),
                &json!("completed"),
                &Value::Null
            ),
        ]
    );
    assert_eq!(steps[0]["summary"], json!({ "policies": 12 }));
    assert!(steps[0]["started_at"].is_string() && steps[1]["started_at"].is_string());
    assert!(steps[1]["retry_at"].is_string());
    assert!(steps[2]["started_at"].is_null());
    assert!(steps.iter().all(|s| s["workspace_id"] == "acme"));

    let cancelled_queued = run(h.runs().cancelled_queued).await;
    assert_eq!(cancelled_queued["outcome"], "cancelled");
    assert!(cancelled_queued["started_at"].is_null());
    let cancelled_running = run(h.runs().cancelled_running).await;
    assert_eq!(cancelled_running["outcome"], "cancelled");
    assert_eq!(cancelled_running["cancel_requested"], true);
    let interrupted = row(
        &pool,
        "rm_run_steps",
        "run_id",
        &h.runs().cancelled_running.to_string(),
    )
    .await;
    assert_eq!(
        (&interrupted["step"], &interrupted["status"]),
        (&json!("fetch"), &json!("started"))
    );

    let blocked = run(h.runs().blocked).await;
    assert_eq!(blocked["tenant_key"], h.fabrikam.to_string());
    assert_eq!(blocked["outcome"], "blocked");
    assert_eq!(blocked["reason_code"], "provider_connection_missing");
    assert_eq!(blocked["next_steps"], json!(["add_connection"]));

    let failed_row = run(failed).await;
    assert_eq!(failed_row["outcome"], "failed");
    assert_eq!(failed_row["reason_code"], "graph_unavailable");
    assert_eq!(failed_row["failure_summary"][0]["step"], "fetch");
    let partial_row = run(partial).await;
    assert_eq!(partial_row["outcome"], "partially_succeeded");
    assert_eq!(partial_row["summary_counts"], json!({ "policies": 3 }));
    assert_eq!(
        partial_row["failure_summary"][0]["reason"],
        "graph_not_found"
    );

    for id in [
        h.runs().succeeded,
        h.runs().cancelled_queued,
        h.runs().cancelled_running,
        h.runs().blocked,
        failed,
        partial,
    ] {
        let loaded = bus.load::<OperationRun>(&id.to_string()).await.unwrap();
        let row = run(id).await;
        assert_eq!(row["status"], json!(loaded.aggregate.status));
        assert_eq!(row["outcome"], json!(loaded.aggregate.outcome));
        assert_eq!(row["cancel_requested"], loaded.aggregate.cancel_requested);
        assert_eq!(row["version"], loaded.version, "{id}");
    }
}

#[tokio::test]
async fn a_run_over_the_whole_workspace_is_shown_without_a_tenant_under_its_module() {
    let (_db, bus, _h) = with_chapters(|h| h).await;
    let started = app::start_workspace_operation(&bus, &owner(), "contacts.sync", "contacts")
        .await
        .unwrap();
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::Runs)).await;
    catch_up(&pool, Arc::new(projections::AuditLog)).await;
    let run = row(&pool, "rm_runs", "run_id", &started.run_id().to_string()).await;
    assert_eq!(run["workspace_id"], "acme");
    assert_eq!(run["run_type"], "contacts.sync");
    assert_eq!(run["tenant_key"], Value::Null);
    assert_eq!(run["context"], json!({ "module": "contacts" }));
    assert_eq!(run["status"], "queued");
    // Its audit entry names no tenant (its scope lock is a row, not events: issue 13).
    let entries: Vec<Value> = rows(&mut pool.acquire().await.unwrap(), "rm_audit_log")
        .await
        .into_iter()
        .filter(|e| {
            e["aggregate_id"] == started.run_id().to_string()
                || e["aggregate_id"] == "acme:contacts"
        })
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries.iter().all(|e| e["tenant_key"].is_null()),
        "{entries:?}"
    );
}

#[tokio::test]
async fn the_schedules_read_model_shows_settings_and_the_latest_ticks_fan_out() {
    let (_db, bus, h) = with_chapters(|h| h.schedule()).await;
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::Schedules)).await;

    let s = row(&pool, "rm_schedules", "schedule_id", &h.schedule().id).await;
    assert_eq!(s["workspace_id"], "acme");
    assert_eq!(s["run_type"], "policy.resync");
    assert_eq!(s["interval_minutes"], 30, "re-timed");
    assert_eq!(s["enabled"], false);
    assert!(
        s["next_due_at"].is_null(),
        "a disabled schedule is never due"
    );
    assert_eq!(s["set_by"], "alice");
    assert_eq!(
        micros(&s["last_due_at"]),
        h.schedule().tick_due_at.timestamp_micros()
    );
    assert!(s["last_fired_at"].is_string());
    assert!(s["last_fanned_out_at"].is_string());
    assert_eq!(
        s["last_fan_out"],
        serde_json::to_value(History::TICK_FAN_OUT).unwrap()
    );
    assert_eq!(s["version"], 3);
}

#[tokio::test]
async fn an_enabled_schedule_is_next_due_one_interval_after_its_latest_tick() {
    use chrono::{Duration, SubsecRound, Utc};
    use domain::schedule_tick::{tick_key, ScheduleTick, TickCommand};
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let first = (Utc::now() - Duration::minutes(150)).trunc_subsecs(0);
    let id = app::set_schedule(&bus, &owner(), "policy.resync", 60, true, Some(first))
        .await
        .unwrap();
    let next_due = || async {
        catch_up(&pool, Arc::new(projections::Schedules)).await;
        let s = row(&pool, "rm_schedules", "schedule_id", &id).await;
        (micros(&s["next_due_at"]), s["last_fanned_out_at"].clone())
    };
    assert_eq!(
        next_due().await.0,
        first.timestamp_micros(),
        "never fired: due since its first run"
    );

    let due_at = first + Duration::minutes(120);
    let fire = TickCommand::Fire {
        workspace: "acme".parse().unwrap(),
        schedule_id: id.clone(),
        run_type: "policy.resync".into(),
        due_at,
    };
    bus.execute::<ScheduleTick>(&tick_key(&id, due_at), fire, &engine("acme"))
        .await
        .unwrap();
    let (next, fanned_out) = next_due().await;
    assert_eq!(next, (due_at + Duration::minutes(60)).timestamp_micros());
    assert!(fanned_out.is_null(), "the fan-out is not recorded yet");
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_to_which_tenant_for_every_event() {
    // Every chapter about tenants (contact sync's events concern the workspace as a whole).
    let (_db, bus, h) = with_chapters(|h| {
        h.policies()
            .connections()
            .runs()
            .schedule()
            .other_workspace()
    })
    .await;
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::AuditLog)).await;

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let events = log_length(&pool).await;
    let faithful = count(
        "SELECT count(*) FROM events e JOIN rm_audit_log a USING (global_position) \
         WHERE a.workspace_id = e.metadata->>'workspace' AND a.actor = e.metadata->>'actor' \
           AND a.role = e.metadata->>'role' AND a.action = e.event_type \
           AND a.aggregate_type = e.aggregate_type AND a.aggregate_id = e.aggregate_id \
           AND a.recorded_at = e.recorded_at \
           AND a.request_id IS NOT DISTINCT FROM e.metadata->>'request_id' \
           AND a.correlation_id IS NOT DISTINCT FROM e.metadata->>'correlation_id' \
           AND a.causation_id IS NOT DISTINCT FROM e.metadata->>'causation_id'",
    )
    .await;
    assert_eq!(faithful, events, "one faithful row per event");
    assert_eq!(
        count(
            "SELECT count(*) FROM rm_audit_log WHERE tenant_key IS NULL \
             AND aggregate_type NOT IN ('schedule', 'schedule_tick')"
        )
        .await,
        0,
        "every event of this history but the workspace's schedule concerns a tenant"
    );

    let tenant_of = |aggregate_type: &'static str, id: String| {
        let pool = pool.clone();
        async move {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT tenant_key FROM rm_audit_log \
                 WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(aggregate_type)
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
            keys
        }
    };
    let contoso = vec![h.contoso.to_string()];
    assert_eq!(
        tenant_of("provider_connection", h.partner().to_string()).await,
        contoso
    );
    assert_eq!(
        tenant_of("operation_run", h.runs().succeeded.to_string()).await,
        contoso
    );
    assert_eq!(
        tenant_of("operation_run", h.runs().blocked.to_string()).await,
        vec![h.fabrikam.to_string()]
    );

    // The engine's block of a run is attributed to the person's request that caused it.
    let (role, actor, caused_by): (String, String, Option<String>) = sqlx::query_as(
        "SELECT role, actor, causation_id FROM rm_audit_log \
         WHERE aggregate_id = $1 AND action = 'RunBlocked'",
    )
    .bind(h.runs().blocked.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    let queued_by: String = sqlx::query_scalar(
        "SELECT request_id FROM rm_audit_log WHERE aggregate_id = $1 AND action = 'RunQueued'",
    )
    .bind(h.runs().blocked.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((role.as_str(), actor.as_str()), ("system", "alice"));
    assert_eq!(caused_by, Some(queued_by));
}

/// Records a resync run as the workflow engine does: its snapshot step's summary, then its
/// end with the summary counts the engine derives from it.
async fn resync_run(bus: &CommandBus, h: &History, policy_count: i64, unchanged: bool) -> RunId {
    let run = queued_resync(bus, &h.contoso).await;
    let summary = json!({
        "snapshot_id": uuid::Uuid::now_v7(), "unchanged": unchanged, "policy_count": policy_count,
    });
    let commands = [
        RunCommand::Start,
        RunCommand::CompleteStep {
            step: "snapshot_policies".into(),
            attempt: 1,
            summary,
        },
        RunCommand::Succeed {
            summary_counts: BTreeMap::from([
                ("steps_completed".to_owned(), 3),
                ("policy_count".to_owned(), policy_count),
                ("unchanged".to_owned(), i64::from(unchanged)),
            ]),
        },
    ];
    record_progress(bus, run, commands).await;
    release_scope(bus, run).await;
    run
}

#[tokio::test]
async fn the_audit_log_shows_each_resyncs_policy_count_and_whether_it_was_unchanged() {
    let (_db, bus, h) = with_chapters(|h| h.policies()).await;
    let changed = resync_run(&bus, &h, 7, false).await;
    let unchanged = resync_run(&bus, &h, 7, true).await;
    let pool = bus.pool().clone();
    catch_up(&pool, Arc::new(projections::AuditLog)).await;

    let details = |run: RunId, action: &'static str| {
        let pool = pool.clone();
        async move {
            let (tenant, details): (Option<String>, Option<Value>) = sqlx::query_as(
                "SELECT tenant_key, details FROM rm_audit_log WHERE aggregate_id = $1 AND action = $2",
            )
            .bind(run.to_string())
            .bind(action)
            .fetch_one(&pool)
            .await
            .unwrap();
            (tenant, details.unwrap_or(Value::Null))
        }
    };
    for (run, flag) in [(changed, 0), (unchanged, 1)] {
        let (tenant, end) = details(run, "RunSucceeded").await;
        assert_eq!(tenant, Some(h.contoso.to_string()));
        assert_eq!(end["summary_counts"]["policy_count"], 7, "{end}");
        assert_eq!(end["summary_counts"]["unchanged"], flag, "{end}");
        let (_, step) = details(run, "RunStepCompleted").await;
        assert_eq!(step["step"], "snapshot_policies");
        assert_eq!(step["summary"]["policy_count"], 7);
        assert_eq!(step["summary"]["unchanged"], flag == 1);
    }

    // The snapshots say which snapshot and how many policies, never the policies.
    let snapshots: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM rm_audit_log WHERE action = 'PolicySnapshotted' ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(snapshots.len(), 3);
    assert_eq!(snapshots[0]["policy_count"], 1);
    assert!(snapshots[0]["changes"].is_null(), "the first has no diff");
    assert_eq!(
        snapshots[1]["changes"],
        json!({"added": 0, "removed": 0, "modified": 1})
    );
    assert_eq!(snapshots[2]["source"], "import");
    assert!(snapshots.iter().all(|d| d["snapshot_id"].is_string()));
    assert!(!Value::Array(snapshots)
        .to_string()
        .contains("MFA for admins"));
    let intent: Value =
        sqlx::query_scalar("SELECT details FROM rm_audit_log WHERE action = 'PolicyIntentSeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(intent["snapshot_id"].is_string());

    // Events without facts to add have none.
    let started: Option<Value> = sqlx::query_scalar(
        "SELECT details FROM rm_audit_log WHERE aggregate_id = $1 AND action = 'RunStarted'",
    )
    .bind(changed.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(started, None);
}

#[tokio::test]
async fn every_row_carries_the_workspace_of_what_it_shows() {
    let (_db, bus, h) = projected_history().await;
    let pool = bus.pool().clone();

    for (table, _) in TABLES {
        let workspaces: BTreeSet<String> =
            sqlx::query_scalar(&format!("SELECT DISTINCT workspace_id FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let expected: BTreeSet<String> =
            if *table == "rm_tenants" || *table == "rm_connections" || *table == "rm_audit_log" {
                BTreeSet::from(["acme".into(), "globex".into()])
            } else {
                BTreeSet::from(["acme".into()])
            };
        assert_eq!(workspaces, expected, "{table}");
    }
    for table in ["rm_tenants", "rm_connections", "rm_runs"] {
        let foreign: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_key NOT LIKE workspace_id || ':%'"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            foreign, 0,
            "{table}: a row's tenant is in the row's workspace"
        );
    }
    let globex = row(
        &pool,
        "rm_connections",
        "connection_id",
        &h.globex().connection.to_string(),
    )
    .await;
    assert_eq!(globex["workspace_id"], "globex");
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT workspace_id FROM rm_audit_log WHERE tenant_key = $1")
            .bind(h.globex().contoso.to_string())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(audit, ["globex"]);
}

/// What a reader (an API transaction) sees of a table with `app.workspace` set to
/// `workspace`, or unset.
async fn visible(pool: &PgPool, workspace: Option<&str>, table: &str) -> Vec<String> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE tenantflow_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    if let Some(w) = workspace {
        sqlx::query("SELECT set_config('app.workspace', $1, true)")
            .bind(w)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    // No WHERE clause: the policy alone decides.
    let seen: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT workspace_id FROM {table} ORDER BY workspace_id"
    ))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    seen
}

#[tokio::test]
async fn a_reader_sees_only_the_rows_of_the_workspace_set_for_its_transaction() {
    let (_db, bus, h) = projected_history().await;
    let pool = bus.pool().clone();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE tenantflow_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.workspace', 'acme', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let keys: BTreeSet<String> = sqlx::query_scalar("SELECT tenant_key FROM rm_tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .into_iter()
        .collect();
    tx.rollback().await.unwrap();
    let acme: BTreeSet<String> = [&h.contoso, &h.fabrikam, &h.northwind]
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        keys, acme,
        "globex's tenant for the same Entra tenant is hidden"
    );

    for (table, _) in TABLES {
        let acme_rows = visible(&pool, Some("acme"), table).await;
        assert!(!acme_rows.is_empty(), "{table}");
        assert!(acme_rows.iter().all(|w| w == "acme"), "{table}");
        let globex_rows = visible(&pool, Some("globex"), table).await;
        assert!(globex_rows.iter().all(|w| w == "globex"), "{table}");
        assert_eq!(
            visible(&pool, None, table).await,
            Vec::<String>::new(),
            "{table}"
        );
    }
}

/// The next notification on [`RUNS_CHANNEL`], as JSON.
async fn next_run_notification(listener: &mut PgListener) -> Value {
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a run notification")
        .unwrap();
    serde_json::from_str(n.payload()).unwrap()
}

#[tokio::test]
async fn run_changes_are_announced_on_the_runs_channel_when_their_batch_commits() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(RUNS_CHANNEL).await.unwrap();
    let h = History::of(&bus).runs().build().await;
    catch_up(&pool, Arc::new(projections::Runs)).await;

    let runs = [
        (h.runs().succeeded, &h.contoso),
        (h.runs().cancelled_queued, &h.contoso),
        (h.runs().cancelled_running, &h.contoso),
        (h.runs().blocked, &h.fabrikam),
    ];
    let mut announced = HashSet::new();
    while announced.len() < runs.len() {
        let n = next_run_notification(&mut listener).await;
        let (id, tenant) = runs
            .iter()
            .find(|(id, _)| n["run_id"] == id.to_string())
            .unwrap_or_else(|| panic!("an unknown run was announced: {n}"));
        assert_eq!(n["workspace"], "acme");
        assert_eq!(n["tenant_key"], tenant.to_string());
        announced.insert(*id);
    }

    // Replaying the log changes no row, so it announces nothing: the next notification
    // is the next real change.
    let consumer = projections::Runs;
    let mut tx = pool.begin().await.unwrap();
    let events = store::log::read_batch(&mut tx, store::Position::default(), 10_000)
        .await
        .unwrap();
    store::Consumer::handle(&consumer, &mut tx, &events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let next = queued_resync(&bus, &h.contoso).await;
    catch_up(&pool, Arc::new(projections::Runs)).await;
    let n = next_run_notification(&mut listener).await;
    assert_eq!(n["run_id"], next.to_string());
}

#[tokio::test]
async fn a_rebuild_announces_after_its_swap_only_the_runs_the_live_tables_had_not_caught_up_with() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let h = History::of(&bus).runs().build().await;
    catch_up(&pool, Arc::new(projections::Runs)).await;
    // Queued since the live runner last read the log.
    let next = queued_resync(&bus, &h.contoso).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(RUNS_CHANNEL).await.unwrap();
    let marker = || async {
        sqlx::query("SELECT pg_notify($1, '{\"marker\": true}')")
            .bind(RUNS_CHANNEL)
            .execute(&pool)
            .await
            .unwrap();
    };

    log_below_horizon(&pool).await;
    projections::rebuild(&pool, &[Arc::new(projections::Runs)], 1000, &Quiet)
        .await
        .unwrap();
    marker().await;
    let n = next_run_notification(&mut listener).await;
    assert_eq!(n["run_id"], next.to_string());
    assert_eq!(n["tenant_key"], h.contoso.to_string());
    // The notice comes with the swap: the row is in the table readers read.
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM rm_runs WHERE run_id::text = $1")
            .bind(next.to_string())
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(status.as_deref(), Some("queued"));
    // The runs the live tables had, rewritten by the rebuild, are not announced again.
    assert_eq!(next_run_notification(&mut listener).await["marker"], true);

    // A rebuild with nothing new announces nothing.
    log_below_horizon(&pool).await;
    projections::rebuild(&pool, &[Arc::new(projections::Runs)], 1000, &Quiet)
        .await
        .unwrap();
    marker().await;
    assert_eq!(next_run_notification(&mut listener).await["marker"], true);
}

/// The runs read model, also recording how its rebuild filler's lookup of the steps its
/// batch's runs already have is planned in the shadow table (`EXPLAIN`, once a batch).
struct PlanWatch {
    runs: projections::Runs,
    plans: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl store::Consumer for PlanWatch {
    fn name(&self) -> &str {
        store::Consumer::name(&self.runs)
    }
    fn payloads_of(&self) -> store::log::Payloads {
        store::Consumer::payloads_of(&self.runs)
    }
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[store::StoredEvent],
    ) -> Result<(), store::ConsumerError> {
        store::Consumer::handle(&self.runs, tx, events).await
    }
}

#[async_trait::async_trait]
impl projections::Projection for PlanWatch {
    fn tables(&self) -> &'static [&'static str] {
        projections::Projection::tables(&self.runs)
    }
    fn indexes_built_after_rebuild(&self) -> &'static [&'static str] {
        projections::Projection::indexes_built_after_rebuild(&self.runs)
    }
    async fn rebuild_handle(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[store::StoredEvent],
    ) -> Result<(), store::ConsumerError> {
        projections::Projection::rebuild_handle(&self.runs, tx, events).await?;
        // As many runs as a large batch names; which ones does not change the plan.
        let ids: Vec<uuid::Uuid> = (0..625).map(|_| uuid::Uuid::now_v7()).collect();
        let plan: Vec<String> =
            sqlx::query_scalar("EXPLAIN SELECT * FROM rm_run_steps WHERE run_id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
        self.plans.lock().unwrap().push(plan.join("\n"));
        Ok(())
    }
}

#[tokio::test]
async fn a_rebuilds_lookups_in_its_growing_shadow_tables_go_through_their_keys_index() {
    let (_db, bus, _) = with_history().await;
    let pool = bus.pool().clone();
    let watch = Arc::new(PlanWatch {
        runs: projections::Runs,
        plans: std::sync::Mutex::new(Vec::new()),
    });
    // Small batches: the shadow holds rows after the first, and is never analysed.
    log_below_horizon(&pool).await;
    let rebuilt: Arc<dyn projections::Projection> = watch.clone();
    projections::rebuild(&pool, &[rebuilt], 5, &Quiet)
        .await
        .unwrap();
    let plans = std::mem::take(&mut *watch.plans.lock().unwrap());
    assert!(plans.len() > 2, "{} batches", plans.len());
    for plan in &plans {
        assert!(plan.contains("rm_run_steps_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}
