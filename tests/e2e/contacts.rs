//! Contact sync (R5) end to end: the real binary, driven through GraphQL like a dashboard,
//! against the Graph simulator (its partner tenant reaching its customers through GDAP,
//! and its CIPP instance).

// The phase timeline printed on the way helps when a CI run is slow or fails.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use crate::common::graphql::{completed_run, start_server_on};
use crate::common::read_models::{assert_rebuild_reproduces_read_models, projections_caught_up};
use domain::Role;
use graph::sim::{Fault, SimConfig, SimHandle, SimTenant};
use graph::{Endpoint, GraphApi};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;
use testkit::GraphqlClient;

const WORKSPACE: &str = "acme";

pub const SET_FEATURE: &str = "mutation($f: ContactSyncFeature!, $on: Boolean!) { setContactSyncFeature(feature: $f, enabled: $on) { enabledFeatures fieldSync } }";
pub const CONFIGURE_DIRECT: &str = "mutation($p: String!, $c: String!, $s: String!) { configurePartnerConnection(input: {kind: DIRECT, partnerTenantId: $p, clientId: $c, clientSecret: $s}) { kind status credentialFingerprint } }";
pub const CONFIGURE_CIPP: &str = "mutation($p: String!, $c: String!, $s: String!, $u: String!, $a: String!) { configurePartnerConnection(input: {kind: CIPP, partnerTenantId: $p, clientId: $c, clientSecret: $s, cippBaseUrl: $u, cippApiClientId: $a}) { kind status credentialFingerprint } }";
pub const CREATE_CLIENT: &str =
    "mutation($n: String!, $d: [String!]!) { createClient(input: {name: $n, domains: $d}) { id } }";
pub const DISCOVER: &str = "mutation { discoverTenants { runId status reasonCode } }";
pub const CONFIRM: &str = "mutation($rows: [MappingConfirmationInput!]!) { confirmTenantMappings(rows: $rows) { changed } }";
pub const SYNC: &str =
    "mutation($c: String) { syncContacts(clientId: $c) { runId status reasonCode } }";

/// Turns every contact sync feature on.
pub async fn enable_contact_sync(c: &GraphqlClient) {
    for feature in [
        "UI",
        "CLIENT_SYNC_ACTION",
        "CIPP",
        "FIELD_SYNC",
        "AMBIGUOUS_QUEUE",
    ] {
        c.ok(SET_FEATURE, json!({"f": feature, "on": true})).await;
    }
}

/// Connects the workspace to the simulator's partner tenant (GDAP).
pub async fn connect_direct(c: &GraphqlClient, sim: &SimHandle) -> Value {
    let partner = sim.partner();
    c.ok(
        CONFIGURE_DIRECT,
        json!({
            "p": partner.tenant_id.to_string(),
            "c": partner.client_id,
            "s": partner.client_secret.expose_secret(),
        }),
    )
    .await["configurePartnerConnection"]
        .clone()
}

/// A client per tenant of `fleet`, by its default domain; returns the client ids in order.
pub async fn clients_for(c: &GraphqlClient, fleet: &[SimTenant]) -> Vec<String> {
    let mut ids = Vec::new();
    for t in fleet {
        let created = c
            .ok(
                CREATE_CLIENT,
                json!({"n": t.display_name, "d": [t.default_domain]}),
            )
            .await;
        ids.push(created["createClient"]["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Starts a run with `mutation` (whose field is `field`) and waits for it to complete.
pub async fn run_to_end(c: &GraphqlClient, mutation: &str, field: &str, vars: Value) -> Value {
    let started = c.ok(mutation, vars).await[field].clone();
    assert_eq!(started["status"], "QUEUED", "{field}: {started}");
    completed_run(c, started["runId"].as_str().unwrap()).await
}

/// Discovers the fleet and confirms each tenant to its client.
pub async fn discover_and_confirm(c: &GraphqlClient, fleet: &[SimTenant], clients: &[String]) {
    let discovery = run_to_end(c, DISCOVER, "discoverTenants", json!({})).await;
    assert_eq!(discovery["outcome"], "succeeded", "{discovery}");
    let rows: Vec<Value> = fleet
        .iter()
        .zip(clients)
        .map(|(t, client)| json!({"entraTenantId": t.tenant_id.to_string(), "clientId": client}))
        .collect();
    let confirmed = c.ok(CONFIRM, json!({ "rows": rows })).await;
    assert_eq!(
        confirmed["confirmTenantMappings"]["changed"],
        fleet.len(),
        "{confirmed}"
    );
}

/// The enabled users of each tenant of `fleet`: the contacts a sync makes.
async fn enabled_users(sim: &SimHandle, fleet: &[SimTenant]) -> usize {
    let graph = graph::GraphClient::new(sim.graph_config()).unwrap();
    let mut n = 0;
    for t in fleet {
        let users = graph.list_users(&t.credentials()).await.unwrap();
        n += users
            .iter()
            .filter(|u| u.account_enabled != Some(false))
            .count();
    }
    n
}

/// Tenants whose result the sync run `run` recorded, and how many times in all.
async fn recorded(pool: &PgPool, run: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(DISTINCT aggregate_id), count(*) FROM events \
         WHERE event_type = 'ContactSyncRecorded' AND payload -> 'ContactSyncRecorded' ->> 'run_id' = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_sync_survives_kill_9_without_duplicates_or_lost_links() {
    let _alone = crate::common::alone().await;
    let t0 = Instant::now();
    let since = |t: Instant| format!("{:.1}s", t.elapsed().as_secs_f64());
    const TENANTS: usize = 50;
    let db = testkit::TestDb::new().await;
    let sim = graph::sim::spawn(SimConfig {
        tenants: TENANTS,
        seed: 23,
        page_size: 100,
        users_per_tenant: Some(200),
        ..SimConfig::default()
    })
    .await;
    let env = [("TENANTFLOW_WORKFLOW_LEASE_SECONDS", "3")];
    let mut first = start_server_on(&db, &sim, &env).await;
    let pool = db.pool().await;
    let fleet = sim.tenants();
    let c = first.client(WORKSPACE, Role::Owner);
    enable_contact_sync(&c).await;
    connect_direct(&c, &sim).await;
    let clients = clients_for(&c, &fleet).await;
    discover_and_confirm(&c, &fleet, &clients).await;
    eprintln!("[{}] {TENANTS} tenants discovered and confirmed", since(t0));

    // Slow user reads keep the sync going long enough to kill the server in the middle.
    sim.inject(Fault::Slow { delay_ms: 60 }.on(Endpoint::UsersDelta));
    let started = c.ok(SYNC, json!({})).await["syncContacts"].clone();
    let run = started["runId"].as_str().unwrap().to_owned();
    let some_recorded = || async {
        let (tenants, _) = recorded(&pool, &run).await;
        assert!(
            (tenants as usize) < TENANTS,
            "the sync ended before the kill; slow the users endpoint down"
        );
        tenants >= 5
    };
    testkit::within(Duration::from_secs(120), some_recorded)
        .await
        .expect("the sync makes progress before the kill");
    first.signal_and_wait("KILL");
    let (at_kill, _) = recorded(&pool, &run).await;
    eprintln!("[{}] killed with {at_kill} tenants recorded", since(t0));
    sim.clear_faults();

    let second = start_server_on(&db, &sim, &env).await;
    let c = second.client(WORKSPACE, Role::Owner);
    let done = completed_run(&c, &run).await;
    eprintln!("[{}] the sync ended after the restart", since(t0));
    assert_eq!(done["outcome"], "succeeded", "{done}");

    // Every tenant's result recorded, once.
    assert_eq!(
        recorded(&pool, &run).await,
        (TENANTS as i64, TENANTS as i64)
    );
    // One contact per enabled user, each linked once: nothing duplicated, nothing lost.
    let users = enabled_users(&sim, &fleet).await as i64;
    let (contacts, created, links, linked_users): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT aggregate_id) FILTER (WHERE event_type = 'ContactCreated'), \
                count(*) FILTER (WHERE event_type = 'ContactCreated'), \
                count(*) FILTER (WHERE event_type = 'ContactLinked'), \
                count(DISTINCT payload -> 'ContactLinked' -> 'entra_user') FILTER (WHERE event_type = 'ContactLinked') \
         FROM events WHERE aggregate_type = 'contact'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (contacts, created, links, linked_users),
        (users, users, users, users)
    );
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type LIKE 'Run%' \
         AND event_type IN ('RunSucceeded', 'RunPartiallySucceeded', 'RunFailed', 'RunCancelled')",
    )
    .bind(&run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ended, 1, "the run ended once");

    projections_caught_up(&db).await;
    assert_rebuild_reproduces_read_models(&db).await;
    eprintln!("[{}] read models equal a rebuild", since(t0));
}
