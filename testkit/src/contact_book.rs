//! A contact sync history for one workspace, written through the command bus with the
//! domain's commands (no workflow): a partner connection switched from `direct` to `cipp`
//! and validated, clients, three discovered tenants (auto matched and confirmed, needs
//! review, skipped), a sync run's result, contacts in every state, and a reconciliation
//! queue with an open and a resolved item. The feature flags are left as they start (all
//! off) and the field sync config empty: tests turn on what they look at
//! ([`set_flag`], [`set_field_sync`]).

use cqrs_es::Aggregate;
use domain::contact::{ContactCommand, ContactDetails, ContactField, InactiveReason};
use domain::contact_settings::{FeatureFlag, FieldSyncConfig, SettingsCommand};
use domain::partner_connection::{PartnerConnectionCommand, PartnerTarget, SecretRef};
use domain::reconciliation::{ReconciliationCommand, Resolution, UpstreamSummary};
use domain::tenant_mapping::{propose, ClientSummary, DiscoveredTenant, DiscoverySource};
use domain::tenant_mapping::{MappingCommand, TenantSyncResult};
use domain::{
    Client, ClientCommand, ClientId, ClientStatus, Contact, ContactId, ContactSyncSettings,
    EntraTenantId, EntraUserRef, PartnerConnection, ReconciliationItem, ReconciliationItemId, Role,
    RunId, TenantMapping, WorkspaceId,
};
use store::{CommandBus, Metadata};
use uuid::Uuid;

use crate::tenants::{engine, guid, meta, CONTOSO, FABRIKAM, TAILSPIN};

/// The keyed fingerprints the partner connection's two secrets have (never a secret).
pub const DIRECT_FINGERPRINT: &str = "hmac-sha256:d1d1d1d1d1d1d1d1";
pub const CIPP_FINGERPRINT: &str = "hmac-sha256:c1c1c1c1c1c1c1c1";
/// The CIPP instance the partner connection ends up on.
pub const CIPP_URL: &str = "https://cipp.example.com";
/// The delta link the confirmed mapping's sync keeps (must never be shown).
pub const DELTA_LINK: &str = "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=secret-ish";

/// What [`ContactBook::seed`] wrote.
pub struct ContactBook {
    pub workspace: WorkspaceId,
    /// Active, `contoso.com`: Contoso's tenant is auto matched to it and confirmed.
    pub contoso: ClientId,
    /// Active, `fabrikam.com`.
    pub fabrikam: ClientId,
    /// Renamed to "Northwind Traders", domains set, then deactivated.
    pub northwind: ClientId,
    /// The mapping keys: Contoso's (confirmed), Fabrikam's (needs review: name only),
    /// Tailspin's (skipped).
    pub contoso_mapping: String,
    pub fabrikam_mapping: String,
    pub tailspin_mapping: String,
    /// The `contacts.sync` run whose result Contoso's mapping recorded.
    pub run: RunId,
    /// Contoso's contacts. Alice: created linked by the sync. Bob: created by hand, linked
    /// later. Carol: job title changed, then inactive (disabled upstream). Pat and Sam
    /// Smith: unlinked, the open item's candidates.
    pub alice: ContactId,
    pub bob: ContactId,
    pub carol: ContactId,
    pub pat: ContactId,
    pub sam: ContactId,
    /// Fabrikam's one contact (unlinked, active).
    pub dora: ContactId,
    /// Open: Chris Smith upstream, Pat and Sam as candidates.
    pub open_item: ReconciliationItemId,
    /// Resolved by linking Bob.
    pub resolved_item: ReconciliationItemId,
    /// The Entra users of Alice, Bob and Carol, in Contoso's tenant.
    pub alice_user: EntraUserRef,
    pub bob_user: EntraUserRef,
    pub carol_user: EntraUserRef,
}

impl ContactBook {
    /// Writes the history in `workspace`, by its owner (`alice`) and the engine.
    pub async fn seed(bus: &CommandBus, workspace: &str) -> ContactBook {
        let ws: WorkspaceId = workspace.parse().expect("a workspace slug");
        let owner = meta(workspace, Role::Owner);
        let engine = engine(workspace);

        // The partner connection: direct first, switched to CIPP, validated.
        let direct = PartnerTarget::Direct {
            partner_tenant_id: guid(TAILSPIN),
        };
        let cipp = PartnerTarget::Cipp {
            base_url: format!("{CIPP_URL}/"),
            api_client_id: "cipp-api".into(),
            partner_tenant_id: guid(TAILSPIN),
        };
        for (target, fingerprint) in [(direct, DIRECT_FINGERPRINT), (cipp, CIPP_FINGERPRINT)] {
            let configure = PartnerConnectionCommand::Configure {
                workspace: ws.clone(),
                target,
                secret: SecretRef {
                    credential_ref: Uuid::now_v7(),
                    fingerprint: fingerprint.into(),
                },
            };
            run::<PartnerConnection>(bus, workspace, configure, &owner).await;
        }
        run::<PartnerConnection>(
            bus,
            workspace,
            PartnerConnectionCommand::RecordValidated,
            &engine,
        )
        .await;

        // Clients.
        let contoso = client(bus, &ws, "Contoso", &["contoso.com"], &owner).await;
        let fabrikam = client(bus, &ws, "Fabrikam", &["fabrikam.com"], &owner).await;
        let northwind = client(bus, &ws, "Northwind", &[], &owner).await;
        for command in [
            ClientCommand::Rename {
                name: "Northwind Traders".into(),
            },
            ClientCommand::SetDomains {
                domains: vec!["NW.example".into()],
            },
            ClientCommand::Deactivate,
        ] {
            run::<Client>(bus, &northwind.to_string(), command, &owner).await;
        }

        // Discovery and its proposals, against the clients as they are now.
        let tenants = [
            tenant(CONTOSO, "Contoso Ltd", "contoso.com"),
            tenant(FABRIKAM, "Fabrikam Inc", "fabrikamtenant.onmicrosoft.com"),
            tenant(TAILSPIN, "Tailspin Toys", "tailspin.example"),
        ];
        let summaries: Vec<ClientSummary> = [
            (contoso, "Contoso", "contoso.com", ClientStatus::Active),
            (fabrikam, "Fabrikam", "fabrikam.com", ClientStatus::Active),
            (
                northwind,
                "Northwind Traders",
                "nw.example",
                ClientStatus::Inactive,
            ),
        ]
        .into_iter()
        .map(|(client_id, name, domain, status)| ClientSummary {
            client_id,
            name: name.into(),
            domains: vec![domain.into()],
            status,
        })
        .collect();
        let proposals = propose(&tenants, &summaries);
        let mut keys = Vec::new();
        for (tenant, proposal) in tenants.into_iter().zip(proposals) {
            let key = TenantMapping::key(&ws, tenant.entra_tenant_id);
            let discover = MappingCommand::Discover {
                workspace: ws.clone(),
                tenant,
                source: DiscoverySource::Cipp,
            };
            run::<TenantMapping>(bus, &key, discover, &engine).await;
            let record = MappingCommand::RecordProposal { proposal };
            run::<TenantMapping>(bus, &key, record, &engine).await;
            keys.push(key);
        }
        let [contoso_mapping, fabrikam_mapping, tailspin_mapping] =
            <[String; 3]>::try_from(keys).expect("three mappings");
        let confirm = MappingCommand::Confirm {
            client_id: contoso,
            actor: owner.actor.clone(),
        };
        run::<TenantMapping>(bus, &contoso_mapping, confirm, &owner).await;

        // A sync run over the workspace, and what it did in Contoso's tenant.
        let run_id = app::start_workspace_operation(bus, &owner, "contacts.sync", "contacts")
            .await
            .expect("a contact sync run")
            .run_id();
        let contoso_tenant = guid(CONTOSO);
        let user = |n: u128| EntraUserRef {
            entra_tenant_id: contoso_tenant,
            object_id: Uuid::from_u128(n),
        };
        let (alice_user, bob_user, carol_user) = (user(1), user(2), user(3));

        let alice = ContactId::for_entra_user(&ws, contoso, &alice_user);
        let create = |client_id, name: &str, email: &str, entra_user| ContactCommand::Create {
            workspace: ws.clone(),
            client_id,
            details: ContactDetails {
                name: name.into(),
                email: Some(email.into()),
                phone: Some("+1 555 0100".into()),
                ..ContactDetails::default()
            },
            entra_user,
        };
        run::<Contact>(
            bus,
            &alice.to_string(),
            create(
                contoso,
                "Alice Adams",
                " Alice@Contoso.com ",
                Some(alice_user),
            ),
            &engine,
        )
        .await;
        let bob = ContactId::new();
        run::<Contact>(
            bus,
            &bob.to_string(),
            create(contoso, "Bob Brown", "bob@contoso.com", None),
            &owner,
        )
        .await;
        let carol = ContactId::for_entra_user(&ws, contoso, &carol_user);
        run::<Contact>(
            bus,
            &carol.to_string(),
            create(
                contoso,
                "carol Clark",
                "carol@contoso.com",
                Some(carol_user),
            ),
            &engine,
        )
        .await;
        let update = ContactCommand::UpdateFields {
            changes: vec![
                (ContactField::JobTitle, Some("CFO".into())),
                (ContactField::Department, Some("Finance".into())),
            ],
        };
        run::<Contact>(bus, &carol.to_string(), update, &engine).await;
        let inactive = ContactCommand::MarkInactive {
            reason: InactiveReason::Disabled,
        };
        run::<Contact>(bus, &carol.to_string(), inactive, &engine).await;
        let (pat, sam, dora) = (ContactId::new(), ContactId::new(), ContactId::new());
        for (id, client_id, name, email) in [
            (pat, contoso, "Pat Smith", "pat@contoso.com"),
            (sam, contoso, "Sam Smith", "sam@contoso.com"),
            (dora, fabrikam, "Dora Diaz", "dora@fabrikam.com"),
        ] {
            run::<Contact>(
                bus,
                &id.to_string(),
                create(client_id, name, email, None),
                &owner,
            )
            .await;
        }

        // The queue: Chris Smith could be Pat or Sam; Bob's user was placed by a person.
        let queue =
            |entra_user: EntraUserRef, name: &str, candidates| ReconciliationCommand::Queue {
                workspace: ws.clone(),
                client_id: contoso,
                entra_user,
                upstream: UpstreamSummary {
                    display_name: Some(name.into()),
                    emails: vec![format!(
                        "{}@contoso.com",
                        name.to_lowercase().replace(' ', ".")
                    )],
                },
                candidates,
                run_id: Some(run_id),
            };
        let chris_user = user(4);
        let open_item = ReconciliationItemId::for_entra_user(&ws, &chris_user);
        run::<ReconciliationItem>(
            bus,
            &open_item.to_string(),
            queue(chris_user, "Chris Smith", vec![pat, sam]),
            &engine,
        )
        .await;
        let resolved_item = ReconciliationItemId::for_entra_user(&ws, &bob_user);
        run::<ReconciliationItem>(
            bus,
            &resolved_item.to_string(),
            queue(bob_user, "Bob Brown", vec![bob, pat]),
            &engine,
        )
        .await;
        let resolve = ReconciliationCommand::Resolve {
            resolution: Resolution::LinkedExisting { contact_id: bob },
            actor: owner.actor.clone(),
        };
        run::<ReconciliationItem>(bus, &resolved_item.to_string(), resolve, &owner).await;
        let link = ContactCommand::Link {
            entra_user: bob_user,
        };
        run::<Contact>(bus, &bob.to_string(), link, &owner).await;

        let record = MappingCommand::RecordSync {
            run_id,
            result: TenantSyncResult {
                created: 2,
                linked: 1,
                updated: 1,
                inactivated: 1,
                reactivated: 0,
                queued: 2,
                failed: None,
            },
            delta_link: Some(DELTA_LINK.into()),
        };
        run::<TenantMapping>(bus, &contoso_mapping, record, &engine).await;

        ContactBook {
            workspace: ws,
            contoso,
            fabrikam,
            northwind,
            contoso_mapping,
            fabrikam_mapping,
            tailspin_mapping,
            run: run_id,
            alice,
            bob,
            carol,
            pat,
            sam,
            dora,
            open_item,
            resolved_item,
            alice_user,
            bob_user,
            carol_user,
        }
    }
}

/// Turns a contact sync feature flag on or off in `workspace` (as its owner).
pub async fn set_flag(bus: &CommandBus, workspace: &str, flag: FeatureFlag, enabled: bool) {
    let command = SettingsCommand::SetFeatureFlag {
        workspace: workspace.parse().expect("a workspace slug"),
        flag,
        enabled,
    };
    let owner = meta(workspace, Role::Owner);
    run::<ContactSyncSettings>(bus, workspace, command, &owner).await;
}

/// Sets which fields Entra may overwrite in `workspace` (as its owner).
pub async fn set_field_sync(bus: &CommandBus, workspace: &str, fields: &[ContactField]) {
    let command = SettingsCommand::SetFieldSync {
        workspace: workspace.parse().expect("a workspace slug"),
        config: FieldSyncConfig::allowing(fields.iter().copied()),
    };
    let owner = meta(workspace, Role::Owner);
    run::<ContactSyncSettings>(bus, workspace, command, &owner).await;
}

async fn run<A>(bus: &CommandBus, id: &str, command: A::Command, by: &Metadata)
where
    A: Aggregate<Services = domain::Services>,
    A::Command: domain::Authorize + Clone + Send,
    A::Error: std::fmt::Debug,
{
    if let Err(e) = bus.execute::<A>(id, command, by).await {
        panic!("{} {id}: {e:?}", A::TYPE);
    }
}

async fn client(
    bus: &CommandBus,
    ws: &WorkspaceId,
    name: &str,
    domains: &[&str],
    by: &Metadata,
) -> ClientId {
    let id = ClientId::new();
    let create = ClientCommand::Create {
        workspace: ws.clone(),
        name: name.into(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
    };
    run::<Client>(bus, &id.to_string(), create, by).await;
    id
}

fn tenant(id: &str, name: &str, domain: &str) -> DiscoveredTenant {
    let entra_tenant_id: EntraTenantId = guid(id);
    DiscoveredTenant {
        entra_tenant_id,
        display_name: name.into(),
        default_domain: domain.into(),
        verified_domains: vec![],
    }
}
