//! The connection health check against the Graph simulator, and provider refusals found by
//! any workflow recorded on the connection (R1.3).

use domain::connection::{ConnectionStatus, HealthStatus, ProviderConnection};
use domain::run::{OperationRun, RunOutcome};
use domain::{Clock, ReasonCode};
use testkit::{owner, OneTenant};
use workflows::health;

/// One simulated tenant, ready, and an engine calling the simulator.
struct World(OneTenant);

impl std::ops::Deref for World {
    type Target = OneTenant;
    fn deref(&self) -> &OneTenant {
        &self.0
    }
}

async fn world() -> World {
    World(OneTenant::new(9).await)
}

impl World {
    async fn run(&self, run_type: &str) -> OperationRun {
        self.stepped.run(&owner(), &self.tenant, run_type).await
    }

    async fn connection(&self) -> ProviderConnection {
        self.stepped
            .bus
            .load::<ProviderConnection>(&self.connection.to_string())
            .await
            .unwrap()
            .aggregate
    }
}

fn summary(run: &OperationRun) -> serde_json::Value {
    run.step(health::CHECK)
        .and_then(|s| s.summary.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_working_connection_is_recorded_healthy_with_the_time_of_the_check() {
    let w = world().await;
    assert_eq!(w.connection().await.health_status, HealthStatus::Unknown);
    let run = w.run(health::RUN_TYPE).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(summary(&run), serde_json::json!({ "health": "healthy" }));
    let c = w.connection().await;
    assert_eq!(c.health_status, HealthStatus::Healthy);
    assert_eq!(c.status, ConnectionStatus::Connected);
    assert_eq!(c.last_health_check_at, Some(w.stepped.clock.now()));
    assert!(
        !c.scopes_granted.is_empty(),
        "the check keeps the connection's scopes"
    );
}

#[tokio::test]
async fn a_secret_rotated_upstream_makes_the_connection_down_and_in_error() {
    let w = world().await;
    w.sim.rotate_secret(w.entra).unwrap();
    let run = w.run(health::RUN_TYPE).await;
    // The check did its work: what it found is the connection's state, not a failed run.
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(
        summary(&run),
        serde_json::json!({ "health": "down", "reason": "provider_auth_failed" })
    );
    let c = w.connection().await;
    assert_eq!(c.health_status, HealthStatus::Down);
    assert_eq!(c.status, ConnectionStatus::Error);
    assert_eq!(
        c.last_error_reason_code,
        Some(ReasonCode::ProviderAuthFailed)
    );
    let message = c.last_error_message.unwrap_or_default();
    assert!(!message.is_empty());
}

#[tokio::test]
async fn a_read_the_app_may_no_longer_do_makes_the_connection_degraded_not_in_error() {
    let w = world().await;
    w.sim
        .revoke_permission(w.entra, "Organization.Read.All")
        .unwrap();
    let run = w.run(health::RUN_TYPE).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(
        summary(&run),
        serde_json::json!({ "health": "degraded" }),
        "degraded records no connection error"
    );
    let c = w.connection().await;
    assert_eq!(c.health_status, HealthStatus::Degraded);
    assert_eq!(c.status, ConnectionStatus::Connected);
}

#[tokio::test]
async fn a_resync_refused_by_microsoft_puts_its_connection_in_error_until_a_healthy_check() {
    let w = world().await;
    w.sim.rotate_secret(w.entra).unwrap();
    let run = w.run(workflows::resync::RUN_TYPE).await;
    assert_eq!(run.outcome, RunOutcome::Failed, "{run:?}");
    assert_eq!(
        run.failure_summary[0].reason,
        ReasonCode::ProviderAuthFailed
    );
    let c = w.connection().await;
    assert_eq!(c.status, ConnectionStatus::Error);
    assert_eq!(
        c.last_error_reason_code,
        Some(ReasonCode::ProviderAuthFailed)
    );
}
