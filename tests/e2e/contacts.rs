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

pub const SET_FEATURE: &str = "mutation($f: FeatureFlag!, $on: Boolean!) { setContactSyncFeature(feature: $f, enabled: $on) { enabledFeatures fieldSync } }";
pub const CONFIGURE_DIRECT: &str = "mutation($p: String!, $c: String!, $s: String!) { configurePartnerConnection(input: {kind: direct, partnerTenantId: $p, clientId: $c, clientSecret: $s}) { kind status credentialFingerprint } }";
pub const CONFIGURE_CIPP: &str = "mutation($p: String!, $c: String!, $s: String!, $u: String!, $a: String!) { configurePartnerConnection(input: {kind: cipp, partnerTenantId: $p, clientId: $c, clientSecret: $s, cippBaseUrl: $u, cippApiClientId: $a}) { kind status credentialFingerprint } }";
pub const CREATE_CLIENT: &str =
    "mutation($n: String!, $d: [String!]!) { createClient(input: {name: $n, domains: $d}) { id } }";
pub const DISCOVER: &str = "mutation { discoverTenants { runId status reasonCode } }";
pub const CONFIRM: &str = "mutation($rows: [MappingConfirmationInput!]!, $r: Boolean) { confirmTenantMappings(rows: $rows, registerTenants: $r) { changed registeredTenants } }";
pub const SYNC: &str =
    "mutation($c: String) { syncContacts(clientId: $c) { runId status reasonCode } }";

/// Turns every contact sync feature on.
pub async fn enable_contact_sync(c: &GraphqlClient) {
    for feature in [
        "ui",
        "client_sync_action",
        "cipp",
        "field_sync",
        "ambiguous_queue",
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

/// Discovers the fleet and confirms each tenant to its client (registering each as a
/// managed tenant too, with `register`).
pub async fn discover_and_confirm(
    c: &GraphqlClient,
    fleet: &[SimTenant],
    clients: &[String],
    register: bool,
) {
    let discovery = run_to_end(c, DISCOVER, "discoverTenants", json!({})).await;
    assert_eq!(discovery["outcome"], "succeeded", "{discovery}");
    let rows: Vec<Value> = fleet
        .iter()
        .zip(clients)
        .map(|(t, client)| json!({"entraTenantId": t.tenant_id.to_string(), "clientId": client}))
        .collect();
    let confirmed = c.ok(CONFIRM, json!({ "rows": rows, "r": register })).await;
    assert_eq!(
        confirmed["confirmTenantMappings"]["changed"],
        fleet.len(),
        "{confirmed}"
    );
    let registered = if register { fleet.len() } else { 0 };
    assert_eq!(
        confirmed["confirmTenantMappings"]["registeredTenants"], registered,
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
    discover_and_confirm(&c, &fleet, &clients, false).await;
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

pub const CREATE_CONTACT: &str = "mutation($c: String!, $n: String!, $e: String) { createContact(input: {clientId: $c, name: $n, email: $e}) { id } }";
pub const RESOLVE: &str = "mutation($i: String!, $a: ReconciliationAction!, $c: String) { resolveReconciliationItem(id: $i, action: $a, contactId: $c) { id resolution resolvedBy } }";
pub const FIELD_SYNC: &str =
    "mutation($f: [ContactField!]!) { setContactFieldSync(fields: $f) { fieldSync } }";

/// Events of the contact sync's own aggregates.
async fn contact_sync_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type IN \
         ('contact', 'reconciliation_item', 'tenant_mapping', 'client', 'partner_connection')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `(object id, status, name, email)` of every contact linked to a user, from its events.
async fn linked_contacts(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT payload -> 'ContactLinked' -> 'entra_user' ->> 'object_id', aggregate_id FROM events \
         WHERE event_type = 'ContactLinked' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_dashboard_connects_discovers_confirms_syncs_and_reconciles_and_no_secret_leaks() {
    let _turn = crate::common::shared().await;
    let db = testkit::TestDb::new().await;
    let sim = graph::sim::spawn(SimConfig {
        tenants: 2,
        seed: 31,
        users_per_tenant: Some(10),
        ..SimConfig::default()
    })
    .await;
    let server = start_server_on(&db, &sim, &[]).await;
    let pool = db.pool().await;
    let c = server.client(WORKSPACE, Role::Owner);
    let fleet = sim.tenants();
    let partner = sim.partner();
    let secret = partner.client_secret.expose_secret().to_owned();

    enable_contact_sync(&c).await;
    let connected = connect_direct(&c, &sim).await;
    assert_eq!(connected["kind"], "direct", "{connected}");
    assert!(connected["credentialFingerprint"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));
    let clients = clients_for(&c, &fleet).await;
    // A person the MSP knows by name only, and one it knows by (differently written) email.
    let graph = graph::GraphClient::new(sim.graph_config()).unwrap();
    let users = graph.list_users(&fleet[0].credentials()).await.unwrap();
    let enabled: Vec<_> = users
        .iter()
        .filter(|u| u.account_enabled != Some(false) && u.mail.is_some())
        .collect();
    let known = enabled[0];
    let by_email = c
        .ok(
            CREATE_CONTACT,
            json!({"c": clients[0], "n": "Known", "e": format!(" {} ", known.mail.as_ref().unwrap().to_uppercase())}),
        )
        .await["createContact"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_name = c
        .ok(CREATE_CONTACT, json!({"c": clients[0], "n": "Quinn Zed"}))
        .await["createContact"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The preview is computed when asked and writes nothing.
    let discovery = run_to_end(&c, DISCOVER, "discoverTenants", json!({})).await;
    assert_eq!(discovery["outcome"], "succeeded", "{discovery}");
    let preview_q = "{ mappingPreview { entraTenantId proposal { state } } }";
    let written = contact_sync_events(&pool).await;
    let preview = c
        .eventually(preview_q, json!({}), |d| {
            d["mappingPreview"].as_array().map(Vec::len) == Some(fleet.len())
        })
        .await;
    for p in preview["mappingPreview"].as_array().unwrap() {
        assert_eq!(p["proposal"]["state"], "auto_matched", "{preview}");
    }
    assert_eq!(
        contact_sync_events(&pool).await,
        written,
        "a preview writes nothing"
    );
    discover_and_confirm(&c, &fleet, &clients, true).await;
    // The confirmed tenants are managed tenants now (R1.1).
    let tenants = c
        .eventually(
            "{ tenants(first: 10) { edges { node { id } } } }",
            json!({}),
            |d| d["tenants"]["edges"].as_array().map(Vec::len) == Some(fleet.len()),
        )
        .await;
    assert_eq!(
        tenants["tenants"]["edges"].as_array().unwrap().len(),
        fleet.len()
    );
    let first = run_to_end(&c, SYNC, "syncContacts", json!({})).await;
    assert_eq!(first["outcome"], "succeeded", "{first}");
    let links = linked_contacts(&pool).await;
    assert!(
        links.contains(&(known.id.clone(), by_email.clone())),
        "linked by email"
    );
    let before = contact_sync_events(&pool).await;
    let again = run_to_end(&c, SYNC, "syncContacts", json!({})).await;
    assert_eq!(again["outcome"], "succeeded", "{again}");
    // Only the mappings record the run (with their next delta link): no contact changes.
    assert_eq!(
        contact_sync_events(&pool).await,
        before + fleet.len() as i64,
        "an unchanged sync writes no contact event"
    );

    // Upstream: one disabled, one deleted, one renamed, one new user named like Quinn.
    let (off, gone, renamed) = (&enabled[1], &enabled[2], &enabled[3]);
    let a = fleet[0].tenant_id;
    sim.disable_user(a, &off.id).unwrap();
    sim.delete_user(a, &gone.id, false).unwrap();
    let rename = graph::sim::UserRename {
        display_name: "Renamed Person".into(),
        given_name: None,
        surname: None,
    };
    sim.rename_user(a, &renamed.id, &rename).unwrap();
    let new_user = graph::sim::NewSimUser {
        display_name: "Quinn Zed".into(),
        user_principal_name: format!("quinn@{}", fleet[0].default_domain),
        given_name: None,
        surname: None,
        job_title: Some("Buyer".into()),
        department: None,
        account_enabled: true,
        has_mailbox: true,
    };
    sim.add_user(a, &new_user).unwrap();
    c.ok(FIELD_SYNC, json!({"f": ["name"]})).await;
    let next = run_to_end(&c, SYNC, "syncContacts", json!({})).await;
    assert_eq!(next["outcome"], "succeeded", "{next}");
    let counts = &next["summaryCounts"];
    assert_eq!(counts["inactivated"], 2, "{next}");
    assert_eq!(counts["updated"], 1, "{next}");
    assert_eq!(counts["queued"], 1, "{next}");

    // The dashboard shows the two inactive contacts and the queued user.
    let inactive_q = "{ contacts(status: inactive) { nodes { id inactiveReason } } }";
    c.eventually(inactive_q, json!({}), |d| {
        d["contacts"]["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let queue_q = "{ reconciliationItems(status: open) { nodes { id upstreamDisplayName candidates { id } } } }";
    let queue = c
        .eventually(queue_q, json!({}), |d| {
            d["reconciliationItems"]["nodes"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    let queued = &queue["reconciliationItems"]["nodes"][0];
    assert_eq!(queued["upstreamDisplayName"], "Quinn Zed", "{queue}");
    assert_eq!(queued["candidates"][0]["id"], by_name.as_str(), "{queue}");
    let item = queued["id"].as_str().unwrap().to_owned();
    // Each sync's per-tenant results.
    let runs_q = "{ contactSyncRuns(first: 10) { nodes { run { outcome } tenantResults { created inactivated queued } } } }";
    let runs = c
        .eventually(runs_q, json!({}), |d| {
            d["contactSyncRuns"]["nodes"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    let latest = &runs["contactSyncRuns"]["nodes"][0];
    assert_eq!(
        latest["tenantResults"].as_array().unwrap().len(),
        fleet.len()
    );
    // A surface whose flag is off answers feature_disabled; on again, the data is there.
    let all_q = "{ contacts(first: 100) { nodes { id } } }";
    let shown = c.ok(all_q, json!({})).await;
    c.ok(SET_FEATURE, json!({"f": "ui", "on": false})).await;
    // (The read side reads the flag from its read model: it follows within moments.)
    testkit::eventually("contacts hidden", Duration::from_secs(30), || async {
        let body = c.post(all_q, json!({})).await;
        (body["errors"][0]["extensions"]["code"] == "feature_disabled").then_some(())
    })
    .await;
    c.ok(SET_FEATURE, json!({"f": "ui", "on": true})).await;
    let back = testkit::eventually("contacts shown again", Duration::from_secs(30), || async {
        let body = c.post(all_q, json!({})).await;
        body.get("errors").is_none().then(|| body["data"].clone())
    })
    .await;
    assert_eq!(back["contacts"], shown["contacts"], "everything as it was");

    // The queued user is resolved by linking it to Quinn.
    let resolved = c
        .ok(RESOLVE, json!({"i": item, "a": "link", "c": by_name}))
        .await["resolveReconciliationItem"]
        .clone();
    assert_eq!(resolved["resolution"], "linked_existing", "{resolved}");
    // Another workspace cannot see or resolve it.
    let other = server.client("globex", Role::Owner);
    enable_contact_sync(&other).await;
    let refused = other
        .error_code(RESOLVE, json!({"i": item, "a": "ignore"}))
        .await;
    assert_eq!(refused, "not_found");

    // Switching to CIPP deletes the direct secret from the vault.
    let vault_before: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM credential_vault ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let cipp = sim.cipp_credentials();
    let switched = c
        .ok(
            CONFIGURE_CIPP,
            json!({
                "p": partner.tenant_id.to_string(),
                "c": partner.client_id,
                "s": secret,
                "u": cipp.api_url.to_string(),
                "a": cipp.api_client_id,
            }),
        )
        .await["configurePartnerConnection"]
        .clone();
    assert_eq!(switched["kind"], "cipp", "{switched}");
    let vault_after: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM credential_vault ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(vault_after.len(), 1);
    assert!(vault_before.iter().all(|id| !vault_after.contains(id)));
    let through_cipp = run_to_end(&c, DISCOVER, "discoverTenants", json!({})).await;
    assert_eq!(through_cipp["outcome"], "succeeded", "{through_cipp}");

    // The partner secret is nowhere but in the vault, encrypted.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text LIKE $1 OR metadata::text LIKE $1",
    )
    .bind(format!("%{secret}%"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "the secret reached the event log");
    assert!(
        !server.log_text().contains(&secret),
        "the secret reached the log"
    );
    assert!(!switched.to_string().contains(&secret));
    assert!(!connected.to_string().contains(&secret));
}
