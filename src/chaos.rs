//! `tenantflow chaos`: two `serve` instances on one scratch database, killed (`kill -9`)
//! and restarted at random, the Graph simulator answering with injected faults (429, 5xx,
//! slow, 401) at a set rate, and a workload of every workflow (resyncs, health checks,
//! contact syncs) started meanwhile. Then the faults stop, every run is let end, a last
//! round runs against a quiet simulator, and the invariants are checked:
//!
//! - every run ended, exactly once;
//! - no step completed twice, and no effect applied twice (a run's tenant events of one
//!   type, a contact's creation or link, a tenant's result in one sync);
//! - nothing lost: after the last round, each tenant's latest snapshot holds the simulator's
//!   policies and each mapped tenant's enabled users are linked contacts;
//! - no consumer skipped an event: every read model has read the whole log, and equals
//!   what a rebuild replays from it.
//!
//! Prints the figures (kills, runs, faults, violations) and writes them as JSON; fails when
//! any invariant does not hold.

use anyhow::Context;
use domain::connection::ConnectionCommand;
use domain::run::OperationRun;
use domain::{EntraTenantId, Provider, Role, TenantKey};
use graph::sim::{Fault, SimHandle};
use graph::{Endpoint, GraphApi};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use store::{CommandBus, Metadata, Metrics};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::Config;
use crate::serve::{open_vault, Database};

/// The scratch database the harness works in (dropped and created anew each run).
const DATABASE: &str = "tenantflow_chaos";
const WORKSPACE: &str = "chaos";
/// Events that end a run.
const TERMINAL: &[&str] = &[
    "RunSucceeded",
    "RunPartiallySucceeded",
    "RunFailed",
    "RunCancelled",
    "RunBlocked",
];

/// What `tenantflow chaos` is asked to do.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seconds: u64,
    pub tenants: usize,
    /// Chance per workload tick (every 200 ms) that a fault is injected.
    pub fault_rate: f64,
    /// Mean seconds between kills.
    pub kill_every: u64,
    pub seed: u64,
    pub json: PathBuf,
}

#[derive(Debug, Default, Serialize)]
struct ChaosReport {
    benchmark: &'static str,
    seconds: u64,
    tenants: usize,
    seed: u64,
    kills: usize,
    restarts: usize,
    faults_injected: usize,
    runs_started: BTreeMap<String, usize>,
    runs_by_outcome: BTreeMap<String, i64>,
    events: i64,
    violations: Vec<String>,
}

pub async fn run(config: Config, options: ChaosOptions) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, DATABASE).await?;
    let url = db.url_of(&config, DATABASE)?;
    let result = chaos(&config, &db.pool, &url, &options).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        "chaos: {} s, {} kills, {} restarts, {} faults, runs {:?}, outcomes {:?}, {} events, violations {}",
        report.seconds,
        report.kills,
        report.restarts,
        report.faults_injected,
        report.runs_started,
        report.runs_by_outcome,
        report.events,
        report.violations.len()
    );
    for v in &report.violations {
        tracing::error!("violation: {v}");
    }
    crate::bench::publish(&report, &options.json)?;
    anyhow::ensure!(
        report.violations.is_empty(),
        "{} invariants did not hold",
        report.violations.len()
    );
    Ok(())
}

/// One `tenantflow serve` child.
struct Instance {
    child: tokio::process::Child,
}

impl Instance {
    async fn start(config: &Config, url: &str, sim: &SimHandle) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--data-dir")
            .arg(&config.data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", url)
            .env("TENANTFLOW_DEMO", "false")
            .env("TENANTFLOW_LOGIN_BASE_URL", sim.login_base().as_str())
            .env("TENANTFLOW_GRAPH_BASE_URL", sim.graph_base().as_str())
            // A short lease, so a killed instance's runs are taken over soon.
            .env("TENANTFLOW_WORKFLOW_LEASE_SECONDS", "3")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start tenantflow serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        // Reads the log to its end, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on http://") {
                    let _ = tx.try_send(());
                }
                if line.contains("ERROR") || line.contains("panicked") {
                    tracing::warn!(instance = %line, "chaos: an instance logged an error");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .ok()
            .flatten()
            .context("serve did not start within 120 s")?;
        Ok(Self { child })
    }

    /// `kill -9`, and the process reaped.
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, and a bounded wait for the process to end.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn chaos(
    config: &Config,
    pool: &sqlx::PgPool,
    url: &str,
    options: &ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let sim = graph::sim::try_spawn(graph::sim::SimConfig {
        tenants: options.tenants,
        seed: options.seed,
        page_size: 20,
        users_per_tenant: Some(20),
        ..graph::sim::SimConfig::default()
    })
    .await?;
    let bus = CommandBus::new(pool.clone(), domain::Services::system(), Metrics::new());
    let vault = open_vault(config)?;
    let meta = Metadata::new(WORKSPACE, "chaos", Role::Owner);
    let fleet = sim.tenants();
    let (keys, connections) = set_up(&bus, &vault, &meta, &sim).await?;
    let mut report = ChaosReport {
        benchmark: "chaos",
        seconds: options.seconds,
        tenants: options.tenants,
        seed: options.seed,
        ..ChaosReport::default()
    };

    let mut instances = vec![
        Some(Instance::start(config, url, &sim).await?),
        Some(Instance::start(config, url, &sim).await?),
    ];
    map_contacts(&bus, &meta, &fleet).await?;
    tracing::info!(
        tenants = keys.len(),
        "chaos: two instances up; the workload starts"
    );
    let endpoints = [
        Endpoint::Token,
        Endpoint::ListConditionalAccessPolicies,
        Endpoint::ListSubscribedSkus,
        Endpoint::UsersDelta,
        Endpoint::ListDelegatedAdminCustomers,
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let mut next_kill = started + kill_pause(&mut rng, options.kill_every);
    while Instant::now() < deadline {
        // One operation per tick, of every kind the product runs.
        let roll: f64 = rng.gen();
        let key = &keys[rng.gen_range(0..keys.len())];
        let kind = if roll < 0.55 {
            Some((workflows::resync::RUN_TYPE, workflows::resync::MODULE))
        } else if roll < 0.8 {
            Some((workflows::health::RUN_TYPE, workflows::health::MODULE))
        } else {
            None
        };
        let outcome = match kind {
            Some((run_type, module)) => app::start_operation(&bus, &meta, key, run_type, module)
                .await
                .map(|s| (run_type, s)),
            None if roll < 0.88 => app::contacts::start_contact_sync(&bus, &meta, None)
                .await
                .map(|s| (workflows::contacts::SYNC, s)),
            None => Err(app::AppError::Invalid("idle tick".into())),
        };
        if let Ok((run_type, app::Started::Queued(_) | app::Started::Blocked(..))) = outcome {
            *report.runs_started.entry(run_type.to_owned()).or_default() += 1;
        }
        if rng.gen_bool(options.fault_rate.clamp(0.0, 1.0)) {
            let fault = match rng.gen_range(0..4) {
                0 => Fault::Throttled {
                    retry_after_secs: Some(1),
                },
                1 => Fault::ServerError { status: 503 },
                2 => Fault::Slow { delay_ms: 400 },
                _ => Fault::Unauthorized,
            };
            let endpoint = endpoints[rng.gen_range(0..endpoints.len())];
            let spec = fault
                .on(endpoint)
                .for_tenant(fleet[rng.gen_range(0..fleet.len())].tenant_id)
                .times(rng.gen_range(1..=3));
            sim.inject(spec);
            report.faults_injected += 1;
        }
        if Instant::now() >= next_kill {
            let which = rng.gen_range(0..instances.len());
            if let Some(instance) = instances[which].take() {
                instance.kill().await;
                report.kills += 1;
            }
            instances[which] = Some(Instance::start(config, url, &sim).await?);
            report.restarts += 1;
            next_kill = Instant::now() + kill_pause(&mut rng, options.kill_every);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Quiet: no more faults or kills; every run ends.
    sim.clear_faults();
    tracing::info!(
        kills = report.kills,
        "chaos: quiet; waiting for every run to end"
    );
    all_runs_ended(pool, Duration::from_secs(300)).await?;
    // The last round against a quiet simulator: a resync of every tenant and a contact
    // sync, whose results are compared with the simulator's ground truth.
    let mut last = Vec::new();
    for (key, (t, connection)) in keys.iter().zip(fleet.iter().zip(&connections)) {
        // A 401 meanwhile left the connection in error until a new credential: the operator's
        // fix, before the round whose results are compared with the simulator.
        app::set_credential(
            &bus,
            &vault,
            &meta,
            *connection,
            &t.client_id,
            &t.client_secret,
            Some(t.tenant_id.into()),
        )
        .await
        .map_err(fail)?;
        match app::start_operation(
            &bus,
            &meta,
            key,
            workflows::resync::RUN_TYPE,
            workflows::resync::MODULE,
        )
        .await
        {
            Ok(s) => last.push(s.run_id()),
            Err(e) => report
                .violations
                .push(format!("the last resync of {key} did not start: {e}")),
        }
    }
    let sync = app::contacts::start_contact_sync(&bus, &meta, None)
        .await
        .map_err(fail)?;
    last.push(sync.run_id());
    all_runs_ended(pool, Duration::from_secs(300)).await?;
    for run_id in &last {
        let run = bus
            .load::<OperationRun>(&run_id.to_string())
            .await
            .map_err(fail)?
            .aggregate;
        if run.outcome != domain::run::RunOutcome::Succeeded {
            report.violations.push(format!(
                "a run of the last round ({} {run_id}) ended {:?}: {:?}",
                run.run_type, run.outcome, run.failure_summary
            ));
        }
    }
    caught_up(pool, Duration::from_secs(120)).await?;
    for instance in instances.into_iter().flatten() {
        instance.stop().await;
    }

    check(pool, &sim, &keys, &fleet, &mut report).await?;
    sim.shutdown().await;
    Ok(report)
}

fn kill_pause(rng: &mut StdRng, mean: u64) -> Duration {
    let mean = mean.max(1) as f64;
    Duration::from_secs_f64(rng.gen_range(mean * 0.5..mean * 1.5))
}

/// Registers the fleet with ready connections, and sets contact sync up for half of it.
async fn set_up(
    bus: &CommandBus,
    vault: &store::Vault,
    meta: &Metadata,
    sim: &SimHandle,
) -> anyhow::Result<(Vec<TenantKey>, Vec<domain::ConnectionId>)> {
    let mut keys = Vec::new();
    let mut connections = Vec::new();
    for t in sim.tenants() {
        let entra = EntraTenantId::from(t.tenant_id);
        let key = app::register_tenant(bus, meta, entra, &t.display_name, &t.default_domain)
            .await
            .map_err(fail)?;
        let c = app::create_connection(bus, meta, &key, Provider::Microsoft, entra, "Graph")
            .await
            .map_err(fail)?;
        app::set_credential(
            bus,
            vault,
            meta,
            c,
            &t.client_id,
            &t.client_secret,
            Some(entra),
        )
        .await
        .map_err(fail)?;
        let scopes = vec!["Policy.Read.All".to_owned(), "User.Read.All".to_owned()];
        app::change_connection(bus, meta, c, ConnectionCommand::GrantConsent { scopes })
            .await
            .map_err(fail)?;
        keys.push(key);
        connections.push(c);
    }
    for flag in domain::FeatureFlag::ALL {
        app::contacts::set_feature_flag(bus, meta, flag, true)
            .await
            .map_err(fail)?;
    }
    let partner = sim.partner();
    let setup = app::contacts::PartnerSetup::Direct {
        partner_tenant_id: partner.tenant_id.into(),
        client_id: partner.client_id.clone(),
        client_secret: partner.client_secret.clone(),
    };
    app::contacts::configure_partner_connection(bus, vault, meta, &setup)
        .await
        .map_err(fail)?;
    Ok((keys, connections))
}

/// Clients for the first half of the fleet, a discovery (run by the instances) and the
/// mappings confirmed: the contact syncs of the workload then have tenants to sync.
async fn map_contacts(
    bus: &CommandBus,
    meta: &Metadata,
    fleet: &[graph::sim::SimTenant],
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for t in fleet.iter().take(fleet.len() / 2) {
        let client_id = app::contacts::create_client(
            bus,
            meta,
            &t.display_name,
            vec![t.default_domain.clone()],
        )
        .await
        .map_err(fail)?;
        rows.push(app::contacts::MappingConfirmation {
            entra_tenant_id: t.tenant_id.into(),
            client_id,
        });
    }
    let discovery = app::contacts::start_discovery(bus, meta)
        .await
        .map_err(fail)?;
    let run = crate::bench::run_ended(bus, discovery.run_id(), Duration::from_secs(120)).await?;
    anyhow::ensure!(
        run.outcome == domain::run::RunOutcome::Succeeded,
        "the discovery did not succeed: {:?}",
        run.failure_summary
    );
    if !rows.is_empty() {
        app::contacts::confirm_mappings(bus, meta, &rows)
            .await
            .map_err(fail)?;
    }
    Ok(())
}

/// Waits (bounded) until every queued run has ended.
async fn all_runs_ended(pool: &sqlx::PgPool, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let open = open_runs(pool).await?;
        if open == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{open} runs did not end within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn open_runs(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events WHERE aggregate_type = 'operation_run' \
         GROUP BY aggregate_id HAVING count(*) FILTER (WHERE event_type = ANY($1)) = 0) open",
    )
    .bind(TERMINAL)
    .fetch_one(pool)
    .await?)
}

/// Waits (bounded) until every read model has read the whole log.
async fn caught_up(pool: &sqlx::PgPool, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM consumer_checkpoints c \
             WHERE c.name = ANY($1) AND c.global_position < (SELECT coalesce(max(global_position), 0) FROM events)",
        )
        .bind(projection_names())
        .fetch_one(pool)
        .await?;
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{behind} read models did not catch up within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn projection_names() -> Vec<String> {
    projections::all()
        .iter()
        .map(|p| p.name().to_owned())
        .collect()
}

/// Every row of every read model, as JSON text, sorted.
async fn read_model_rows(pool: &sqlx::PgPool) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut all = BTreeMap::new();
    for p in projections::all() {
        for table in p.tables() {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT row_to_json(t)::text FROM {} t ORDER BY 1",
                store::db::quote_ident(table)
            ))
            .fetch_all(pool)
            .await?;
            all.insert((*table).to_owned(), rows);
        }
    }
    Ok(all)
}

/// Groups that must have exactly one (or at most one) row: a query returning the
/// offending groups' descriptions.
async fn offenders(pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(sql)
        .bind(TERMINAL)
        .fetch_all(pool)
        .await?)
}

/// The invariants of the log itself: every run ended exactly once, and nothing was done
/// twice (a step, a run's effect on a tenant or connection, a contact's creation, an
/// Entra user's link, a tenant's result in one sync). Returns the violations.
async fn once_each(pool: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    let checks: [(&str, &str); 6] = [
        (
            "a run did not end exactly once",
            "SELECT aggregate_id || ': ' || count(*) FILTER (WHERE event_type = ANY($1)) FROM events \
             WHERE aggregate_type = 'operation_run' GROUP BY aggregate_id \
             HAVING count(*) FILTER (WHERE event_type = ANY($1)) <> 1",
        ),
        (
            "a step completed twice",
            // Logged on their own, or carried by the run's end (issue 13).
            "WITH completed AS ( \
                 SELECT aggregate_id, payload -> 'RunStepCompleted' AS step FROM events \
                 WHERE event_type = 'RunStepCompleted' \
                 UNION ALL \
                 SELECT e.aggregate_id, c.event -> 'RunStepCompleted' FROM events e \
                 CROSS JOIN LATERAL jsonb_array_elements(COALESCE(e.payload -> e.event_type -> 'progress', '[]')) c(event) \
                 WHERE e.aggregate_type = 'operation_run' AND c.event ? 'RunStepCompleted') \
             SELECT aggregate_id || ' ' || (step ->> 'step') || ' x' || count(*) FROM completed \
             GROUP BY aggregate_id, step ->> 'step', step ->> 'attempt' \
             HAVING count(*) > 1",
        ),
        (
            "a run applied an effect twice",
            "SELECT aggregate_id || ' ' || event_type || ' x' || count(*) FROM events \
             WHERE aggregate_type IN ('tenant', 'provider_connection') AND metadata ->> 'actor' LIKE 'workflow:%' \
             AND event_type IN ('PolicySnapshotted', 'LicensesRefreshed', 'HealthChecked') \
             GROUP BY aggregate_id, event_type, metadata ->> 'correlation_id' HAVING count(*) > 1",
        ),
        (
            "a contact was created twice",
            "SELECT aggregate_id FROM events WHERE event_type = 'ContactCreated' \
             GROUP BY aggregate_id HAVING count(*) > 1",
        ),
        (
            "an Entra user was linked twice",
            "SELECT (payload -> 'ContactLinked' -> 'entra_user')::text FROM events \
             WHERE event_type = 'ContactLinked' \
             GROUP BY payload -> 'ContactLinked' -> 'entra_user' HAVING count(*) > 1",
        ),
        (
            "a sync recorded a tenant twice",
            "SELECT aggregate_id || ' ' || (payload -> 'ContactSyncRecorded' ->> 'run_id') FROM events \
             WHERE event_type = 'ContactSyncRecorded' \
             GROUP BY aggregate_id, payload -> 'ContactSyncRecorded' ->> 'run_id' HAVING count(*) > 1",
        ),
    ];
    for (what, sql) in checks {
        for offender in offenders(pool, sql).await? {
            v.push(format!("{what}: {offender}"));
        }
    }
    Ok(v)
}

async fn check(
    pool: &sqlx::PgPool,
    sim: &SimHandle,
    keys: &[TenantKey],
    fleet: &[graph::sim::SimTenant],
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    let v = &mut report.violations;
    v.extend(once_each(pool).await?);

    // Nothing lost: the last resync's snapshot holds what the simulator has.
    for (key, t) in keys.iter().zip(fleet) {
        let expected = sim.policies(t.tenant_id).map_err(fail)?.len() as i64;
        let latest: Option<i64> = sqlx::query_scalar(
            "SELECT jsonb_array_length(payload -> 'PolicySnapshotted' -> 'policies')::bigint FROM events \
             WHERE aggregate_type = 'tenant' AND aggregate_id = $1 AND event_type = 'PolicySnapshotted' \
             ORDER BY global_position DESC LIMIT 1",
        )
        .bind(key.to_string())
        .fetch_optional(pool)
        .await?;
        if latest != Some(expected) {
            v.push(format!(
                "{key}: the latest snapshot has {latest:?} policies, the simulator {expected}"
            ));
        }
    }
    // Every enabled user of a mapped tenant is a linked contact.
    let graph = graph::GraphClient::new(sim.graph_config()).map_err(fail)?;
    let mapped: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT payload -> 'MappingConfirmed' ->> 'client_id' FROM events WHERE event_type = 'MappingConfirmed'",
    )
    .fetch_all(pool)
    .await?;
    if !mapped.is_empty() {
        let mut expected = 0usize;
        for t in fleet.iter().take(fleet.len() / 2) {
            let users = graph.list_users(&t.credentials()).await.map_err(fail)?;
            expected += users
                .iter()
                .filter(|u| u.account_enabled != Some(false))
                .count();
        }
        let linked: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT payload -> 'ContactLinked' -> 'entra_user') FROM events WHERE event_type = 'ContactLinked'",
        )
        .fetch_one(pool)
        .await?;
        if linked != expected as i64 {
            v.push(format!(
                "{linked} Entra users are linked to contacts; the mapped tenants have {expected} enabled users"
            ));
        }
    }

    // No consumer skipped an event: the read models equal a rebuild from the log.
    let live = read_model_rows(pool).await?;
    let all = projections::all();
    projections::rebuild(pool, &all, 1000, &crate::bench::Quiet)
        .await
        .map_err(fail)?;
    let rebuilt = read_model_rows(pool).await?;
    for (table, rows) in &live {
        if rebuilt.get(table) != Some(rows) {
            v.push(format!(
                "{table}: the live read model ({} rows) differs from its rebuild ({} rows)",
                rows.len(),
                rebuilt.get(table).map_or(0, Vec::len)
            ));
        }
    }

    report.runs_by_outcome = sqlx::query_as::<_, (String, i64)>(
        "SELECT event_type, count(*) FROM events WHERE event_type = ANY($1) GROUP BY 1",
    )
    .bind(TERMINAL)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    report.events = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::contact::{ContactCommand, ContactDetails};
    use domain::{ClientId, Contact, ContactId, EntraUserRef};
    use testkit::{owner, TestDb};

    #[tokio::test]
    async fn the_invariants_catch_an_unended_run_and_a_user_linked_twice() {
        let db = TestDb::new().await;
        let bus = db.bus().await;
        let pool = bus.pool().clone();
        assert_eq!(once_each(&pool).await.unwrap(), Vec::<String>::new());

        // A run that never ends.
        let (tenant, _) = testkit::ReadyTenant::new(&bus, testkit::CONTOSO)
            .build()
            .await;
        app::start_operation(
            &bus,
            &owner(),
            &tenant,
            workflows::resync::RUN_TYPE,
            workflows::resync::MODULE,
        )
        .await
        .unwrap();
        // One Entra user linked from two contacts: something a sync must never do.
        let user = EntraUserRef {
            entra_tenant_id: testkit::guid(testkit::CONTOSO),
            object_id: uuid::Uuid::from_u128(7),
        };
        let meta = Metadata::new("acme", "test", Role::System);
        for _ in 0..2 {
            let create = ContactCommand::Create {
                workspace: "acme".parse().unwrap(),
                client_id: ClientId::default(),
                details: ContactDetails {
                    name: "Twice".into(),
                    ..ContactDetails::default()
                },
                entra_user: Some(user),
            };
            bus.execute::<Contact>(&ContactId::default().to_string(), create, &meta)
                .await
                .unwrap();
        }

        let found = once_each(&pool).await.unwrap();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("a run did not end exactly once"),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("an Entra user was linked twice"),
            "{found:#?}"
        );
    }
}
