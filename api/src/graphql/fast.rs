//! The rows of the run list and the tenant list, resolved without async-graphql's future per
//! field when their selection is flat: only the row's own scalar fields (aliases allowed,
//! `__typename`), no fragments, no directives left after `@skip`/`@include` are applied, no
//! key twice. Anything else takes async-graphql's own way, whole. The answer is the same
//! either way (`api/tests/api/filters.rs` compares them); the flat one costs the
//! run list about a sixth less of this process's CPU per page at 32 clients
//! (docs/BENCHMARKS.md, "A run list's rows without a future per field").
//!
//! It skips what async-graphql does per field besides resolving it: its extensions' hooks.
//! The schema has no extensions (`schema()`); one that wants to see every field must turn
//! this off.

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection};
use async_graphql::{ContextSelectionSet, InputType, OutputType, Positioned, ServerResult, Value};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use super::enums::{stored, RunOutcome, RunStatus, TenantStatus};
use super::types::{RunNode, TenantNode};

/// A [`RunNode`] in a list page: the same GraphQL type (`Run`).
pub struct ListedRun(pub RunNode);

/// A [`TenantNode`] in a list page: the same GraphQL type (`Tenant`).
pub struct ListedTenant(pub TenantNode);

/// The row's object in one pass, each field's value from `value` (None: not a field this
/// pass answers), or None when the selection is not flat.
fn flat(
    ctx: &ContextSelectionSet<'_>,
    typename: &str,
    value: impl Fn(&str) -> Option<Value>,
) -> Option<Value> {
    let items = &ctx.item.node.items;
    let mut object = IndexMap::with_capacity(items.len());
    for selection in items {
        let Selection::Field(f) = &selection.node else {
            return None;
        };
        let f = &f.node;
        if !f.directives.is_empty()
            || !f.arguments.is_empty()
            || !f.selection_set.node.items.is_empty()
        {
            return None;
        }
        let v = match f.name.node.as_str() {
            "__typename" => Value::String(typename.to_owned()),
            name => value(name)?,
        };
        if object.insert(f.response_key().node.clone(), v).is_some() {
            return None;
        }
    }
    Some(Value::Object(object))
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

impl ListedRun {
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

impl ListedTenant {
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
                match flat(ctx, &Self::type_name(), |name| self.value(name)) {
                    Some(value) => Ok(value),
                    None => OutputType::resolve(&self.0, ctx, field).await,
                }
            }
        }
    };
}

listed!(ListedRun, RunNode);
listed!(ListedTenant, TenantNode);
