//! `tenantflow bench contacts`: one contact sync of a simulated fleet (every user of every
//! mapped tenant read through users delta, decided against the client's book, written as
//! contact events with the tenant's result), against a bare loop that reads the same pages
//! and upserts one row per user, a tenant per transaction (as the sync commits).

use app::contacts::{self, MappingConfirmation, PartnerSetup};
use domain::contact_settings::FeatureFlag;
use domain::run::OperationRun;
use domain::Role;
use graph::GraphApi;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{CommandBus, Metadata, Metrics};

use crate::bench::{measure, PhaseResult};
use crate::config::Config;
use crate::serve::{open_vault, Database};

#[derive(Debug, Serialize)]
struct ContactsReport {
    benchmark: &'static str,
    tenants: usize,
    users_per_tenant: usize,
    /// Users synced (contacts created and linked) per second, from start to the run's end.
    sync_users_per_second: f64,
    sync_seconds: f64,
    /// Events the sync appended, and their bytes (payload and metadata, before indexes).
    events_written: i64,
    event_bytes: i64,
    /// The same delta pages read, one upsert per user, per user and second.
    bare_loop_users_per_second: f64,
    bare_loop: PhaseResult,
    /// sync / bare loop
    ratio: f64,
    target_ratio: f64,
}

pub async fn run(
    config: Config,
    tenants: usize,
    users: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench").await?;
    let result = sync(&config, &db.pool, tenants, users).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        tenants,
        users,
        "contact sync: {:.0} users/s ({:.1} s, {} events, {} bytes); bare loop: {:.0} users/s; ratio {:.2} (target >= {:.1})",
        report.sync_users_per_second,
        report.sync_seconds,
        report.events_written,
        report.event_bytes,
        report.bare_loop_users_per_second,
        report.ratio,
        report.target_ratio
    );
    crate::bench::publish(&report, &json)
}

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Starts a run and waits (bounded) for it to end.
async fn run_to_end(
    bus: &CommandBus,
    started: Result<app::Started, app::AppError>,
) -> anyhow::Result<OperationRun> {
    let run_id = started.map_err(fail)?.run_id();
    crate::bench::run_ended(bus, run_id, Duration::from_secs(1800)).await
}

async fn sync(
    config: &Config,
    pool: &sqlx::PgPool,
    tenants: usize,
    users: usize,
) -> anyhow::Result<ContactsReport> {
    let sim = graph::sim::try_spawn(graph::sim::SimConfig {
        tenants,
        seed: 42,
        page_size: 100,
        users_per_tenant: Some(users),
        ..graph::sim::SimConfig::default()
    })
    .await?;
    let metrics = Metrics::new();
    let bus = CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
    let vault = open_vault(config)?;
    let meta = Metadata::new("bench", "bench", Role::Owner);
    let fleet = sim.tenants();
    let client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(fail)?);
    let background = crate::bench::engines(config, &bus, &vault, client, &metrics, 1);

    tracing::info!(
        tenants,
        users,
        "connecting, discovering and mapping the fleet"
    );
    for flag in FeatureFlag::ALL {
        contacts::set_feature_flag(&bus, &meta, flag, true)
            .await
            .map_err(fail)?;
    }
    let partner = sim.partner();
    let setup = PartnerSetup::Direct {
        partner_tenant_id: partner.tenant_id.into(),
        client_id: partner.client_id.clone(),
        client_secret: partner.client_secret.clone(),
    };
    contacts::configure_partner_connection(&bus, &vault, &meta, &setup)
        .await
        .map_err(fail)?;
    let mut rows = Vec::with_capacity(fleet.len());
    for t in &fleet {
        let client_id =
            contacts::create_client(&bus, &meta, &t.display_name, vec![t.default_domain.clone()])
                .await
                .map_err(fail)?;
        rows.push(MappingConfirmation {
            entra_tenant_id: t.tenant_id.into(),
            client_id,
        });
    }
    let discovery = run_to_end(&bus, contacts::start_discovery(&bus, &meta).await).await?;
    anyhow::ensure!(
        discovery.outcome == domain::run::RunOutcome::Succeeded,
        "the discovery did not succeed: {:?}",
        discovery.failure_summary
    );
    for chunk in rows.chunks(contacts::MAX_CONFIRM) {
        contacts::confirm_mappings(&bus, &meta, chunk)
            .await
            .map_err(fail)?;
    }
    let (events_before, bytes_before) = event_volume(pool).await?;

    tracing::info!("syncing");
    let started = Instant::now();
    let run = run_to_end(&bus, contacts::start_contact_sync(&bus, &meta, None).await).await?;
    let sync_seconds = started.elapsed().as_secs_f64();
    background.stop().await;
    anyhow::ensure!(
        run.outcome == domain::run::RunOutcome::Succeeded,
        "the sync did not succeed: {:?}",
        run.failure_summary
    );
    let synced = run
        .step(workflows::contacts::SYNC_STEP)
        .and_then(|s| s.summary.as_ref())
        .map(|s| s["created"].as_u64().unwrap_or(0) + s["linked"].as_u64().unwrap_or(0))
        .unwrap_or(0) as usize;
    anyhow::ensure!(synced > 0, "the sync created no contact");
    let (events_after, bytes_after) = event_volume(pool).await?;

    // The bare loop: the same delta pages through the partner's app, one upsert per user.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_bare_contacts (tenant uuid, user_id text, payload jsonb, \
         PRIMARY KEY (tenant, user_id))",
    )
    .execute(pool)
    .await?;
    let bare_client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(fail)?);
    let fleet = Arc::new(fleet);
    let (pool2, partner2) = (pool.clone(), Arc::new(partner));
    let bare_loop = measure(fleet.len(), 1, move |i| {
        let (client, fleet, pool, partner) =
            (bare_client.clone(), fleet.clone(), pool2.clone(), partner2.clone());
        async move {
            let t = &fleet[i];
            let app = graph::AppCredentials::new(
                t.tenant_id,
                partner.client_id.clone(),
                partner.client_secret.clone(),
            );
            let delta = client.users_delta(&app, None).await.map_err(fail)?;
            // One transaction per tenant, as the sync commits a tenant at a time.
            let mut tx = pool.begin().await?;
            for change in &delta.changes {
                let graph::models::UserChange::Upserted(user) = change else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO bench_bare_contacts (tenant, user_id, payload) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant, user_id) DO UPDATE SET payload = EXCLUDED.payload",
                )
                .bind(t.tenant_id)
                .bind(&user.id)
                .bind(serde_json::to_value(user.as_ref())?)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
    })
    .await?;
    let bare_users: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_bare_contacts")
        .fetch_one(pool)
        .await?;
    sim.shutdown().await;

    let sync_users_per_second = synced as f64 / sync_seconds;
    let bare_loop_users_per_second = bare_users as f64 / bare_loop.seconds;
    Ok(ContactsReport {
        benchmark: "contacts",
        tenants,
        users_per_tenant: users,
        sync_users_per_second,
        sync_seconds,
        events_written: events_after - events_before,
        event_bytes: bytes_after - bytes_before,
        bare_loop_users_per_second,
        ratio: sync_users_per_second / bare_loop_users_per_second,
        bare_loop,
        target_ratio: 0.3,
    })
}

/// Events in the log and the bytes of their payloads and metadata.
async fn event_volume(pool: &sqlx::PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*), coalesce(sum(octet_length(payload::text) + octet_length(metadata::text)), 0)::bigint FROM events",
    )
    .fetch_one(pool)
    .await?)
}
