//! Reading the log back: an aggregate's earlier states (R9.3) and a run's history (R9.2),
//! as an operator's command reads them (the whole log) and as the API does (one workspace).

use chrono::{DateTime, Utc};
use domain::run::{OperationRun, RunCommand, StepStatus};
use domain::tenant::{Tenant, TenantCommand};
use domain::ReasonCode;
use serde_json::json;
use sqlx::PgPool;
use store::history::{self, AggregateKind, AsOf};
use testkit::{owner, queued_resync, record_progress, ReadyTenant, TestDb, CONTOSO};

/// Where and when the first `event_type` event of `aggregate_id` was recorded.
async fn recorded(pool: &PgPool, aggregate_id: &str, event_type: &str) -> (i64, DateTime<Utc>) {
    sqlx::query_as(
        "SELECT global_position, recorded_at FROM events \
         WHERE aggregate_id = $1 AND event_type = $2 ORDER BY sequence LIMIT 1",
    )
    .bind(aggregate_id)
    .bind(event_type)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tenant_is_seen_as_it_was_at_a_position_or_a_time() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    let key = tenant.to_string();
    let rename = TenantCommand::Rename {
        display_name: "Contoso Ltd".into(),
    };
    bus.execute::<Tenant>(&key, rename, &owner()).await.unwrap();
    let pool = db.pool().await;
    let (registered, registered_at) = recorded(&pool, &key, "TenantRegistered").await;
    let (renamed, _) = recorded(&pool, &key, "TenantRenamed").await;
    let mut conn = pool.acquire().await.unwrap();

    let then = history::state_at::<Tenant>(&mut conn, &key, AsOf::Position(registered))
        .await
        .unwrap()
        .expect("the tenant existed");
    assert_eq!(then.state.display_name, "Contoso");
    assert!(then.state.connections.is_empty(), "no connection yet");
    assert_eq!((then.version, then.global_position), (1, registered));

    let by_time = history::state_at::<Tenant>(&mut conn, &key, AsOf::Time(registered_at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_time.version, 1, "only what was recorded by then");

    let before = AsOf::Time(registered_at - chrono::Duration::seconds(1));
    let none = history::state_at::<Tenant>(&mut conn, &key, before)
        .await
        .unwrap();
    assert!(
        none.is_none(),
        "nothing was recorded before it was registered"
    );

    let now = history::state_json_at(
        &mut conn,
        AggregateKind::Tenant,
        &key,
        AsOf::Position(renamed),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(now.state["display_name"], "Contoso Ltd");
    assert_eq!(now.state["connections"].as_array().map(Vec::len), Some(1));
    assert_eq!(now.aggregate_type, "tenant");
}

#[tokio::test]
async fn a_runs_history_lists_every_event_with_its_step_reason_author_and_timing() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    let run = queued_resync(&bus, &tenant).await;
    let retry_at = Utc::now() + chrono::Duration::seconds(5);
    record_progress(
        &bus,
        run,
        [
            RunCommand::Start,
            RunCommand::FailStep {
                step: "snapshot_policies".into(),
                attempt: 1,
                reason: ReasonCode::GraphThrottled,
                message: "429 Bearer eyJsecret".into(),
                retry_at: Some(retry_at),
            },
            RunCommand::CompleteStep {
                step: "snapshot_policies".into(),
                attempt: 2,
                summary: json!({"policy_count": 4}),
            },
        ],
    )
    .await;
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let entries = history::run_history(&mut conn, run).await.unwrap();

    let types: Vec<&str> = entries.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "RunQueued",
            "RunStarted",
            "RunStepFailed",
            "RunStepCompleted"
        ]
    );
    assert!(entries
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    assert!(entries
        .windows(2)
        .all(|w| w[0].elapsed_ms <= w[1].elapsed_ms));
    assert_eq!(entries[0].elapsed_ms, 0);

    let queued = &entries[0];
    assert_eq!(
        (queued.actor.as_deref(), queued.role.as_deref()),
        (Some("alice"), Some("owner"))
    );
    assert_eq!(queued.details.as_ref().unwrap()["initiator"], "alice");

    let failed = &entries[2];
    assert_eq!(failed.step.as_deref(), Some("snapshot_policies"));
    assert_eq!(failed.attempt, Some(1));
    assert_eq!(failed.reason, Some(ReasonCode::GraphThrottled));
    assert_eq!(failed.role.as_deref(), Some("system"));
    let details = failed.details.clone().unwrap();
    assert_eq!(details["message"], "429 Bearer [redacted]");
    assert!(details.get("step").is_none() && details.get("retry_at").is_some());

    // The run as it stood when the first attempt had failed.
    let at_failure = AsOf::Position(failed.global_position);
    let then = history::state_at::<OperationRun>(&mut conn, &run.to_string(), at_failure)
        .await
        .unwrap()
        .unwrap();
    let snapshot = then.state.step("snapshot_policies").unwrap();
    assert_eq!((snapshot.attempt, snapshot.status), (1, StepStatus::Failed));
}

#[tokio::test]
async fn a_workspace_reader_sees_only_its_own_workspaces_streams() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    let run = queued_resync(&bus, &tenant).await;
    let pool = db.pool().await;
    let latest = AsOf::Position(i64::MAX);

    let mut acme = store::db::workspace_reader(&pool, "acme").await.unwrap();
    let seen = history::state_json_at(
        &mut acme,
        AggregateKind::Tenant,
        &tenant.to_string(),
        latest,
    )
    .await
    .unwrap();
    assert!(seen.is_some());
    assert_eq!(history::run_history(&mut acme, run).await.unwrap().len(), 1);

    let mut globex = store::db::workspace_reader(&pool, "globex").await.unwrap();
    let unseen = history::state_json_at(
        &mut globex,
        AggregateKind::Tenant,
        &tenant.to_string(),
        latest,
    )
    .await
    .unwrap();
    assert!(unseen.is_none(), "another workspace's tenant is not found");
    assert!(history::run_history(&mut globex, run)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_workspace_reader_runs_as_the_reader_role_with_its_workspace_set_whatever_the_name() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // A slug is set in the BEGIN itself; anything else is bound as a parameter, so a name
    // that would close a literal is only a name.
    for workspace in ["acme", "globex-2", "Acme'; RESET ROLE; --", "a\\'b"] {
        let plain = store::db::workspace_reader(&pool, workspace).await.unwrap();
        let snapshot = store::db::workspace_snapshot(&pool, workspace)
            .await
            .unwrap();
        for (mut tx, isolation) in [(plain, "read committed"), (snapshot, "repeatable read")] {
            let seen: (String, String, String) = sqlx::query_as(
                "SELECT current_user::text, current_setting('app.workspace'), \
                 current_setting('transaction_isolation')",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            // (SET LOCAL outside a transaction would have left neither.)
            assert_eq!(
                (seen.0.as_str(), seen.1.as_str(), seen.2.as_str()),
                ("tenantflow_reader", workspace, isolation)
            );
        }
    }
}
