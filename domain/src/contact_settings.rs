//! The ContactSyncSettings aggregate (R5.5, R5.6): a workspace's field sync config and its
//! contact sync feature flags. Aggregate id: the [`WorkspaceId`].
//!
//! Flags gate surfaces, never data: a surface whose flag is off answers [`FeatureDisabled`]
//! (reason `feature_disabled`) and deletes nothing, so turning it on again shows everything
//! as it was. Everything starts off, as the rollout of seed 002 asks (deploy dark, then
//! enable flag by flag). The settings themselves are never gated, or a flag could not be
//! turned on.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::contact::ContactField;
use crate::values::WorkspaceId;
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// A contact sync feature flag (seed 002's five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureFlag {
    /// Every contact sync surface: partner connection, discovery, mapping, clients,
    /// contacts, sync runs, settings reads.
    Ui,
    /// "Sync this client now".
    ClientSyncAction,
    /// Partner connections of kind `cipp`, and discovery and sync through CIPP.
    Cipp,
    /// The field sync config takes effect; off, local values always win.
    FieldSync,
    /// The reconciliation queue and its resolutions.
    AmbiguousQueue,
}

// In the order seed 002 lists them.
spelled_values!(FeatureFlag {
    Ui,
    ClientSyncAction,
    Cipp,
    FieldSync,
    AmbiguousQueue
});

impl FeatureFlag {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureFlag::Ui => "ui",
            FeatureFlag::ClientSyncAction => "client_sync_action",
            FeatureFlag::Cipp => "cipp",
            FeatureFlag::FieldSync => "field_sync",
            FeatureFlag::AmbiguousQueue => "ambiguous_queue",
        }
    }
}

display_as_str!(FeatureFlag);

/// The refusal of a surface whose flag is off. Its reason code is `feature_disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {flag} feature is turned off for this workspace")]
pub struct FeatureDisabled {
    pub flag: FeatureFlag,
}

impl DomainError for FeatureDisabled {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::FeatureDisabled
    }
}

/// Which contact fields Entra may overwrite. Empty (the default): local values always win.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSyncConfig {
    pub fields: BTreeSet<ContactField>,
}

impl FieldSyncConfig {
    /// A config that lets Entra overwrite `fields`.
    pub fn allowing(fields: impl IntoIterator<Item = ContactField>) -> Self {
        Self {
            fields: fields.into_iter().collect(),
        }
    }

    /// Whether Entra may overwrite `field`.
    pub fn allows(&self, field: ContactField) -> bool {
        self.fields.contains(&field)
    }
}

/// What can be asked of the settings. Each is idempotent: the same value writes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingsCommand {
    SetFieldSync {
        workspace: WorkspaceId,
        config: FieldSyncConfig,
    },
    SetFeatureFlag {
        workspace: WorkspaceId,
        flag: FeatureFlag,
        enabled: bool,
    },
}

impl Authorize for SettingsCommand {
    fn permission(&self) -> Permission {
        Permission::ManageContactSync
    }
}

/// What happened to the settings. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SettingsEvent {
    FieldSyncConfigured {
        workspace: WorkspaceId,
        config: FieldSyncConfig,
        at: DateTime<Utc>,
    },
    FeatureFlagSet {
        workspace: WorkspaceId,
        flag: FeatureFlag,
        enabled: bool,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SettingsEvent {
    fn event_type(&self) -> String {
        match self {
            SettingsEvent::FieldSyncConfigured { .. } => "FieldSyncConfigured",
            SettingsEvent::FeatureFlagSet { .. } => "FeatureFlagSet",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a settings command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("these settings belong to another workspace")]
    WorkspaceMismatch,
}

impl DomainError for SettingsError {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::ValidationFailed
    }
}

/// A workspace's contact sync settings, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ContactSyncSettings {
    pub workspace: Option<WorkspaceId>,
    /// As configured, whether or not [`FeatureFlag::FieldSync`] is on.
    pub field_sync: FieldSyncConfig,
    pub enabled_flags: BTreeSet<FeatureFlag>,
}

impl ContactSyncSettings {
    /// Whether `flag` is on.
    pub fn is_enabled(&self, flag: FeatureFlag) -> bool {
        self.enabled_flags.contains(&flag)
    }

    /// `Ok` when `flag` is on; otherwise the typed refusal a gated surface answers.
    pub fn require(&self, flag: FeatureFlag) -> Result<(), FeatureDisabled> {
        if self.is_enabled(flag) {
            Ok(())
        } else {
            Err(FeatureDisabled { flag })
        }
    }

    /// The config the sync applies: the configured one while [`FeatureFlag::FieldSync`] is
    /// on, none otherwise (the configuration itself is kept).
    pub fn effective_field_sync(&self) -> FieldSyncConfig {
        if self.is_enabled(FeatureFlag::FieldSync) {
            self.field_sync.clone()
        } else {
            FieldSyncConfig::default()
        }
    }

    fn check_workspace(&self, workspace: &WorkspaceId) -> Result<(), SettingsError> {
        match &self.workspace {
            Some(w) if w != workspace => Err(SettingsError::WorkspaceMismatch),
            _ => Ok(()),
        }
    }
}

impl Aggregate for ContactSyncSettings {
    const TYPE: &'static str = "contact_sync_settings";
    type Command = SettingsCommand;
    type Event = SettingsEvent;
    type Error = SettingsError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: SettingsCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), SettingsError> {
        let at = services.clock.now();
        let event = match command {
            SettingsCommand::SetFieldSync { workspace, config } => {
                self.check_workspace(&workspace)?;
                (config != self.field_sync).then_some(SettingsEvent::FieldSyncConfigured {
                    workspace,
                    config,
                    at,
                })
            }
            SettingsCommand::SetFeatureFlag {
                workspace,
                flag,
                enabled,
            } => {
                self.check_workspace(&workspace)?;
                (enabled != self.is_enabled(flag)).then_some(SettingsEvent::FeatureFlagSet {
                    workspace,
                    flag,
                    enabled,
                    at,
                })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: SettingsEvent) {
        match event {
            SettingsEvent::FieldSyncConfigured {
                workspace, config, ..
            } => {
                self.workspace = Some(workspace);
                self.field_sync = config;
            }
            SettingsEvent::FeatureFlagSet {
                workspace,
                flag,
                enabled,
                ..
            } => {
                self.workspace = Some(workspace);
                if enabled {
                    self.enabled_flags.insert(flag);
                } else {
                    self.enabled_flags.remove(&flag);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_event_types_match_payload_tags, fold, now, services, workspace};
    use cqrs_es::test::TestFramework;

    type F = TestFramework<ContactSyncSettings>;

    fn flag_set(flag: FeatureFlag, enabled: bool) -> SettingsEvent {
        SettingsEvent::FeatureFlagSet {
            workspace: workspace(),
            flag,
            enabled,
            at: now(),
        }
    }
    fn set_flag(flag: FeatureFlag, enabled: bool) -> SettingsCommand {
        SettingsCommand::SetFeatureFlag {
            workspace: workspace(),
            flag,
            enabled,
        }
    }
    fn titles() -> FieldSyncConfig {
        FieldSyncConfig::allowing([ContactField::JobTitle, ContactField::Department])
    }
    fn configured() -> SettingsEvent {
        SettingsEvent::FieldSyncConfigured {
            workspace: workspace(),
            config: titles(),
            at: now(),
        }
    }

    #[test]
    fn every_flag_starts_off_and_no_field_may_be_overwritten() {
        let settings = ContactSyncSettings::default();
        for flag in FeatureFlag::ALL {
            assert_eq!(settings.require(flag), Err(FeatureDisabled { flag }));
        }
        for field in ContactField::ALL {
            assert!(!settings.effective_field_sync().allows(field));
        }
    }

    #[test]
    fn a_flag_is_turned_on_once_and_then_lets_its_surface_through() {
        F::with(services())
            .given_no_previous_events()
            .when(set_flag(FeatureFlag::Ui, true))
            .then_expect_events(vec![flag_set(FeatureFlag::Ui, true)]);
        F::with(services())
            .given(vec![flag_set(FeatureFlag::Ui, true)])
            .when(set_flag(FeatureFlag::Ui, true))
            .then_expect_events(vec![]);
        let settings: ContactSyncSettings = fold([flag_set(FeatureFlag::Ui, true)]);
        assert_eq!(settings.require(FeatureFlag::Ui), Ok(()));
        assert!(settings.require(FeatureFlag::Cipp).is_err());
    }

    #[test]
    fn turning_a_flag_off_and_on_again_keeps_the_field_sync_config() {
        let settings: ContactSyncSettings = fold([
            configured(),
            flag_set(FeatureFlag::FieldSync, true),
            flag_set(FeatureFlag::FieldSync, false),
        ]);
        assert_eq!(settings.effective_field_sync(), FieldSyncConfig::default());
        assert_eq!(settings.field_sync, titles());
        let again: ContactSyncSettings = fold([
            configured(),
            flag_set(FeatureFlag::FieldSync, true),
            flag_set(FeatureFlag::FieldSync, false),
            flag_set(FeatureFlag::FieldSync, true),
        ]);
        assert_eq!(again.effective_field_sync(), titles());
    }

    #[test]
    fn the_same_field_sync_config_again_writes_nothing() {
        F::with(services())
            .given_no_previous_events()
            .when(SettingsCommand::SetFieldSync {
                workspace: workspace(),
                config: titles(),
            })
            .then_expect_events(vec![configured()]);
        F::with(services())
            .given(vec![configured()])
            .when(SettingsCommand::SetFieldSync {
                workspace: workspace(),
                config: titles(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn settings_stay_in_their_workspace() {
        F::with(services())
            .given(vec![configured()])
            .when(SettingsCommand::SetFeatureFlag {
                workspace: "other".parse().unwrap(),
                flag: FeatureFlag::Ui,
                enabled: true,
            })
            .then_expect_error(SettingsError::WorkspaceMismatch);
    }

    #[test]
    fn a_disabled_feature_is_refused_with_the_feature_disabled_reason() {
        let refusal = FeatureDisabled {
            flag: FeatureFlag::AmbiguousQueue,
        };
        assert_eq!(refusal.reason_code(), ReasonCode::FeatureDisabled);
        assert_eq!(refusal.reason_code().as_str(), "feature_disabled");
        assert_eq!(
            refusal.to_string(),
            "the ambiguous_queue feature is turned off for this workspace"
        );
    }

    #[test]
    fn flags_and_events_have_stable_spellings() {
        for flag in FeatureFlag::ALL {
            assert_eq!(serde_json::to_value(flag).unwrap(), flag.as_str());
            assert_eq!(FeatureFlag::parse(flag.as_str()), Some(flag));
        }
        assert_event_types_match_payload_tags(&[configured(), flag_set(FeatureFlag::Cipp, true)]);
        assert_eq!(
            serde_json::to_value(titles()).unwrap(),
            serde_json::json!({"fields": ["job_title", "department"]})
        );
    }
}
