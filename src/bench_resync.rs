//! `tenantflow bench resync`: the workflow engine resyncing a simulated fleet, against a
//! bare loop doing the same Graph reads (token, every policy page, subscribed SKUs) and one
//! insert per tenant, and a floor loop doing the same reads and writing a run's share of
//! the events the workflow wrote (so the report splits a run's cost into the log's and the
//! engine's), and a leased floor loop: the floor with the lease R7 asks of any engine.

use domain::connection::ConnectionCommand;
use domain::{EntraTenantId, Provider, Role, TenantKey};
use graph::GraphApi;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{CommandBus, Metadata, Metrics};

use crate::bench::{measure, CpuPerOp, CpuReading, PhaseResult};
use crate::config::Config;
use crate::serve::{open_vault, Database};

#[derive(Debug, Serialize)]
struct ResyncReport {
    benchmark: &'static str,
    tenants: usize,
    concurrency: usize,
    /// Partitions of the log when the fleet's first event was written.
    partitions: i64,
    /// Runs from queued to succeeded, per second.
    workflow_resyncs_per_second: f64,
    workflow_seconds: f64,
    /// Starting the runs (part of the workflow time; the engine works meanwhile).
    starts_seconds: f64,
    /// Token + all policy pages + SKUs + one INSERT per tenant, per second.
    bare_loop: PhaseResult,
    /// workflow / bare loop
    ratio: f64,
    target_ratio: f64,
    /// The engines' task claims during the timed phase, per run: those that found a run
    /// to advance and those that found nothing.
    claims_per_run: f64,
    empty_claims_per_run: f64,
    /// CPU per run of the workflow phase and per tenant of the bare loop: this process
    /// (engines, Graph client and simulator) and the whole machine (PostgreSQL too).
    workflow_cpu: CpuPerOp,
    bare_loop_cpu: CpuPerOp,
    /// What the workflow left in the log per run (the run's own events and its tenant's):
    /// the count `docs/SCALING.md` budgets, and their payload and metadata bytes as
    /// PostgreSQL prints them.
    events_per_run: f64,
    event_bytes_per_run: f64,
    /// The bare loop's reads, then, instead of its one row, a run's share of the events the
    /// workflow wrote (the same rows, under other stream ids) in one statement, announced
    /// as the bus announces, with the audit chain's sealer beside: what writing a run's facts
    /// to this log costs with no engine around it.
    floor_loop: PhaseResult,
    floor_loop_cpu: CpuPerOp,
    floor_sealer: crate::bench::SealerLag,
    /// floor loop / bare loop: the most an engine that writes those events could reach.
    floor_ratio: f64,
    /// workflow / floor loop: the engine's own cost (claims and leases, scope locks, the
    /// task feed, snapshots, decisions) on top of the log's.
    engine_ratio: f64,
    /// The floor loop with the least that R7.1 and R7.2 ask of any engine around it: each
    /// tenant's task (queued before the phase, untimed) leased by its id in a statement of
    /// its own, committed before the Graph reads, and freed by the statement that writes
    /// the run's events. No engine's claim can cost less: it must find its task, not be
    /// handed the id, and fence its write with the lease.
    leased_floor_loop: PhaseResult,
    leased_floor_loop_cpu: CpuPerOp,
    leased_floor_sealer: crate::bench::SealerLag,
    /// leased floor loop / bare loop: the most an engine that writes those events and keeps
    /// R7's lease could reach.
    leased_floor_ratio: f64,
    /// workflow / leased floor loop: what the engine costs beyond that least.
    engine_beyond_lease_ratio: f64,
}

/// The fleet and the log a resync bench runs on.
pub struct Shape {
    pub tenants: usize,
    /// Engine instances (and bare-loop tasks).
    pub concurrency: usize,
    /// Empty partitions put behind the log's first event.
    pub partitions: u32,
}

pub async fn run(config: Config, shape: Shape, json: PathBuf) -> anyhow::Result<()> {
    let Shape {
        tenants,
        concurrency,
        partitions,
    } = shape;
    let db = Database::open_scratch(&config, "tenantflow_bench").await?;
    let result = async {
        age_log(&db.pool, partitions).await?;
        resync(&config, &db.pool, tenants, concurrency).await
    }
    .await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        tenants,
        concurrency,
        partitions = report.partitions,
        "workflow: {:.1} resyncs/s ({:.1} s, of which starting the runs {:.1} s; {:.2} claims per run, {:.2} empty; CPU per run {:.2} ms here, {:.2} ms machine); bare loop: {:.1} tenants/s (CPU {:.2} ms here, {:.2} ms machine); ratio {:.2} (target >= {:.1}); floor loop ({:.1} events, {:.0} bytes a run): {:.1} tenants/s (CPU {:.2} ms here, {:.2} ms machine), floor ÷ bare {:.2}, workflow ÷ floor {:.2}; leased floor loop: {:.1} tenants/s (CPU {:.2} ms here, {:.2} ms machine), leased floor ÷ bare {:.2}, workflow ÷ leased floor {:.2}",
        report.workflow_resyncs_per_second,
        report.workflow_seconds,
        report.starts_seconds,
        report.claims_per_run,
        report.empty_claims_per_run,
        report.workflow_cpu.process_ms,
        report.workflow_cpu.machine_ms,
        report.bare_loop.per_second,
        report.bare_loop_cpu.process_ms,
        report.bare_loop_cpu.machine_ms,
        report.ratio,
        report.target_ratio,
        report.events_per_run,
        report.event_bytes_per_run,
        report.floor_loop.per_second,
        report.floor_loop_cpu.process_ms,
        report.floor_loop_cpu.machine_ms,
        report.floor_ratio,
        report.engine_ratio,
        report.leased_floor_loop.per_second,
        report.leased_floor_loop_cpu.process_ms,
        report.leased_floor_loop_cpu.machine_ms,
        report.leased_floor_ratio,
        report.engine_beyond_lease_ratio,
    );
    crate::bench::publish(&report, &json)
}

/// Gives the scratch log `partitions` empty partitions of 1,000 positions behind the
/// position its next event gets, then partitions of the default size ahead: the shape of a
/// log that has grown for years (the positions between are never handed out).
async fn age_log(pool: &sqlx::PgPool, partitions: u32) -> anyhow::Result<()> {
    if partitions == 0 {
        return Ok(());
    }
    const SMALL: i64 = 1_000;
    let (size, grows) = store::partitions::rule(pool).await?;
    store::partitions::resize(pool, SMALL).await?;
    let room = SMALL * i64::from(partitions);
    store::partitions::ensure(pool, room).await?;
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('events', 'global_position'), \
             coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position')), 0) + $1)",
    )
    .bind(room)
    .execute(pool)
    .await?;
    store::partitions::set_rule(pool, size, grows).await?;
    Ok(())
}

async fn resync(
    config: &Config,
    pool: &sqlx::PgPool,
    tenants: usize,
    concurrency: usize,
) -> anyhow::Result<ResyncReport> {
    let sim = graph::sim::try_spawn(graph::sim::SimConfig {
        tenants,
        seed: 42,
        ..graph::sim::SimConfig::default()
    })
    .await?;
    let metrics = Metrics::new();
    let bus = CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
    let vault = open_vault(config)?;
    let meta = Metadata::new("bench", "bench", Role::Owner);
    let fleet = sim.tenants();
    let partitions = store::partitions::count(pool).await?;

    // The service side runs from the start, as in a running service: the task feed and
    // `concurrency` engines. The fleet's registration flows through the feed before the
    // timed phase, so the feed is caught up when the resync starts, as it is in service.
    // Then: start every resync, and let the feed and the engines
    // work until every run has completed.
    let client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(|e| anyhow::anyhow!("{e}"))?);
    let background = crate::bench::engines(config, &bus, &vault, client, &metrics, concurrency);
    tracing::info!(tenants, "registering the fleet");
    let mut keys = Vec::with_capacity(fleet.len());
    for t in &fleet {
        let entra = EntraTenantId::from(t.tenant_id);
        let key: TenantKey =
            app::register_tenant(&bus, &meta, entra, &t.display_name, &t.default_domain)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = app::create_connection(&bus, &meta, &key, Provider::Microsoft, entra, "Graph")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let scopes = vec!["Policy.Read.All".to_owned()];
        app::change_connection(&bus, &meta, c, ConnectionCommand::GrantConsent { scopes })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        keys.push(key);
    }

    let mut after = feed_caught_up(pool).await?;
    let fleet_registered = after.global_position;
    tracing::info!(tenants, "fleet registered; resyncing every tenant");
    // A fleet resync starts a run per tenant as a schedule's fan-out does: one fleet start.
    let started = Instant::now();
    let cpu = CpuReading::now();
    let claims_before = metrics.engine_claims_counted();
    let requests: Vec<app::StartRequest> = keys
        .iter()
        .map(|k| app::StartRequest {
            tenant: k.clone(),
            run_id: None,
        })
        .collect();
    let outcomes = app::start_operations(
        &bus,
        &meta,
        &requests,
        workflows::resync::RUN_TYPE,
        workflows::resync::MODULE,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let queued = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(app::Started::Queued(_))))
        .count();
    anyhow::ensure!(
        queued == keys.len(),
        "only {queued} of {} runs were queued",
        keys.len()
    );
    let starts_seconds = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(1800);
    // Runs that ended, counted by following the log from where the fleet start began: each
    // poll reads only the events committed since the last one, without their payloads, so
    // watching the benchmark loads the database it measures as little as it can.
    let mut watcher = pool.acquire().await?;
    let mut done = 0usize;
    while done < keys.len() {
        let batch = store::log::read_live_batch(
            &mut watcher,
            after,
            10_000,
            store::log::Payloads::OfAggregates(&[]),
        )
        .await?;
        if let Some(last) = batch.last() {
            after = last.position;
        }
        done += batch
            .iter()
            .filter(|e| {
                matches!(
                    e.event_type.as_str(),
                    "RunSucceeded" | "RunPartiallySucceeded" | "RunFailed"
                )
            })
            .count();
        anyhow::ensure!(
            Instant::now() < deadline,
            "the fleet resync did not finish in 30 minutes ({done} runs done)"
        );
        // At most every 10 ms, even while runs end: reading again as soon as a read
        // returned anything made the watcher a query per few commits on the cores it
        // measures. The end is known to within 10 ms.
        if done < keys.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(watcher);
    let workflow_seconds = started.elapsed().as_secs_f64();
    let workflow_cpu = cpu.per_op(keys.len());
    let claims_after = metrics.engine_claims_counted();
    background.stop().await;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'RunFailed'")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(failed == 0, "{failed} resyncs failed");

    // The bare loop: the same reads with a fresh client (no cached tokens), one row each.
    let bare_client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(|e| anyhow::anyhow!("{e}"))?);
    let fleet = Arc::new(fleet);
    let (bare_fleet, pool2) = (fleet.clone(), pool.clone());
    let cpu = CpuReading::now();
    let bare_loop = measure(keys.len(), concurrency, move |i| {
        let (client, fleet, pool) = (bare_client.clone(), bare_fleet.clone(), pool2.clone());
        async move {
            let t = &fleet[i];
            let (policies, skus) = graph_reads(client.as_ref(), t).await?;
            let payload = serde_json::json!({ "policies": policies, "skus": skus });
            sqlx::query(
                "INSERT INTO bench_raw_inserts (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('bare', $1, 1, 'Fetched', '1.0', $2, '{}'::jsonb)",
            )
            .bind(t.tenant_id.to_string())
            .bind(payload)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await?;
    let bare_loop_cpu = cpu.per_op(keys.len());

    let written = Written::since(pool, fleet_registered).await?;
    let events_per_run = written.len() as f64 / keys.len() as f64;
    let event_bytes_per_run = written.bytes as f64 / keys.len() as f64;
    let floor_client: Arc<dyn GraphApi> =
        Arc::new(graph::GraphClient::new(sim.graph_config()).map_err(|e| anyhow::anyhow!("{e}"))?);
    let written = Arc::new(written);
    let sealer = crate::bench::Sealer::start(pool).await?;
    let cpu = CpuReading::now();
    let floor_loop = floor(
        &bus,
        floor_client.clone(),
        fleet.clone(),
        written.clone(),
        None,
        concurrency,
    )
    .await?;
    let floor_loop_cpu = cpu.per_op(keys.len());
    let floor_sealer = sealer.finish().await?;

    let tasks = Arc::new(queue_leased_floor(pool, keys.len()).await?);
    let sealer = crate::bench::Sealer::start(pool).await?;
    let cpu = CpuReading::now();
    let leased_floor_loop =
        floor(&bus, floor_client, fleet, written, Some(tasks), concurrency).await?;
    let leased_floor_loop_cpu = cpu.per_op(keys.len());
    let leased_floor_sealer = sealer.finish().await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_tasks WHERE run_type = $1")
        .bind(LEASED_FLOOR_TASK)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "the leased floor left {left} tasks");
    sim.shutdown().await;
    let per_second = keys.len() as f64 / workflow_seconds;
    let floor_ratio = floor_loop.per_second / bare_loop.per_second;
    let leased_floor_ratio = leased_floor_loop.per_second / bare_loop.per_second;
    Ok(ResyncReport {
        benchmark: "resync",
        tenants: keys.len(),
        concurrency,
        partitions,
        workflow_resyncs_per_second: per_second,
        workflow_seconds,
        starts_seconds,
        ratio: per_second / bare_loop.per_second,
        bare_loop,
        target_ratio: 0.5,
        claims_per_run: (claims_after.0 - claims_before.0) as f64 / keys.len() as f64,
        empty_claims_per_run: (claims_after.1 - claims_before.1) as f64 / keys.len() as f64,
        workflow_cpu,
        bare_loop_cpu,
        events_per_run,
        event_bytes_per_run,
        floor_ratio,
        engine_ratio: per_second / floor_loop.per_second,
        floor_loop,
        floor_loop_cpu,
        floor_sealer,
        leased_floor_ratio,
        engine_beyond_lease_ratio: per_second / leased_floor_loop.per_second,
        leased_floor_loop,
        leased_floor_loop_cpu,
        leased_floor_sealer,
    })
}

/// The Graph reads of a resync, made by the bare and floor loops: a token, every policy
/// page, the subscribed SKUs. Returns how many policies and SKUs the tenant has.
async fn graph_reads(
    client: &dyn GraphApi,
    tenant: &graph::sim::SimTenant,
) -> anyhow::Result<(usize, usize)> {
    let app = tenant.credentials();
    let policies = client
        .list_conditional_access_policies(&app)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let skus = client
        .list_subscribed_skus(&app)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((policies.len(), skus.len()))
}

/// The events the workflow phase wrote, in log order, column by column.
#[derive(Default)]
struct Written {
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
    bytes: i64,
}

impl Written {
    /// Every event after `position`, with the stream ids the workflow wrote them under (a
    /// copy renames them, [`Self::renamed`], so that it takes no sequence the workflow took).
    async fn since(pool: &sqlx::PgPool, position: i64) -> anyhow::Result<Self> {
        type Row = (
            String,
            String,
            i64,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
                    (octet_length(payload::text) + octet_length(metadata::text))::bigint \
             FROM events WHERE global_position > $1 ORDER BY global_position",
        )
        .bind(position)
        .fetch_all(pool)
        .await?;
        let mut written = Self::default();
        for (t, i, s, et, ev, p, m, bytes) in rows {
            written.aggregate_types.push(t);
            written.aggregate_ids.push(i);
            written.sequences.push(s);
            written.event_types.push(et);
            written.event_versions.push(ev);
            written.payloads.push(p);
            written.metadata.push(m);
            written.bytes += bytes;
        }
        Ok(written)
    }

    fn len(&self) -> usize {
        self.sequences.len()
    }

    /// The stream ids under `prefix`.
    fn renamed(&self, prefix: &str) -> Vec<String> {
        self.aggregate_ids
            .iter()
            .map(|id| format!("{prefix}{id}"))
            .collect()
    }
}

/// The run type of the leased floor's tasks (no engine runs one: the engines are stopped
/// before the loops, and none knows the type).
const LEASED_FLOOR_TASK: &str = "bench.leased_floor";
/// The leased floor's lease owner, as an engine names itself on the tasks it leases.
const LEASE_OWNER: &str = "bench-leased-floor";

/// Queues the leased floor's tasks, one per tenant, due now, as the task feed queues a
/// fleet start's runs; returns their ids in fleet order.
async fn queue_leased_floor(
    pool: &sqlx::PgPool,
    tenants: usize,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let ids: Vec<uuid::Uuid> = (0..tenants).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO workflow_tasks (run_id, workspace_id, run_type, due_at) \
         SELECT id, 'bench', $2, now() FROM UNNEST($1::uuid[]) AS t(id)",
    )
    .bind(&ids)
    .bind(LEASED_FLOOR_TASK)
    .execute(pool)
    .await?;
    Ok(ids)
}

/// The floor loop: for each tenant the bare loop's reads, then its share of `written` (the
/// `i`-th of `fleet.len()` equal slices in log order, so each tenant writes a run's worth)
/// in one statement, its own transaction, as an engine's settle is. With `tasks`, the
/// leased floor: before its reads each tenant leases its task (by id, committed), and the
/// statement that writes its events deletes the task under that lease.
async fn floor(
    bus: &CommandBus,
    client: Arc<dyn GraphApi>,
    fleet: Arc<Vec<graph::sim::SimTenant>>,
    written: Arc<Written>,
    tasks: Option<Arc<Vec<uuid::Uuid>>>,
    concurrency: usize,
) -> anyhow::Result<crate::bench::PhaseResult> {
    let bus = bus.clone();
    let prefix = if tasks.is_some() { "leased:" } else { "floor:" };
    let ids = Arc::new(written.renamed(prefix));
    let insert: Arc<str> = match tasks {
        // The lease is checked where the write happens: the events go in only with the
        // task's row, deleted under the lease this loop took.
        Some(_) => format!(
            "WITH freed AS (DELETE FROM workflow_tasks WHERE run_id = $8 AND lease_owner = $9 RETURNING run_id) {}",
            store::bus::INSERT_EVENT_ROWS.replace(" ORDER BY n", " WHERE EXISTS (SELECT 1 FROM freed) ORDER BY n")
        )
        .into(),
        None => store::bus::INSERT_EVENT_ROWS.into(),
    };
    measure(fleet.len(), concurrency, move |i| {
        let (client, fleet, written, ids, tasks, insert, bus) = (
            client.clone(),
            fleet.clone(),
            written.clone(),
            ids.clone(),
            tasks.clone(),
            insert.clone(),
            bus.clone(),
        );
        async move {
            if let Some(tasks) = &tasks {
                let leased = sqlx::query(
                    "UPDATE workflow_tasks \
                     SET lease_owner = $2, lease_until = now() + interval '30 seconds', \
                         claims = claims + 1, updated_at = now() \
                     WHERE run_id = $1 AND due_at <= now() \
                       AND (lease_until IS NULL OR lease_until < now())",
                )
                .bind(tasks[i])
                .bind(LEASE_OWNER)
                .execute(bus.pool())
                .await?;
                anyhow::ensure!(leased.rows_affected() == 1, "task {i} was not leased");
            }
            graph_reads(client.as_ref(), &fleet[i]).await?;
            let slice = written.len() * i / fleet.len()..written.len() * (i + 1) / fleet.len();
            if slice.is_empty() {
                return Ok(());
            }
            let query = sqlx::query(&insert)
                .bind(&written.aggregate_types[slice.clone()])
                .bind(&ids[slice.clone()])
                .bind(&written.sequences[slice.clone()])
                .bind(&written.event_types[slice.clone()])
                .bind(&written.event_versions[slice.clone()])
                .bind(&written.payloads[slice.clone()])
                .bind(&written.metadata[slice.clone()]);
            let query = match &tasks {
                Some(tasks) => query.bind(tasks[i]).bind(LEASE_OWNER),
                None => query,
            };
            let inserted = query.execute(bus.pool()).await?;
            anyhow::ensure!(
                inserted.rows_affected() == slice.len() as u64,
                "tenant {i}'s events were not all written"
            );
            bus.announce_appends();
            Ok(())
        }
    })
    .await
}

/// Waits (at most a minute) until the task feed has read every event written so far;
/// returns the log position it reached.
async fn feed_caught_up(pool: &sqlx::PgPool) -> anyhow::Result<store::log::Position> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (behind, transaction_id, global_position): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE global_position > c.global_position), \
                    c.transaction_id::text::bigint, c.global_position \
             FROM consumer_checkpoints c WHERE c.name = $1",
        )
        .bind(workflows::tasks::FEED)
        .fetch_optional(pool)
        .await?
        .unwrap_or((1, 0, 0));
        if behind == 0 {
            return Ok(store::log::Position {
                transaction_id,
                global_position,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the task feed is still {behind} events behind after a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
