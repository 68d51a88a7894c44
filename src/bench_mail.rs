//! `tenantflow bench mail`: change notifications posted to the service's webhook until each
//! became an enriched `InboundEmailReceived` event, against a bare loop doing the same
//! message fetches (message, categories) and one insert each. Also the webhook's
//! acknowledgement latency, and the events and bytes one message leaves in the log.

use domain::mailbox::{Mailbox, MailboxStatus};
use domain::{EntraTenantId, Provider, Role};
use graph::GraphApi;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{CommandBus, Metadata, Metrics};
use tokio_util::sync::CancellationToken;

use crate::bench::{measure, PhaseResult};
use crate::config::Config;
use crate::serve::{open_vault, Database};

#[derive(Debug, Serialize)]
struct MailReport {
    benchmark: &'static str,
    messages: usize,
    concurrency: usize,
    /// Notifications posted (one per POST) until every message was received, per second.
    enriched_events_per_second: f64,
    workflow_seconds: f64,
    /// The webhook's answers (`202` once recorded).
    webhook_ack: PhaseResult,
    /// The same fetches and one INSERT per message.
    bare_loop: PhaseResult,
    /// enriched events/s / bare loop messages/s
    ratio: f64,
    target_ratio: f64,
    target_ack_p99_ms: f64,
    /// What one message leaves in the log (both of its events).
    events_per_message: f64,
    bytes_per_message: f64,
}

pub async fn run(
    config: Config,
    messages: usize,
    concurrency: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench").await?;
    let result = mail(&config, &db.pool, messages, concurrency).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        messages,
        concurrency,
        "webhook -> enriched events: {:.1}/s; bare loop: {:.1}/s; ratio {:.2} (target >= {:.1}); ack p99 {:.1} ms (target < {:.0}); {:.1} events, {:.0} bytes per message",
        report.enriched_events_per_second,
        report.bare_loop.per_second,
        report.ratio,
        report.target_ratio,
        report.webhook_ack.p99_ms,
        report.target_ack_p99_ms,
        report.events_per_message,
        report.bytes_per_message,
    );
    crate::bench::publish(&report, &json)
}

async fn mail(
    config: &Config,
    pool: &sqlx::PgPool,
    messages: usize,
    concurrency: usize,
) -> anyhow::Result<MailReport> {
    let sim = graph::sim::try_spawn(graph::sim::SimConfig {
        tenants: 1,
        seed: 19,
        ..graph::sim::SimConfig::default()
    })
    .await?;
    let metrics = Metrics::new();
    let bus = CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
    let vault = open_vault(config)?;
    let meta = Metadata::new("bench", "bench", Role::Owner);
    let t = sim.tenants().remove(0);
    let user = t.mailboxes[0].user_principal_name.clone();
    let entra = EntraTenantId::from(t.tenant_id);
    let e = |e: app::AppError| anyhow::anyhow!("{e}");
    let key = app::register_tenant(&bus, &meta, entra, &t.display_name, &t.default_domain)
        .await
        .map_err(e)?;
    let c = app::create_connection(&bus, &meta, &key, Provider::Microsoft, entra, "Graph")
        .await
        .map_err(e)?;
    app::set_credential(
        &bus,
        &vault,
        &meta,
        c,
        &t.client_id,
        &t.client_secret,
        Some(entra),
    )
    .await
    .map_err(e)?;
    app::change_connection(
        &bus,
        &meta,
        c,
        domain::connection::ConnectionCommand::GrantConsent {
            scopes: vec!["Mail.ReadWrite".into()],
        },
    )
    .await
    .map_err(e)?;

    // The service as `serve` runs it: the API (the webhook) on a loopback port, and the
    // runtime with the mail worker (no read models, engines or scheduler).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(|e| anyhow::anyhow!("{e}"))?);
    let parts = runtime::Parts {
        bus: bus.clone(),
        vault: vault.clone(),
        graph: client.clone(),
        metrics: metrics.clone(),
        workflows: workflows::Registry::standard(),
    };
    let mut settings = crate::serve::mail_settings(config, addr)?;
    settings.concurrency = concurrency;
    let options = runtime::Options {
        owner: "bench".to_owned(),
        workers: 1,
        scheduler_poll: None,
        projections: false,
        mail: Some(settings),
        ..runtime::Options::default()
    };
    let state = crate::serve::app_state(
        pool,
        bus.clone(),
        metrics.clone(),
        vault.clone(),
        crate::serve::ApiSettings {
            auth: api::auth::Authenticator::new(&secrecy::SecretString::from("bench".to_owned())),
            persisted: api::graphql::PersistedQueries::open(),
            workflows: parts.workflows.clone(),
            limits: api::Limits::default(),
            graph_endpoint: "simulator".to_owned(),
            replica: None,
        },
        &shutdown,
    );
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let background = runtime::start(&parts, &options, shutdown.clone());
    let id = app::mailboxes::add_mailbox(
        &bus,
        &vault,
        &meta,
        app::mailboxes::NewMailbox {
            tenant: key.clone(),
            address: user.clone(),
            delegated: None,
            legacy_client_state: None,
        },
    )
    .await
    .map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mailbox = bus
            .load::<Mailbox>(&id.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .aggregate;
        if mailbox.status == MailboxStatus::Active {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mailbox's subscription was not created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscription = sim
        .subscriptions(t.tenant_id)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no subscription at the simulator"))?;
    let sub_id = subscription["id"].as_str().unwrap_or_default().to_owned();
    let client_state = subscription["clientState"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The mail arrives (unannounced: the bench posts the notifications itself).
    sim.expire_subscription(t.tenant_id, &sub_id)?;
    tracing::info!(messages, "delivering mail into the simulated mailbox");
    let mut ids = Vec::with_capacity(messages * 2);
    for i in 0..messages * 2 {
        let mail = graph::sim::NewMail {
            subject: format!("ticket {i}"),
            ..graph::sim::NewMail::default()
        };
        ids.push(
            sim.deliver_mail(t.tenant_id, &user, &mail)
                .await?
                .message_id,
        );
    }
    let (ours, bare): (Vec<String>, Vec<String>) = {
        let mut ours = ids;
        let bare = ours.split_off(messages);
        (ours, bare)
    };

    let http = reqwest::Client::new();
    let hook = format!("http://{addr}/webhooks/graph/mail");
    let ours = Arc::new(ours);
    let started = Instant::now();
    let webhook_ack = measure(messages, concurrency, {
        let (http, hook, ours) = (http.clone(), hook.clone(), ours.clone());
        let (sub_id, client_state) = (sub_id.clone(), client_state.clone());
        move |i| {
            let (http, hook, ours) = (http.clone(), hook.clone(), ours.clone());
            let (sub_id, client_state) = (sub_id.clone(), client_state.clone());
            async move {
                let body = serde_json::json!({"value": [{
                    "subscriptionId": sub_id,
                    "clientState": client_state,
                    "changeType": "created",
                    "resource": format!("Users/u/Messages/{}", ours[i]),
                    "resourceData": {"id": ours[i]},
                }]});
                let status = http.post(&hook).json(&body).send().await?.status();
                anyhow::ensure!(status.as_u16() == 202, "the webhook answered {status}");
                Ok(())
            }
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let received: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'InboundEmailReceived'",
        )
        .fetch_one(pool)
        .await?;
        if received as usize >= messages {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {received} of {messages} messages were received in ten minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let workflow_seconds = started.elapsed().as_secs_f64();
    let (events, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(pg_column_size(payload) + pg_column_size(metadata) + 100), 0)::bigint \
         FROM events WHERE aggregate_type = 'inbound_email'",
    )
    .fetch_one(pool)
    .await?;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'InboundEmailReceived' AND payload->'InboundEmailReceived' ? 'failure'",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(failed == 0, "{failed} messages could not be fetched");
    shutdown.cancel();
    background.stop().await;
    let _ = server.await;

    // The bare loop: the same Graph calls per message, and one row each.
    let app_credentials = t.credentials();
    let bare = Arc::new(bare);
    let pool2 = pool.clone();
    let bare_loop = measure(messages, concurrency, move |i| {
        let (client, bare, pool, app, user) = (
            client.clone(),
            bare.clone(),
            pool2.clone(),
            app_credentials.clone(),
            user.clone(),
        );
        async move {
            let m = client
                .get_message(&app, &user, &bare[i])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            client
                .set_message_categories(&app, &user, &m.id, &["tenantflow/processed".to_owned()])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            sqlx::query(
                "INSERT INTO bench_raw_inserts (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('bare', $1, 1, 'Fetched', '1.0', $2, '{}'::jsonb)",
            )
            .bind(&m.id)
            .bind(serde_json::to_value(&m)?)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await?;
    sim.shutdown().await;
    let per_second = messages as f64 / workflow_seconds;
    Ok(MailReport {
        benchmark: "mail",
        messages,
        concurrency,
        enriched_events_per_second: per_second,
        workflow_seconds,
        ratio: per_second / bare_loop.per_second,
        webhook_ack,
        bare_loop,
        target_ratio: 0.3,
        target_ack_p99_ms: 50.0,
        events_per_message: events as f64 / messages as f64,
        bytes_per_message: bytes as f64 / messages as f64,
    })
}
