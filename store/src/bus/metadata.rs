//! Who asks, on whose behalf and why: the metadata every event carries.

use domain::Role;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Who asks, on whose behalf, and why: stored as each event's metadata (a JSON object of
/// strings, as postgres-es requires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub workspace: String,
    pub actor: String,
    pub role: Role,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub request_id: String,
    /// A command carrying a key its aggregate has already applied succeeds without
    /// appending anything (workflow steps may run twice after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Metadata {
    /// Metadata for a fresh request by `actor` with `role` in `workspace`.
    pub fn new(workspace: impl Into<String>, actor: impl Into<String>, role: Role) -> Self {
        let request_id = uuid::Uuid::now_v7().to_string();
        Self {
            workspace: workspace.into(),
            actor: actor.into(),
            role,
            correlation_id: request_id.clone(),
            causation_id: None,
            request_id,
            idempotency_key: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn caused_by(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let map: HashMap<&str, String> = [
            ("workspace", Some(self.workspace.clone())),
            ("actor", Some(self.actor.clone())),
            ("role", Some(self.role.as_str().to_owned())),
            ("correlation_id", Some(self.correlation_id.clone())),
            ("causation_id", self.causation_id.clone()),
            ("request_id", Some(self.request_id.clone())),
            ("idempotency_key", self.idempotency_key.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        serde_json::to_value(map).unwrap_or_default()
    }
}
