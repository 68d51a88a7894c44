//! The demo: with no Microsoft Graph configured, `tenantflow serve` starts the built-in
//! Graph simulator with a small fleet, registers its tenants, connections and credentials in
//! the `demo` workspace and starts a resync of each, so a new user sees the product work.

use anyhow::Context;
use app::AppError;
use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::tenant::Tenant;
use domain::{EntraTenantId, Provider, Role, TenantKey};
use store::{CommandBus, Metadata, Vault};

/// The workspace the demo fills.
pub const WORKSPACE: &str = "demo";

/// Scopes the simulator's app registrations are consented for.
const SCOPES: &[&str] = &[
    "Policy.Read.All",
    "Organization.Read.All",
    "User.Read.All",
    "Mail.ReadWrite",
];

/// Starts the simulator and registers its fleet (idempotent: a restart adds nothing).
pub async fn start(
    bus: &CommandBus,
    vault: &Vault,
    tenants: usize,
) -> anyhow::Result<graph::sim::SimHandle> {
    let sim = graph::sim::try_spawn(graph::sim::SimConfig {
        tenants,
        seed: 1,
        ..graph::sim::SimConfig::default()
    })
    .await
    .context("the demo's Graph simulator could not start")?;
    let meta = Metadata::new(WORKSPACE, "demo-setup", Role::Owner);
    let mut added = 0;
    for t in sim.tenants() {
        let entra = EntraTenantId::from(t.tenant_id);
        if register(bus, vault, &meta, entra, &t).await? {
            added += 1;
        }
        // A resync per tenant, run by the workflow engine against the simulator (an active
        // one is returned instead of starting another).
        let key = TenantKey::new(WORKSPACE.parse()?, entra);
        app::start_operation(
            bus,
            &meta,
            &key,
            workflows::resync::RUN_TYPE,
            workflows::resync::MODULE,
        )
        .await
        .map_err(|e| anyhow::anyhow!("demo: resync of {}: {e}", t.display_name))?;
    }
    crate::demo_contacts::start(bus, vault, &meta, &sim);
    tracing::info!(
        graph_base = %sim.graph_base(),
        tenants = sim.tenants().len(),
        added,
        "demo: Graph simulator running; its tenants are registered in workspace `{WORKSPACE}`"
    );
    Ok(sim)
}

/// Registers one simulated tenant with a ready connection. Returns whether anything new
/// was written.
async fn register(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
    entra: EntraTenantId,
    t: &graph::sim::SimTenant,
) -> anyhow::Result<bool> {
    let key = TenantKey::new(WORKSPACE.parse()?, entra);
    let mut wrote = false;
    match app::register_tenant(bus, meta, entra, &t.display_name, &t.default_domain).await {
        Ok(_) => wrote = true,
        Err(AppError::Refused {
            code: domain::ReasonCode::AlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(anyhow::anyhow!("demo: registering {}: {e}", t.display_name)),
    }
    let tenant = bus
        .load::<Tenant>(&key.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let connection = match tenant.aggregate.default_connection(Provider::Microsoft) {
        Some(c) => c,
        None => {
            wrote = true;
            app::create_connection(
                bus,
                meta,
                &key,
                Provider::Microsoft,
                entra,
                &format!("{} (Graph)", t.display_name),
            )
            .await
            .map_err(|e| anyhow::anyhow!("demo: connecting {}: {e}", t.display_name))?
        }
    };
    let c = bus
        .load::<ProviderConnection>(&connection.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .aggregate;
    if c.credential.is_none() {
        wrote = true;
        app::set_credential(
            bus,
            vault,
            meta,
            connection,
            &t.client_id,
            &t.client_secret,
            Some(entra),
        )
        .await
        .map_err(|e| anyhow::anyhow!("demo: credential for {}: {e}", t.display_name))?;
    }
    if !c.consent_granted {
        wrote = true;
        let scopes = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        app::change_connection(
            bus,
            meta,
            connection,
            ConnectionCommand::GrantConsent { scopes },
        )
        .await
        .map_err(|e| anyhow::anyhow!("demo: consent for {}: {e}", t.display_name))?;
    }
    Ok(wrote)
}
