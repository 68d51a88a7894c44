//! The resync workflow against the Graph simulator and a real database.

use app::Started;
use domain::run::{OperationRun, RunOutcome};
use domain::tenant::Tenant;
use domain::{ReasonCode, RunId, TenantKey};
use graph::sim::{Fault, SimHandle};
use graph::Endpoint;
use std::time::Duration;
use testkit::{owner, OneTenant, SteppedEngine, TestDb};

struct World {
    _db: TestDb,
    /// The engine on a clock that moves only when a test moves it, or when `drive` finds
    /// nothing due; the aggregates read the same clock.
    stepped: SteppedEngine,
    sim: SimHandle,
    tenant: TenantKey,
    entra: uuid::Uuid,
}

/// The engine, task feed, clock and bus of the world.
impl std::ops::Deref for World {
    type Target = SteppedEngine;
    fn deref(&self) -> &SteppedEngine {
        &self.stepped
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut SteppedEngine {
        &mut self.stepped
    }
}

/// One simulated tenant, ready, and an engine calling the simulator.
async fn world() -> World {
    let OneTenant {
        db,
        stepped,
        sim,
        tenant,
        entra,
        ..
    } = OneTenant::new(3).await;
    World {
        _db: db,
        stepped,
        sim,
        tenant,
        entra,
    }
}

impl World {
    /// Starts a resync and drives feed and engine until the run completes (bounded).
    async fn resync(&self) -> OperationRun {
        self.run(workflows::resync::RUN_TYPE).await
    }

    /// Starts an import (a resync whose snapshot seeds the policy intent) and drives it
    /// to its end.
    async fn import(&self) -> OperationRun {
        self.run(workflows::resync::IMPORT_RUN_TYPE).await
    }

    /// Starts a run of `run_type` and drives it to its end.
    async fn run(&self, run_type: &str) -> OperationRun {
        self.stepped.run(&owner(), &self.tenant, run_type).await
    }

    async fn start(&self, run_type: &str) -> Result<Started, app::AppError> {
        app::start_operation(&self.bus, &owner(), &self.tenant, run_type, "ca").await
    }

    /// Starts a resync; returns its id once the task feed has made its task.
    async fn queue_resync(&self) -> RunId {
        self.queue(&owner(), &self.tenant, workflows::resync::RUN_TYPE)
            .await
    }

    async fn tenant(&self) -> Tenant {
        self.bus
            .load::<Tenant>(&self.tenant.to_string())
            .await
            .unwrap()
            .aggregate
    }

    /// The payload of the latest event of `event_type`, inside its type tag.
    async fn latest(&self, event_type: &str) -> serde_json::Value {
        sqlx::query_scalar(
            "SELECT payload -> event_type FROM events WHERE event_type = $1 \
             ORDER BY global_position DESC LIMIT 1",
        )
        .bind(event_type)
        .fetch_one(self.bus.pool())
        .await
        .unwrap()
    }

    /// The writes of the run's step results, in order, by the effect each step wrote with
    /// its result in one transaction (a step's result is in the run's checkpoint, written
    /// with its effects): (the effect's event type, the transaction that wrote it, when
    /// that transaction began). The snapshot step writes `PolicySnapshotted`, the license
    /// step `LicensesRefreshed`, the record step `TenantResynced`.
    async fn step_writes(
        &self,
        run_id: RunId,
    ) -> Vec<(String, i64, chrono::DateTime<chrono::Utc>)> {
        sqlx::query_as(
            "SELECT event_type, transaction_id::text::bigint, recorded_at FROM events \
             WHERE metadata ->> 'correlation_id' = $1 \
                 AND event_type IN ('PolicySnapshotted', 'LicensesRefreshed', 'TenantResynced') \
             ORDER BY global_position",
        )
        .bind(run_id.to_string())
        .fetch_all(self.bus.pool())
        .await
        .unwrap()
    }

    async fn count(&self, event_type: &str) -> i64 {
        testkit::count_events(self.bus.pool(), event_type).await
    }
}

#[tokio::test]
async fn a_resync_snapshots_then_reports_unchanged_then_detects_a_portal_edit_with_one_alert() {
    let w = world().await;
    let run = w.resync().await;
    assert_eq!(
        run.outcome,
        RunOutcome::Succeeded,
        "{:?}",
        run.failure_summary
    );
    let first = w
        .tenant()
        .await
        .last_snapshot
        .expect("a snapshot")
        .snapshot_id;
    assert!(w.tenant().await.last_resynced_at.is_some());
    assert!(w.tenant().await.capabilities.is_some());

    let again = w.resync().await;
    assert_eq!(again.outcome, RunOutcome::Succeeded);
    assert_eq!(
        w.tenant().await.last_snapshot.unwrap().snapshot_id,
        first,
        "unchanged: same snapshot"
    );
    assert_eq!(w.count("PolicySnapshotted").await, 1);

    // Someone edits a policy in the portal.
    let mut p = w.sim.policies(w.entra).unwrap().remove(0);
    p["state"] = serde_json::json!(if p["state"] == "disabled" {
        "enabled"
    } else {
        "disabled"
    });
    w.sim.upsert_policy(w.entra, p.clone()).unwrap();
    w.resync().await;
    assert_eq!(w.count("PolicySnapshotted").await, 2);
    assert_eq!(w.count("PolicyDriftDetected").await, 1);
    let diff: serde_json::Value = sqlx::query_scalar(
        "SELECT payload -> 'PolicySnapshotted' -> 'diff' FROM events WHERE event_type = 'PolicySnapshotted' ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(w.bus.pool())
    .await
    .unwrap();
    assert!(diff.to_string().contains("\"state\""), "{diff}");

    // Another change within the hour: a new snapshot, no second alert.
    p["state"] = serde_json::json!("enabledForReportingButNotEnforced");
    w.sim.upsert_policy(w.entra, p).unwrap();
    w.resync().await;
    assert_eq!(w.count("PolicySnapshotted").await, 3);
    assert_eq!(w.count("PolicyDriftDetected").await, 1);
}

#[tokio::test]
async fn a_token_401_fails_the_run_with_provider_auth_failed_and_stores_nothing() {
    let w = world().await;
    w.sim.inject(Fault::Unauthorized.on(Endpoint::Token));
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::Failed);
    assert_eq!(
        run.failure_summary[0].reason,
        ReasonCode::ProviderAuthFailed
    );
    assert_eq!(w.count("PolicySnapshotted").await, 0);
}

#[tokio::test]
async fn a_license_permission_failure_leaves_the_snapshot_and_a_partial_success() {
    let w = world().await;
    w.sim
        .inject(Fault::Forbidden.on(Endpoint::ListSubscribedSkus));
    let run = w.resync().await;
    assert_eq!(
        run.outcome,
        RunOutcome::PartiallySucceeded,
        "{:?}",
        run.failure_summary
    );
    assert_eq!(
        run.failure_summary[0].reason,
        ReasonCode::LicensePermissionMissing
    );
    assert_eq!(w.count("PolicySnapshotted").await, 1);
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after_and_then_succeeds() {
    let w = world().await;
    w.sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(30),
        }
        .on(Endpoint::ListConditionalAccessPolicies)
        .times(1),
    );
    let run_id = w.queue_resync().await;
    assert!(w.engine.tick().await.unwrap(), "the first attempt ran");
    // Not due before Retry-After, by the engine's clock: nothing to claim, however long
    // the test takes.
    w.clock.advance(chrono::Duration::seconds(29));
    w.feed.drain().await;
    assert!(
        !w.engine.tick().await.unwrap(),
        "retried before Retry-After"
    );
    assert_eq!(
        w.sim
            .requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        1
    );
    w.clock.advance(chrono::Duration::seconds(2));
    let run = w.drive(run_id).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);
    let snapshot = run
        .steps
        .iter()
        .find(|s| s.step == workflows::resync::SNAPSHOT)
        .unwrap();
    assert_eq!(
        snapshot.attempt, 2,
        "the snapshot step took a second attempt"
    );
}

#[tokio::test]
async fn a_persistent_502_fails_the_run_with_graph_unavailable_after_its_retries_and_stores_nothing(
) {
    let w = world().await;
    w.sim
        .inject(Fault::ServerError { status: 502 }.on(Endpoint::ListConditionalAccessPolicies));
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::Failed);
    assert_eq!(run.failure_summary[0].reason, ReasonCode::GraphUnavailable);
    let step = run
        .steps
        .iter()
        .find(|s| s.step == workflows::resync::SNAPSHOT)
        .unwrap();
    assert_eq!(
        step.attempt,
        workflows::resync::PLAN.steps[0].max_attempts,
        "retried up to its limit"
    );
    assert_eq!(w.count("PolicySnapshotted").await, 0);
    assert!(
        w.tenant().await.last_resynced_at.is_none(),
        "nothing partial is left behind"
    );
}

#[tokio::test]
async fn a_response_without_value_fails_the_run_as_malformed_and_stores_nothing() {
    let w = world().await;
    w.sim
        .inject(Fault::MissingValue.on(Endpoint::ListConditionalAccessPolicies));
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::Failed);
    assert_eq!(
        run.failure_summary[0].reason,
        ReasonCode::GraphMalformedResponse
    );
    assert_eq!(w.count("PolicySnapshotted").await, 0);
    assert_eq!(w.count("TenantResynced").await, 0);
}

#[tokio::test]
async fn a_scope_is_free_again_after_a_run_completes() {
    let w = world().await;
    w.resync().await;
    // A different operation type may start now that the resync released the scope.
    let next = app::start_operation(&w.bus, &owner(), &w.tenant, "license.refresh", "licenses")
        .await
        .unwrap();
    assert!(matches!(next, Started::Queued(_)), "{next:?}");
}

#[tokio::test]
async fn a_license_401_is_reported_as_a_missing_license_permission_and_is_not_fatal() {
    let w = world().await;
    w.sim
        .inject(Fault::Unauthorized.on(Endpoint::ListSubscribedSkus));
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::PartiallySucceeded);
    assert_eq!(
        run.failure_summary[0].reason,
        ReasonCode::LicensePermissionMissing
    );
    assert!(
        w.tenant().await.last_snapshot.is_some(),
        "the snapshot stands"
    );
}

#[tokio::test]
async fn an_import_snapshots_the_policies_and_seeds_the_policy_intent() {
    let w = world().await;
    let run = w.import().await;
    assert_eq!(
        run.outcome,
        RunOutcome::Succeeded,
        "{:?}",
        run.failure_summary
    );
    let snapshot = w.tenant().await.last_snapshot.expect("a snapshot");
    assert_eq!(w.count("PolicySnapshotted").await, 1);
    assert_eq!(w.latest("PolicySnapshotted").await["source"], "import");
    assert_eq!(w.count("PolicyIntentSeeded").await, 1);
    let intent = w.latest("PolicyIntentSeeded").await;
    assert_eq!(intent["snapshot_id"], snapshot.snapshot_id.to_string());
    assert_eq!(intent["hash"], snapshot.hash);
    // The rest of the resync happened too.
    assert!(w.tenant().await.last_resynced_at.is_some());
    assert!(w.tenant().await.capabilities.is_some());
}

#[tokio::test]
async fn an_import_of_unchanged_policies_seeds_the_intent_with_the_existing_snapshot_once() {
    let w = world().await;
    w.resync().await;
    let snapshot = w.tenant().await.last_snapshot.expect("a snapshot");

    let import = w.import().await;
    assert_eq!(
        import.outcome,
        RunOutcome::Succeeded,
        "{:?}",
        import.failure_summary
    );
    assert_eq!(import.summary_counts["unchanged"], 1);
    let summary = import
        .step(workflows::resync::SNAPSHOT)
        .and_then(|s| s.summary.clone())
        .expect("the snapshot step's summary");
    assert_eq!(summary["snapshot_id"], snapshot.snapshot_id.to_string());
    assert_eq!(summary["unchanged"], true);
    assert_eq!(w.count("PolicySnapshotted").await, 1, "no new snapshot");
    assert_eq!(w.count("PolicyDriftDetected").await, 0);
    assert_eq!(w.count("PolicyIntentSeeded").await, 1);
    let intent = w.latest("PolicyIntentSeeded").await;
    assert_eq!(intent["snapshot_id"], snapshot.snapshot_id.to_string());
    assert_eq!(intent["hash"], snapshot.hash);
    let seeded = w.tenant().await.intent.expect("an intent");
    assert_eq!(seeded.snapshot_id, snapshot.snapshot_id);

    // The same policies imported again: the intent already holds them.
    let again = w.import().await;
    assert_eq!(again.outcome, RunOutcome::Succeeded);
    assert_eq!(again.summary_counts["unchanged"], 1);
    assert_eq!(w.count("PolicySnapshotted").await, 1);
    assert_eq!(w.count("PolicyIntentSeeded").await, 1);
    assert_eq!(w.tenant().await.intent, Some(seeded));
}

#[tokio::test]
async fn a_plain_resync_does_not_seed_the_policy_intent() {
    let w = world().await;
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);
    assert_eq!(w.count("PolicySnapshotted").await, 1);
    assert_eq!(w.latest("PolicySnapshotted").await["source"], "graph");
    assert_eq!(w.count("PolicyIntentSeeded").await, 0);
}

#[tokio::test]
async fn an_import_follows_the_same_dedupe_and_scope_busy_rules_as_any_run() {
    let w = world().await;
    let Ok(Started::Queued(import)) = w.start(workflows::resync::IMPORT_RUN_TYPE).await else {
        panic!("the first import is queued")
    };
    assert!(matches!(
        w.start(workflows::resync::IMPORT_RUN_TYPE).await,
        Ok(Started::Deduplicated(active)) if active == import
    ));
    match w.start(workflows::resync::RUN_TYPE).await {
        Err(app::AppError::ScopeBusy {
            active_run_id,
            active_run_type,
        }) => {
            assert_eq!(active_run_id, import);
            assert_eq!(active_run_type, workflows::resync::IMPORT_RUN_TYPE);
        }
        other => panic!("a resync while an import is active is refused: {other:?}"),
    }
    w.drive(import).await;
    assert!(matches!(
        w.start(workflows::resync::RUN_TYPE).await,
        Ok(Started::Queued(_))
    ));
}

#[tokio::test]
async fn a_resyncs_summary_counts_carry_its_policy_count_and_whether_it_was_unchanged() {
    let w = world().await;
    let policies = w.sim.policies(w.entra).unwrap().len() as i64;
    let first = w.resync().await;
    assert_eq!(first.summary_counts["policy_count"], policies);
    assert_eq!(first.summary_counts["unchanged"], 0);
    assert_eq!(first.summary_counts["steps_completed"], 3);
    let again = w.resync().await;
    assert_eq!(again.summary_counts["policy_count"], policies);
    assert_eq!(again.summary_counts["unchanged"], 1);

    // A run whose license refresh gave up still says what its snapshot found.
    w.sim
        .inject(Fault::Forbidden.on(Endpoint::ListSubscribedSkus));
    let partial = w.resync().await;
    assert_eq!(partial.outcome, RunOutcome::PartiallySucceeded);
    assert_eq!(partial.summary_counts["policy_count"], policies);
    assert_eq!(partial.summary_counts["unchanged"], 1);
}

#[tokio::test]
async fn quick_steps_of_a_run_are_written_together_in_one_statement() {
    let w = world().await;
    let run_id = w.queue_resync().await;
    let run = w.drive(run_id).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);
    let writes = w.step_writes(run_id).await;
    let effects: Vec<&str> = writes.iter().map(|(s, ..)| s.as_str()).collect();
    assert_eq!(
        effects,
        ["PolicySnapshotted", "LicensesRefreshed", "TenantResynced"]
    );
    // The run's start, every step, their effects and its end: one transaction.
    let transactions: std::collections::BTreeSet<i64> = sqlx::query_scalar(
        "SELECT transaction_id::text::bigint FROM events \
         WHERE (aggregate_id = $1 AND sequence > 1) OR metadata ->> 'correlation_id' = $1",
    )
    .bind(run_id.to_string())
    .fetch_all(w.bus.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(transactions.len(), 1, "{writes:?}");
}

#[tokio::test]
async fn with_no_write_window_each_step_is_written_on_its_own() {
    let mut w = world().await;
    w.engine.write_window = Duration::ZERO;
    let run_id = w.queue_resync().await;
    assert_eq!(w.drive(run_id).await.outcome, RunOutcome::Succeeded);
    let writes = w.step_writes(run_id).await;
    assert_eq!(writes.len(), 3);
    // `record_resync` calls nothing outside, so it still rides with the license step.
    assert_ne!(writes[0].1, writes[1].1, "{writes:?}");
    assert_eq!(writes[1].1, writes[2].1, "{writes:?}");
}

#[tokio::test]
async fn a_result_waiting_for_a_slow_next_step_is_written_when_the_window_ends() {
    let mut w = world().await;
    w.engine.write_window = Duration::from_millis(100);
    w.sim
        .inject(Fault::Slow { delay_ms: 3_000 }.on(Endpoint::ListSubscribedSkus));
    let run_id = w.queue_resync().await;
    assert_eq!(w.drive(run_id).await.outcome, RunOutcome::Succeeded);
    let writes = w.step_writes(run_id).await;
    let (snapshot, licenses) = (&writes[0], &writes[1]);
    assert_eq!(snapshot.0, "PolicySnapshotted");
    assert_ne!(snapshot.1, licenses.1, "written in separate statements");
    assert!(
        licenses.2 - snapshot.2 >= chrono::Duration::milliseconds(1_500),
        "the snapshot was written while the license step still waited: {writes:?}"
    );
    assert_eq!(w.count("PolicySnapshotted").await, 1);
}

#[tokio::test]
async fn a_cancellation_while_results_wait_unwritten_drops_them_and_the_slow_step() {
    let mut w = world().await;
    w.engine.write_window = Duration::from_secs(3);
    let slow = Duration::from_secs(20);
    w.sim.inject(
        Fault::Slow {
            delay_ms: slow.as_millis() as u64,
        }
        .on(Endpoint::ListSubscribedSkus),
    );
    let run_id = w.queue_resync().await;
    let began = tokio::time::Instant::now();
    let cancel = async {
        // The policies were answered: the run's start and its snapshot wait unwritten
        // while the license step works, for at most the write window.
        let asked = || async {
            !w.sim
                .requests_to(Endpoint::ListConditionalAccessPolicies)
                .is_empty()
        };
        testkit::eventually("a policy request", Duration::from_secs(10), asked).await;
        app::cancel_run(&w.bus, &owner(), run_id).await.unwrap();
    };
    let (ticked, ()) = tokio::join!(w.engine.tick(), cancel);
    assert!(ticked.unwrap());
    assert!(
        began.elapsed() < slow / 2,
        "writing at the window's end found the cancellation and dropped the slow step"
    );
    let run = w.drive(run_id).await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    assert_eq!(w.count("PolicySnapshotted").await, 0);
    assert_eq!(w.count("RunStepCompleted").await, 0);
    assert_eq!(w.count("RunStarted").await, 0);
}

#[tokio::test]
async fn the_engine_decides_on_the_tenant_as_its_snapshot_says() {
    let w = world().await;
    assert_eq!(w.resync().await.outcome, RunOutcome::Succeeded);
    assert_eq!(w.count("PolicySnapshotted").await, 1);
    // A snapshot of the tenant at its current version that does not know the policy
    // snapshot: a claim that folded the events instead would find the policies unchanged.
    let id = w.tenant.to_string();
    let loaded = w.bus.load::<Tenant>(&id).await.unwrap();
    let mut state = serde_json::to_value(&loaded.aggregate).unwrap();
    state["last_snapshot"] = serde_json::Value::Null;
    sqlx::query(
        "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, version, state_version, state) \
         VALUES ('tenant', $1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(loaded.version)
    .bind(store::snapshots::state_version("tenant").unwrap())
    .bind(state)
    .execute(w.bus.pool())
    .await
    .unwrap();
    assert_eq!(w.resync().await.outcome, RunOutcome::Succeeded);
    assert_eq!(w.count("PolicySnapshotted").await, 2);
}

#[tokio::test]
async fn the_events_of_one_commit_reach_the_log_in_the_order_they_happened() {
    let w = world().await;
    let run_id = w.queue_resync().await;
    assert_eq!(w.drive(run_id).await.outcome, RunOutcome::Succeeded);
    // Every event the run caused (its own and its tenant's effects), in the global order;
    // the run's end carries its start and its steps, in the order they happened.
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events \
         WHERE aggregate_id = $1 OR metadata ->> 'correlation_id' = $1 ORDER BY global_position",
    )
    .bind(run_id.to_string())
    .fetch_all(w.bus.pool())
    .await
    .unwrap();
    assert_eq!(
        order,
        [
            "RunQueued",
            "PolicySnapshotted",
            "LicensesRefreshed",
            "TenantResynced",
            "RunSucceeded"
        ]
    );
    let carried: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.key, COALESCE(p.value ->> 'step', '') FROM events e \
             CROSS JOIN LATERAL jsonb_array_elements(e.payload -> 'RunSucceeded' -> 'progress') WITH ORDINALITY AS c(event, n) \
             CROSS JOIN LATERAL jsonb_each(c.event) p \
         WHERE e.aggregate_id = $1 AND e.event_type = 'RunSucceeded' ORDER BY c.n",
    )
    .bind(run_id.to_string())
    .fetch_all(w.bus.pool())
    .await
    .unwrap();
    let step = |s: &str| ("RunStepCompleted".to_owned(), s.to_owned());
    assert_eq!(
        carried,
        [
            ("RunStarted".to_owned(), String::new()),
            step(workflows::resync::SNAPSHOT),
            step(workflows::resync::LICENSES),
            step(workflows::resync::RECORD),
        ]
    );
}

/// A workflow that only this test knows: two steps, one of them calling nothing outside.
#[derive(Default)]
struct Toy;

const TOY: workflows::Plan = workflows::Plan {
    run_type: "test.toy",
    steps: &[
        workflows::StepDef {
            name: "look",
            max_attempts: 2,
            fatal: true,
            calls_out: true,
        },
        workflows::StepDef {
            name: "note",
            max_attempts: 1,
            fatal: true,
            calls_out: false,
        },
    ],
};

#[async_trait::async_trait]
impl workflows::Workflow for Toy {
    fn plan(&self) -> &workflows::Plan {
        &TOY
    }
    fn module(&self) -> &'static str {
        "toy"
    }
    async fn perform(
        &self,
        step: &str,
        cx: &workflows::StepContext<'_>,
    ) -> Result<workflows::Effect, workflows::StepFailure> {
        match step {
            // Steps that call out get the run connection's credentials.
            "look" => cx.credentials().map(|_| workflows::Effect::None),
            _ => Ok(workflows::Effect::None),
        }
    }
    fn summarize(&self, step: &str, _applied: &workflows::Applied<'_>) -> serde_json::Value {
        serde_json::json!({ "toy_step": step })
    }
}

#[tokio::test]
async fn a_workflow_registered_with_the_engine_runs_end_to_end() {
    let mut w = world().await;
    w.engine.register::<Toy>();
    let run = w.run("test.toy").await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    let steps: Vec<(&str, serde_json::Value)> = run
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.summary.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        steps,
        [
            ("look", serde_json::json!({ "toy_step": "look" })),
            ("note", serde_json::json!({ "toy_step": "note" })),
        ]
    );
    assert_eq!(run.summary_counts.get("steps_completed"), Some(&2));
    // The toy touched nothing of the tenant's.
    assert_eq!(w.count("PolicySnapshotted").await, 0);
}

#[tokio::test]
async fn a_run_of_a_type_no_workflow_runs_fails_as_invalid() {
    let w = world().await;
    let run = w.run("test.unknown").await;
    assert_eq!(run.outcome, RunOutcome::Failed);
    assert_eq!(run.failure_summary[0].reason, ReasonCode::ValidationFailed);
}
