//! The resync workflow against the Graph simulator and a real database.

use domain::connection::ConnectionCommand;
use domain::run::{OperationRun, RunOutcome};
use domain::tenant::Tenant;
use domain::{EntraTenantId, Provider, ReasonCode, Role, RunId, Services, TenantKey};
use graph::sim::{self, Fault, SimConfig, SimHandle};
use graph::{Endpoint, GraphClient, RetryPolicy};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use store::app::{self, Started};
use store::log::{ConsumerRunner, RunnerOptions};
use store::{CommandBus, Metadata, Metrics, Progress, Vault};
use testkit::TestDb;
use workflows::{Backoff, Engine, TaskFeed};

fn owner() -> Metadata {
    Metadata::new("acme", "olivia", Role::Owner)
}

struct World {
    _db: TestDb,
    bus: CommandBus,
    sim: SimHandle,
    engine: Engine,
    feed: ConsumerRunner,
    tenant: TenantKey,
    entra: uuid::Uuid,
}

async fn world() -> World {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = CommandBus::new(pool.clone(), Services::system(), Metrics::new());
    let vault = Vault::from_base64(&SecretString::from(
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_owned(),
    ))
    .unwrap();
    let sim = sim::spawn(SimConfig {
        tenants: 1,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    let t = sim.tenants().remove(0);
    let entra = EntraTenantId::from(t.tenant_id);
    let key = app::register_tenant(&bus, &owner(), entra, &t.display_name, &t.default_domain)
        .await
        .unwrap();
    let c = app::create_connection(&bus, &owner(), &key, Provider::Microsoft, entra, "Graph")
        .await
        .unwrap();
    app::set_credential(
        &bus,
        &vault,
        &owner(),
        c,
        &t.client_id,
        &t.client_secret,
        Some(entra),
    )
    .await
    .unwrap();
    app::change_connection(
        &bus,
        &owner(),
        c,
        ConnectionCommand::GrantConsent {
            scopes: vec!["Policy.Read.All".into()],
        },
    )
    .await
    .unwrap();
    let mut config = sim.graph_config();
    config.retry = RetryPolicy::none();
    let engine = Engine {
        bus: bus.clone(),
        vault,
        graph: Arc::new(GraphClient::new(config).unwrap()),
        owner: "test-runner".into(),
        lease: Duration::from_secs(60),
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
    };
    let feed = ConsumerRunner::new(
        pool,
        Arc::new(TaskFeed),
        RunnerOptions::default(),
        Metrics::new(),
    );
    World {
        _db: db,
        bus,
        sim,
        engine,
        feed,
        tenant: key,
        entra: t.tenant_id,
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

    async fn run(&self, run_type: &str) -> OperationRun {
        let started = self.start(run_type).await.unwrap();
        let Started::Queued(run_id) = started else {
            panic!("expected a queued run: {started:?}")
        };
        self.drive(run_id).await
    }

    async fn start(&self, run_type: &str) -> Result<Started, app::AppError> {
        app::start_operation(&self.bus, &owner(), &self.tenant, run_type, "ca").await
    }

    async fn drive(&self, run_id: RunId) -> OperationRun {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            while self.feed.step().await.unwrap() != Progress::Idle {}
            let _ = self.engine.tick().await;
            let run = self
                .bus
                .load::<OperationRun>(&run_id.to_string())
                .await
                .unwrap()
                .aggregate;
            if !run.is_active() {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("run {run_id} did not complete");
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

    async fn count(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(self.bus.pool())
            .await
            .unwrap()
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
            retry_after_secs: Some(1),
        }
        .on(Endpoint::ListConditionalAccessPolicies)
        .times(1),
    );
    let run = w.resync().await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);
    let failed = run
        .steps
        .iter()
        .find(|s| s.step == workflows::resync::SNAPSHOT)
        .unwrap();
    assert_eq!(failed.attempt, 2, "the snapshot step took a second attempt");
    let requests = w.sim.requests_to(Endpoint::ListConditionalAccessPolicies);
    let (a, b) = (&requests[0], &requests[1]);
    assert!(
        b.received_at - a.received_at >= chrono::Duration::milliseconds(1000),
        "the retry waited for Retry-After"
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
