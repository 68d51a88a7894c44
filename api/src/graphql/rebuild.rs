//! Rebuilding read models, for operators (Owner only): a mutation that starts a rebuild in
//! the background and a query that reports how far it is (issue 17). The rebuild replays
//! the log once into shadow tables, so every other query keeps being answered meanwhile.

use app::AppError;
use async_graphql::{Context, Enum, Object, SimpleObject};
use chrono::{DateTime, Utc};
use domain::{ReasonCode, Role};

use super::errors::{app_error, internal};
use super::query::{caller, state};

/// Events per batch of a rebuild started here.
const BATCH: i64 = 5000;

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum RebuildState {
    Running,
    /// Swapped in: the read models now show the rebuilt tables.
    Succeeded,
    /// Stopped; nothing of it was swapped in (see `error`).
    Failed,
    /// Its process ended mid-way; nothing of it was swapped in.
    Interrupted,
}

/// The latest rebuild of read models.
#[derive(Debug, Clone, SimpleObject)]
pub struct RebuildStatus {
    pub state: RebuildState,
    /// The read models rebuilt together, in one pass over the log.
    pub read_models: Vec<String>,
    /// Events of the log applied so far (recorded every second).
    pub events_applied: i64,
    /// Events in the log when the rebuild started.
    pub events_total: i64,
    /// Seconds left at the rate so far, while running.
    pub eta_seconds: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed: where in the log, never an event's content.
    pub error: Option<String>,
}

impl From<projections::RebuildStatus> for RebuildStatus {
    fn from(s: projections::RebuildStatus) -> Self {
        Self {
            eta_seconds: s.eta().map(|eta| eta.as_secs() as i64),
            state: match s.state {
                projections::RebuildState::Running => RebuildState::Running,
                projections::RebuildState::Succeeded => RebuildState::Succeeded,
                projections::RebuildState::Failed => RebuildState::Failed,
                projections::RebuildState::Interrupted => RebuildState::Interrupted,
            },
            read_models: s.read_models,
            events_applied: s.events_applied,
            events_total: s.events_total,
            started_at: s.started_at,
            updated_at: s.updated_at,
            finished_at: s.finished_at,
            error: s.error,
        }
    }
}

/// Rebuilds touch every workspace's rows: only an owner may start or follow one.
fn owner_only(ctx: &Context<'_>) -> async_graphql::Result<()> {
    let role = caller(ctx)?.role;
    if role != Role::Owner {
        return Err(app_error(AppError::Forbidden(role)));
    }
    Ok(())
}

async fn latest(ctx: &Context<'_>) -> async_graphql::Result<Option<RebuildStatus>> {
    let status = projections::rebuild_status(&state(ctx)?.pool)
        .await
        .map_err(internal)?;
    Ok(status.map(RebuildStatus::from))
}

#[derive(Default)]
pub struct RebuildQuery;

#[Object]
impl RebuildQuery {
    /// The latest rebuild of read models and how far it is (Owner); null if there was none.
    async fn rebuild_status(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<RebuildStatus>> {
        owner_only(ctx)?;
        latest(ctx).await
    }
}

#[derive(Default)]
pub struct RebuildMutation;

#[Object]
impl RebuildMutation {
    /// Starts rebuilding read models from the event log in the background (Owner): the
    /// named ones, or all of them when none are named, in one pass. Refused with
    /// `rebuild_running` while another rebuild runs (from any instance or the CLI). Follow
    /// it with `rebuildStatus`.
    async fn start_rebuild(
        &self,
        ctx: &Context<'_>,
        read_models: Option<Vec<String>>,
    ) -> async_graphql::Result<RebuildStatus> {
        owner_only(ctx)?;
        let chosen = projections::choose(projections::all(), &read_models.unwrap_or_default())
            .map_err(rebuild_error)?;
        projections::start_rebuild(state(ctx)?.pool.clone(), chosen, BATCH)
            .await
            .map_err(rebuild_error)?;
        latest(ctx)
            .await?
            .ok_or_else(|| rebuild_error(projections::RebuildError::Stopped))
    }
}

fn rebuild_error(e: projections::RebuildError) -> async_graphql::Error {
    use projections::RebuildError;
    match e {
        RebuildError::AlreadyRunning => app_error(AppError::Refused {
            code: ReasonCode::RebuildRunning,
            message: e.to_string(),
        }),
        RebuildError::UnknownReadModel { .. } => app_error(AppError::Invalid(e.to_string())),
        RebuildError::Stopped | RebuildError::Consumer(_) => {
            tracing::error!(error = %e, "a rebuild did not start");
            app_error(AppError::Refused {
                code: ReasonCode::InternalError,
                message: "internal error".to_owned(),
            })
        }
    }
}
