//! The contact sync rules (R5.4, R5.5), as a pure function: given one upstream Entra user
//! (or its removal), the client's contact book and the field sync config, [`decide`] what
//! to do. The sync workflow turns each [`SyncAction`] into its command
//! ([`SyncAction::into_command`]) and counts them ([`tally`]).
//!
//! The rules, safest first:
//! - A contact already linked to the user follows it: enabled fields are overwritten,
//!   a disabled user (`accountEnabled: false`) or a removed one (`@removed`) marks it
//!   inactive, a user enabled again reactivates it. Sync never deletes a contact.
//! - Otherwise the user's addresses (`mail`, `userPrincipalName`, `smtp:` proxy
//!   addresses), normalized, are looked up among the unlinked contacts: one match is
//!   linked; several go to the reconciliation queue, unlinked.
//! - No address matches: contacts with the same full name are only plausible, so they go
//!   to the queue too; a name never links. Nothing plausible: a contact is created, with
//!   the id [`ContactId::for_entra_user`], so a sync redone after a crash cannot duplicate it.
//! - A field overwrites a local value only when the field sync config enables it, and an
//!   empty upstream value never clears a local one.
//! - A user whose reconciliation item a person resolved as ignored is left alone.
//! - Queueing does not depend on the `ambiguous_queue` flag: the flag hides the queue, and
//!   the data is there when it is turned on again.
//! - No change upstream: no action, so re-running a sync writes no event.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::contact::{ContactCommand, ContactDetails, ContactField, ContactStatus, InactiveReason};
use crate::contact_settings::FieldSyncConfig;
use crate::reconciliation::{ReconciliationCommand, UpstreamSummary};
use crate::tenant_mapping::TenantSyncResult;
use crate::values::{
    normalize_email, ClientId, ContactId, EntraTenantId, EntraUserRef, ReconciliationItemId, RunId,
    WorkspaceId,
};
use crate::Contact;

/// An Entra user as the sync reads it (Graph `users` / `users/delta`, or CIPP's user list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamUser {
    pub object_id: Uuid,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub mail: Option<String>,
    pub user_principal_name: Option<String>,
    /// As Graph lists them: `SMTP:primary`, `smtp:alias`, `x500:...`.
    pub proxy_addresses: Vec<String>,
    /// `None` when not read (a minimal delta entry): then the status is left alone.
    pub account_enabled: Option<bool>,
    pub business_phones: Vec<String>,
    pub mobile_phone: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
}

impl UpstreamUser {
    /// Every normalized address the user answers to: mail, UPN and `smtp:` proxies.
    pub fn emails(&self) -> BTreeSet<String> {
        let proxies = self.proxy_addresses.iter().filter_map(|p| {
            let (scheme, address) = p.split_once(':')?;
            scheme.eq_ignore_ascii_case("smtp").then_some(address)
        });
        self.mail
            .as_deref()
            .into_iter()
            .chain(self.user_principal_name.as_deref())
            .chain(proxies)
            .filter_map(normalize_email)
            .collect()
    }

    /// The name a contact gets: the display name, else given name and surname, else the
    /// UPN. `None` when the user has none of them.
    pub fn name(&self) -> Option<String> {
        let given_and_surname = || {
            let parts: Vec<&str> = [&self.given_name, &self.surname]
                .into_iter()
                .filter_map(|p| non_blank(p.as_deref()))
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        };
        non_blank(self.display_name.as_deref())
            .map(str::to_owned)
            .or_else(given_and_surname)
            .or_else(|| non_blank(self.user_principal_name.as_deref()).map(str::to_owned))
    }

    /// The details a new contact gets: every field, the mail (else the UPN) as its email.
    pub fn details(&self) -> Option<ContactDetails> {
        let email = [&self.mail, &self.user_principal_name]
            .into_iter()
            .find_map(|a| a.as_deref().and_then(normalize_email));
        Some(ContactDetails {
            name: self.name()?,
            email,
            phone: self
                .business_phones
                .iter()
                .find_map(|p| non_blank(Some(p)))
                .map(str::to_owned),
            mobile: owned_non_blank(&self.mobile_phone),
            job_title: owned_non_blank(&self.job_title),
            department: owned_non_blank(&self.department),
        })
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn owned_non_blank(s: &Option<String>) -> Option<String> {
    non_blank(s.as_deref()).map(str::to_owned)
}

/// One entry of a users delta round, or of a full read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamChange {
    /// Created, changed or restored (boxed: a removal is a fraction of its size).
    Present(Box<UpstreamUser>),
    /// `@removed`, soft or permanent: either way its contacts become inactive.
    Removed { object_id: Uuid },
}

/// A contact of the client's book as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookContact {
    pub contact_id: ContactId,
    pub details: ContactDetails,
    pub status: ContactStatus,
    pub entra_user: Option<EntraUserRef>,
}

impl BookContact {
    /// The book entry of a folded contact.
    pub fn of(contact_id: ContactId, contact: &Contact) -> Self {
        Self {
            contact_id,
            details: contact.details.clone(),
            status: contact.status,
            entra_user: contact.entra_user,
        }
    }
}

/// Which tenant and client a sync decides for, the field sync config it applies
/// ([`ContactSyncSettings::effective_field_sync`](crate::ContactSyncSettings::effective_field_sync))
/// and the users a person chose to ignore.
#[derive(Debug, Clone, Copy)]
pub struct SyncScope<'a> {
    pub workspace: &'a WorkspaceId,
    pub client_id: ClientId,
    pub entra_tenant_id: EntraTenantId,
    pub field_sync: &'a FieldSyncConfig,
    /// Users whose reconciliation item was resolved as
    /// [`Ignored`](crate::Resolution::Ignored): nothing is linked, created or queued for them.
    pub ignored: &'a BTreeSet<EntraUserRef>,
}

/// What the sync does about one upstream change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction {
    Create {
        contact_id: ContactId,
        details: ContactDetails,
        entra_user: EntraUserRef,
    },
    Link {
        contact_id: ContactId,
        entra_user: EntraUserRef,
    },
    UpdateFields {
        contact_id: ContactId,
        changes: Vec<(ContactField, Option<String>)>,
    },
    MarkInactive {
        contact_id: ContactId,
        reason: InactiveReason,
    },
    Reactivate {
        contact_id: ContactId,
    },
    /// Several contacts are plausible: a person decides.
    Queue {
        item_id: ReconciliationItemId,
        entra_user: EntraUserRef,
        upstream: UpstreamSummary,
        candidates: Vec<ContactId>,
    },
}

/// The command an action becomes, with the id of the aggregate it goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncCommand {
    Contact {
        contact_id: ContactId,
        command: ContactCommand,
    },
    Reconciliation {
        item_id: ReconciliationItemId,
        command: ReconciliationCommand,
    },
}

impl SyncAction {
    /// The command that carries out the action; `run_id` is recorded on queued items.
    pub fn into_command(self, scope: &SyncScope<'_>, run_id: Option<RunId>) -> SyncCommand {
        let contact = |contact_id, command| SyncCommand::Contact {
            contact_id,
            command,
        };
        match self {
            SyncAction::Create {
                contact_id,
                details,
                entra_user,
            } => contact(
                contact_id,
                ContactCommand::Create {
                    workspace: scope.workspace.clone(),
                    client_id: scope.client_id,
                    details,
                    entra_user: Some(entra_user),
                },
            ),
            SyncAction::Link {
                contact_id,
                entra_user,
            } => contact(contact_id, ContactCommand::Link { entra_user }),
            SyncAction::UpdateFields {
                contact_id,
                changes,
            } => contact(contact_id, ContactCommand::UpdateFields { changes }),
            SyncAction::MarkInactive { contact_id, reason } => {
                contact(contact_id, ContactCommand::MarkInactive { reason })
            }
            SyncAction::Reactivate { contact_id } => {
                contact(contact_id, ContactCommand::Reactivate)
            }
            SyncAction::Queue {
                item_id,
                entra_user,
                upstream,
                candidates,
            } => SyncCommand::Reconciliation {
                item_id,
                command: ReconciliationCommand::Queue {
                    workspace: scope.workspace.clone(),
                    client_id: scope.client_id,
                    entra_user,
                    upstream,
                    candidates,
                    run_id,
                },
            },
        }
    }
}

/// Counts actions into a tenant's sync result.
pub fn tally<'a>(actions: impl IntoIterator<Item = &'a SyncAction>) -> TenantSyncResult {
    let mut result = TenantSyncResult::default();
    for action in actions {
        let count = match action {
            SyncAction::Create { .. } => &mut result.created,
            SyncAction::Link { .. } => &mut result.linked,
            SyncAction::UpdateFields { .. } => &mut result.updated,
            SyncAction::MarkInactive { .. } => &mut result.inactivated,
            SyncAction::Reactivate { .. } => &mut result.reactivated,
            SyncAction::Queue { .. } => &mut result.queued,
        };
        *count += 1;
    }
    result
}

/// Names compared the way people read them: case and spacing do not matter.
fn same_name(a: &str, b: &str) -> bool {
    let words = |s: &str| {
        s.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    };
    let a = words(a);
    !a.is_empty() && a == words(b)
}

/// The enabled fields whose upstream value differs from the contact's. An empty upstream
/// value never clears a local one.
fn field_changes(
    contact: &BookContact,
    upstream: &ContactDetails,
    config: &FieldSyncConfig,
) -> Option<SyncAction> {
    let changes: Vec<(ContactField, Option<String>)> = ContactField::ALL
        .into_iter()
        .filter(|f| config.allows(*f))
        .filter_map(|f| {
            let new = upstream.get(f)?;
            (contact.details.get(f) != Some(new)).then(|| (f, Some(new.to_owned())))
        })
        .collect();
    (!changes.is_empty()).then_some(SyncAction::UpdateFields {
        contact_id: contact.contact_id,
        changes,
    })
}

/// What a contact linked to (or about to be linked to) `user` needs: field updates and a
/// status that follows `accountEnabled`.
fn follow(contact: &BookContact, user: &UpstreamUser, config: &FieldSyncConfig) -> Vec<SyncAction> {
    let mut actions: Vec<SyncAction> = user
        .details()
        .and_then(|upstream| field_changes(contact, &upstream, config))
        .into_iter()
        .collect();
    let contact_id = contact.contact_id;
    match (user.account_enabled, contact.status) {
        (Some(false), ContactStatus::Active) => actions.push(SyncAction::MarkInactive {
            contact_id,
            reason: InactiveReason::Disabled,
        }),
        (Some(true), ContactStatus::Inactive) => {
            actions.push(SyncAction::Reactivate { contact_id })
        }
        _ => {}
    }
    actions
}

/// Decides what the sync does about one upstream change for one client's contact book.
/// See the module documentation for the rules.
pub fn decide(
    change: &UpstreamChange,
    book: &[BookContact],
    scope: &SyncScope<'_>,
) -> Vec<SyncAction> {
    let user_ref = |object_id| EntraUserRef {
        entra_tenant_id: scope.entra_tenant_id,
        object_id,
    };
    let user = match change {
        UpstreamChange::Removed { object_id } => {
            let removed = user_ref(*object_id);
            return book
                .iter()
                .filter(|c| c.entra_user == Some(removed) && c.status == ContactStatus::Active)
                .map(|c| SyncAction::MarkInactive {
                    contact_id: c.contact_id,
                    reason: InactiveReason::Deleted,
                })
                .collect();
        }
        UpstreamChange::Present(user) => user,
    };
    let entra_user = user_ref(user.object_id);
    let linked: Vec<&BookContact> = book
        .iter()
        .filter(|c| c.entra_user == Some(entra_user))
        .collect();
    if !linked.is_empty() {
        return linked
            .into_iter()
            .flat_map(|c| follow(c, user, scope.field_sync))
            .collect();
    }
    // Nothing is created or linked for a disabled account (there is nobody to reach), nor for
    // a user a person chose to ignore.
    if user.account_enabled == Some(false) || scope.ignored.contains(&entra_user) {
        return Vec::new();
    }
    let Some(details) = user.details() else {
        return Vec::new();
    };
    let unlinked = || book.iter().filter(|c| c.entra_user.is_none());
    let emails = user.emails();
    let by_email: Vec<&BookContact> = unlinked()
        .filter(|c| c.details.email.as_ref().is_some_and(|e| emails.contains(e)))
        .collect();
    let plausible = match by_email.as_slice() {
        [one] => {
            let mut actions = vec![SyncAction::Link {
                contact_id: one.contact_id,
                entra_user,
            }];
            actions.extend(follow(one, user, scope.field_sync));
            return actions;
        }
        [] => unlinked()
            .filter(|c| same_name(&c.details.name, &details.name))
            .collect(),
        several => several.to_vec(),
    };
    if plausible.is_empty() {
        return vec![SyncAction::Create {
            contact_id: ContactId::for_entra_user(scope.workspace, scope.client_id, &entra_user),
            details,
            entra_user,
        }];
    }
    let mut candidates: Vec<ContactId> = plausible.iter().map(|c| c.contact_id).collect();
    candidates.sort();
    vec![SyncAction::Queue {
        item_id: ReconciliationItemId::for_entra_user(scope.workspace, &entra_user),
        entra_user,
        upstream: UpstreamSummary {
            display_name: Some(details.name),
            emails: emails.into_iter().collect(),
        },
        candidates,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{guid, workspace};

    const CLIENT: ClientId = ClientId(Uuid::from_u128(42));
    static NO_ONE: BTreeSet<EntraUserRef> = BTreeSet::new();

    fn adele() -> UpstreamUser {
        UpstreamUser {
            object_id: Uuid::from_u128(1),
            display_name: Some("Adele Vance".into()),
            given_name: Some("Adele".into()),
            surname: Some("Vance".into()),
            mail: Some("Adele.Vance@contoso.com".into()),
            user_principal_name: Some("adele@contoso.onmicrosoft.com".into()),
            proxy_addresses: vec![
                "SMTP:Adele.Vance@contoso.com".into(),
                "smtp:av@contoso.net".into(),
                "x500:/o=ExchangeLabs/cn=adele@legacy.example".into(),
            ],
            account_enabled: Some(true),
            business_phones: vec!["+1 425 555 0109".into()],
            mobile_phone: None,
            job_title: Some("Engineer".into()),
            department: Some("R&D".into()),
        }
    }
    fn adele_ref() -> EntraUserRef {
        EntraUserRef {
            entra_tenant_id: guid(),
            object_id: Uuid::from_u128(1),
        }
    }
    fn contact(n: u128, name: &str, email: Option<&str>) -> BookContact {
        BookContact {
            contact_id: ContactId(Uuid::from_u128(n)),
            details: ContactDetails {
                name: name.into(),
                email: email.map(str::to_owned),
                job_title: Some("Consultant".into()),
                ..ContactDetails::default()
            },
            status: ContactStatus::Active,
            entra_user: None,
        }
    }
    fn linked(mut c: BookContact) -> BookContact {
        c.entra_user = Some(adele_ref());
        c
    }
    fn id(n: u128) -> ContactId {
        ContactId(Uuid::from_u128(n))
    }
    /// The scope of every test: client 42 of the test tenant.
    fn scope<'a>(workspace: &'a WorkspaceId, config: &'a FieldSyncConfig) -> SyncScope<'a> {
        SyncScope {
            workspace,
            client_id: CLIENT,
            entra_tenant_id: guid(),
            field_sync: config,
            ignored: &NO_ONE,
        }
    }
    fn run(user: UpstreamUser, book: &[BookContact], config: &FieldSyncConfig) -> Vec<SyncAction> {
        let workspace = workspace();
        let change = UpstreamChange::Present(Box::new(user));
        decide(&change, book, &scope(&workspace, config))
    }
    fn no_field_sync() -> FieldSyncConfig {
        FieldSyncConfig::default()
    }

    #[test]
    fn a_user_whose_mail_matches_one_contact_is_linked_to_it() {
        let book = [contact(7, "A. Vance", Some("adele.vance@contoso.com"))];
        assert_eq!(
            run(adele(), &book, &no_field_sync()),
            [SyncAction::Link {
                contact_id: id(7),
                entra_user: adele_ref()
            }]
        );
    }

    #[test]
    fn the_user_principal_name_matches_too() {
        let book = [contact(7, "x", Some("adele@contoso.onmicrosoft.com"))];
        assert!(matches!(
            run(adele(), &book, &no_field_sync())[..],
            [SyncAction::Link { .. }]
        ));
    }

    #[test]
    fn an_smtp_proxy_address_matches_too_but_an_x500_one_does_not() {
        let book = [contact(7, "x", Some("av@contoso.net"))];
        assert!(matches!(
            run(adele(), &book, &no_field_sync())[..],
            [SyncAction::Link { .. }]
        ));
        assert!(!adele().emails().iter().any(|e| e.contains("legacy")));
    }

    #[test]
    fn emails_are_matched_trimmed_and_lowercased() {
        let mut user = adele();
        user.mail = Some("  ADELE.VANCE@Contoso.com ".into());
        user.proxy_addresses.clear();
        let book = [contact(7, "x", Some("adele.vance@contoso.com"))];
        assert!(matches!(
            run(user, &book, &no_field_sync())[..],
            [SyncAction::Link { .. }]
        ));
    }

    #[test]
    fn a_user_nothing_matches_creates_a_linked_contact_with_a_deterministic_id() {
        let book = [contact(7, "Megan Bowen", Some("megan@contoso.com"))];
        let actions = run(adele(), &book, &no_field_sync());
        let expected_id = ContactId::for_entra_user(&workspace(), CLIENT, &adele_ref());
        assert_eq!(
            actions,
            [SyncAction::Create {
                contact_id: expected_id,
                details: ContactDetails {
                    name: "Adele Vance".into(),
                    email: Some("adele.vance@contoso.com".into()),
                    phone: Some("+1 425 555 0109".into()),
                    mobile: None,
                    job_title: Some("Engineer".into()),
                    department: Some("R&D".into()),
                },
                entra_user: adele_ref(),
            }]
        );
        // The same user decided again (a sync redone after a crash) gets the same id.
        assert_eq!(run(adele(), &book, &no_field_sync()), actions);
    }

    #[test]
    fn several_contacts_with_the_users_addresses_are_queued_and_none_is_linked() {
        let book = [
            contact(8, "Adele V", Some("av@contoso.net")),
            contact(7, "Adele Vance", Some("adele.vance@contoso.com")),
        ];
        let actions = run(adele(), &book, &no_field_sync());
        assert_eq!(
            actions,
            [SyncAction::Queue {
                item_id: ReconciliationItemId::for_entra_user(&workspace(), &adele_ref()),
                entra_user: adele_ref(),
                upstream: UpstreamSummary {
                    display_name: Some("Adele Vance".into()),
                    emails: vec![
                        "adele.vance@contoso.com".into(),
                        "adele@contoso.onmicrosoft.com".into(),
                        "av@contoso.net".into()
                    ],
                },
                candidates: vec![id(7), id(8)],
            }]
        );
    }

    #[test]
    fn a_contact_with_only_the_same_name_is_never_linked_but_queued() {
        let book = [contact(7, "adele  VANCE", Some("adele@oldjob.example"))];
        let actions = run(adele(), &book, &no_field_sync());
        assert!(
            matches!(&actions[..], [SyncAction::Queue { candidates, .. }] if candidates == &[id(7)]),
            "{actions:?}"
        );
    }

    #[test]
    fn contacts_sharing_only_a_surname_are_not_plausible_and_a_contact_is_created() {
        let book = [
            contact(7, "Diego Vance", Some("diego@contoso.com")),
            contact(8, "Lee Vance", None),
        ];
        assert!(matches!(
            run(adele(), &book, &no_field_sync())[..],
            [SyncAction::Create { .. }]
        ));
    }

    #[test]
    fn a_contact_linked_to_another_entra_user_is_not_a_match() {
        let mut taken = contact(7, "x", Some("adele.vance@contoso.com"));
        taken.entra_user = Some(EntraUserRef {
            entra_tenant_id: guid(),
            object_id: Uuid::from_u128(99),
        });
        assert!(matches!(
            run(adele(), &[taken], &no_field_sync())[..],
            [SyncAction::Create { .. }]
        ));
    }

    #[test]
    fn a_user_whose_reconciliation_was_ignored_is_left_alone() {
        let (workspace, config) = (workspace(), no_field_sync());
        let ignored = BTreeSet::from([adele_ref()]);
        let scope = SyncScope {
            ignored: &ignored,
            ..scope(&workspace, &config)
        };
        let book = [
            contact(7, "Adele Vance", Some("adele.vance@contoso.com")),
            contact(8, "Adele Vance", Some("av@contoso.net")),
        ];
        let change = UpstreamChange::Present(Box::new(adele()));
        assert_eq!(decide(&change, &book, &scope), []);
        assert_eq!(decide(&change, &[], &scope), []);
    }

    #[test]
    fn a_linked_contact_with_no_upstream_change_needs_nothing() {
        let mut same = linked(contact(7, "Adele Vance", Some("adele.vance@contoso.com")));
        same.details = adele().details().unwrap();
        let all_fields = FieldSyncConfig::allowing(ContactField::ALL);
        assert_eq!(run(adele(), &[same], &all_fields), []);
    }

    #[test]
    fn a_field_overwrites_a_local_value_only_when_enabled() {
        let book = [linked(contact(
            7,
            "Adele V.",
            Some("adele.vance@contoso.com"),
        ))];
        assert_eq!(run(adele(), &book, &no_field_sync()), []);
        let titles = FieldSyncConfig::allowing([ContactField::JobTitle]);
        assert_eq!(
            run(adele(), &book, &titles),
            [SyncAction::UpdateFields {
                contact_id: id(7),
                changes: vec![(ContactField::JobTitle, Some("Engineer".into()))],
            }]
        );
    }

    #[test]
    fn an_empty_upstream_value_never_clears_a_local_one() {
        let mut user = adele();
        user.job_title = None;
        user.display_name = Some("Adele Vance".into());
        let book = [linked(contact(7, "Adele Vance", None))];
        let all_fields = FieldSyncConfig::allowing(ContactField::ALL);
        let actions = run(user, &book, &all_fields);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, SyncAction::UpdateFields { changes, .. }
                if changes.iter().any(|(f, _)| *f == ContactField::JobTitle))),
            "{actions:?}"
        );
    }

    #[test]
    fn a_match_by_email_is_linked_and_its_enabled_fields_updated_together() {
        let book = [contact(7, "A. Vance", Some("adele.vance@contoso.com"))];
        let names = FieldSyncConfig::allowing([ContactField::Name]);
        assert_eq!(
            run(adele(), &book, &names),
            [
                SyncAction::Link {
                    contact_id: id(7),
                    entra_user: adele_ref()
                },
                SyncAction::UpdateFields {
                    contact_id: id(7),
                    changes: vec![(ContactField::Name, Some("Adele Vance".into()))],
                },
            ]
        );
    }

    #[test]
    fn a_disabled_user_marks_its_linked_contact_inactive() {
        let mut user = adele();
        user.account_enabled = Some(false);
        let book = [linked(contact(7, "Adele Vance", None))];
        assert_eq!(
            run(user, &book, &no_field_sync()),
            [SyncAction::MarkInactive {
                contact_id: id(7),
                reason: InactiveReason::Disabled
            }]
        );
    }

    #[test]
    fn a_deleted_user_marks_its_linked_contact_inactive_and_deletes_nothing() {
        let (workspace, config) = (workspace(), no_field_sync());
        let scope = scope(&workspace, &config);
        let book = [
            linked(contact(7, "Adele Vance", None)),
            contact(8, "Someone Else", None),
        ];
        let removed = UpstreamChange::Removed {
            object_id: Uuid::from_u128(1),
        };
        assert_eq!(
            decide(&removed, &book, &scope),
            [SyncAction::MarkInactive {
                contact_id: id(7),
                reason: InactiveReason::Deleted
            }]
        );
        let mut gone = linked(contact(7, "Adele Vance", None));
        gone.status = ContactStatus::Inactive;
        assert_eq!(decide(&removed, &[gone], &scope), []);
    }

    #[test]
    fn a_disabled_user_without_a_linked_contact_creates_or_links_nothing() {
        let mut user = adele();
        user.account_enabled = Some(false);
        let book = [contact(7, "x", Some("adele.vance@contoso.com"))];
        assert_eq!(run(user.clone(), &book, &no_field_sync()), []);
        assert_eq!(run(user, &[], &no_field_sync()), []);
    }

    #[test]
    fn a_user_enabled_again_reactivates_its_contact() {
        let mut inactive = linked(contact(7, "Adele Vance", None));
        inactive.status = ContactStatus::Inactive;
        assert_eq!(
            run(adele(), &[inactive.clone()], &no_field_sync()),
            [SyncAction::Reactivate { contact_id: id(7) }]
        );
        let mut unknown = adele();
        unknown.account_enabled = None;
        assert_eq!(run(unknown, &[inactive], &no_field_sync()), []);
    }

    #[test]
    fn syncing_the_same_users_again_decides_nothing() {
        let config = FieldSyncConfig::allowing(ContactField::ALL);
        let first = run(adele(), &[], &config);
        let [SyncAction::Create {
            contact_id,
            details,
            entra_user,
        }] = &first[..]
        else {
            panic!("{first:?}")
        };
        let created = BookContact {
            contact_id: *contact_id,
            details: details.clone(),
            status: ContactStatus::Active,
            entra_user: Some(*entra_user),
        };
        assert_eq!(run(adele(), &[created], &config), []);
    }

    #[test]
    fn a_user_without_a_display_name_is_named_from_its_parts_or_its_upn() {
        let mut user = adele();
        user.display_name = Some(" ".into());
        assert_eq!(user.name().as_deref(), Some("Adele Vance"));
        user.given_name = None;
        user.surname = None;
        assert_eq!(
            user.name().as_deref(),
            Some("adele@contoso.onmicrosoft.com")
        );
    }

    #[test]
    fn actions_become_commands_and_are_counted() {
        let (workspace, config) = (workspace(), no_field_sync());
        let scope = scope(&workspace, &config);
        let actions = [
            SyncAction::Link {
                contact_id: id(7),
                entra_user: adele_ref(),
            },
            SyncAction::MarkInactive {
                contact_id: id(7),
                reason: InactiveReason::Disabled,
            },
            SyncAction::MarkInactive {
                contact_id: id(8),
                reason: InactiveReason::Deleted,
            },
        ];
        let result = tally(&actions);
        assert_eq!(
            (result.linked, result.inactivated, result.created),
            (1, 2, 0)
        );
        assert_eq!(
            actions[0].clone().into_command(&scope, None),
            SyncCommand::Contact {
                contact_id: id(7),
                command: ContactCommand::Link {
                    entra_user: adele_ref()
                }
            }
        );
    }
}
