//! The Contact aggregate (R5.4, R5.5): a person at a client, optionally linked to the Entra
//! user it mirrors. Aggregate id: the [`ContactId`](crate::ContactId); contacts the sync
//! creates use [`ContactId::for_entra_user`](crate::ContactId::for_entra_user).
//!
//! Every command is idempotent: repeating one that changes nothing writes no event, so a
//! sync run with no upstream change writes nothing, and a sync redone after a crash finds
//! the contact it created. Contacts are never deleted; they become inactive.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{clean_name, normalize_email, ClientId, EntraUserRef, WorkspaceId, MAX_NAME};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The longest phone number, job title or department, in characters.
pub const MAX_FIELD: usize = 100;

/// A contact field that Entra may overwrite (when the field sync config allows it). The
/// email is not one: it is what contacts are matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactField {
    Name,
    Phone,
    Mobile,
    JobTitle,
    Department,
}

spelled_values!(ContactField {
    Name,
    Phone,
    Mobile,
    JobTitle,
    Department
});

impl ContactField {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactField::Name => "name",
            ContactField::Phone => "phone",
            ContactField::Mobile => "mobile",
            ContactField::JobTitle => "job_title",
            ContactField::Department => "department",
        }
    }
}

/// Whether a contact is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStatus {
    #[default]
    Active,
    Inactive,
}

impl ContactStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactStatus::Active => "active",
            ContactStatus::Inactive => "inactive",
        }
    }
}

/// Why a contact became inactive: what happened to its Entra user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InactiveReason {
    /// `accountEnabled: false`.
    Disabled,
    /// `@removed` in a delta round (soft or permanent deletion).
    Deleted,
}

impl InactiveReason {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InactiveReason::Disabled => "disabled",
            InactiveReason::Deleted => "deleted",
        }
    }
}

display_as_str!(ContactField, ContactStatus, InactiveReason);
spelled_values!(ContactStatus { Active, Inactive });
spelled_values!(InactiveReason { Disabled, Deleted });

/// A contact's details. `name` is required; the rest may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetails {
    pub name: String,
    /// Normalized ([`normalize_email`]).
    pub email: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
}

impl ContactDetails {
    /// The value of a sync-able field.
    pub fn get(&self, field: ContactField) -> Option<&str> {
        match field {
            ContactField::Name => Some(self.name.as_str()),
            ContactField::Phone => self.phone.as_deref(),
            ContactField::Mobile => self.mobile.as_deref(),
            ContactField::JobTitle => self.job_title.as_deref(),
            ContactField::Department => self.department.as_deref(),
        }
    }

    fn set(&mut self, field: ContactField, value: Option<String>) {
        match field {
            ContactField::Name => self.name = value.unwrap_or_default(),
            ContactField::Phone => self.phone = value,
            ContactField::Mobile => self.mobile = value,
            ContactField::JobTitle => self.job_title = value,
            ContactField::Department => self.department = value,
        }
    }

    /// The details validated and normalized, as events store them.
    fn cleaned(self) -> Result<Self, ContactError> {
        let email = match self.email.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(normalize_email(raw).ok_or(ContactError::InvalidEmail)?),
        };
        let mut out = Self {
            email,
            ..Self::default()
        };
        for field in ContactField::ALL {
            out.set(field, clean_field(field, self.get(field))?);
        }
        if out.name.is_empty() {
            return Err(ContactError::InvalidField(ContactField::Name));
        }
        Ok(out)
    }
}

/// A field value as stored: trimmed; blank is no value; bounded, no control characters.
/// The name is required.
fn clean_field(field: ContactField, value: Option<&str>) -> Result<Option<String>, ContactError> {
    let max = match field {
        ContactField::Name => MAX_NAME,
        _ => MAX_FIELD,
    };
    match value.map(str::trim) {
        None | Some("") if field == ContactField::Name => Err(ContactError::InvalidField(field)),
        None | Some("") => Ok(None),
        Some(v) => clean_name(v, max)
            .map(Some)
            .ok_or(ContactError::InvalidField(field)),
    }
}

/// One field's change: what it was and what it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What can be asked of a contact.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactCommand {
    /// Creates the contact, linked to `entra_user` when given. Repeated for the same
    /// client (a sync redone after a crash), it writes nothing.
    Create {
        workspace: WorkspaceId,
        client_id: ClientId,
        details: ContactDetails,
        entra_user: Option<EntraUserRef>,
    },
    /// Links the contact to its Entra user. Already linked to that user: no events.
    Link { entra_user: EntraUserRef },
    /// Sets fields; only the fields whose value differs are recorded, none: no events.
    UpdateFields {
        changes: Vec<(ContactField, Option<String>)>,
    },
    /// Already inactive: no events (the first reason stands).
    MarkInactive { reason: InactiveReason },
    /// Already active: no events.
    Reactivate,
}

impl Authorize for ContactCommand {
    fn permission(&self) -> Permission {
        Permission::ManageContactSync
    }
}

/// What happened to a contact. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContactEvent {
    ContactCreated {
        workspace: WorkspaceId,
        client_id: ClientId,
        details: ContactDetails,
        created_at: DateTime<Utc>,
    },
    ContactLinked {
        entra_user: EntraUserRef,
        at: DateTime<Utc>,
    },
    /// Only the fields that changed, each with its old and new value.
    ContactFieldsUpdated {
        changes: BTreeMap<ContactField, FieldChange>,
        at: DateTime<Utc>,
    },
    ContactMarkedInactive {
        reason: InactiveReason,
        at: DateTime<Utc>,
    },
    ContactReactivated {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ContactEvent {
    fn event_type(&self) -> String {
        match self {
            ContactEvent::ContactCreated { .. } => "ContactCreated",
            ContactEvent::ContactLinked { .. } => "ContactLinked",
            ContactEvent::ContactFieldsUpdated { .. } => "ContactFieldsUpdated",
            ContactEvent::ContactMarkedInactive { .. } => "ContactMarkedInactive",
            ContactEvent::ContactReactivated { .. } => "ContactReactivated",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a contact command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("the contact does not exist")]
    NotFound,
    #[error("the contact already exists under another client")]
    AlreadyExists,
    #[error("the contact is already linked to another Entra user")]
    AlreadyLinked,
    #[error("the email address is not valid")]
    InvalidEmail,
    #[error("the {0} must be at most 100 characters (the name 1-200), without control characters")]
    InvalidField(ContactField),
}

impl DomainError for ContactError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ContactError::NotFound => ReasonCode::NotFound,
            ContactError::AlreadyExists => ReasonCode::AlreadyExists,
            ContactError::AlreadyLinked => ReasonCode::Conflict,
            ContactError::InvalidEmail | ContactError::InvalidField(_) => {
                ReasonCode::ValidationFailed
            }
        }
    }
}

/// A contact, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Contact {
    pub workspace: Option<WorkspaceId>,
    pub client_id: Option<ClientId>,
    pub details: ContactDetails,
    pub entra_user: Option<EntraUserRef>,
    pub status: ContactStatus,
    /// Set while inactive.
    pub inactive_reason: Option<InactiveReason>,
}

impl Contact {
    /// Whether the contact was created.
    pub fn exists(&self) -> bool {
        self.workspace.is_some()
    }

    fn require_exists(&self) -> Result<(), ContactError> {
        if self.exists() {
            Ok(())
        } else {
            Err(ContactError::NotFound)
        }
    }

    fn link_event(
        &self,
        entra_user: EntraUserRef,
        at: DateTime<Utc>,
    ) -> Result<Option<ContactEvent>, ContactError> {
        match self.entra_user {
            Some(linked) if linked == entra_user => Ok(None),
            Some(_) => Err(ContactError::AlreadyLinked),
            None => Ok(Some(ContactEvent::ContactLinked { entra_user, at })),
        }
    }
}

impl Aggregate for Contact {
    const TYPE: &'static str = "contact";
    type Command = ContactCommand;
    type Event = ContactEvent;
    type Error = ContactError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ContactCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ContactError> {
        let now = services.clock.now();
        let mut events = Vec::new();
        match command {
            ContactCommand::Create {
                workspace,
                client_id,
                details,
                entra_user,
            } => {
                if self.exists() {
                    return match self.client_id == Some(client_id) {
                        true => Ok(()),
                        false => Err(ContactError::AlreadyExists),
                    };
                }
                events.push(ContactEvent::ContactCreated {
                    workspace,
                    client_id,
                    details: details.cleaned()?,
                    created_at: now,
                });
                if let Some(entra_user) = entra_user {
                    events.push(ContactEvent::ContactLinked {
                        entra_user,
                        at: now,
                    });
                }
            }
            ContactCommand::Link { entra_user } => {
                self.require_exists()?;
                events.extend(self.link_event(entra_user, now)?);
            }
            ContactCommand::UpdateFields { changes } => {
                self.require_exists()?;
                let mut recorded = BTreeMap::new();
                for (field, value) in changes {
                    let new = clean_field(field, value.as_deref())?;
                    let old = self.details.get(field).map(str::to_owned);
                    if old != new {
                        recorded.insert(field, FieldChange { old, new });
                    }
                }
                if !recorded.is_empty() {
                    events.push(ContactEvent::ContactFieldsUpdated {
                        changes: recorded,
                        at: now,
                    });
                }
            }
            ContactCommand::MarkInactive { reason } => {
                self.require_exists()?;
                if self.status == ContactStatus::Active {
                    events.push(ContactEvent::ContactMarkedInactive { reason, at: now });
                }
            }
            ContactCommand::Reactivate => {
                self.require_exists()?;
                if self.status == ContactStatus::Inactive {
                    events.push(ContactEvent::ContactReactivated { at: now });
                }
            }
        }
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ContactEvent) {
        match event {
            ContactEvent::ContactCreated {
                workspace,
                client_id,
                details,
                ..
            } => {
                self.workspace = Some(workspace);
                self.client_id = Some(client_id);
                self.details = details;
                self.status = ContactStatus::Active;
            }
            ContactEvent::ContactLinked { entra_user, .. } => self.entra_user = Some(entra_user),
            ContactEvent::ContactFieldsUpdated { changes, .. } => {
                for (field, change) in changes {
                    self.details.set(field, change.new);
                }
            }
            ContactEvent::ContactMarkedInactive { reason, .. } => {
                self.status = ContactStatus::Inactive;
                self.inactive_reason = Some(reason);
            }
            ContactEvent::ContactReactivated { .. } => {
                self.status = ContactStatus::Active;
                self.inactive_reason = None;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, fold, guid, now, services, workspace,
    };
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type F = TestFramework<Contact>;

    pub(crate) fn client() -> ClientId {
        ClientId(Uuid::from_u128(42))
    }
    pub(crate) fn entra_user(n: u128) -> EntraUserRef {
        EntraUserRef {
            entra_tenant_id: guid(),
            object_id: Uuid::from_u128(n),
        }
    }
    pub(crate) fn adele() -> ContactDetails {
        ContactDetails {
            name: "Adele Vance".into(),
            email: Some("adele.vance@contoso.com".into()),
            phone: Some("+1 425 555 0109".into()),
            job_title: Some("Engineer".into()),
            ..ContactDetails::default()
        }
    }
    fn create(details: ContactDetails, link: Option<EntraUserRef>) -> ContactCommand {
        ContactCommand::Create {
            workspace: workspace(),
            client_id: client(),
            details,
            entra_user: link,
        }
    }
    fn created() -> ContactEvent {
        ContactEvent::ContactCreated {
            workspace: workspace(),
            client_id: client(),
            details: adele(),
            created_at: now(),
        }
    }
    fn linked(n: u128) -> ContactEvent {
        ContactEvent::ContactLinked {
            entra_user: entra_user(n),
            at: now(),
        }
    }
    fn inactive(reason: InactiveReason) -> ContactEvent {
        ContactEvent::ContactMarkedInactive { reason, at: now() }
    }

    #[test]
    fn a_contact_is_created_with_a_normalized_email_and_trimmed_fields() {
        let messy = ContactDetails {
            name: " Adele Vance ".into(),
            email: Some("  Adele.Vance@CONTOSO.com ".into()),
            phone: Some(" +1 425 555 0109".into()),
            mobile: Some("  ".into()),
            job_title: Some("Engineer".into()),
            department: None,
        };
        F::with(services())
            .given_no_previous_events()
            .when(create(messy, None))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn a_contact_created_for_an_entra_user_is_created_then_linked() {
        F::with(services())
            .given_no_previous_events()
            .when(create(adele(), Some(entra_user(1))))
            .then_expect_events(vec![created(), linked(1)]);
        let contact: Contact = fold([created(), linked(1)]);
        assert_eq!(contact.entra_user, Some(entra_user(1)));
        assert_eq!(contact.status, ContactStatus::Active);
    }

    #[test]
    fn creating_the_same_contact_again_after_a_crash_writes_nothing() {
        F::with(services())
            .given(vec![created(), linked(1)])
            .when(create(adele(), Some(entra_user(1))))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_same_contact_id_under_another_client_is_refused() {
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::Create {
                workspace: workspace(),
                client_id: ClientId(Uuid::from_u128(7)),
                details: adele(),
                entra_user: None,
            })
            .then_expect_error(ContactError::AlreadyExists);
    }

    #[test]
    fn a_malformed_email_or_a_missing_name_is_refused() {
        let bad_email = ContactDetails {
            email: Some("adele at contoso".into()),
            ..adele()
        };
        F::with(services())
            .given_no_previous_events()
            .when(create(bad_email, None))
            .then_expect_error(ContactError::InvalidEmail);
        let no_name = ContactDetails {
            name: " ".into(),
            ..adele()
        };
        F::with(services())
            .given_no_previous_events()
            .when(create(no_name, None))
            .then_expect_error(ContactError::InvalidField(ContactField::Name));
    }

    #[test]
    fn linking_is_idempotent_and_never_moves_a_link_to_another_user() {
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::Link {
                entra_user: entra_user(1),
            })
            .then_expect_events(vec![linked(1)]);
        F::with(services())
            .given(vec![created(), linked(1)])
            .when(ContactCommand::Link {
                entra_user: entra_user(1),
            })
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created(), linked(1)])
            .when(ContactCommand::Link {
                entra_user: entra_user(2),
            })
            .then_expect_error(ContactError::AlreadyLinked);
    }

    #[test]
    fn an_update_records_only_the_fields_that_changed_with_old_and_new_values() {
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::UpdateFields {
                changes: vec![
                    (ContactField::Name, Some("Adele Vance".into())),
                    (ContactField::JobTitle, Some("Lead Engineer".into())),
                    (ContactField::Mobile, Some("+1 206 555 0100".into())),
                ],
            })
            .then_expect_events(vec![ContactEvent::ContactFieldsUpdated {
                changes: BTreeMap::from([
                    (
                        ContactField::Mobile,
                        FieldChange {
                            old: None,
                            new: Some("+1 206 555 0100".into()),
                        },
                    ),
                    (
                        ContactField::JobTitle,
                        FieldChange {
                            old: Some("Engineer".into()),
                            new: Some("Lead Engineer".into()),
                        },
                    ),
                ]),
                at: now(),
            }]);
    }

    #[test]
    fn an_update_that_changes_nothing_writes_nothing() {
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::UpdateFields {
                changes: vec![
                    (ContactField::Name, Some(" Adele Vance".into())),
                    (ContactField::Mobile, Some(" ".into())),
                ],
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_update_applies_new_values_and_the_name_cannot_be_emptied() {
        let update = ContactEvent::ContactFieldsUpdated {
            changes: BTreeMap::from([(
                ContactField::Phone,
                FieldChange {
                    old: Some("+1 425 555 0109".into()),
                    new: None,
                },
            )]),
            at: now(),
        };
        assert_eq!(fold::<Contact>([created(), update]).details.phone, None);
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::UpdateFields {
                changes: vec![(ContactField::Name, None)],
            })
            .then_expect_error(ContactError::InvalidField(ContactField::Name));
    }

    #[test]
    fn marking_inactive_keeps_the_first_reason_and_reactivating_clears_it() {
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::MarkInactive {
                reason: InactiveReason::Disabled,
            })
            .then_expect_events(vec![inactive(InactiveReason::Disabled)]);
        F::with(services())
            .given(vec![created(), inactive(InactiveReason::Disabled)])
            .when(ContactCommand::MarkInactive {
                reason: InactiveReason::Deleted,
            })
            .then_expect_events(vec![]);
        let contact: Contact = fold([created(), inactive(InactiveReason::Deleted)]);
        assert_eq!(contact.status, ContactStatus::Inactive);
        assert_eq!(contact.inactive_reason, Some(InactiveReason::Deleted));
        let back: Contact = fold([
            created(),
            inactive(InactiveReason::Deleted),
            ContactEvent::ContactReactivated { at: now() },
        ]);
        assert_eq!(back.status, ContactStatus::Active);
        assert_eq!(back.inactive_reason, None);
        F::with(services())
            .given(vec![created()])
            .when(ContactCommand::Reactivate)
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_a_missing_contact_are_refused() {
        for command in [
            ContactCommand::Link {
                entra_user: entra_user(1),
            },
            ContactCommand::UpdateFields { changes: vec![] },
            ContactCommand::MarkInactive {
                reason: InactiveReason::Disabled,
            },
            ContactCommand::Reactivate,
        ] {
            F::with(services())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ContactError::NotFound);
        }
    }

    #[test]
    fn event_types_match_their_stored_tags_and_field_names_are_snake_case() {
        let update = ContactEvent::ContactFieldsUpdated {
            changes: BTreeMap::from([(
                ContactField::JobTitle,
                FieldChange {
                    old: None,
                    new: Some("x".into()),
                },
            )]),
            at: now(),
        };
        assert_event_types_match_payload_tags(&[
            created(),
            linked(1),
            update.clone(),
            inactive(InactiveReason::Disabled),
            ContactEvent::ContactReactivated { at: now() },
        ]);
        let json = serde_json::to_value(&update).unwrap();
        assert_eq!(
            json["ContactFieldsUpdated"]["changes"]["job_title"],
            serde_json::json!({"old": null, "new": "x"})
        );
        for field in ContactField::ALL {
            assert_eq!(serde_json::to_value(field).unwrap(), field.as_str());
            assert_eq!(ContactField::parse(field.as_str()), Some(field));
        }
        for status in ContactStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(ContactStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(
            InactiveReason::parse("deleted"),
            Some(InactiveReason::Deleted)
        );
        assert_eq!(ContactStatus::parse("Active"), None);
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        assert_eq!(
            ContactError::AlreadyLinked.reason_code(),
            ReasonCode::Conflict
        );
        assert_eq!(
            ContactError::InvalidEmail.reason_code(),
            ReasonCode::ValidationFailed
        );
        assert_eq!(ContactError::NotFound.reason_code(), ReasonCode::NotFound);
    }
}
