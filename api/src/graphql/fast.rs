//! The run list and the tenant list, answered without async-graphql's future per field when
//! their selection is flat: every object asked for is one of the page's own (the page, its
//! `pageInfo`, its edges, their rows), each row asks only for its own scalar fields, aliases
//! and `__typename` are allowed; no fragments, no directives left after `@skip`/`@include`
//! are applied, no key twice. Anything else takes async-graphql's own way, whole (a page
//! whose rows are flat but whose page is not still gets its rows in one pass). The answer is
//! the same either way (`api/tests/api/filters.rs` compares them); the flat rows cost the run
//! list about a sixth less of this process's CPU per page at 32 clients (docs/BENCHMARKS.md,
//! "A run list's rows without a future per field").
//!
//! It skips what async-graphql does per field besides resolving it: its extensions' hooks.
//! The schema has no extensions (`schema()`); one that wants to see every field must turn
//! this off.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection};
use async_graphql::{ContextSelectionSet, InputType, OutputType, Positioned, ServerResult, Value};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use super::enums::{stored, RunOutcome, RunStatus, TenantStatus};
use super::page::{encode, Cursor, PageRequest};
use super::types::{RunNode, TenantNode};

/// A [`RunNode`] in a list page: the same GraphQL type (`Run`).
pub struct ListedRun(pub RunNode);

/// A [`TenantNode`] in a list page: the same GraphQL type (`Tenant`).
pub struct ListedTenant(pub TenantNode);

/// An object in one pass over its selection `items`: each field's value from `value` (None:
/// not a field this pass answers), or None when the selection is not flat.
fn object(
    items: &[Positioned<Selection>],
    typename: &str,
    mut value: impl FnMut(&Field) -> Option<Value>,
) -> Option<Value> {
    let mut object = IndexMap::with_capacity(items.len());
    for selection in items {
        let Selection::Field(f) = &selection.node else {
            return None;
        };
        let f = &f.node;
        if !f.directives.is_empty() || !f.arguments.is_empty() {
            return None;
        }
        let v = match f.name.node.as_str() {
            "__typename" => Value::String(typename.to_owned()),
            _ => value(f)?,
        };
        if object.insert(f.response_key().node.clone(), v).is_some() {
            return None;
        }
    }
    Some(Value::Object(object))
}

/// A field's selection, the fields asked of its value.
fn asked(f: &Field) -> &[Positioned<Selection>] {
    &f.selection_set.node.items
}

/// A row of a list page whose own scalar fields can be answered in one pass.
pub trait Row: OutputType {
    /// The read model's row it lists.
    type Node: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin;

    /// The row listed.
    fn listed(node: Self::Node) -> Self;

    /// The field `name`'s value, or None when it is not one of the row's own scalar fields.
    fn value(&self, name: &str) -> Option<Value>;

    /// The row's place in its list, the keys its cursor is made of.
    fn key(&self) -> Vec<serde_json::Value>;

    /// The row's object for the selection `items`, or None when it is not flat.
    fn flat(&self, items: &[Positioned<Selection>]) -> Option<Value> {
        object(items, &Self::type_name(), |f| {
            if asked(f).is_empty() {
                self.value(f.name.node.as_str())
            } else {
                None
            }
        })
    }

    /// The row's cursor, as its edge and `pageInfo` write it.
    fn cursor(&self) -> Value {
        Value::String(encode(&self.key()))
    }
}

/// A list page of rows under async-graphql's connection type (`RunConnection`,
/// `TenantConnection`): answered in one pass (the page, its `pageInfo`, its edges and their
/// rows) when the whole selection is flat, with a row's cursor made only when it is asked
/// for; as async-graphql's [`Connection`], whole, otherwise.
pub struct Page<T: Row> {
    rows: Vec<T>,
    has_previous: bool,
    has_next: bool,
}

impl<T: Row + Send + Sync> Page<T> {
    /// The page `req` asked for, from up to `req.limit()` rows (one more tells that another
    /// page follows).
    fn new(req: &PageRequest, mut rows: Vec<T>) -> Self {
        let has_next = rows.len() as i64 > req.first;
        rows.truncate(req.first as usize);
        Self {
            rows,
            has_previous: req.after.is_some(),
            has_next,
        }
    }

    /// The page `req` asked for, read with `q` (its list's statement) on `conn`.
    pub(crate) async fn read(
        q: &mut sqlx::QueryBuilder<'static, sqlx::Postgres>,
        conn: &mut sqlx::PgConnection,
        req: &PageRequest,
    ) -> Result<Self, sqlx::Error> {
        let nodes = q.build_query_as::<T::Node>().fetch_all(conn).await?;
        Ok(Self::new(req, nodes.into_iter().map(T::listed).collect()))
    }

    fn flat(&self, items: &[Positioned<Selection>]) -> Option<Value> {
        let rows = &self.rows;
        let edge_type = <Edge<Cursor, T, EmptyFields> as OutputType>::type_name();
        object(items, &<Self as OutputType>::type_name(), |f| {
            match f.name.node.as_str() {
                "pageInfo" => object(asked(f), "PageInfo", |p| {
                    Some(match p.name.node.as_str() {
                        "hasPreviousPage" => Value::Boolean(self.has_previous),
                        "hasNextPage" => Value::Boolean(self.has_next),
                        "startCursor" => rows.first().map_or(Value::Null, T::cursor),
                        "endCursor" => rows.last().map_or(Value::Null, T::cursor),
                        _ => return None,
                    })
                }),
                "edges" => rows
                    .iter()
                    .map(|row| {
                        object(asked(f), &edge_type, |g| match g.name.node.as_str() {
                            "cursor" => Some(row.cursor()),
                            "node" => row.flat(asked(g)),
                            _ => None,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(Value::List),
                "nodes" => rows
                    .iter()
                    .map(|row| row.flat(asked(f)))
                    .collect::<Option<Vec<_>>>()
                    .map(Value::List),
                _ => None,
            }
        })
    }
}

impl<T: Row + Send + Sync> OutputType for Page<T> {
    fn type_name() -> Cow<'static, str> {
        <Connection<Cursor, T> as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <Connection<Cursor, T> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if let Some(value) = self.flat(&ctx.item.node.items) {
            return Ok(value);
        }
        let mut page = Connection::<Cursor, &T>::new(self.has_previous, self.has_next);
        page.edges.extend(
            self.rows
                .iter()
                .map(|row| Edge::new(Cursor::of(row.key()), row)),
        );
        OutputType::resolve(&page, ctx, field).await
    }
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn optional_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

/// A time as the `DateTime` scalar writes it.
fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

impl Row for ListedRun {
    type Node = RunNode;

    fn listed(node: RunNode) -> Self {
        Self(node)
    }

    fn key(&self) -> Vec<serde_json::Value> {
        vec![
            self.0.queued_at.to_rfc3339().into(),
            self.0.run_id.to_string().into(),
        ]
    }

    fn value(&self, name: &str) -> Option<Value> {
        let r = &self.0;
        Some(match name {
            "id" => Value::String(r.run_id.to_string()),
            "type" => text(&r.run_type),
            "tenantId" => optional_text(r.tenant_key.as_deref()),
            "status" => {
                InputType::to_value(&RunStatus::from(domain::run::RunStatus::parse(&r.status)?))
            }
            "outcome" => InputType::to_value(&RunOutcome::from(domain::run::RunOutcome::parse(
                &r.outcome,
            )?)),
            "cancelRequested" => Value::Boolean(r.cancel_requested),
            "initiator" => text(&r.initiator),
            "reasonCode" => optional_text(r.reason_code.as_deref()),
            "queuedAt" => time(Some(r.queued_at)),
            "startedAt" => time(r.started_at),
            "completedAt" => time(r.completed_at),
            "retryOf" => r
                .retry_of
                .map_or(Value::Null, |id| Value::String(id.to_string())),
            _ => return None,
        })
    }
}

impl Row for ListedTenant {
    type Node = TenantNode;

    fn listed(node: TenantNode) -> Self {
        Self(node)
    }

    fn key(&self) -> Vec<serde_json::Value> {
        vec![
            self.0.display_name.clone().into(),
            self.0.tenant_key.clone().into(),
        ]
    }

    fn value(&self, name: &str) -> Option<Value> {
        let t = &self.0;
        Some(match name {
            "id" => text(&t.tenant_key),
            "entraTenantId" => Value::String(t.entra_tenant_id.to_string()),
            "displayName" => text(&t.display_name),
            "primaryDomain" => text(&t.primary_domain),
            "status" => InputType::to_value(
                &stored::<domain::tenant::TenantStatus, TenantStatus>(&t.status).ok()?,
            ),
            "registeredAt" => time(Some(t.registered_at)),
            "archivedAt" => time(t.archived_at),
            "lastResyncedAt" => time(t.last_resynced_at),
            _ => return None,
        })
    }
}

macro_rules! listed {
    ($listed:ty, $node:ty) => {
        impl OutputType for $listed {
            fn type_name() -> Cow<'static, str> {
                <$node as OutputType>::type_name()
            }

            fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
                <$node as OutputType>::create_type_info(registry)
            }

            async fn resolve(
                &self,
                ctx: &ContextSelectionSet<'_>,
                field: &Positioned<Field>,
            ) -> ServerResult<Value> {
                match self.flat(&ctx.item.node.items) {
                    Some(value) => Ok(value),
                    None => OutputType::resolve(&self.0, ctx, field).await,
                }
            }
        }
    };
}

listed!(ListedRun, RunNode);
listed!(ListedTenant, TenantNode);

/// A request for one list page, answered here without async-graphql's validation and
/// execution: the request's document is one query operation whose only field is `tenants`
/// (`first`, `after`, `search`) or `runs` (`first`, `after`; a `filter` goes the ordinary
/// way), with no fragments and no directives, and its page is flat. The caller must have
/// seen async-graphql validate `doc` (a request with it ran without errors): what
/// validation checks of a document is the same for every request with it, and what depends
/// on a request (its variables' values) is checked here as the resolvers check it. Anything
/// else, and every refusal, is None: the ordinary way answers it, with its own messages.
///
/// The page is read as the resolver reads it (the same statement, in the request's
/// confined snapshot, on the replica when the caller's writes allow) and answered with the
/// same one pass. A tenant page asked for this way costs about a tenth less of this
/// process's CPU at 32 clients (docs/BENCHMARKS.md).
pub(crate) async fn answer(
    request: &async_graphql::Request,
    doc: &async_graphql::parser::types::ExecutableDocument,
) -> Option<async_graphql::Response> {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    if !doc.fragments.is_empty() {
        return None;
    }
    let op = match (&doc.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), None) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    let op = &op.node;
    if op.ty != OperationType::Query || !op.directives.is_empty() {
        return None;
    }
    let [selection] = op.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &selection.node else {
        return None;
    };
    let field = &field.node;
    if !field.directives.is_empty() {
        return None;
    }
    // Each argument's value, its variables replaced by the request's values or their
    // defaults; None when one is not a plain scalar.
    let mut args: Vec<(&str, Value)> = Vec::with_capacity(field.arguments.len());
    for (name, value) in &field.arguments {
        let value = value
            .node
            .clone()
            .into_const_with(|var| {
                let given = request.variables.get(&var).cloned();
                let declared = op
                    .variable_definitions
                    .iter()
                    .find(|d| d.node.name.node == var);
                match (given, declared) {
                    (Some(v), Some(_)) => Ok(v),
                    (None, Some(d)) => match d.node.default_value() {
                        Some(default) => Ok(default.clone()),
                        // A non-null one left out is async-graphql's refusal to make.
                        None if d.node.var_type.node.nullable => Ok(Value::Null),
                        None => Err(()),
                    },
                    (_, None) => Err(()),
                }
            })
            .ok()?;
        args.push((name.node.as_str(), value));
    }
    let state = data::<crate::AppState>(request)?;
    let caller = data::<crate::auth::Caller>(request)?;
    let (mut first, mut after, mut search) = (None, None, None);
    for (name, value) in args {
        match (name, value) {
            (_, Value::Null) => {}
            ("first", Value::Number(n)) => first = Some(i32::try_from(n.as_i64()?).ok()?),
            ("after", Value::String(s)) => after = Some(s),
            ("search", Value::String(s)) if field.name.node == "tenants" => search = Some(s),
            _ => return None,
        }
    }
    let page = PageRequest::parse(first, after).ok()?;
    let data = match field.name.node.as_str() {
        "tenants" => {
            let mut q = super::query::tenants_query(&caller.workspace, search, &page).ok()?;
            let mut tx = super::query::snapshot(state, caller).await.ok()?;
            Page::<ListedTenant>::read(&mut q, &mut tx, &page)
                .await
                .ok()?
                .flat(asked(field))?
        }
        "runs" => {
            let mut q = super::runs::RunList::page(&caller.workspace, &page)
                .ok()?
                .query();
            let mut tx = super::query::snapshot(state, caller).await.ok()?;
            Page::<ListedRun>::read(&mut q, &mut tx, &page)
                .await
                .ok()?
                .flat(asked(field))?
        }
        _ => return None,
    };
    state.metrics.graphql_own_page();
    let mut answer = IndexMap::with_capacity(1);
    answer.insert(field.response_key().node.clone(), data);
    Some(async_graphql::Response::new(Value::Object(answer)))
}

/// The request's data of type `T` (what `api::http` gave it).
fn data<T: std::any::Any>(request: &async_graphql::Request) -> Option<&T> {
    request
        .data
        .get(&std::any::TypeId::of::<T>())
        .and_then(|d| d.downcast_ref::<T>())
}
