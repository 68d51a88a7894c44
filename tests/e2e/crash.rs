//! R7, durable workflows, end to end against the real binary: a fleet resync survives
//! `kill -9` of the server mid-way, and two server processes on one database share the work
//! without performing any step twice. The events table is the auditors' truth, so the
//! assertions read it directly; the read models must agree with a full rebuild.

// The phase timeline printed on the way helps when a CI run is slow or fails.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::common::graphql::{ready_sim_tenant, start_server_on, RESYNC};
use crate::common::read_models::{assert_rebuild_reproduces_read_models, projections_caught_up};
use crate::common::Server;
use domain::Role;
use futures::StreamExt;
use graph::sim::{Fault, SimConfig, SimHandle, SimTenant};
use graph::Endpoint;
use serde_json::{json, Value};
use sqlx::PgPool;
use testkit::GraphqlClient;
use uuid::Uuid;

const WORKSPACE: &str = "acme";

/// Events that end a run.
const TERMINAL: &[&str] = &[
    "RunSucceeded",
    "RunPartiallySucceeded",
    "RunFailed",
    "RunCancelled",
    "RunBlocked",
];

/// Large enough that a tenant's policies (at most five) come in one page, so one request
/// is one fetch.
const PAGE_SIZE: usize = 10;

/// Requests the tests keep in flight against the API while registering and resyncing.
const CONCURRENT_REQUESTS: usize = 8;

fn elapsed(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

/// Registers every simulated tenant like a dashboard (tenant, connection, credential,
/// consent), spreading the requests over `clients`; returns tenantflow's tenant ids in
/// fleet order.
async fn register_fleet(clients: &[&GraphqlClient], fleet: &[SimTenant]) -> Vec<String> {
    let mut ids: Vec<(usize, String)> = futures::stream::iter(fleet.iter().enumerate())
        .map(|(i, t)| async move {
            let (tenant, _) = ready_sim_tenant(clients[i % clients.len()], t).await;
            (i, tenant)
        })
        .buffer_unordered(CONCURRENT_REQUESTS)
        .collect()
        .await;
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Starts a resync of every tenant; returns the run ids in the same order.
async fn resync_all(clients: &[&GraphqlClient], tenants: &[String]) -> Vec<String> {
    let mut runs: Vec<(usize, String)> = futures::stream::iter(tenants.iter().enumerate())
        .map(|(i, tenant)| async move {
            let started = clients[i % clients.len()]
                .ok(RESYNC, json!({ "t": tenant }))
                .await["resyncTenant"]
                .clone();
            assert_eq!(started["status"], "QUEUED", "resync of {tenant}: {started}");
            (i, started["runId"].as_str().unwrap().to_owned())
        })
        .buffer_unordered(CONCURRENT_REQUESTS)
        .collect()
        .await;
    runs.sort();
    runs.into_iter().map(|(_, id)| id).collect()
}

/// How many of `runs` have ended, according to the events table.
async fn finished(pool: &PgPool, runs: &[String]) -> usize {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events \
         WHERE aggregate_type = 'operation_run' AND aggregate_id = ANY($1) AND event_type = ANY($2)",
    )
    .bind(runs)
    .bind(TERMINAL)
    .fetch_one(pool)
    .await
    .unwrap();
    n as usize
}

/// The last lines a server logged.
fn log_tail(server: &Server, lines: usize) -> String {
    let log = server.log.lock().unwrap();
    log[log.len().saturating_sub(lines)..].join("\n")
}

/// Waits (bounded) until every run in `runs` has ended; on timeout, says where the
/// unfinished runs stand and what the servers logged last.
async fn wait_until_finished(
    pool: &PgPool,
    runs: &[String],
    servers: &[&Server],
    within: Duration,
) {
    let all_ended = || async { finished(pool, runs).await == runs.len() };
    if testkit::within(within, all_ended).await.is_none() {
        let done = finished(pool, runs).await;
        let last_events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT last, count(*) FROM (SELECT DISTINCT ON (aggregate_id) event_type AS last FROM events \
             WHERE aggregate_type = 'operation_run' AND aggregate_id = ANY($1) \
             ORDER BY aggregate_id, sequence DESC) l GROUP BY last ORDER BY last",
        )
        .bind(runs)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let tasks: Vec<String> = sqlx::query_scalar(
            "SELECT row_to_json(t)::text FROM workflow_tasks t ORDER BY due_at LIMIT 10",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let logs: Vec<String> = servers.iter().map(|s| log_tail(s, 30)).collect();
        panic!(
            "only {done} of {} runs ended within {within:?}\n\
             runs by last event: {last_events:?}\nworkflow_tasks (first 10):\n{}\n\
             server logs (tail):\n{}",
            runs.len(),
            tasks.join("\n"),
            logs.join("\n----\n")
        );
    }
}

/// Asserts that each run ended exactly once, and succeeded.
async fn assert_every_run_succeeded_once(pool: &PgPool, runs: &[String]) {
    let endings: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT aggregate_id, array_agg(event_type ORDER BY sequence) FROM events \
         WHERE aggregate_type = 'operation_run' AND aggregate_id = ANY($1) AND event_type = ANY($2) \
         GROUP BY aggregate_id",
    )
    .bind(runs)
    .bind(TERMINAL)
    .fetch_all(pool)
    .await
    .unwrap();
    let endings: HashMap<String, Vec<String>> = endings.into_iter().collect();
    let wrong: Vec<String> = runs
        .iter()
        .filter(|r| endings.get(*r).map(Vec::as_slice) != Some(&["RunSucceeded".to_owned()]))
        .map(|r| format!("{r}: {:?}", endings.get(r)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} runs did not end with exactly one RunSucceeded: {wrong:#?}",
        wrong.len(),
        runs.len()
    );
}

/// Asserts that each run completed each step of the resync plan exactly once: a step
/// performed again after a crash, or by two runners, never records twice.
async fn assert_each_step_completed_once(pool: &PgPool, runs: &[String]) {
    let completed: Vec<(String, String, i64)> = sqlx::query_as(
        // Logged on their own, or carried by the run's end (issue 13).
        "WITH completed AS ( \
             SELECT aggregate_id, payload -> 'RunStepCompleted' AS step FROM events \
             WHERE aggregate_type = 'operation_run' AND aggregate_id = ANY($1) \
                 AND event_type = 'RunStepCompleted' \
             UNION ALL \
             SELECT e.aggregate_id, c.event -> 'RunStepCompleted' FROM events e \
             CROSS JOIN LATERAL jsonb_array_elements(COALESCE(e.payload -> e.event_type -> 'progress', '[]')) c(event) \
             WHERE e.aggregate_type = 'operation_run' AND e.aggregate_id = ANY($1) \
                 AND c.event ? 'RunStepCompleted') \
         SELECT aggregate_id, step ->> 'step', count(*) FROM completed GROUP BY 1, 2",
    )
    .bind(runs)
    .fetch_all(pool)
    .await
    .unwrap();
    let completed: HashMap<(String, String), i64> = completed
        .into_iter()
        .map(|(run, step, n)| ((run, step), n))
        .collect();
    let mut wrong = Vec::new();
    for run in runs {
        for step in workflows::resync::PLAN.steps {
            let n = completed
                .get(&(run.clone(), step.name.to_owned()))
                .copied()
                .unwrap_or(0);
            if n != 1 {
                wrong.push(format!(
                    "run {run} step {}: {n} RunStepCompleted",
                    step.name
                ));
            }
        }
    }
    let steps = workflows::resync::PLAN.steps.len();
    assert_eq!(
        completed.len(),
        runs.len() * steps,
        "only the plan's steps complete"
    );
    assert!(
        wrong.is_empty(),
        "steps not completed exactly once: {wrong:#?}"
    );
}

/// How many events of each type each tenant has: `(tenant id, event type) -> count`.
async fn tenant_event_counts(pool: &PgPool) -> HashMap<(String, String), i64> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, count(*) FROM events WHERE aggregate_type = 'tenant' GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(t, e, n)| ((t, e), n)).collect()
}

/// The process id in a runner's name (`<hostname>-<pid>-<i>`).
fn pid_of(owner: &str) -> Option<u32> {
    owner.rsplit('-').nth(1)?.parse().ok()
}

/// `(run id, event type, pid of the workflow runner that wrote it)` for the runners' events
/// of `runs`.
async fn runner_events(pool: &PgPool, runs: &[String]) -> Vec<(String, String, u32)> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, metadata ->> 'actor' FROM events \
         WHERE aggregate_type = 'operation_run' AND aggregate_id = ANY($1) AND metadata ->> 'actor' LIKE 'workflow:%' \
         ORDER BY global_position",
    )
    .bind(runs)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(run, event, actor)| {
            let pid = actor
                .strip_prefix("workflow:")
                .and_then(pid_of)
                .unwrap_or_else(|| panic!("actor {actor} names no runner"));
            (run, event, pid)
        })
        .collect()
}

/// Edits a tenant's first Conditional Access policy "in the portal" (its `state` flips);
/// returns the policy's id.
fn edit_a_policy(sim: &SimHandle, tenant: Uuid) -> String {
    let mut policy = sim.policies(tenant).unwrap().remove(0);
    let state = if policy["state"] == "disabled" {
        "enabled"
    } else {
        "disabled"
    };
    policy["state"] = json!(state);
    let stored = sim.upsert_policy(tenant, policy).unwrap();
    stored["id"].as_str().unwrap().to_owned()
}

/// A fresh database and a simulated fleet of `tenants`.
async fn database_and_fleet(tenants: usize, seed: u64) -> (testkit::TestDb, SimHandle) {
    let db = testkit::TestDb::new().await;
    let sim = graph::sim::spawn(SimConfig {
        tenants,
        seed,
        page_size: PAGE_SIZE,
        ..SimConfig::default()
    })
    .await;
    (db, sim)
}

/// Each server advances four runs at a time and leases a run for `lease_seconds`.
fn workflow_settings(lease_seconds: &'static str) -> [(&'static str, &'static str); 2] {
    [
        ("TENANTFLOW_WORKFLOW_WORKERS", "4"),
        ("TENANTFLOW_WORKFLOW_LEASE_SECONDS", lease_seconds),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_resync_survives_kill_9_and_every_tenant_ends_exact() {
    let _alone = crate::common::alone().await;
    let t0 = Instant::now();
    let (db, sim) = database_and_fleet(200, 7).await;
    // A short lease, so the restarted server takes the dead one's runs back quickly; still
    // far longer than a run's advance (a few hundred milliseconds here).
    let env = workflow_settings("3");
    let mut first = start_server_on(&db, &sim, &env).await;
    let first_pid = first.child.id();
    let pool = db.pool().await;
    let fleet = sim.tenants();
    let n = fleet.len();

    let c = first.client(WORKSPACE, Role::Owner);
    let tenants = register_fleet(&[&c], &fleet).await;
    eprintln!("[{}] registered {n} tenants", elapsed(t0));

    let round1 = resync_all(&[&c], &tenants).await;
    wait_until_finished(&pool, &round1, &[&first], Duration::from_secs(60)).await;
    eprintln!("[{}] round 1: {n} runs ended", elapsed(t0));

    // Every third tenant's policies change in the portal between the rounds.
    let edited: BTreeMap<usize, String> = (0..n)
        .step_by(3)
        .map(|i| (i, edit_a_policy(&sim, fleet[i].tenant_id)))
        .collect();
    // Slow policy reads keep round 2 going long enough to kill the server in the middle,
    // most likely while some of its runners wait for Graph.
    sim.inject(Fault::Slow { delay_ms: 200 }.on(Endpoint::ListConditionalAccessPolicies));

    let round2 = resync_all(&[&c], &tenants).await;
    eprintln!("[{}] round 2: {n} runs queued", elapsed(t0));
    let a_quarter_ended = || async {
        let done = finished(&pool, &round2).await;
        assert!(
            done < n,
            "round 2 ended before the kill; slow the policy endpoint down"
        );
        done >= n / 4
    };
    if testkit::within(Duration::from_secs(60), a_quarter_ended)
        .await
        .is_none()
    {
        panic!(
            "round 2 made no progress ({} of {n} runs ended):\n{}",
            finished(&pool, &round2).await,
            log_tail(&first, 30)
        );
    }
    let killed = first.signal_and_wait("KILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "killed by SIGKILL: {killed}"
    );
    let done_at_kill = finished(&pool, &round2).await;
    eprintln!(
        "[{}] killed pid {first_pid} with {done_at_kill} of {n} round-2 runs ended",
        elapsed(t0)
    );
    assert!(
        0 < done_at_kill && done_at_kill < n,
        "the kill hit mid-way: {done_at_kill} of {n} round-2 runs had ended"
    );

    // What the first server was advancing when it died: runs whose task it still leased
    // and that had not ended.
    let held: Vec<(String, String)> = sqlx::query_as(
        "SELECT run_id::text, lease_owner FROM workflow_tasks WHERE lease_owner IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut interrupted = Vec::new();
    for (run, owner) in held {
        assert_eq!(
            pid_of(&owner),
            Some(first_pid),
            "lease of {run} held by {owner}"
        );
        if round2.contains(&run) && finished(&pool, std::slice::from_ref(&run)).await == 0 {
            interrupted.push(run);
        }
    }
    eprintln!("runs interrupted by the kill: {}", interrupted.len());
    assert!(
        !interrupted.is_empty(),
        "the kill interrupted no run; kill while runners wait for Graph"
    );

    let second = start_server_on(&db, &sim, &env).await;
    let second_pid = second.child.id();
    wait_until_finished(&pool, &round2, &[&second], Duration::from_secs(60)).await;
    eprintln!(
        "[{}] round 2: every run ended after the restart (pid {second_pid})",
        elapsed(t0)
    );

    // The auditors' truth: every run succeeded once, every step completed once.
    let runs: Vec<String> = round1.iter().chain(&round2).cloned().collect();
    assert_every_run_succeeded_once(&pool, &runs).await;
    assert_each_step_completed_once(&pool, &runs).await;

    // Each tenant's effects happened exactly once per round: one snapshot per distinct
    // hash, one alert per drift, one license refresh per change of its licenses (none in
    // round 2) and one resync record per run.
    let counts = tenant_event_counts(&pool).await;
    let mut wrong = Vec::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let e = i64::from(edited.contains_key(&i));
        for (event, expected) in [
            ("PolicySnapshotted", 1 + e),
            ("PolicyDriftDetected", e),
            ("LicensesRefreshed", 1),
            ("TenantResynced", 2),
        ] {
            let got = counts
                .get(&(tenant.clone(), event.to_owned()))
                .copied()
                .unwrap_or(0);
            if got != expected {
                wrong.push(format!(
                    "tenant #{i} {tenant}: {got} {event}, expected {expected}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "effects not exact: {wrong:#?}");

    // The round-2 snapshot of an edited tenant names what changed, and was taken by its
    // round-2 run.
    let snapshots: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, metadata ->> 'correlation_id', payload -> 'PolicySnapshotted' -> 'diff' \
         FROM events WHERE aggregate_type = 'tenant' AND event_type = 'PolicySnapshotted'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_tenant: HashMap<&str, Vec<(&str, &Value)>> = HashMap::new();
    for (tenant, run, diff) in &snapshots {
        by_tenant.entry(tenant).or_default().push((run, diff));
    }
    for (&i, policy) in &edited {
        let diffs: Vec<&(&str, &Value)> = by_tenant[tenants[i].as_str()]
            .iter()
            .filter(|(_, diff)| !diff.is_null())
            .collect();
        assert_eq!(diffs.len(), 1, "tenant #{i}: {diffs:?}");
        let (run, diff) = diffs[0];
        assert_eq!(*run, round2[i], "tenant #{i}: taken by its round-2 run");
        let modified = diff["modified"].as_array().unwrap();
        assert_eq!(modified.len(), 1, "tenant #{i}: {diff}");
        assert_eq!(modified[0]["id"], policy.as_str(), "tenant #{i}: {diff}");
        assert_eq!(
            modified[0]["changed_fields"],
            json!(["state"]),
            "tenant #{i}: {diff}"
        );
        assert_eq!(diff["added"], json!([]), "tenant #{i}: {diff}");
        assert_eq!(diff["removed"], json!([]), "tenant #{i}: {diff}");
    }

    // The crash really split round 2: the second server did the rest, including the runs
    // the first one was advancing when it died.
    let events = runner_events(&pool, &round2).await;
    let pids: BTreeSet<u32> = events.iter().map(|(_, _, pid)| *pid).collect();
    assert_eq!(pids, BTreeSet::from([first_pid, second_pid]));
    let finished_by_second: BTreeSet<&str> = events
        .iter()
        .filter(|(_, e, pid)| e == "RunSucceeded" && *pid == second_pid)
        .map(|(r, _, _)| r.as_str())
        .collect();
    let lost: Vec<&String> = interrupted
        .iter()
        .filter(|r| !finished_by_second.contains(r.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "runs interrupted by the kill that the second server did not finish: {lost:?}"
    );

    // The read models say the same, and equal a replay of the log.
    projections_caught_up(&db).await;
    let outcomes: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, outcome, count(*) FROM rm_runs GROUP BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        vec![("completed".to_owned(), "succeeded".to_owned(), 2 * n as i64)]
    );
    let snapshot_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_policy_snapshots")
        .fetch_one(&pool)
        .await
        .unwrap();
    let alert_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(snapshot_rows, (n + edited.len()) as i64);
    assert_eq!(alert_rows, edited.len() as i64);
    assert_rebuild_reproduces_read_models(&db).await;
    eprintln!("[{}] done", elapsed(t0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_the_work_and_each_step_runs_once() {
    let _alone = crate::common::alone().await;
    let t0 = Instant::now();
    let (db, sim) = database_and_fleet(100, 13).await;
    // A lease far longer than a run's advance: an expired lease would hand a run that is
    // still being advanced to the other server.
    let env = workflow_settings("60");
    let a = start_server_on(&db, &sim, &env).await;
    let b = start_server_on(&db, &sim, &env).await;
    let (a_pid, b_pid) = (a.child.id(), b.child.id());
    let pool = db.pool().await;
    let fleet = sim.tenants();
    let n = fleet.len();

    let (ca, cb) = (
        a.client(WORKSPACE, Role::Owner),
        b.client(WORKSPACE, Role::Owner),
    );
    let tenants = register_fleet(&[&ca, &cb], &fleet).await;
    eprintln!("[{}] registered {n} tenants", elapsed(t0));

    sim.inject(Fault::Slow { delay_ms: 100 }.on(Endpoint::ListConditionalAccessPolicies));
    sim.inject(Fault::Slow { delay_ms: 50 }.on(Endpoint::ListSubscribedSkus));
    sim.clear_requests();
    let runs = resync_all(&[&ca, &cb], &tenants).await;
    wait_until_finished(&pool, &runs, &[&a, &b], Duration::from_secs(60)).await;
    eprintln!("[{}] {n} runs ended", elapsed(t0));

    assert_every_run_succeeded_once(&pool, &runs).await;
    assert_each_step_completed_once(&pool, &runs).await;

    // Graph saw each tenant's policies fetched once: no step was performed twice.
    let mut fetches: BTreeMap<Uuid, usize> = BTreeMap::new();
    for r in sim.requests_to(Endpoint::ListConditionalAccessPolicies) {
        let tenant = r
            .tenant
            .unwrap_or_else(|| panic!("a request for no tenant: {r:?}"));
        *fetches.entry(tenant).or_default() += 1;
    }
    let wrong: Vec<String> = fleet
        .iter()
        .filter(|t| fetches.get(&t.tenant_id) != Some(&1))
        .map(|t| format!("{}: {:?} fetches", t.tenant_id, fetches.get(&t.tenant_id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "policies not fetched exactly once: {wrong:#?}"
    );
    assert_eq!(fetches.len(), n);

    // Both processes did work.
    let events = runner_events(&pool, &runs).await;
    let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, e, pid) in &events {
        if e == "RunSucceeded" {
            *by_pid.entry(*pid).or_default() += 1;
        }
    }
    eprintln!("runs finished by pid: {by_pid:?} (a = {a_pid}, b = {b_pid})");
    assert_eq!(
        by_pid.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a_pid, b_pid]),
        "both servers finished runs: {by_pid:?}"
    );
    assert_eq!(by_pid.values().sum::<usize>(), n);
    eprintln!("[{}] done", elapsed(t0));
}
