//! The connection health check (R1.3): a token from Microsoft with the connection's
//! credential, then one cheap Graph read; what it found is recorded on the connection
//! (healthy, degraded or down, with the reason and the time).

use domain::connection::{ConnectionCommand, HealthStatus};
use domain::ReasonCode;
use graph::GraphError;

use crate::plan::{Plan, StepDef};
use crate::workflow::{Applied, Effect, StepContext, StepFailure, Workflow};

/// Run type of a health check.
pub const RUN_TYPE: &str = "provider.health_check";

/// The module health checks are started under.
pub const MODULE: &str = "connections";

pub const CHECK: &str = "check_connection";

/// Throttling and outages are retried; a check that still cannot reach Microsoft fails
/// the run (`graph_unavailable`) and leaves the connection's last finding as it was.
const STEPS: &[StepDef] = &[StepDef {
    name: CHECK,
    max_attempts: 3,
    fatal: true,
    calls_out: true,
}];

/// The health check plan.
pub const PLAN: Plan = Plan {
    run_type: RUN_TYPE,
    steps: STEPS,
};

/// A health check of a tenant's default connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct HealthCheck;

/// What a check found, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    health: HealthStatus,
    /// Why the connection is not healthy.
    problem: Option<(ReasonCode, String)>,
}

impl Finding {
    /// From the token request and the read: a refused token means the connection is down
    /// (nothing works through it); a token with a refused read means it is degraded (some
    /// work will fail); outages are no finding about the connection (retried).
    fn of(
        token: Result<(), GraphError>,
        read: Option<Result<(), GraphError>>,
    ) -> Result<Self, StepFailure> {
        let (health, result) = match (token, read) {
            (Err(e), _) => (HealthStatus::Down, Err(e)),
            (Ok(()), Some(Err(e))) => (HealthStatus::Degraded, Err(e)),
            (Ok(()), _) => (HealthStatus::Healthy, Ok(())),
        };
        match result {
            Ok(()) => Ok(Self {
                health,
                problem: None,
            }),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => Ok(Self {
                health,
                problem: Some((e.reason, e.to_string())),
            }),
        }
    }

    /// The connection's commands: the health (with the scopes it holds), and for a
    /// connection that is down, the error it stands in until fixed.
    fn commands(self, scopes_granted: Vec<String>) -> Vec<ConnectionCommand> {
        let mut commands = vec![ConnectionCommand::RecordHealthCheck {
            health: self.health,
            scopes_granted,
        }];
        if let (HealthStatus::Down, Some((reason, message))) = (self.health, self.problem) {
            commands.push(ConnectionCommand::RecordError { reason, message });
        }
        commands
    }
}

#[async_trait::async_trait]
impl Workflow for HealthCheck {
    fn plan(&self) -> &Plan {
        &PLAN
    }
    fn module(&self) -> &'static str {
        MODULE
    }
    fn schedulable(&self) -> bool {
        true
    }
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure> {
        if step != CHECK {
            return Err(StepFailure::unknown_step(step));
        }
        let connection = cx.connection.ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderConnectionMissing,
                "the run has no connection",
            )
        })?;
        let app = cx.credentials()?;
        let token = cx.graph.test_credentials(app).await;
        let read = match token {
            Ok(()) => Some(cx.graph.list_subscribed_skus(app).await.map(|_| ())),
            Err(_) => None,
        };
        let finding = Finding::of(token, read)?;
        Ok(Effect::Connection(
            finding.commands(connection.scopes_granted.clone()),
        ))
    }
    /// `{"health": "degraded", "reason": "provider_permission_missing"}`: what the check
    /// found, and why when it is not healthy.
    fn summarize(&self, _step: &str, applied: &Applied<'_>) -> serde_json::Value {
        let Effect::Connection(commands) = applied.effect else {
            return serde_json::json!({});
        };
        let mut summary = serde_json::Map::new();
        for command in commands {
            match command {
                ConnectionCommand::RecordHealthCheck { health, .. } => {
                    summary.insert("health".into(), health.as_str().into());
                }
                ConnectionCommand::RecordError { reason, .. } => {
                    summary.insert("reason".into(), reason.as_str().into());
                }
                _ => {}
            }
        }
        serde_json::Value::Object(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> GraphError {
        let reason = match status {
            401 => ReasonCode::ProviderAuthFailed,
            403 => ReasonCode::ProviderPermissionMissing,
            429 => ReasonCode::GraphThrottled,
            _ => ReasonCode::GraphUnavailable,
        };
        GraphError {
            reason,
            status: Some(status),
            graph_code: None,
            message: format!("{status}"),
            retry_after: None,
        }
    }

    #[test]
    fn a_token_and_a_read_make_a_healthy_connection() {
        let f = Finding::of(Ok(()), Some(Ok(()))).unwrap();
        assert_eq!(f.health, HealthStatus::Healthy);
        assert_eq!(f.clone().commands(vec![]).len(), 1);
    }

    #[test]
    fn a_refused_read_makes_it_degraded_without_an_error() {
        let f = Finding::of(Ok(()), Some(Err(refused(403)))).unwrap();
        assert_eq!(f.health, HealthStatus::Degraded);
        assert_eq!(
            f.problem.as_ref().map(|p| p.0),
            Some(ReasonCode::ProviderPermissionMissing)
        );
        assert_eq!(
            f.commands(vec![]).len(),
            1,
            "degraded is no connection error"
        );
    }

    #[test]
    fn a_refused_token_makes_it_down_and_records_the_error() {
        let f = Finding::of(Err(refused(401)), None).unwrap();
        assert_eq!(f.health, HealthStatus::Down);
        let commands = f.commands(vec!["Policy.Read.All".into()]);
        assert!(
            matches!(
                &commands[..],
                [
                    ConnectionCommand::RecordHealthCheck { health: HealthStatus::Down, scopes_granted },
                    ConnectionCommand::RecordError { reason: ReasonCode::ProviderAuthFailed, .. },
                ] if scopes_granted == &["Policy.Read.All".to_owned()]
            ),
            "{commands:?}"
        );
    }

    #[test]
    fn an_outage_is_no_finding_and_is_retried() {
        let failure = Finding::of(Ok(()), Some(Err(refused(503)))).unwrap_err();
        assert!(failure.transient);
        let failure = Finding::of(Err(refused(429)), None).unwrap_err();
        assert!(failure.transient);
    }
}
