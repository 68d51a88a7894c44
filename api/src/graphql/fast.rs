//! A run in a list page, resolved without async-graphql's future per field when its
//! selection is flat: only the run's own scalar fields (aliases allowed, `__typename`),
//! no fragments, no directives, no field named twice. Anything else takes async-graphql's
//! own way, whole. The answer is the same either way (`api/tests/api/filters.rs` compares
//! them); the flat one costs the run list about a sixth less of this process's CPU per page
//! at 32 clients (docs/BENCHMARKS.md, "A run list's rows without a future per field").
//!
//! It skips what async-graphql does per field besides resolving it: its extensions' hooks.
//! The schema has no extensions (`schema()`); one that wants to see every field must turn
//! this off.

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection};
use async_graphql::{ContextSelectionSet, InputType, OutputType, Positioned, ServerResult, Value};
use std::borrow::Cow;

use super::enums::{RunOutcome, RunStatus};
use super::types::RunNode;

/// A [`RunNode`] in a list page: the same GraphQL type (`Run`).
pub struct ListedRun(pub RunNode);

impl OutputType for ListedRun {
    fn type_name() -> Cow<'static, str> {
        <RunNode as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <RunNode as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        match self.flat(ctx) {
            Some(value) => Ok(value),
            None => OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

impl ListedRun {
    fn flat(&self, ctx: &ContextSelectionSet<'_>) -> Option<Value> {
        let r = &self.0;
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
            let text = |s: &str| Value::String(s.to_owned());
            let value = match f.name.node.as_str() {
                "__typename" => text("Run"),
                "id" => Value::String(r.run_id.to_string()),
                "type" => text(&r.run_type),
                "tenantId" => r.tenant_key.as_deref().map_or(Value::Null, text),
                "status" => {
                    InputType::to_value(&RunStatus::from(domain::run::RunStatus::parse(&r.status)?))
                }
                "outcome" => InputType::to_value(&RunOutcome::from(
                    domain::run::RunOutcome::parse(&r.outcome)?,
                )),
                "cancelRequested" => Value::Boolean(r.cancel_requested),
                "initiator" => text(&r.initiator),
                "reasonCode" => r.reason_code.as_deref().map_or(Value::Null, text),
                "queuedAt" => Value::String(r.queued_at.to_rfc3339()),
                "startedAt" => r
                    .started_at
                    .map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
                "completedAt" => r
                    .completed_at
                    .map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
                "retryOf" => r
                    .retry_of
                    .map_or(Value::Null, |id| Value::String(id.to_string())),
                _ => return None,
            };
            if object
                .insert(f.response_key().node.clone(), value)
                .is_some()
            {
                return None;
            }
        }
        Some(Value::Object(object))
    }
}
