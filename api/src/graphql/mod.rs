//! The GraphQL API (R8.2–R8.4): queries over read models, mutations that map to the
//! application services, and live run progress over WebSocket.

mod audit;
pub mod compat;
mod contact_mutation;
mod contacts;
mod cost;
mod documents;
mod enums;
mod errors;
mod fast;
mod feed;
mod introspection;
mod mail;
mod mutation;
mod next_steps;
mod page;
mod persisted;
mod query;
mod rebuild;
mod runs;
mod subscription;
mod types;

use async_graphql::parser::types::OperationType;
use async_graphql::Schema;
use std::sync::atomic::Ordering;

pub use cost::QueryLimits;
pub use feed::{RunFeed, RunNotice};
pub use introspection::MAX_INTROSPECTION_DEPTH;
use introspection::{route, Route};
pub use mutation::RequestId;
pub use persisted::{hash as persisted_query_hash, ManifestError, PersistedQueries};
pub use runs::RunList;
pub use subscription::SubscriptionRoot;
/// The columns and statements the tenant and run pages read (for `bench graphql`'s SQL side).
pub use types::{RUN_COLUMNS, RUN_STEPS_SQL, TENANT_COLUMNS};

/// Every query: the core ones, those of contact sync, and the rebuild's status.
// Merged under the GraphQL name `QueryRoot`, the name clients' fragments already use.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "QueryRoot")]
pub struct QueryRoot(
    query::CoreQuery,
    contacts::ContactQuery,
    rebuild::RebuildQuery,
);

/// Every mutation: the core ones, contact sync's and the rebuild's, under one root type named
/// `MutationRoot`.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "MutationRoot")]
pub struct MutationRoot(
    mutation::CoreMutation,
    contact_mutation::ContactMutation,
    rebuild::RebuildMutation,
);

/// The schema type.
pub type TenantflowSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Deepest query accepted (introspection has its own limits: see [`MAX_INTROSPECTION_DEPTH`]).
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted (each field costs 1, lists multiply by their page size).
pub const MAX_COMPLEXITY: usize = 5000;
/// Largest page a list returns.
pub const MAX_PAGE: i32 = 100;

/// Builds the schema. Request data (the app state and the caller) is attached per request.
pub fn schema() -> TenantflowSchema {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot,
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .finish()
}

/// What [`execute`] answers: async-graphql's response, or a list page's response already
/// written as JSON (see `fast::answer`).
pub(crate) enum Answer {
    Executed(async_graphql::Response),
    Page(Vec<u8>),
}

/// Executes a request: its persisted query (if it names one by hash) resolved first, then
/// with the schema its kind calls for: introspection with the limits made for it,
/// anything else with the ordinary ones.
/// `writer`: with a read replica, where a mutation's caller is remembered (its key), so
/// its later queries read its writes.
pub(crate) async fn execute(
    schema: &TenantflowSchema,
    persisted: &PersistedQueries,
    limits: &QueryLimits,
    request: async_graphql::Request,
    workspace: &str,
    writer: Option<(&store::ReadReplica, String)>,
) -> Answer {
    let mut request = match persisted.resolve(request) {
        Ok(request) => request,
        Err(refused) => return Answer::Executed(*refused),
    };
    // Before anything whose cost grows with the query's fragments; it keeps the parsed
    // document in the request, or returns the workspace's kept one (what does not parse
    // is left to execution to report).
    let kept = match cost::check(
        &mut request,
        limits,
        Some((&persisted.documents, workspace)),
    ) {
        Ok(kept) => kept,
        Err(refused) => return Answer::Executed(*refused),
    };
    let operation_name = request.operation_name.take();
    let parsed = match &kept {
        Some(kept) => Some(&kept.doc),
        None => request.parsed_query().ok(),
    };
    let kind = parsed
        .and_then(|doc| cost::operation(doc, operation_name.as_deref()))
        .map(|op| op.node.ty);
    let route = route(parsed, operation_name.as_deref());
    request.operation_name = operation_name;
    let validated = kept
        .as_ref()
        .filter(|k| k.validated.load(Ordering::Relaxed));
    if let (Route::Ordinary, Some(OperationType::Query), Some(kept)) = (&route, kind, validated) {
        if let Some(page) = fast::answer(&request, &kept.doc).await {
            return Answer::Page(page);
        }
    }
    if let Some(kept) = &kept {
        request.set_parsed_query(kept.doc.clone());
    }
    Answer::Executed(match route {
        Route::Ordinary if kind == Some(OperationType::Query) => {
            let response = schema
                .execute(request.data(query::RequestReader::default()))
                .await;
            if let Some(kept) = kept.filter(|_| response.errors.is_empty()) {
                kept.validated.store(true, Ordering::Relaxed);
            }
            response
        }
        Route::Ordinary => {
            let response = schema.execute(request).await;
            if let (Some(OperationType::Mutation), Some((replica, key))) = (kind, writer) {
                if let Err(e) = replica.wrote(&key).await {
                    // Its next reads may then miss its write on the replica for a moment.
                    tracing::warn!(error = %e, "could not note a mutation's WAL position for read-your-writes");
                }
            }
            response
        }
        Route::Introspection => {
            introspection::schema()
                .execute(request.only_introspection())
                .await
        }
        Route::TooDeep => introspection::too_deep(),
    })
}

/// The checks a request's document passes before it is validated (see `cost`).
pub(crate) fn checked(
    request: &mut async_graphql::Request,
    limits: &QueryLimits,
) -> Result<(), Box<async_graphql::Response>> {
    cost::check(request, limits, None).map(drop)
}

/// The schema in SDL (committed as `api/schema.graphql`; `tenantflow schema` prints it).
pub fn sdl() -> String {
    schema().sdl()
}
