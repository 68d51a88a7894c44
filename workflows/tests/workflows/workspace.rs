//! Runs over a whole workspace: no tenant, the module's scope locked, the workflow reading
//! and writing through the store itself.

use app::Started;
use domain::run::{OperationRun, RunOutcome, RunTarget};
use domain::scope_lock::ScopeLock;
use testkit::{owner, OneTenant};

/// A workflow over the whole workspace that only these tests know: it counts the
/// workspace's tenants through the store and reports the count as its step's summary.
#[derive(Default)]
struct Sweep;

const SWEEP: workflows::Plan = workflows::Plan {
    run_type: "test.sweep",
    steps: &[workflows::StepDef {
        name: "tally",
        max_attempts: 2,
        fatal: true,
        calls_out: true,
    }],
};

#[async_trait::async_trait]
impl workflows::Workflow for Sweep {
    fn plan(&self) -> &workflows::Plan {
        &SWEEP
    }
    fn module(&self) -> &'static str {
        "sweep"
    }
    fn over_workspace(&self) -> bool {
        true
    }
    async fn perform(
        &self,
        _step: &str,
        cx: &workflows::StepContext<'_>,
    ) -> Result<workflows::Effect, workflows::StepFailure> {
        // A run over the workspace has no connection, so no credentials.
        assert!(cx.credentials().is_err());
        let (bus, _vault) = cx.store()?;
        let workspace = cx.run.workspace.as_ref().map(|w| w.to_string());
        let tenants: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'TenantRegistered' \
             AND metadata ->> 'workspace' = $1",
        )
        .bind(workspace)
        .fetch_one(bus.pool())
        .await
        .map_err(|e| {
            workflows::StepFailure::permanent(domain::ReasonCode::InternalError, e.to_string())
        })?;
        Ok(workflows::Effect::Report(
            serde_json::json!({ "tenants": tenants }),
        ))
    }
}

/// One simulated tenant, ready, and an engine that also runs [`Sweep`].
struct World(OneTenant);

impl std::ops::Deref for World {
    type Target = OneTenant;
    fn deref(&self) -> &OneTenant {
        &self.0
    }
}

async fn world() -> World {
    let mut one = OneTenant::new(5).await;
    one.stepped.engine.register::<Sweep>();
    World(one)
}

impl World {
    async fn start(&self) -> Started {
        app::start_workspace_operation(&self.stepped.bus, &owner(), "test.sweep", "sweep")
            .await
            .expect("a workspace operation starts")
    }

    /// The workspace's scope lock of the module, as its row says (issue 13: locks are
    /// rows, not streams).
    async fn lock(&self) -> ScopeLock {
        let mut conn = self.stepped.bus.pool().acquire().await.unwrap();
        let id = "acme:sweep".to_owned();
        let mut locks = store::scope_locks::fetch(&mut conn, std::slice::from_ref(&id))
            .await
            .expect("read the scope lock");
        locks.remove(&id).expect("a lock").into_state()
    }
}

#[tokio::test]
async fn a_run_over_the_workspace_locks_its_module_reports_its_work_and_frees_the_scope() {
    let w = world().await;
    let Started::Queued(run_id) = w.start().await else {
        panic!("the first start queues a run");
    };
    // The same operation again while it is active is the same run (R2.2).
    assert_eq!(w.start().await, Started::Deduplicated(run_id));
    // A tenant's own operation is another scope: not busy.
    let resync = app::start_operation(
        &w.stepped.bus,
        &owner(),
        &w.tenant,
        workflows::resync::RUN_TYPE,
        workflows::resync::MODULE,
    )
    .await
    .expect("a tenant's resync starts beside it");
    assert!(matches!(resync, Started::Queued(_)), "{resync:?}");

    let held = w.lock().await;
    assert_eq!(held.active().map(|a| a.run_id), Some(run_id));

    let run: OperationRun = w.stepped.drive(run_id).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(run.context, None);
    assert_eq!(
        run.target(),
        Some(RunTarget::Workspace {
            module: "sweep".into(),
            subject: None,
        })
    );
    assert_eq!(
        run.step("tally").and_then(|s| s.summary.clone()),
        Some(serde_json::json!({ "tenants": 1 }))
    );
    // The scope is free again: the next start is a new run.
    assert!(w.lock().await.active().is_none());
    match w.start().await {
        Started::Queued(next) => assert_ne!(next, run_id),
        other => panic!("expected a new run: {other:?}"),
    }
}

#[tokio::test]
async fn another_operation_of_the_module_finds_the_workspace_scope_busy() {
    let w = world().await;
    let Started::Queued(run_id) = w.start().await else {
        panic!("the first start queues a run");
    };
    let other = app::start_workspace_operation(&w.stepped.bus, &owner(), "test.other", "sweep")
        .await
        .expect_err("the module's scope is held");
    match other {
        app::AppError::ScopeBusy {
            active_run_id,
            active_run_type,
        } => {
            assert_eq!(active_run_id, run_id);
            assert_eq!(active_run_type, "test.sweep");
        }
        e => panic!("expected scope busy: {e:?}"),
    }
}

#[tokio::test]
async fn a_failed_run_over_the_workspace_is_retried_over_the_workspace() {
    let w = world().await;
    let Started::Queued(run_id) = w.start().await else {
        panic!("the first start queues a run");
    };
    app::cancel_run(&w.stepped.bus, &owner(), run_id)
        .await
        .expect("a queued run is cancelled");
    let retried = app::retry_run(&w.stepped.bus, &owner(), run_id, &["test.sweep"])
        .await
        .expect("a cancelled run is retried");
    let Started::Queued(retry_id) = retried else {
        panic!("the retry queues a run: {retried:?}");
    };
    let run = w.stepped.drive(retry_id).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(run.retry_of, Some(run_id));
    assert_eq!(run.module(), Some("sweep"));
}
