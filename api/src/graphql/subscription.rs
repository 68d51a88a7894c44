//! `runUpdated`: a run's current row each time it changes, for dashboards.

use async_graphql::{Context, Subscription};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::errors::{internal, invalid};
use super::feed::RunFeed;
use super::query::{caller, reader_for, state};
use super::types::{RunNode, RUN_COLUMNS};

pub struct SubscriptionRoot;

async fn load(
    pool: &sqlx::PgPool,
    workspace: &str,
    run_id: uuid::Uuid,
) -> async_graphql::Result<Option<RunNode>> {
    let mut tx = reader_for(pool, workspace).await?;
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM rm_runs WHERE run_id = $1"
    ))
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)
}

#[Subscription]
impl SubscriptionRoot {
    /// Streams each inbound email once it is received (enriched or minimal): the
    /// workspace's, or one mailbox's.
    async fn inbound_email_received(
        &self,
        ctx: &Context<'_>,
        mailbox_id: Option<async_graphql::ID>,
    ) -> async_graphql::Result<
        impl Stream<Item = async_graphql::Result<super::mail::InboundEmailNode>>,
    > {
        super::mail::received_feed(ctx, mailbox_id).await
    }

    /// Streams a run each time it changes: one run by `runId`, every run of a tenant by
    /// `tenantId`, or every run of the workspace with neither (a live run list). With
    /// `runId`, the current state comes first.
    async fn run_updated(
        &self,
        ctx: &Context<'_>,
        run_id: Option<String>,
        #[graphql(name = "tenantId")] tenant_id: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<RunNode>>> {
        let run_id = run_id
            .map(|r| {
                uuid::Uuid::try_parse(&r).map_err(|_| invalid("`runId` is not a valid run id"))
            })
            .transpose()?;
        let workspace = caller(ctx)?.workspace.clone();
        let pool = state(ctx)?.pool.clone();
        let mut notices = ctx.data::<RunFeed>()?.subscribe();
        Ok(async_stream::stream! {
            if let Some(id) = run_id {
                match load(&pool, &workspace, id).await {
                    Ok(Some(run)) => yield Ok(run),
                    Ok(None) => {}
                    Err(e) => yield Err(e),
                }
            }
            loop {
                let notice = match notices.recv().await {
                    Ok(n) => n,
                    // A slow subscriber skipped notices: the next one carries current state.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                if notice.workspace != workspace {
                    continue;
                }
                let every = run_id.is_none() && tenant_id.is_none();
                let wanted = every
                    || run_id.map(|r| r == notice.run_id).unwrap_or(false)
                    || tenant_id.as_deref().is_some_and(|t| notice.tenant_key.as_deref() == Some(t));
                if !wanted {
                    continue;
                }
                match load(&pool, &workspace, notice.run_id).await {
                    Ok(Some(run)) => yield Ok(run),
                    Ok(None) => {}
                    Err(e) => yield Err(e),
                }
            }
        })
    }
}
