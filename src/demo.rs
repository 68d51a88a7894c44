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

/// Messages the demo mailbox receives, so inbound email shows up without anyone typing:
/// a request, the reply in its thread, and one with an attachment.
fn demo_mail() -> Vec<graph::sim::NewMail> {
    use graph::models::MessageHeader;
    use graph::sim::{NewAttachment, NewMail};
    vec![
        NewMail {
            subject: "Printer on floor 2 is jammed".into(),
            headers: vec![MessageHeader {
                name: "Message-ID".into(),
                value: "<printer-1@customer.example>".into(),
            }],
            ..NewMail::default()
        },
        NewMail {
            subject: "Re: Printer on floor 2 is jammed".into(),
            body_text: "Still jammed after the restart.".into(),
            headers: vec![
                MessageHeader {
                    name: "In-Reply-To".into(),
                    value: "<printer-1@customer.example>".into(),
                },
                MessageHeader {
                    name: "References".into(),
                    value: "<printer-1@customer.example>".into(),
                },
            ],
            ..NewMail::default()
        },
        NewMail {
            subject: "New laptop for Megan".into(),
            from_name: "Megan Bowen".into(),
            from_address: "megan@customer.example".into(),
            body_text: "Quote attached, please order.".into(),
            attachments: vec![NewAttachment {
                name: "quote.pdf".into(),
                content_type: "application/pdf".into(),
                size: 48_213,
                is_inline: false,
            }],
            ..NewMail::default()
        },
    ]
}

/// Adds the demo mailbox (the first demo tenant's helpdesk user) the first time, and once
/// its subscription is live, has the simulator deliver a few messages to it, which arrive
/// through the webhook like Microsoft's would.
pub async fn start_mail(
    bus: &CommandBus,
    vault: &Vault,
    sim: &graph::sim::SimHandle,
) -> anyhow::Result<()> {
    use domain::mailbox::{Mailbox, MailboxStatus};
    let Some(t) = sim.tenants().into_iter().next() else {
        return Ok(());
    };
    let Some(user) = t.mailboxes.first().map(|m| m.user_principal_name.clone()) else {
        return Ok(());
    };
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'mailbox' AND metadata->>'workspace' = $1 LIMIT 1",
    )
    .bind(WORKSPACE)
    .fetch_optional(bus.pool())
    .await?;
    if existing.is_some() {
        return Ok(());
    }
    let meta = Metadata::new(WORKSPACE, "demo-setup", Role::Owner);
    let tenant = TenantKey::new(WORKSPACE.parse()?, EntraTenantId::from(t.tenant_id));
    let id = app::mailboxes::add_mailbox(
        bus,
        vault,
        &meta,
        app::mailboxes::NewMailbox {
            tenant,
            address: user.clone(),
            delegated: None,
            legacy_client_state: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("demo: mailbox {user}: {e}"))?;
    let bus = bus.clone();
    let deliver = sim.base_url().join(&format!(
        "_sim/tenants/{}/mailboxes/{user}/messages",
        t.tenant_id
    ))?;
    tokio::spawn(async move {
        // The worker creates the subscription right after start-up; give it a minute.
        for _ in 0..600 {
            let active = bus
                .load::<Mailbox>(&id.to_string())
                .await
                .map(|l| l.aggregate.status == MailboxStatus::Active)
                .unwrap_or(false);
            if active {
                let http = reqwest::Client::new();
                for mail in demo_mail() {
                    if let Err(error) = http.post(deliver.clone()).json(&mail).send().await {
                        tracing::warn!(%error, "demo: a message could not be delivered");
                    }
                }
                tracing::info!(mailbox = %user, "demo: the demo mailbox received a few messages (see `inboundEmails`)");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tracing::warn!("demo: the demo mailbox's subscription was not created in a minute");
    });
    Ok(())
}
