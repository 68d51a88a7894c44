//! The demo's contact sync: the simulator's partner tenant as the workspace's partner
//! connection, a client for each of the first tenants (one with a contact entered by hand
//! under the name of one of its users, so the first sync has one person to reconcile), a
//! discovery, the proposed mappings confirmed and a first sync. Only on the first start:
//! once the workspace has clients, the demo leaves contact sync as the user left it.

use app::contacts::{self, MappingConfirmation, PartnerSetup};
use domain::contact::ContactDetails;
use domain::contact_settings::FeatureFlag;
use graph::sim::SimHandle;
use graph::GraphApi;
use std::time::Duration;
use store::{CommandBus, Metadata, Vault};

/// Tenants the demo makes clients for (the others stay unmapped, as a real fleet's do).
const CLIENTS: usize = 2;

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("demo contact sync: {e}")
}

/// Sets contact sync up in the background (its runs need the workflow engine running).
pub fn start(bus: &CommandBus, vault: &Vault, meta: &Metadata, sim: &SimHandle) {
    let (bus, vault, meta) = (bus.clone(), vault.clone(), meta.clone());
    let partner = sim.partner();
    let tenants = sim.tenants();
    let graph = graph::GraphClient::new(sim.graph_config());
    tokio::spawn(async move {
        let graph = match graph {
            Ok(g) => g,
            Err(e) => return tracing::warn!(error = %e, "demo contact sync: no Graph client"),
        };
        match set_up(&bus, &vault, &meta, &partner, &tenants, &graph).await {
            Ok(true) => tracing::info!("demo: contact sync connected, mapped and synced"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "demo contact sync could not be set up"),
        }
    });
}

/// Returns whether anything was set up (false: it was, on an earlier start).
async fn set_up(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
    partner: &graph::sim::SimTenant,
    tenants: &[graph::sim::SimTenant],
    graph: &graph::GraphClient,
) -> anyhow::Result<bool> {
    let mut conn = bus.pool().acquire().await?;
    let clients = store::index::indexed_streams(
        &mut conn,
        &meta.workspace,
        <domain::Client as cqrs_es::Aggregate>::TYPE,
        None,
    )
    .await?;
    drop(conn);
    if !clients.is_empty() {
        return Ok(false);
    }
    for flag in FeatureFlag::ALL {
        contacts::set_feature_flag(bus, meta, flag, true)
            .await
            .map_err(fail)?;
    }
    let setup = PartnerSetup::Direct {
        partner_tenant_id: partner.tenant_id.into(),
        client_id: partner.client_id.clone(),
        client_secret: partner.client_secret.clone(),
    };
    contacts::configure_partner_connection(bus, vault, meta, &setup)
        .await
        .map_err(fail)?;
    let mut rows = Vec::new();
    for (i, t) in tenants.iter().take(CLIENTS).enumerate() {
        let client_id =
            contacts::create_client(bus, meta, &t.display_name, vec![t.default_domain.clone()])
                .await
                .map_err(fail)?;
        rows.push(MappingConfirmation {
            entra_tenant_id: t.tenant_id.into(),
            client_id,
        });
        if i == 0 {
            // Someone the MSP already knew by name only: the sync cannot tell whether the
            // Entra user is them, so it asks.
            let users = graph.list_users(&t.credentials()).await.map_err(fail)?;
            if let Some(name) = users
                .iter()
                .filter(|u| u.account_enabled != Some(false))
                .find_map(|u| u.display_name.clone())
            {
                let details = ContactDetails {
                    name,
                    ..ContactDetails::default()
                };
                contacts::create_contact(bus, meta, client_id, details)
                    .await
                    .map_err(fail)?;
            }
        }
    }
    let discovery = contacts::start_discovery(bus, meta).await.map_err(fail)?;
    crate::bench::run_ended(bus, discovery.run_id(), Duration::from_secs(120)).await?;
    contacts::confirm_mappings(bus, meta, &rows)
        .await
        .map_err(fail)?;
    contacts::start_contact_sync(bus, meta, None)
        .await
        .map_err(fail)?;
    Ok(true)
}
