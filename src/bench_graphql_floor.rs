//! `bench graphql`'s JSON floor: the tenant and run list pages, and one run with its steps,
//! served by the least JSON API that keeps what the service must keep, with no GraphQL in it. Over the same HTTP/1.1
//! (axum and hyper, keep-alive) and load generator, each request checks the caller's token,
//! reads the page's SQL in the service's workspace-confined snapshot (R8.3), and writes the
//! rows with `serde` straight into the answer GraphQL gives (the same fields, the same
//! shape, the same end cursor). Nothing else: no request metrics, no security headers, no
//! deadline. What it costs beyond the page's SQL is what HTTP, the token and the answer's
//! JSON cost: the page at the target needs GraphQL's parse, validation and execution, and
//! the service's own handling, to fit in what that leaves.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;

use crate::bench_graphql::{readonly_token, Served};

/// The pages the floor serves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FloorPage {
    Tenants,
    Runs,
    /// One run, with its steps.
    Run(uuid::Uuid),
}

struct FloorState {
    pool: PgPool,
    auth: api::auth::Authenticator,
    page: FloorPage,
    sql: Vec<String>,
}

/// Serves `page` with `sql` (the page's statements as `bench graphql` reads them directly)
/// at `/graphql` on a loopback port, whatever the request's body; the load generator's
/// connections carry a token of its own.
pub(crate) async fn serve(
    pool: &PgPool,
    page: FloorPage,
    sql: Vec<String>,
) -> anyhow::Result<Served> {
    let (auth, token) = readonly_token()?;
    let state = Arc::new(FloorState {
        pool: pool.clone(),
        auth,
        page,
        sql,
    });
    let router = axum::Router::new()
        .route("/graphql", axum::routing::post(answer_page))
        .with_state(state);
    Served::serve(router, token, tokio_util::sync::CancellationToken::new()).await
}

async fn answer_page(
    State(s): State<Arc<FloorState>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let caller = match s.auth.authenticate(&headers) {
        Ok(caller) => caller,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    match answer(&s, &caller.workspace).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "the JSON floor's page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The page's rows, read as the service reads them, written as GraphQL answers them.
async fn answer(s: &FloorState, workspace: &str) -> anyhow::Result<Vec<u8>> {
    let mut tx = store::db::workspace_snapshot(&s.pool, workspace).await?;
    let body = match s.page {
        FloorPage::Tenants => {
            let mut rows: Vec<TenantRow> = sqlx::query_as(&s.sql[0])
                .bind(workspace)
                .fetch_all(&mut *tx)
                .await?;
            let page_info = page_info(&mut rows, |t| {
                vec![
                    serde_json::Value::from(t.display_name.as_str()),
                    serde_json::Value::from(t.tenant_key.as_str()),
                ]
            });
            serde_json::to_vec(&Answer {
                data: TenantsAnswer {
                    tenants: List {
                        edges: rows
                            .iter()
                            .map(|t| Edge {
                                node: TenantJson {
                                    id: &t.tenant_key,
                                    display_name: &t.display_name,
                                    primary_domain: &t.primary_domain,
                                    status: &t.status,
                                    last_resynced_at: t.last_resynced_at,
                                },
                            })
                            .collect(),
                        page_info,
                    },
                },
            })?
        }
        FloorPage::Runs => {
            let mut rows: Vec<RunRow> = sqlx::query_as(&s.sql[0])
                .bind(workspace)
                .fetch_all(&mut *tx)
                .await?;
            let page_info = page_info(&mut rows, |r| {
                vec![
                    serde_json::Value::from(r.queued_at.to_rfc3339()),
                    serde_json::Value::from(r.run_id.to_string()),
                ]
            });
            serde_json::to_vec(&Answer {
                data: RunsAnswer {
                    runs: List {
                        edges: rows
                            .iter()
                            .map(|r| Edge {
                                node: RunJson {
                                    id: r.run_id,
                                    run_type: &r.run_type,
                                    tenant_id: r.tenant_key.as_deref(),
                                    status: &r.status,
                                    outcome: &r.outcome,
                                    queued_at: r.queued_at,
                                    completed_at: r.completed_at,
                                    reason_code: r.reason_code.as_deref(),
                                },
                            })
                            .collect(),
                        page_info,
                    },
                },
            })?
        }
        FloorPage::Run(id) => {
            let run: OneRunRow = sqlx::query_as(&s.sql[0])
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let steps: Vec<StepRow> = sqlx::query_as(&s.sql[1])
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            // A running run's newer attempts are in its checkpoint, which the service merges
            // in; the floor serves a finished run, whose checkpoint has none.
            let progress: Option<Option<serde_json::Value>> = sqlx::query_scalar(&s.sql[2])
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            anyhow::ensure!(
                progress.flatten().is_none_or(|p| p.is_null()),
                "the floor serves a finished run"
            );
            serde_json::to_vec(&Answer {
                data: RunAnswer {
                    run: OneRunJson {
                        id: run.run_id,
                        run_type: &run.run_type,
                        status: &run.status,
                        outcome: &run.outcome,
                        queued_at: run.queued_at,
                        completed_at: run.completed_at,
                        steps: steps
                            .iter()
                            .map(|step| StepJson {
                                step: &step.step,
                                attempt: step.attempt,
                                status: &step.status,
                                recorded_at: step.recorded_at,
                            })
                            .collect(),
                    },
                },
            })?
        }
    };
    // Read-only: ended as the service's reader ends it (dropped, rolled back).
    drop(tx);
    Ok(body)
}

/// The first 20 of `rows` (the statement reads 21 to know if there is a next page), and
/// the page's end cursor as the service encodes it.
fn page_info<T>(rows: &mut Vec<T>, key: impl Fn(&T) -> Vec<serde_json::Value>) -> PageInfo {
    let has_next_page = rows.len() > 20;
    rows.truncate(20);
    PageInfo {
        has_next_page,
        end_cursor: rows.last().map(|last| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::Value::Array(key(last)).to_string())
        }),
    }
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    tenant_key: String,
    display_name: String,
    primary_domain: String,
    status: String,
    last_resynced_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: uuid::Uuid,
    run_type: String,
    tenant_key: Option<String>,
    status: String,
    outcome: String,
    queued_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    reason_code: Option<String>,
}

#[derive(sqlx::FromRow)]
struct OneRunRow {
    run_id: uuid::Uuid,
    run_type: String,
    status: String,
    outcome: String,
    queued_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    step: String,
    attempt: i32,
    status: String,
    recorded_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct RunAnswer<'a> {
    run: OneRunJson<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OneRunJson<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    run_type: &'a str,
    status: &'a str,
    outcome: &'a str,
    #[serde(serialize_with = "rfc3339")]
    queued_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_or_null")]
    completed_at: Option<DateTime<Utc>>,
    steps: Vec<StepJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepJson<'a> {
    step: &'a str,
    attempt: i32,
    status: &'a str,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Answer<D> {
    data: D,
}

#[derive(Serialize)]
struct TenantsAnswer<'a> {
    tenants: List<TenantJson<'a>>,
}

#[derive(Serialize)]
struct RunsAnswer<'a> {
    runs: List<RunJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<N> {
    edges: Vec<Edge<N>>,
    page_info: PageInfo,
}

#[derive(Serialize)]
struct Edge<N> {
    node: N,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TenantJson<'a> {
    id: &'a str,
    display_name: &'a str,
    primary_domain: &'a str,
    status: &'a str,
    #[serde(serialize_with = "rfc3339_or_null")]
    last_resynced_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunJson<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    run_type: &'a str,
    tenant_id: Option<&'a str>,
    status: &'a str,
    outcome: &'a str,
    #[serde(serialize_with = "rfc3339")]
    queued_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_or_null")]
    completed_at: Option<DateTime<Utc>>,
    reason_code: Option<&'a str>,
}

/// A time as the API's `DateTime` scalar writes it (RFC 3339, `+00:00`).
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

fn rfc3339_or_null<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}
