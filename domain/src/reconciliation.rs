//! The ReconciliationItem aggregate (R5.4): an Entra user the sync could not place on its
//! own, because several contacts are plausible. Aggregate id:
//! [`ReconciliationItemId::for_entra_user`](crate::ReconciliationItemId::for_entra_user),
//! so a user queued by every sync run is still one item.
//!
//! A person resolves it by linking one candidate, creating a new contact, or ignoring it;
//! the resolution records who did it (the caller passes the bus metadata's actor). The
//! contact command itself (link or create) is issued by the caller in the same transaction.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{clean_name, ClientId, ContactId, EntraUserRef, RunId, WorkspaceId, MAX_NAME};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The upstream user as the queue shows it (no raw Graph payload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSummary {
    pub display_name: Option<String>,
    /// Normalized addresses the user answers to (mail, UPN, smtp proxies).
    pub emails: Vec<String>,
}

/// How an item was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Linked to one of the candidates.
    LinkedExisting { contact_id: ContactId },
    /// A new contact was created for the user; use
    /// [`ContactId::for_entra_user`](crate::ContactId::for_entra_user) with the item's
    /// client, the id the sync itself would give it.
    CreatedNew { contact_id: ContactId },
    /// Nothing is done for this user; later syncs leave it alone (the workflow passes such
    /// users in [`SyncScope::ignored`](crate::SyncScope::ignored)).
    Ignored,
}

/// What can be asked of a reconciliation item.
#[derive(Debug, Clone, PartialEq)]
pub enum ReconciliationCommand {
    /// Queues the user with its candidates. An open item with the same candidates, or a
    /// resolved one, writes nothing (a resolution stands across later syncs).
    Queue {
        workspace: WorkspaceId,
        client_id: ClientId,
        entra_user: EntraUserRef,
        upstream: UpstreamSummary,
        candidates: Vec<ContactId>,
        run_id: Option<RunId>,
    },
    /// Resolves the item; the same resolution again writes nothing. `actor` is who asked
    /// (the bus metadata's actor).
    Resolve {
        resolution: Resolution,
        actor: String,
    },
}

impl Authorize for ReconciliationCommand {
    fn permission(&self) -> Permission {
        match self {
            ReconciliationCommand::Queue { .. } => Permission::RecordProgress,
            ReconciliationCommand::Resolve { .. } => Permission::ManageContactSync,
        }
    }
}

/// What happened to a reconciliation item. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReconciliationEvent {
    ReconciliationQueued {
        workspace: WorkspaceId,
        client_id: ClientId,
        entra_user: EntraUserRef,
        upstream: UpstreamSummary,
        candidates: Vec<ContactId>,
        run_id: Option<RunId>,
        queued_at: DateTime<Utc>,
    },
    ReconciliationResolved {
        resolution: Resolution,
        resolved_by: String,
        resolved_at: DateTime<Utc>,
    },
}

impl DomainEvent for ReconciliationEvent {
    fn event_type(&self) -> String {
        match self {
            ReconciliationEvent::ReconciliationQueued { .. } => "ReconciliationQueued",
            ReconciliationEvent::ReconciliationResolved { .. } => "ReconciliationResolved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a reconciliation command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconciliationError {
    #[error("the reconciliation item does not exist")]
    NotFound,
    #[error("the item was already resolved another way")]
    AlreadyResolved,
    #[error("the contact is not one of the item's candidates")]
    NotACandidate,
    #[error("an item needs at least one candidate contact")]
    NoCandidates,
    #[error("the actor must be 1-200 characters")]
    InvalidActor,
}

impl DomainError for ReconciliationError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ReconciliationError::NotFound => ReasonCode::NotFound,
            ReconciliationError::AlreadyResolved => ReasonCode::InvalidTransition,
            ReconciliationError::NotACandidate
            | ReconciliationError::NoCandidates
            | ReconciliationError::InvalidActor => ReasonCode::ValidationFailed,
        }
    }
}

/// A reconciliation item, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ReconciliationItem {
    pub workspace: Option<WorkspaceId>,
    pub client_id: Option<ClientId>,
    pub entra_user: Option<EntraUserRef>,
    pub upstream: UpstreamSummary,
    /// Sorted, unique.
    pub candidates: Vec<ContactId>,
    pub resolution: Option<Resolution>,
    pub resolved_by: Option<String>,
}

impl ReconciliationItem {
    /// Open: queued and not resolved.
    pub fn is_open(&self) -> bool {
        self.workspace.is_some() && self.resolution.is_none()
    }
}

impl Aggregate for ReconciliationItem {
    const TYPE: &'static str = "reconciliation_item";
    type Command = ReconciliationCommand;
    type Event = ReconciliationEvent;
    type Error = ReconciliationError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ReconciliationCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ReconciliationError> {
        let now = services.clock.now();
        match command {
            ReconciliationCommand::Queue {
                workspace,
                client_id,
                entra_user,
                upstream,
                mut candidates,
                run_id,
            } => {
                candidates.sort();
                candidates.dedup();
                if candidates.is_empty() {
                    return Err(ReconciliationError::NoCandidates);
                }
                let unchanged = self.workspace.is_some()
                    && (self.resolution.is_some() || self.candidates == candidates);
                if !unchanged {
                    let event = ReconciliationEvent::ReconciliationQueued {
                        workspace,
                        client_id,
                        entra_user,
                        upstream,
                        candidates,
                        run_id,
                        queued_at: now,
                    };
                    sink.write(event, self).await;
                }
            }
            ReconciliationCommand::Resolve { resolution, actor } => {
                if self.workspace.is_none() {
                    return Err(ReconciliationError::NotFound);
                }
                let actor =
                    clean_name(&actor, MAX_NAME).ok_or(ReconciliationError::InvalidActor)?;
                match self.resolution {
                    Some(done) if done == resolution => return Ok(()),
                    Some(_) => return Err(ReconciliationError::AlreadyResolved),
                    None => {}
                }
                if let Resolution::LinkedExisting { contact_id } = resolution {
                    if !self.candidates.contains(&contact_id) {
                        return Err(ReconciliationError::NotACandidate);
                    }
                }
                let event = ReconciliationEvent::ReconciliationResolved {
                    resolution,
                    resolved_by: actor,
                    resolved_at: now,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ReconciliationEvent) {
        match event {
            ReconciliationEvent::ReconciliationQueued {
                workspace,
                client_id,
                entra_user,
                upstream,
                candidates,
                ..
            } => {
                self.workspace = Some(workspace);
                self.client_id = Some(client_id);
                self.entra_user = Some(entra_user);
                self.upstream = upstream;
                self.candidates = candidates;
            }
            ReconciliationEvent::ReconciliationResolved {
                resolution,
                resolved_by,
                ..
            } => {
                self.resolution = Some(resolution);
                self.resolved_by = Some(resolved_by);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::tests::{client, entra_user};
    use crate::testing::{assert_event_types_match_payload_tags, fold, now, services, workspace};
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type F = TestFramework<ReconciliationItem>;

    fn contact(n: u128) -> ContactId {
        ContactId(Uuid::from_u128(n))
    }
    fn upstream() -> UpstreamSummary {
        UpstreamSummary {
            display_name: Some("Adele Vance".into()),
            emails: vec!["adele@contoso.com".into()],
        }
    }
    fn queue(candidates: &[u128]) -> ReconciliationCommand {
        ReconciliationCommand::Queue {
            workspace: workspace(),
            client_id: client(),
            entra_user: entra_user(1),
            upstream: upstream(),
            candidates: candidates.iter().map(|n| contact(*n)).collect(),
            run_id: None,
        }
    }
    fn queued(candidates: &[u128]) -> ReconciliationEvent {
        ReconciliationEvent::ReconciliationQueued {
            workspace: workspace(),
            client_id: client(),
            entra_user: entra_user(1),
            upstream: upstream(),
            candidates: candidates.iter().map(|n| contact(*n)).collect(),
            run_id: None,
            queued_at: now(),
        }
    }
    fn resolve(resolution: Resolution) -> ReconciliationCommand {
        ReconciliationCommand::Resolve {
            resolution,
            actor: "alice@msp.example".into(),
        }
    }
    fn resolved(resolution: Resolution) -> ReconciliationEvent {
        ReconciliationEvent::ReconciliationResolved {
            resolution,
            resolved_by: "alice@msp.example".into(),
            resolved_at: now(),
        }
    }

    #[test]
    fn a_user_is_queued_with_its_candidates_sorted_and_unique() {
        F::with(services())
            .given_no_previous_events()
            .when(queue(&[3, 2, 3]))
            .then_expect_events(vec![queued(&[2, 3])]);
        assert!(fold::<ReconciliationItem>([queued(&[2, 3])]).is_open());
    }

    #[test]
    fn queueing_the_same_user_again_writes_nothing_unless_its_candidates_changed() {
        F::with(services())
            .given(vec![queued(&[2, 3])])
            .when(queue(&[3, 2]))
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![queued(&[2, 3])])
            .when(queue(&[2, 3, 4]))
            .then_expect_events(vec![queued(&[2, 3, 4])]);
    }

    #[test]
    fn a_resolution_stands_when_later_syncs_queue_the_user_again() {
        F::with(services())
            .given(vec![queued(&[2, 3]), resolved(Resolution::Ignored)])
            .when(queue(&[2, 3, 4]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_item_without_candidates_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(queue(&[]))
            .then_expect_error(ReconciliationError::NoCandidates);
    }

    #[test]
    fn linking_one_candidate_resolves_the_item_with_its_actor() {
        let link = Resolution::LinkedExisting {
            contact_id: contact(2),
        };
        F::with(services())
            .given(vec![queued(&[2, 3])])
            .when(resolve(link))
            .then_expect_events(vec![resolved(link)]);
        let item: ReconciliationItem = fold([queued(&[2, 3]), resolved(link)]);
        assert!(!item.is_open());
        assert_eq!(item.resolved_by.as_deref(), Some("alice@msp.example"));
    }

    #[test]
    fn linking_a_contact_that_is_not_a_candidate_is_refused() {
        F::with(services())
            .given(vec![queued(&[2, 3])])
            .when(resolve(Resolution::LinkedExisting {
                contact_id: contact(9),
            }))
            .then_expect_error(ReconciliationError::NotACandidate);
    }

    #[test]
    fn creating_new_or_ignoring_resolves_the_item() {
        for resolution in [
            Resolution::CreatedNew {
                contact_id: contact(9),
            },
            Resolution::Ignored,
        ] {
            F::with(services())
                .given(vec![queued(&[2, 3])])
                .when(resolve(resolution))
                .then_expect_events(vec![resolved(resolution)]);
        }
    }

    #[test]
    fn the_same_resolution_again_writes_nothing_and_another_is_refused() {
        F::with(services())
            .given(vec![queued(&[2, 3]), resolved(Resolution::Ignored)])
            .when(resolve(Resolution::Ignored))
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![queued(&[2, 3]), resolved(Resolution::Ignored)])
            .when(resolve(Resolution::CreatedNew {
                contact_id: contact(9),
            }))
            .then_expect_error(ReconciliationError::AlreadyResolved);
    }

    #[test]
    fn resolving_needs_an_item_and_a_named_actor() {
        F::with(services())
            .given_no_previous_events()
            .when(resolve(Resolution::Ignored))
            .then_expect_error(ReconciliationError::NotFound);
        F::with(services())
            .given(vec![queued(&[2])])
            .when(ReconciliationCommand::Resolve {
                resolution: Resolution::Ignored,
                actor: " ".into(),
            })
            .then_expect_error(ReconciliationError::InvalidActor);
    }

    #[test]
    fn the_sync_queues_and_people_resolve() {
        assert_eq!(queue(&[2]).permission(), Permission::RecordProgress);
        assert_eq!(
            resolve(Resolution::Ignored).permission(),
            Permission::ManageContactSync
        );
        assert_eq!(
            ReconciliationError::AlreadyResolved.reason_code(),
            ReasonCode::InvalidTransition
        );
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[
            queued(&[2]),
            resolved(Resolution::Ignored),
            resolved(Resolution::CreatedNew {
                contact_id: contact(2),
            }),
        ]);
        assert_eq!(
            serde_json::to_value(Resolution::Ignored).unwrap(),
            serde_json::json!("ignored")
        );
    }
}
