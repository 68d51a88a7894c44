//! Contact sync (R5): tenant discovery through the partner connection and the durable
//! sync of Entra users into the workspace's contact books. Both run over the whole
//! workspace (module `contacts`, one at a time per workspace) and read what they need
//! through the store: the partner connection and its secret (vault), the clients, the
//! mappings and each client's contacts (listed by the stream index, so nothing waits for a
//! read model).
//!
//! The sync works tenant by tenant. A tenant's contact changes, reconciliation items and
//! its result (with the next delta link) are appended in one transaction, so a crash
//! leaves each tenant either synced by this run or not at all; a step performed again
//! skips the tenants whose result this run already recorded. A tenant that fails (Graph
//! refuses, a page cannot be read) records its failure and the others go on: the run ends
//! `partially_succeeded`.

use std::collections::{BTreeSet, HashMap, HashSet};

use app::contacts::{index_contacts, is_synced, sync_subject_client};
use cqrs_es::Aggregate;
use domain::contact_settings::ContactSyncSettings;
use domain::contact_sync::{decide, BookContact, SyncCommand, SyncScope, UpstreamChange};
use domain::partner_connection::{PartnerConnection, PartnerConnectionCommand, PartnerTarget};
use domain::reconciliation::{ReconciliationItem, Resolution};
use domain::run::{FailureSummary, OperationRun};
use domain::tenant_mapping::{
    propose, ClientSummary, DiscoveredTenant, DiscoverySource, MappingCommand, MappingState,
    TenantMapping, TenantSyncResult,
};
use domain::{Client, ClientId, Contact, ContactId, ReasonCode, Role, WorkspaceId};
use graph::models::{DeltaLink, User, UserChange};
use graph::{AppCredentials, CippCredentials, GraphApi, GraphError};
use store::index::{index_streams, indexed_streams};
use store::{CommandBus, Metadata, Staged, StagedStream, Streams, UnitOfWork};

use crate::plan::{Plan, StepDef};
use crate::workflow::{Effect, StepContext, StepFailure, Workflow};

pub use app::contacts::{DISCOVER, MODULE, SYNC};

/// The discovery's one step.
pub const DISCOVER_STEP: &str = "discover_tenants";
/// The sync's one step.
pub const SYNC_STEP: &str = "sync_contacts";

/// Tenants listed on a run's summary as failed, at most (the count is always whole).
const MAX_LISTED_FAILURES: usize = 20;
/// How often one tenant's append is tried again after losing a race with a person's edit.
const TENANT_CONFLICT_RETRIES: usize = 3;

const DISCOVER_PLAN: Plan = Plan {
    run_type: DISCOVER,
    steps: &[StepDef {
        name: DISCOVER_STEP,
        max_attempts: 3,
        fatal: true,
        calls_out: true,
    }],
};

const SYNC_PLAN: Plan = Plan {
    run_type: SYNC,
    steps: &[StepDef {
        name: SYNC_STEP,
        max_attempts: 3,
        fatal: true,
        calls_out: true,
    }],
};

/// How the partner connection reaches the customers' tenants, with its secret.
enum Reach {
    /// The partner's app, which GDAP lets into its customers' tenants.
    Direct {
        partner: AppCredentials,
        client_id: String,
        secret: secrecy::SecretString,
    },
    Cipp(CippCredentials),
}

impl Reach {
    fn source(&self) -> DiscoverySource {
        match self {
            Reach::Direct { .. } => DiscoverySource::Direct,
            Reach::Cipp(_) => DiscoverySource::Cipp,
        }
    }
}

fn store_failure(e: impl std::fmt::Display) -> StepFailure {
    StepFailure {
        reason: ReasonCode::InternalError,
        message: format!("store: {e}"),
        transient: true,
        retry_after: None,
    }
}

fn workspace_of(cx: &StepContext<'_>) -> Result<WorkspaceId, StepFailure> {
    cx.run.workspace.clone().ok_or_else(|| {
        StepFailure::permanent(ReasonCode::InternalError, "the run has no workspace")
    })
}

/// The metadata of what a contact sync run writes.
fn meta_of(cx: &StepContext<'_>, workspace: &WorkspaceId) -> Metadata {
    let mut meta = Metadata::new(
        workspace.as_str(),
        format!("workflow:{}", cx.run.run_type),
        Role::System,
    );
    meta.correlation_id = cx.run_id.to_string();
    meta
}

/// The partner connection's reach, with its secret from the vault.
async fn reach(cx: &StepContext<'_>, workspace: &WorkspaceId) -> Result<Reach, StepFailure> {
    let (bus, vault) = cx.store()?;
    let partner = bus
        .load::<PartnerConnection>(workspace.as_str())
        .await
        .map_err(store_failure)?
        .aggregate;
    let (Some(target), Some(secret)) = (partner.target, partner.secret) else {
        return Err(StepFailure::permanent(
            ReasonCode::ProviderConnectionMissing,
            "the partner connection is not configured",
        ));
    };
    let credential = vault
        .fetch(bus.pool(), secret.credential_ref)
        .await
        .map_err(|_| {
            StepFailure::permanent(
                ReasonCode::ProviderCredentialMissing,
                "the partner credential cannot be read",
            )
        })?;
    Ok(match target {
        PartnerTarget::Direct { partner_tenant_id } => Reach::Direct {
            partner: AppCredentials::new(
                partner_tenant_id.as_uuid(),
                credential.client_id.clone(),
                credential.client_secret.clone(),
            ),
            client_id: credential.client_id,
            secret: credential.client_secret,
        },
        PartnerTarget::Cipp {
            base_url,
            api_client_id,
            partner_tenant_id,
        } => Reach::Cipp(CippCredentials {
            api_url: base_url.parse().map_err(|_| {
                StepFailure::permanent(ReasonCode::ValidationFailed, "the CIPP URL is invalid")
            })?,
            api_client_id,
            app: AppCredentials::new(
                partner_tenant_id.as_uuid(),
                credential.client_id,
                credential.client_secret,
            ),
        }),
    })
}

/// Records on the partner connection that it works (`None`), or why it does not.
async fn record_partner(
    bus: &CommandBus,
    meta: &Metadata,
    workspace: &WorkspaceId,
    problem: Option<(ReasonCode, String)>,
) -> Result<(), StepFailure> {
    let command = match problem {
        None => PartnerConnectionCommand::RecordValidated,
        Some((reason, message)) => PartnerConnectionCommand::RecordError { reason, message },
    };
    bus.execute::<PartnerConnection>(workspace.as_str(), command, meta)
        .await
        .map_err(store_failure)?;
    Ok(())
}

/// Discovers the partner's customer tenants and proposes their mappings.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discover;

/// The tenants a partner reaches: GDAP customers (with contracts for their domains; the
/// contract list alone when GDAP cannot be read), or CIPP's tenant list. Tenants without a
/// domain cannot be matched and are counted, not recorded.
async fn discovered(
    graph: &dyn GraphApi,
    reach: &Reach,
) -> Result<(Vec<DiscoveredTenant>, usize), GraphError> {
    let mut found = Vec::new();
    let mut without_domain = 0;
    let mut push = |id: uuid::Uuid, name: Option<String>, domain: Option<String>| match domain {
        Some(domain) if !domain.trim().is_empty() => found.push(DiscoveredTenant {
            entra_tenant_id: id.into(),
            display_name: name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| domain.clone()),
            default_domain: domain.trim().to_lowercase(),
            verified_domains: Vec::new(),
        }),
        _ => without_domain += 1,
    };
    match reach {
        Reach::Direct { partner, .. } => {
            let customers = graph.list_delegated_admin_customers(partner).await;
            let contracts = graph.list_contracts(partner).await;
            match (customers, contracts) {
                (Ok(customers), contracts) => {
                    let domains: HashMap<uuid::Uuid, Option<String>> = contracts
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| (c.customer_id, c.default_domain_name))
                        .collect();
                    for c in customers {
                        let domain = domains.get(&c.tenant_id).cloned().flatten();
                        push(c.tenant_id, c.display_name, domain);
                    }
                }
                (Err(e), Ok(contracts)) if !e.is_transient() => {
                    for c in contracts {
                        push(c.customer_id, c.display_name, c.default_domain_name);
                    }
                }
                (Err(e), _) => return Err(e),
            }
        }
        Reach::Cipp(cipp) => {
            for t in graph.cipp_list_tenants(cipp).await? {
                // CIPP's "all tenants" entry and anything else that is no tenant id.
                let Ok(id) = t.customer_id.parse::<uuid::Uuid>() else {
                    continue;
                };
                push(id, t.display_name, t.default_domain_name);
            }
        }
    }
    found.sort_by_key(|t| t.entra_tenant_id);
    found.dedup_by_key(|t| t.entra_tenant_id);
    Ok((found, without_domain))
}

/// Stages the streams `ids` of aggregate `A` read into `streams`.
fn stage_all<A>(streams: &mut Streams, ids: &[String]) -> Result<Vec<Staged<A>>, StepFailure>
where
    A: Aggregate<Services = domain::Services>,
    A::Command: domain::Authorize,
{
    ids.iter()
        .map(|id| streams.stage::<A>(id).map_err(store_failure))
        .collect()
}

/// Every client of the workspace, as the proposal needs them.
async fn clients(
    uow: &mut UnitOfWork,
    workspace: &WorkspaceId,
) -> Result<Vec<ClientSummary>, StepFailure> {
    let ids = indexed_streams(uow.connection(), workspace.as_str(), Client::TYPE, None)
        .await
        .map_err(store_failure)?;
    let keys: Vec<_> = ids.iter().map(|id| (Client::TYPE, id.clone())).collect();
    let mut streams = uow.fetch_streams(&keys).await.map_err(store_failure)?;
    let mut out = Vec::new();
    for (id, staged) in ids.iter().zip(stage_all::<Client>(&mut streams, &ids)?) {
        let client = staged.into_state();
        let Ok(client_id) = id.parse::<ClientId>() else {
            continue;
        };
        out.push(ClientSummary {
            client_id,
            name: client.name,
            domains: client.domains,
            status: client.status,
        });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Workflow for Discover {
    fn plan(&self) -> &Plan {
        &DISCOVER_PLAN
    }
    fn module(&self) -> &'static str {
        MODULE
    }
    fn over_workspace(&self) -> bool {
        true
    }
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure> {
        if step != DISCOVER_STEP {
            return Err(StepFailure::unknown_step(step));
        }
        let workspace = workspace_of(cx)?;
        let (bus, _) = cx.store()?;
        let meta = meta_of(cx, &workspace);
        let reach = reach(cx, &workspace).await?;
        let found = discovered(cx.graph, &reach).await;
        // Outages say nothing about the connection; a refusal says it does not work.
        match &found {
            Ok(_) => record_partner(bus, &meta, &workspace, None).await?,
            Err(e) if !e.is_transient() => {
                record_partner(bus, &meta, &workspace, Some((e.reason, e.to_string()))).await?
            }
            Err(_) => {}
        }
        let (tenants, without_domain) = found?;

        let mut uow = bus.begin().await.map_err(store_failure)?;
        let clients = clients(&mut uow, &workspace).await?;
        let proposals: HashMap<_, _> = propose(&tenants, &clients)
            .into_iter()
            .map(|p| (p.entra_tenant_id, p))
            .collect();
        let keys: Vec<String> = tenants
            .iter()
            .map(|t| TenantMapping::key(&workspace, t.entra_tenant_id))
            .collect();
        let reads: Vec<_> = keys
            .iter()
            .map(|k| (TenantMapping::TYPE, k.clone()))
            .collect();
        let mut streams = uow.fetch_streams(&reads).await.map_err(store_failure)?;
        let mut staged = stage_all::<TenantMapping>(&mut streams, &keys)?;
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        let services = bus.services();
        for (mapping, tenant) in staged.iter_mut().zip(&tenants) {
            let discover = MappingCommand::Discover {
                workspace: workspace.clone(),
                tenant: tenant.clone(),
                source: reach.source(),
            };
            if let Err(e) = mapping.decide(services, discover, &meta).await {
                tracing::warn!(tenant = %tenant.entra_tenant_id, error = %e, "a discovered tenant was not recorded");
                continue;
            }
            if let Some(proposal) = proposals.get(&tenant.entra_tenant_id) {
                let record = MappingCommand::RecordProposal {
                    proposal: proposal.clone(),
                };
                mapping
                    .decide(services, record, &meta)
                    .await
                    .map_err(store_failure)?;
            }
            *counts.entry(mapping.state().state.as_str()).or_default() += 1;
        }
        let recorded: Vec<&String> = keys
            .iter()
            .zip(&staged)
            .filter(|(_, mapping)| mapping.state().workspace.is_some())
            .map(|(key, _)| key)
            .collect();
        index_streams(
            uow.connection(),
            workspace.as_str(),
            TenantMapping::TYPE,
            "",
            &recorded,
        )
        .await
        .map_err(store_failure)?;
        let mut refs: Vec<&mut dyn StagedStream> = staged
            .iter_mut()
            .map(|s| s as &mut dyn StagedStream)
            .collect();
        uow.append_all(&mut refs).await.map_err(store_failure)?;
        uow.commit().await.map_err(store_failure)?;

        let count = |state: MappingState| counts.get(state.as_str()).copied().unwrap_or(0);
        Ok(Effect::Report(serde_json::json!({
            "source": reach.source(),
            "found": tenants.len(),
            "without_domain": without_domain,
            "auto_matched": count(MappingState::AutoMatched),
            "needs_review": count(MappingState::NeedsReview),
            "skipped": count(MappingState::Skipped),
            "confirmed": count(MappingState::Confirmed),
        })))
    }
}

/// Syncs the Entra users of every confirmed mapping (or of one client's) into the
/// clients' contact books.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sync;

/// What one tenant's upstream read gave: its changes, whether it was a full read (then a
/// linked user missing from it is gone), and the delta link the next sync starts from.
struct Upstream {
    changes: Vec<UpstreamChange>,
    full: bool,
    next: Option<String>,
}

async fn read_upstream(
    graph: &dyn GraphApi,
    reach: &Reach,
    mapping: &TenantMapping,
    tenant: &DiscoveredTenant,
) -> Result<Upstream, GraphError> {
    let present = |users: Vec<User>| -> Vec<UpstreamChange> {
        users
            .iter()
            .filter_map(User::to_upstream)
            .map(|u| UpstreamChange::Present(Box::new(u)))
            .collect()
    };
    match reach {
        Reach::Cipp(cipp) => {
            let users = graph
                .cipp_list_users(cipp, &tenant.entra_tenant_id.to_string())
                .await?;
            Ok(Upstream {
                changes: present(users),
                full: true,
                next: None,
            })
        }
        Reach::Direct {
            client_id, secret, ..
        } => {
            let app = AppCredentials::new(
                tenant.entra_tenant_id.as_uuid(),
                client_id.clone(),
                secret.clone(),
            );
            let from = mapping.delta_link.clone().map(DeltaLink);
            let (delta, full) = match graph.users_delta(&app, from.as_ref()).await {
                Ok(delta) => (delta, from.is_none()),
                // The link expired (410): read everything again.
                Err(e) if from.is_some() && e.status == Some(410) => {
                    tracing::info!(tenant = %tenant.entra_tenant_id, "delta link expired; full read");
                    (graph.users_delta(&app, None).await?, true)
                }
                Err(e) => return Err(e),
            };
            Ok(Upstream {
                changes: delta
                    .changes
                    .iter()
                    .filter_map(UserChange::to_upstream)
                    .collect(),
                full,
                next: Some(delta.next.0),
            })
        }
    }
}

/// One tenant's contact book as this transaction reads it, with the staged streams the
/// sync decides on.
struct Book {
    contacts: Vec<BookContact>,
    position: HashMap<ContactId, usize>,
    staged: HashMap<ContactId, Staged<Contact>>,
    items: HashMap<String, Staged<ReconciliationItem>>,
    ignored: BTreeSet<domain::EntraUserRef>,
    created: Vec<ContactId>,
    queued: Vec<String>,
}

impl Book {
    async fn read(
        uow: &mut UnitOfWork,
        workspace: &WorkspaceId,
        client_id: ClientId,
    ) -> Result<Self, StepFailure> {
        let client = client_id.to_string();
        let contact_ids = indexed_streams(
            uow.connection(),
            workspace.as_str(),
            Contact::TYPE,
            Some(&client),
        )
        .await
        .map_err(store_failure)?;
        let item_ids = indexed_streams(
            uow.connection(),
            workspace.as_str(),
            ReconciliationItem::TYPE,
            Some(&client),
        )
        .await
        .map_err(store_failure)?;
        let reads: Vec<_> = contact_ids
            .iter()
            .map(|id| (Contact::TYPE, id.clone()))
            .chain(
                item_ids
                    .iter()
                    .map(|id| (ReconciliationItem::TYPE, id.clone())),
            )
            .collect();
        let mut streams = uow.fetch_streams(&reads).await.map_err(store_failure)?;
        let mut book = Book {
            contacts: Vec::new(),
            position: HashMap::new(),
            staged: HashMap::new(),
            items: HashMap::new(),
            ignored: BTreeSet::new(),
            created: Vec::new(),
            queued: Vec::new(),
        };
        for (id, staged) in contact_ids
            .iter()
            .zip(stage_all::<Contact>(&mut streams, &contact_ids)?)
        {
            let Ok(contact_id) = id.parse::<ContactId>() else {
                continue;
            };
            book.position.insert(contact_id, book.contacts.len());
            book.contacts
                .push(BookContact::of(contact_id, staged.state()));
            book.staged.insert(contact_id, staged);
        }
        for (id, staged) in item_ids
            .iter()
            .zip(stage_all::<ReconciliationItem>(&mut streams, &item_ids)?)
        {
            if let (Some(Resolution::Ignored), Some(user)) =
                (staged.state().resolution, staged.state().entra_user)
            {
                book.ignored.insert(user);
            }
            book.items.insert(id.clone(), staged);
        }
        Ok(book)
    }

    /// Decides a sync command on its stream, keeping the book current.
    async fn apply(
        &mut self,
        services: &domain::Services,
        meta: &Metadata,
        command: SyncCommand,
    ) -> Result<(), StepFailure> {
        match command {
            SyncCommand::Contact {
                contact_id,
                command,
            } => {
                let staged = self
                    .staged
                    .entry(contact_id)
                    .or_insert_with(|| Staged::new(contact_id.to_string(), Contact::default(), 0));
                let existed = staged.state().exists();
                staged
                    .decide(services, command, meta)
                    .await
                    .map_err(|e| StepFailure::permanent(e.reason_code(), e.to_string()))?;
                if !existed && staged.state().exists() {
                    self.created.push(contact_id);
                }
                let entry = BookContact::of(contact_id, staged.state());
                match self.position.get(&contact_id) {
                    Some(&i) => self.contacts[i] = entry,
                    None => {
                        self.position.insert(contact_id, self.contacts.len());
                        self.contacts.push(entry);
                    }
                }
            }
            SyncCommand::Reconciliation { item_id, command } => {
                let key = item_id.to_string();
                let staged = self
                    .items
                    .entry(key.clone())
                    .or_insert_with(|| Staged::new(key.clone(), ReconciliationItem::default(), 0));
                let existed = staged.state().workspace.is_some();
                staged
                    .decide(services, command, meta)
                    .await
                    .map_err(|e| StepFailure::permanent(e.reason_code(), e.to_string()))?;
                if !existed && staged.state().workspace.is_some() {
                    self.queued.push(key);
                }
            }
        }
        Ok(())
    }
}

/// A tenant's sync, as recorded.
struct TenantOutcome {
    result: TenantSyncResult,
    /// Whether this call recorded it (false: the run had recorded it before a crash).
    recorded_now: bool,
}

impl Sync {
    /// Syncs one tenant: reads its users, decides against the client's book, and appends
    /// the contact changes with the tenant's result in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn tenant(
        &self,
        cx: &StepContext<'_>,
        bus: &CommandBus,
        meta: &Metadata,
        reach: &Reach,
        workspace: &WorkspaceId,
        key: &str,
        mapping: &TenantMapping,
        field_sync: &domain::FieldSyncConfig,
    ) -> Result<TenantOutcome, StepFailure> {
        let (Some(tenant), Some(client_id)) = (&mapping.tenant, mapping.confirmed_client_id) else {
            return Err(StepFailure::permanent(
                ReasonCode::InternalError,
                "mapping not confirmed",
            ));
        };
        let upstream = match read_upstream(cx.graph, reach, mapping, tenant).await {
            Ok(upstream) => upstream,
            Err(e) => {
                let result = TenantSyncResult {
                    failed: Some(e.reason),
                    ..TenantSyncResult::default()
                };
                tracing::warn!(tenant = %tenant.entra_tenant_id, reason = %e.reason, "a tenant's users could not be read");
                return self.record_only(cx, bus, meta, key, result).await;
            }
        };
        let services = bus.services();
        for attempt in 1..=TENANT_CONFLICT_RETRIES {
            let mut uow = bus.begin().await.map_err(store_failure)?;
            let mut streams = uow
                .fetch_streams(&[(TenantMapping::TYPE, key.to_owned())])
                .await
                .map_err(store_failure)?;
            let mut staged_mapping = streams.stage::<TenantMapping>(key).map_err(store_failure)?;
            if let Some(done) = recorded(staged_mapping.state(), cx) {
                return Ok(done);
            }
            let mut book = Book::read(&mut uow, workspace, client_id).await?;
            let scope = SyncScope {
                workspace,
                client_id,
                entra_tenant_id: tenant.entra_tenant_id,
                field_sync,
                ignored: &book.ignored.clone(),
            };
            let mut changes = upstream.changes.clone();
            if upstream.full {
                changes.extend(missing_users(&changes, &book.contacts, tenant));
            }
            let mut actions = Vec::new();
            for change in &changes {
                for action in decide(change, &book.contacts, &scope) {
                    book.apply(
                        services,
                        meta,
                        action.clone().into_command(&scope, Some(cx.run_id)),
                    )
                    .await?;
                    actions.push(action);
                }
            }
            let result = domain::contact_sync::tally(&actions);
            let record = MappingCommand::RecordSync {
                run_id: cx.run_id,
                result,
                delta_link: upstream.next.clone(),
            };
            staged_mapping
                .decide(services, record, meta)
                .await
                .map_err(store_failure)?;
            index_contacts(&mut uow, workspace, client_id, &book.created)
                .await
                .map_err(store_failure)?;
            index_streams(
                uow.connection(),
                workspace.as_str(),
                ReconciliationItem::TYPE,
                &client_id.to_string(),
                &book.queued,
            )
            .await
            .map_err(store_failure)?;
            let mut refs: Vec<&mut dyn StagedStream> = Vec::new();
            refs.extend(book.staged.values_mut().map(|s| s as &mut dyn StagedStream));
            refs.extend(book.items.values_mut().map(|s| s as &mut dyn StagedStream));
            refs.push(&mut staged_mapping);
            match uow.append_all(&mut refs).await {
                Ok(()) => {}
                Err(store::AppendError::Conflict) if attempt < TENANT_CONFLICT_RETRIES => {
                    store::bus::conflict_pause(attempt).await;
                    continue;
                }
                Err(e) => return Err(store_failure(e)),
            }
            uow.commit().await.map_err(store_failure)?;
            return Ok(TenantOutcome {
                result,
                recorded_now: true,
            });
        }
        Err(StepFailure {
            reason: ReasonCode::Conflict,
            message: "the tenant's contacts kept changing during the sync".into(),
            transient: true,
            retry_after: None,
        })
    }

    /// Records a tenant's result (a failure) without contact changes.
    async fn record_only(
        &self,
        cx: &StepContext<'_>,
        bus: &CommandBus,
        meta: &Metadata,
        key: &str,
        result: TenantSyncResult,
    ) -> Result<TenantOutcome, StepFailure> {
        let record = MappingCommand::RecordSync {
            run_id: cx.run_id,
            result,
            delta_link: None,
        };
        let committed = bus
            .execute::<TenantMapping>(key, record, meta)
            .await
            .map_err(store_failure)?;
        Ok(TenantOutcome {
            result,
            recorded_now: !committed.events.is_empty(),
        })
    }
}

/// The tenant's result when this run recorded it already (a step performed again).
fn recorded(mapping: &TenantMapping, cx: &StepContext<'_>) -> Option<TenantOutcome> {
    if !mapping.recorded_runs.contains(&cx.run_id) {
        return None;
    }
    let result = mapping
        .last_sync
        .as_ref()
        .filter(|s| s.run_id == cx.run_id)
        .map(|s| s.result)
        .unwrap_or_default();
    Some(TenantOutcome {
        result,
        recorded_now: false,
    })
}

/// After a full read, the linked users of this tenant that it did not list: they are gone
/// from the directory (CIPP and a first delta round list present users only).
fn missing_users(
    changes: &[UpstreamChange],
    book: &[BookContact],
    tenant: &DiscoveredTenant,
) -> Vec<UpstreamChange> {
    let present: HashSet<uuid::Uuid> = changes
        .iter()
        .filter_map(|c| match c {
            UpstreamChange::Present(u) => Some(u.object_id),
            UpstreamChange::Removed { .. } => None,
        })
        .collect();
    let mut gone: Vec<uuid::Uuid> = book
        .iter()
        .filter_map(|c| c.entra_user)
        .filter(|u| u.entra_tenant_id == tenant.entra_tenant_id && !present.contains(&u.object_id))
        .map(|u| u.object_id)
        .collect();
    gone.sort();
    gone.dedup();
    gone.into_iter()
        .map(|object_id| UpstreamChange::Removed { object_id })
        .collect()
}

fn add(total: &mut TenantSyncResult, r: &TenantSyncResult) {
    total.created += r.created;
    total.linked += r.linked;
    total.updated += r.updated;
    total.inactivated += r.inactivated;
    total.reactivated += r.reactivated;
    total.queued += r.queued;
}

#[async_trait::async_trait]
impl Workflow for Sync {
    fn plan(&self) -> &Plan {
        &SYNC_PLAN
    }
    fn module(&self) -> &'static str {
        MODULE
    }
    /// A schedule of `contacts.sync` starts one sync of the workspace each time it is due.
    fn schedulable(&self) -> bool {
        true
    }
    fn over_workspace(&self) -> bool {
        true
    }
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure> {
        if step != SYNC_STEP {
            return Err(StepFailure::unknown_step(step));
        }
        let workspace = workspace_of(cx)?;
        let (bus, _) = cx.store()?;
        let meta = meta_of(cx, &workspace);
        let reach = reach(cx, &workspace).await?;
        let settings = bus
            .load::<ContactSyncSettings>(workspace.as_str())
            .await
            .map_err(store_failure)?
            .aggregate;
        // A schedule starts syncs without asking the flags: the sync asks them itself.
        settings
            .require(domain::FeatureFlag::Ui)
            .map_err(|e| StepFailure::permanent(ReasonCode::FeatureDisabled, e.to_string()))?;
        let field_sync = settings.effective_field_sync();
        let only = sync_subject_client(cx.run.workspace_subject.as_deref());

        let mut conn = bus.pool().acquire().await.map_err(store_failure)?;
        let keys = indexed_streams(&mut conn, workspace.as_str(), TenantMapping::TYPE, None)
            .await
            .map_err(store_failure)?;
        drop(conn);
        let reads: Vec<_> = keys
            .iter()
            .map(|k| (TenantMapping::TYPE, k.clone()))
            .collect();
        let mut streams = bus.fetch_streams(&reads).await.map_err(store_failure)?;
        let mut mappings = Vec::new();
        for (key, staged) in keys
            .iter()
            .zip(stage_all::<TenantMapping>(&mut streams, &keys)?)
        {
            let mapping = staged.into_state();
            if is_synced(&mapping) && only.is_none_or(|c| mapping.confirmed_client_id == Some(c)) {
                mappings.push((key.clone(), mapping));
            }
        }

        let mut total = TenantSyncResult::default();
        let mut failed = Vec::new();
        let mut failed_count = 0usize;
        let mut recorded_before = 0usize;
        for (key, mapping) in &mappings {
            // A tenant this run recorded before a crash is counted, not synced again.
            let outcome = match recorded(mapping, cx) {
                Some(done) => done,
                None => {
                    self.tenant(
                        cx,
                        bus,
                        &meta,
                        &reach,
                        &workspace,
                        key,
                        mapping,
                        &field_sync,
                    )
                    .await?
                }
            };
            if !outcome.recorded_now {
                recorded_before += 1;
            }
            add(&mut total, &outcome.result);
            if let Some(reason) = outcome.result.failed {
                failed_count += 1;
                if failed.len() < MAX_LISTED_FAILURES {
                    failed.push(failure_entry(mapping, reason));
                }
            }
        }
        if failed_count == mappings.len() && !mappings.is_empty() {
            // Every tenant failed: likely the partner connection itself.
            let reason = failed
                .first()
                .and_then(|f| reason_of(&f["reason"]))
                .unwrap_or(ReasonCode::InternalError);
            let message = "no tenant could be synced".to_owned();
            record_partner(bus, &meta, &workspace, Some((reason, message))).await?;
        }
        Ok(Effect::Report(serde_json::json!({
            "tenants": mappings.len(),
            "recorded_before": recorded_before,
            "failed_tenants": failed_count,
            "failed": failed,
            "created": total.created,
            "linked": total.linked,
            "updated": total.updated,
            "inactivated": total.inactivated,
            "reactivated": total.reactivated,
            "queued": total.queued,
        })))
    }

    fn item_failures(&self, run: &OperationRun) -> Vec<FailureSummary> {
        let Some(summary) = run.step(SYNC_STEP).and_then(|s| s.summary.as_ref()) else {
            return Vec::new();
        };
        let count = summary["failed_tenants"].as_u64().unwrap_or(0);
        let listed = summary["failed"].as_array().cloned().unwrap_or_default();
        let mut failures: Vec<FailureSummary> = listed
            .iter()
            .map(|f| FailureSummary {
                reason: reason_of(&f["reason"]).unwrap_or(ReasonCode::InternalError),
                message: format!(
                    "tenant {} could not be synced",
                    f["tenant"].as_str().unwrap_or("?")
                ),
                step: Some(SYNC_STEP.to_owned()),
            })
            .collect();
        if count as usize > failures.len() && !failures.is_empty() {
            let more = count as usize - failures.len();
            failures.push(FailureSummary {
                reason: failures[0].reason,
                message: format!("and {more} more tenants"),
                step: Some(SYNC_STEP.to_owned()),
            });
        }
        failures
    }

    fn summary_counts(&self, run: &OperationRun) -> std::collections::BTreeMap<String, i64> {
        let mut counts = crate::workflow::steps_completed(run);
        if let Some(summary) = run.step(SYNC_STEP).and_then(|s| s.summary.as_ref()) {
            for key in [
                "tenants",
                "failed_tenants",
                "created",
                "linked",
                "updated",
                "inactivated",
                "reactivated",
                "queued",
            ] {
                counts.insert(key.to_owned(), summary[key].as_i64().unwrap_or(0));
            }
        }
        counts
    }
}

fn failure_entry(mapping: &TenantMapping, reason: ReasonCode) -> serde_json::Value {
    serde_json::json!({
        "tenant": mapping.tenant.as_ref().map(|t| t.entra_tenant_id.to_string()),
        "reason": reason,
    })
}

/// A reason code as a summary spells it.
fn reason_of(value: &serde_json::Value) -> Option<ReasonCode> {
    serde_json::from_value(value.clone()).ok()
}
