//! The TenantMapping aggregate (R5.2, R5.3): a managed tenant the partner connection
//! discovered, the client it is proposed for or confirmed to, and its contact sync state.
//! Aggregate id: the [`TenantKey`] string, `{workspace}:{entra guid}` (as the Tenant's, in
//! its own aggregate type).
//!
//! [`propose`] is the preview: a pure function of the discovered tenants and the clients,
//! writing nothing. Only [`MappingCommand::Confirm`] maps a tenant to a client.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::client::ClientStatus;
use crate::values::{
    clean_domain, clean_name, ClientId, EntraTenantId, RunId, TenantKey, WorkspaceId, MAX_NAME,
};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// Which partner connection kind found a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoverySource {
    /// Graph partner customers (`delegatedAdminCustomers`, or `contracts`).
    Direct,
    /// CIPP's tenant list.
    Cipp,
}

/// Where a mapping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingState {
    /// A verified domain of the tenant is a domain of exactly one client.
    AutoMatched,
    /// Only the names are alike, or several clients are candidates.
    NeedsReview,
    /// Nothing matched.
    #[default]
    Skipped,
    /// A person mapped the tenant to a client.
    Confirmed,
}

impl MappingState {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MappingState::AutoMatched => "auto_matched",
            MappingState::NeedsReview => "needs_review",
            MappingState::Skipped => "skipped",
            MappingState::Confirmed => "confirmed",
        }
    }
}

/// Why a proposal says what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchReason {
    /// One client has one of the tenant's domains.
    DomainMatch,
    /// Several clients have one of the tenant's domains.
    SeveralDomainMatches,
    /// No domain matched; names are alike.
    NameSimilarity,
    NoMatch,
}

impl MatchReason {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchReason::DomainMatch => "domain_match",
            MatchReason::SeveralDomainMatches => "several_domain_matches",
            MatchReason::NameSimilarity => "name_similarity",
            MatchReason::NoMatch => "no_match",
        }
    }
}

display_as_str!(MappingState, MatchReason);
spelled_values!(MappingState {
    AutoMatched,
    NeedsReview,
    Skipped,
    Confirmed
});
spelled_values!(MatchReason {
    DomainMatch,
    SeveralDomainMatches,
    NameSimilarity,
    NoMatch
});

/// A tenant as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredTenant {
    pub entra_tenant_id: EntraTenantId,
    pub display_name: String,
    /// Lowercase.
    pub default_domain: String,
    /// Other verified domains, when the source lists them (lowercase).
    #[serde(default)]
    pub verified_domains: Vec<String>,
}

impl DiscoveredTenant {
    fn domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.default_domain.as_str())
            .chain(self.verified_domains.iter().map(String::as_str))
    }
}

/// What [`propose`] needs to know of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    pub client_id: ClientId,
    pub name: String,
    /// Normalized, as [`Client`](crate::Client) keeps them.
    pub domains: Vec<String>,
    pub status: ClientStatus,
}

/// The proposed mapping of one discovered tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub entra_tenant_id: EntraTenantId,
    /// `AutoMatched`, `NeedsReview` or `Skipped`; never `Confirmed`.
    pub state: MappingState,
    /// The client an auto match proposes.
    pub client_id: Option<ClientId>,
    /// Every client considered plausible, sorted.
    pub candidates: Vec<ClientId>,
    pub reason: MatchReason,
}

/// Words of a company name that do not tell companies apart.
const LEGAL_SUFFIXES: &[&str] = &[
    "inc",
    "llc",
    "ltd",
    "limited",
    "gmbh",
    "corp",
    "corporation",
    "co",
    "company",
    "plc",
    "ag",
    "bv",
    "sa",
    "pty",
    "group",
];

/// A name reduced to what identifies the company: lowercase letters and digits of its
/// words, legal suffixes dropped, joined without spaces ("Contoso, Ltd." -> "contoso").
fn name_key(name: &str) -> String {
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !LEGAL_SUFFIXES.contains(w))
        .collect()
}

/// Whether two names plausibly name the same company: equal keys, or one key inside the
/// other when the shorter has at least 4 characters (short keys match too much).
fn names_alike(a: &str, b: &str) -> bool {
    let (a, b) = (name_key(a), name_key(b));
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    !short.is_empty() && (short == long || (short.len() >= 4 && long.contains(short.as_str())))
}

/// The first label of a domain (`contoso` of `contoso.onmicrosoft.com`): tenants' names
/// are often only visible there.
fn domain_stem(domain: &str) -> &str {
    domain.split('.').next().unwrap_or_default()
}

/// The preview (R5.2): proposes a mapping for each discovered tenant against the active
/// clients. Pure: it writes nothing. `auto_matched` when one of the tenant's domains is a
/// domain of exactly one client; `needs_review` when several clients have its domains, or
/// when no domain matches but names are alike (tenant name or domain stem against client
/// name); `skipped` otherwise. Name similarity alone never auto-matches.
pub fn propose(tenants: &[DiscoveredTenant], clients: &[ClientSummary]) -> Vec<Proposal> {
    let active: Vec<&ClientSummary> = clients
        .iter()
        .filter(|c| c.status == ClientStatus::Active)
        .collect();
    tenants
        .iter()
        .map(|tenant| {
            let tenant_domains: BTreeSet<&str> = tenant.domains().collect();
            let by_domain: BTreeSet<ClientId> = active
                .iter()
                .filter(|c| {
                    c.domains
                        .iter()
                        .any(|d| tenant_domains.contains(d.as_str()))
                })
                .map(|c| c.client_id)
                .collect();
            let by_name = || -> BTreeSet<ClientId> {
                active
                    .iter()
                    .filter(|c| {
                        names_alike(&tenant.display_name, &c.name)
                            || names_alike(domain_stem(&tenant.default_domain), &c.name)
                    })
                    .map(|c| c.client_id)
                    .collect()
            };
            let (state, reason, candidates) = match by_domain.len() {
                1 => (
                    MappingState::AutoMatched,
                    MatchReason::DomainMatch,
                    by_domain,
                ),
                0 => match by_name() {
                    alike if alike.is_empty() => {
                        (MappingState::Skipped, MatchReason::NoMatch, alike)
                    }
                    alike => (
                        MappingState::NeedsReview,
                        MatchReason::NameSimilarity,
                        alike,
                    ),
                },
                _ => (
                    MappingState::NeedsReview,
                    MatchReason::SeveralDomainMatches,
                    by_domain,
                ),
            };
            Proposal {
                entra_tenant_id: tenant.entra_tenant_id,
                state,
                client_id: (state == MappingState::AutoMatched)
                    .then(|| candidates.first().copied())
                    .flatten(),
                candidates: candidates.into_iter().collect(),
                reason,
            }
        })
        .collect()
}

/// What one sync run did for one mapped tenant (R5.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSyncResult {
    pub created: u32,
    pub linked: u32,
    pub updated: u32,
    pub inactivated: u32,
    pub reactivated: u32,
    pub queued: u32,
    /// Set when the tenant's sync failed; the counts are what was done before.
    pub failed: Option<ReasonCode>,
}

/// The last sync recorded for a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub run_id: RunId,
    pub result: TenantSyncResult,
    pub at: DateTime<Utc>,
}

/// What can be asked of a tenant mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum MappingCommand {
    /// Records a tenant discovery found; found again with the same name and domains writes
    /// nothing, with new ones records them.
    Discover {
        workspace: WorkspaceId,
        tenant: DiscoveredTenant,
        source: DiscoverySource,
    },
    /// Records discovery's proposal. A confirmed mapping keeps its client; the same
    /// proposal again writes nothing.
    RecordProposal { proposal: Proposal },
    /// Maps the tenant to `client_id` (one row of a confirm of one or many). Confirmed to
    /// that client already: no events. `actor` is who asked (the bus metadata's actor).
    Confirm { client_id: ClientId, actor: String },
    /// Records one sync run's result and, when it read to the end, the delta link the next
    /// run starts from. A run id already recorded writes nothing (a retried step).
    RecordSync {
        run_id: RunId,
        result: TenantSyncResult,
        delta_link: Option<String>,
    },
    /// Forgets the delta link (Graph said it expired): the next sync reads everything.
    ResetDeltaLink,
}

impl Authorize for MappingCommand {
    fn permission(&self) -> Permission {
        match self {
            MappingCommand::Confirm { .. } => Permission::ManageContactSync,
            MappingCommand::Discover { .. }
            | MappingCommand::RecordProposal { .. }
            | MappingCommand::RecordSync { .. }
            | MappingCommand::ResetDeltaLink => Permission::RecordProgress,
        }
    }
}

/// What happened to a tenant mapping. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MappingEvent {
    TenantDiscovered {
        workspace: WorkspaceId,
        tenant: DiscoveredTenant,
        source: DiscoverySource,
        discovered_at: DateTime<Utc>,
    },
    MappingProposed {
        proposal: Proposal,
        at: DateTime<Utc>,
    },
    MappingConfirmed {
        client_id: ClientId,
        confirmed_by: String,
        confirmed_at: DateTime<Utc>,
    },
    /// `delta_link` is Graph's opaque continuation (no credential); `None` keeps the
    /// previous one (a failed or partial read).
    ContactSyncRecorded {
        run_id: RunId,
        result: TenantSyncResult,
        delta_link: Option<String>,
        at: DateTime<Utc>,
    },
    DeltaLinkReset {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MappingEvent {
    fn event_type(&self) -> String {
        match self {
            MappingEvent::TenantDiscovered { .. } => "TenantDiscovered",
            MappingEvent::MappingProposed { .. } => "MappingProposed",
            MappingEvent::MappingConfirmed { .. } => "MappingConfirmed",
            MappingEvent::ContactSyncRecorded { .. } => "ContactSyncRecorded",
            MappingEvent::DeltaLinkReset { .. } => "DeltaLinkReset",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a mapping command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the tenant was not discovered")]
    NotDiscovered,
    #[error("the mapping is not confirmed")]
    NotConfirmed,
    #[error("the mapping belongs to another workspace or tenant")]
    KeyMismatch,
    #[error("the tenant name must be 1-200 characters and its default domain a domain name")]
    InvalidTenant,
    #[error("the actor must be 1-200 characters")]
    InvalidActor,
    #[error("a proposal cannot confirm a mapping")]
    InvalidProposal,
}

impl DomainError for MappingError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            MappingError::NotDiscovered => ReasonCode::NotFound,
            MappingError::NotConfirmed => ReasonCode::InvalidTransition,
            MappingError::KeyMismatch
            | MappingError::InvalidTenant
            | MappingError::InvalidActor
            | MappingError::InvalidProposal => ReasonCode::ValidationFailed,
        }
    }
}

/// A tenant mapping, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TenantMapping {
    pub workspace: Option<WorkspaceId>,
    pub tenant: Option<DiscoveredTenant>,
    pub source: Option<DiscoverySource>,
    pub state: MappingState,
    /// The latest proposal (kept after a confirm, for the record).
    pub proposal: Option<Proposal>,
    pub confirmed_client_id: Option<ClientId>,
    pub confirmed_by: Option<String>,
    /// Where the next users delta round starts; `None`: read everything.
    pub delta_link: Option<String>,
    pub last_sync: Option<SyncRecord>,
    /// Every run whose result is recorded, so a retried step writes nothing.
    pub recorded_runs: BTreeSet<RunId>,
}

impl TenantMapping {
    /// The aggregate id of the mapping of `entra_tenant_id` in `workspace`.
    pub fn key(workspace: &WorkspaceId, entra_tenant_id: EntraTenantId) -> String {
        TenantKey::new(workspace.clone(), entra_tenant_id).to_string()
    }

    fn require_discovered(&self) -> Result<&DiscoveredTenant, MappingError> {
        self.tenant.as_ref().ok_or(MappingError::NotDiscovered)
    }
}

fn clean_tenant(tenant: DiscoveredTenant) -> Result<DiscoveredTenant, MappingError> {
    let domain = |d: &str| clean_domain(d).ok_or(MappingError::InvalidTenant);
    let mut verified_domains = tenant
        .verified_domains
        .iter()
        .map(|d| domain(d))
        .collect::<Result<Vec<_>, _>>()?;
    verified_domains.sort();
    verified_domains.dedup();
    Ok(DiscoveredTenant {
        entra_tenant_id: tenant.entra_tenant_id,
        display_name: clean_name(&tenant.display_name, MAX_NAME)
            .ok_or(MappingError::InvalidTenant)?,
        default_domain: domain(&tenant.default_domain)?,
        verified_domains,
    })
}

impl Aggregate for TenantMapping {
    const TYPE: &'static str = "tenant_mapping";
    type Command = MappingCommand;
    type Event = MappingEvent;
    type Error = MappingError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: MappingCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), MappingError> {
        let now = services.clock.now();
        let event = match command {
            MappingCommand::Discover {
                workspace,
                tenant,
                source,
            } => {
                let tenant = clean_tenant(tenant)?;
                if let (Some(w), Some(known)) = (&self.workspace, &self.tenant) {
                    if *w != workspace || known.entra_tenant_id != tenant.entra_tenant_id {
                        return Err(MappingError::KeyMismatch);
                    }
                }
                let unchanged =
                    self.tenant.as_ref() == Some(&tenant) && self.source == Some(source);
                (!unchanged).then_some(MappingEvent::TenantDiscovered {
                    workspace,
                    tenant,
                    source,
                    discovered_at: now,
                })
            }
            MappingCommand::RecordProposal { mut proposal } => {
                let tenant = self.require_discovered()?;
                if proposal.entra_tenant_id != tenant.entra_tenant_id {
                    return Err(MappingError::KeyMismatch);
                }
                if proposal.state == MappingState::Confirmed {
                    return Err(MappingError::InvalidProposal);
                }
                proposal.candidates.sort();
                proposal.candidates.dedup();
                let unchanged = self.state == MappingState::Confirmed
                    || self.proposal.as_ref() == Some(&proposal);
                (!unchanged).then_some(MappingEvent::MappingProposed { proposal, at: now })
            }
            MappingCommand::Confirm { client_id, actor } => {
                self.require_discovered()?;
                let actor = clean_name(&actor, MAX_NAME).ok_or(MappingError::InvalidActor)?;
                (self.confirmed_client_id != Some(client_id)).then_some(
                    MappingEvent::MappingConfirmed {
                        client_id,
                        confirmed_by: actor,
                        confirmed_at: now,
                    },
                )
            }
            MappingCommand::RecordSync {
                run_id,
                result,
                delta_link,
            } => {
                if self.confirmed_client_id.is_none() {
                    return Err(MappingError::NotConfirmed);
                }
                (!self.recorded_runs.contains(&run_id)).then_some(
                    MappingEvent::ContactSyncRecorded {
                        run_id,
                        result,
                        delta_link,
                        at: now,
                    },
                )
            }
            MappingCommand::ResetDeltaLink => {
                self.require_discovered()?;
                self.delta_link
                    .is_some()
                    .then_some(MappingEvent::DeltaLinkReset { at: now })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: MappingEvent) {
        match event {
            MappingEvent::TenantDiscovered {
                workspace,
                tenant,
                source,
                ..
            } => {
                self.workspace = Some(workspace);
                self.tenant = Some(tenant);
                self.source = Some(source);
            }
            MappingEvent::MappingProposed { proposal, .. } => {
                self.state = proposal.state;
                self.proposal = Some(proposal);
            }
            MappingEvent::MappingConfirmed {
                client_id,
                confirmed_by,
                ..
            } => {
                // Another client's contact book starts from a full read.
                if self.confirmed_client_id.is_some() {
                    self.delta_link = None;
                }
                self.state = MappingState::Confirmed;
                self.confirmed_client_id = Some(client_id);
                self.confirmed_by = Some(confirmed_by);
            }
            MappingEvent::ContactSyncRecorded {
                run_id,
                result,
                delta_link,
                at,
            } => {
                if delta_link.is_some() {
                    self.delta_link = delta_link;
                }
                self.recorded_runs.insert(run_id);
                self.last_sync = Some(SyncRecord { run_id, result, at });
            }
            MappingEvent::DeltaLinkReset { .. } => self.delta_link = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, fold, guid, now, other_guid, services, workspace,
    };
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    type F = TestFramework<TenantMapping>;

    fn client_id(n: u128) -> ClientId {
        ClientId(Uuid::from_u128(n))
    }
    fn run(n: u128) -> RunId {
        RunId(Uuid::from_u128(n))
    }
    fn client(n: u128, name: &str, domains: &[&str]) -> ClientSummary {
        ClientSummary {
            client_id: client_id(n),
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            status: ClientStatus::Active,
        }
    }
    fn tenant(name: &str, domain: &str, verified: &[&str]) -> DiscoveredTenant {
        DiscoveredTenant {
            entra_tenant_id: guid(),
            display_name: name.into(),
            default_domain: domain.into(),
            verified_domains: verified.iter().map(|d| (*d).to_owned()).collect(),
        }
    }
    fn contoso() -> DiscoveredTenant {
        tenant("Contoso", "contoso.onmicrosoft.com", &["contoso.com"])
    }
    fn one(tenant: DiscoveredTenant, clients: &[ClientSummary]) -> Proposal {
        propose(&[tenant], clients).remove(0)
    }
    fn discovered() -> MappingEvent {
        MappingEvent::TenantDiscovered {
            workspace: workspace(),
            tenant: contoso(),
            source: DiscoverySource::Direct,
            discovered_at: now(),
        }
    }
    fn confirmed(n: u128) -> MappingEvent {
        MappingEvent::MappingConfirmed {
            client_id: client_id(n),
            confirmed_by: "alice".into(),
            confirmed_at: now(),
        }
    }
    fn synced(n: u128, link: Option<&str>) -> MappingEvent {
        MappingEvent::ContactSyncRecorded {
            run_id: run(n),
            result: TenantSyncResult {
                created: 3,
                ..TenantSyncResult::default()
            },
            delta_link: link.map(str::to_owned),
            at: now(),
        }
    }
    fn record_sync(n: u128, link: Option<&str>) -> MappingCommand {
        MappingCommand::RecordSync {
            run_id: run(n),
            result: TenantSyncResult {
                created: 3,
                ..TenantSyncResult::default()
            },
            delta_link: link.map(str::to_owned),
        }
    }

    #[test]
    fn a_verified_domain_of_exactly_one_client_auto_matches() {
        let p = one(
            contoso(),
            &[
                client(1, "Contoso Ltd", &["contoso.com"]),
                client(2, "Fabrikam", &["fabrikam.com"]),
            ],
        );
        assert_eq!(p.state, MappingState::AutoMatched);
        assert_eq!(p.reason, MatchReason::DomainMatch);
        assert_eq!(p.client_id, Some(client_id(1)));
        assert_eq!(p.candidates, [client_id(1)]);
    }

    #[test]
    fn the_default_domain_matches_too() {
        let p = one(
            tenant("Contoso", "contoso.onmicrosoft.com", &[]),
            &[client(1, "Someone", &["contoso.onmicrosoft.com"])],
        );
        assert_eq!(p.state, MappingState::AutoMatched);
    }

    #[test]
    fn a_domain_shared_by_several_clients_needs_review() {
        let p = one(
            contoso(),
            &[
                client(2, "Contoso East", &["contoso.com"]),
                client(1, "Contoso West", &["contoso.com"]),
            ],
        );
        assert_eq!(p.state, MappingState::NeedsReview);
        assert_eq!(p.reason, MatchReason::SeveralDomainMatches);
        assert_eq!(p.client_id, None);
        assert_eq!(p.candidates, [client_id(1), client_id(2)]);
    }

    #[test]
    fn a_similar_name_without_a_domain_match_only_needs_review() {
        let p = one(contoso(), &[client(1, "Contoso, Inc.", &["contoso.net"])]);
        assert_eq!(p.state, MappingState::NeedsReview);
        assert_eq!(p.reason, MatchReason::NameSimilarity);
        assert_eq!(p.client_id, None);
        assert_eq!(p.candidates, [client_id(1)]);
    }

    #[test]
    fn the_domain_stem_counts_as_a_name() {
        let p = one(
            tenant("Tenant 7", "northwindtraders.onmicrosoft.com", &[]),
            &[client(1, "Northwind Traders", &[])],
        );
        assert_eq!(p.reason, MatchReason::NameSimilarity);
    }

    #[test]
    fn a_tenant_nothing_matches_is_skipped() {
        let p = one(
            contoso(),
            &[
                client(1, "Fabrikam", &["fabrikam.com"]),
                client(2, "Co", &[]),
            ],
        );
        assert_eq!(p.state, MappingState::Skipped);
        assert_eq!(p.reason, MatchReason::NoMatch);
        assert!(p.candidates.is_empty());
    }

    #[test]
    fn inactive_clients_are_not_proposed() {
        let mut gone = client(1, "Contoso", &["contoso.com"]);
        gone.status = ClientStatus::Inactive;
        assert_eq!(one(contoso(), &[gone]).state, MappingState::Skipped);
    }

    #[test]
    fn a_tenant_is_discovered_once_with_normalized_domains() {
        F::with(services())
            .given_no_previous_events()
            .when(MappingCommand::Discover {
                workspace: workspace(),
                tenant: tenant(
                    " Contoso ",
                    "Contoso.OnMicrosoft.com",
                    &["CONTOSO.com", "contoso.com"],
                ),
                source: DiscoverySource::Direct,
            })
            .then_expect_events(vec![discovered()]);
        F::with(services())
            .given(vec![discovered()])
            .when(MappingCommand::Discover {
                workspace: workspace(),
                tenant: contoso(),
                source: DiscoverySource::Direct,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_tenant_on_the_same_mapping_is_refused() {
        let mut other = contoso();
        other.entra_tenant_id = other_guid();
        F::with(services())
            .given(vec![discovered()])
            .when(MappingCommand::Discover {
                workspace: workspace(),
                tenant: other,
                source: DiscoverySource::Cipp,
            })
            .then_expect_error(MappingError::KeyMismatch);
    }

    #[test]
    fn a_proposal_is_recorded_once_and_never_overrides_a_confirm() {
        let proposal = one(contoso(), &[client(1, "Contoso", &["contoso.com"])]);
        let proposed = MappingEvent::MappingProposed {
            proposal: proposal.clone(),
            at: now(),
        };
        F::with(services())
            .given(vec![discovered()])
            .when(MappingCommand::RecordProposal {
                proposal: proposal.clone(),
            })
            .then_expect_events(vec![proposed.clone()]);
        F::with(services())
            .given(vec![discovered(), proposed.clone()])
            .when(MappingCommand::RecordProposal {
                proposal: proposal.clone(),
            })
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![discovered(), confirmed(2)])
            .when(MappingCommand::RecordProposal { proposal })
            .then_expect_events(vec![]);
        assert_eq!(
            fold::<TenantMapping>([discovered(), proposed]).state,
            MappingState::AutoMatched
        );
    }

    #[test]
    fn confirming_maps_the_tenant_with_its_actor_and_twice_writes_nothing() {
        F::with(services())
            .given(vec![discovered()])
            .when(MappingCommand::Confirm {
                client_id: client_id(1),
                actor: "alice".into(),
            })
            .then_expect_events(vec![confirmed(1)]);
        F::with(services())
            .given(vec![discovered(), confirmed(1)])
            .when(MappingCommand::Confirm {
                client_id: client_id(1),
                actor: "bob".into(),
            })
            .then_expect_events(vec![]);
        let mapping: TenantMapping = fold([discovered(), confirmed(1)]);
        assert_eq!(mapping.state, MappingState::Confirmed);
        assert_eq!(mapping.confirmed_by.as_deref(), Some("alice"));
    }

    #[test]
    fn confirming_an_undiscovered_tenant_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(MappingCommand::Confirm {
                client_id: client_id(1),
                actor: "alice".into(),
            })
            .then_expect_error(MappingError::NotDiscovered);
    }

    #[test]
    fn a_sync_result_is_recorded_once_per_run_and_keeps_the_delta_link() {
        F::with(services())
            .given(vec![discovered(), confirmed(1)])
            .when(record_sync(1, Some("https://graph/delta?$deltatoken=a")))
            .then_expect_events(vec![synced(1, Some("https://graph/delta?$deltatoken=a"))]);
        F::with(services())
            .given(vec![discovered(), confirmed(1), synced(1, Some("x"))])
            .when(record_sync(1, Some("y")))
            .then_expect_events(vec![]);
        let mapping: TenantMapping = fold([
            discovered(),
            confirmed(1),
            synced(1, Some("x")),
            synced(2, None),
        ]);
        assert_eq!(mapping.delta_link.as_deref(), Some("x"));
        assert_eq!(mapping.last_sync.map(|s| s.run_id), Some(run(2)));
    }

    #[test]
    fn syncing_an_unconfirmed_mapping_is_refused() {
        F::with(services())
            .given(vec![discovered()])
            .when(record_sync(1, None))
            .then_expect_error(MappingError::NotConfirmed);
    }

    #[test]
    fn an_expired_delta_link_is_reset_and_remapping_to_another_client_resets_it_too() {
        F::with(services())
            .given(vec![discovered(), confirmed(1), synced(1, Some("x"))])
            .when(MappingCommand::ResetDeltaLink)
            .then_expect_events(vec![MappingEvent::DeltaLinkReset { at: now() }]);
        F::with(services())
            .given(vec![discovered(), confirmed(1)])
            .when(MappingCommand::ResetDeltaLink)
            .then_expect_events(vec![]);
        let remapped: TenantMapping = fold([
            discovered(),
            confirmed(1),
            synced(1, Some("x")),
            confirmed(2),
        ]);
        assert_eq!(remapped.delta_link, None);
        assert_eq!(remapped.confirmed_client_id, Some(client_id(2)));
    }

    #[test]
    fn the_mapping_key_is_the_tenant_key() {
        assert_eq!(
            TenantMapping::key(&workspace(), guid()),
            "acme:72f988bf-86f1-41af-91ab-2d7cd011db47"
        );
    }

    #[test]
    fn only_confirming_is_a_people_command() {
        assert_eq!(
            MappingCommand::Confirm {
                client_id: client_id(1),
                actor: "a".into()
            }
            .permission(),
            Permission::ManageContactSync
        );
        assert_eq!(
            record_sync(1, None).permission(),
            Permission::RecordProgress
        );
        assert_eq!(
            MappingError::NotConfirmed.reason_code(),
            ReasonCode::InvalidTransition
        );
    }

    #[test]
    fn event_types_and_states_have_stable_spellings() {
        assert_event_types_match_payload_tags(&[
            discovered(),
            MappingEvent::MappingProposed {
                proposal: one(contoso(), &[]),
                at: now(),
            },
            confirmed(1),
            synced(1, None),
            MappingEvent::DeltaLinkReset { at: now() },
        ]);
        for state in MappingState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(MappingState::parse(state.as_str()), Some(state));
        }
        for reason in MatchReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
