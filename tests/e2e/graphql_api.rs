//! The API as a dashboard drives it: the real binary, a real database, HTTP and WebSocket.

use crate::common::graphql::*;
use domain::Role;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use testkit::CONTOSO;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-Client-Secret~0123456789-abcdef";

const SET_SCHEDULE: &str =
    "mutation($i: Int!, $f: DateTime) { setSchedule(input: {intervalMinutes: $i, firstRunAt: $f}) { id } }";
const DISABLE_SCHEDULE: &str = "mutation($s: String!) { disableSchedule(id: $s) { id } }";

/// Events written by people (the workflow engine appends progress on its own).
async fn event_count(db: &testkit::TestDb) -> i64 {
    let pool = db.pool().await;
    sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata ->> 'role' <> 'system'")
        .fetch_one(&pool)
        .await
        .unwrap()
}

/// A graphql-transport-ws subscription.
pub(crate) async fn subscribe(
    base_url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> impl futures::Stream<Item = Value> {
    subscribe_with(
        base_url,
        token,
        json!({"query": query, "variables": variables}),
    )
    .await
}

/// A graphql-transport-ws subscription with `payload` as its subscribe message's payload;
/// yields the `next` messages' data, and an `error` message's errors as `{"errors": ...}`.
async fn subscribe_with(
    base_url: &str,
    token: &str,
    payload: Value,
) -> impl futures::Stream<Item = Value> {
    let mut ws = websocket(base_url).await;
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    loop {
        let m = ws.next().await.unwrap().unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "connection_ack", "{v}");
            break;
        }
    }
    let sub = json!({"id": "1", "type": "subscribe", "payload": payload});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    ws.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).ok()?;
                if v["type"] == "error" {
                    return Some(json!({ "errors": v["payload"] }));
                }
                if v["type"] != "next" {
                    return None;
                }
                match v["payload"].get("errors") {
                    Some(errors) => Some(json!({ "errors": errors })),
                    None => Some(v["payload"]["data"].clone()),
                }
            }
            _ => None,
        }
    })
}

#[tokio::test]
async fn a_subscription_may_be_sent_as_a_persisted_query_hash() {
    let (server, _db, sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(&c, &t).await;
    let query = "subscription($t: String) { runUpdated(tenantId: $t) { id status } }";
    let hash = api::graphql::persisted_query_hash(query);
    let by_hash = |with_query: bool| {
        let mut payload = json!({
            "variables": {"t": tenant},
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
        });
        if with_query {
            payload["query"] = json!(query);
        }
        payload
    };
    // A hash the service has not seen is refused with the APQ code, as over HTTP.
    let mut unknown = Box::pin(subscribe_with(&server.base_url, &c.token, by_hash(false)).await);
    let refused = next_within(&mut unknown).await;
    assert!(
        refused.to_string().contains("PersistedQueryNotFound"),
        "{refused}"
    );
    // Sent once with its text (here over HTTP), the hash alone then subscribes.
    let learnt = reqwest::Client::new()
        .post(format!("{}/graphql", server.base_url))
        .bearer_auth(&c.token)
        .json(&by_hash(true))
        .send()
        .await
        .unwrap();
    assert!(learnt.status().is_success());
    let mut updates = Box::pin(subscribe_with(&server.base_url, &c.token, by_hash(false)).await);
    let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    let update = next_within(&mut updates).await;
    assert_eq!(update["runUpdated"]["id"], started["runId"], "{update}");
}

pub(crate) async fn next_within(
    stream: &mut (impl futures::Stream<Item = Value> + Unpin),
) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
        .await
        .expect("a subscription update in time")
        .expect("the subscription is open")
}

#[tokio::test]
async fn a_dashboard_registers_connects_starts_a_run_and_watches_it_live() {
    let (server, db, sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let secret = {
        use secrecy::ExposeSecret;
        t.client_secret.expose_secret().to_owned()
    };
    let (tenant, conn) = ready_sim_tenant(&c, &t).await;

    // The read models catch up: the tenant and its ready, default connection.
    let q = "query($t: String!) { tenant(id: $t) { id displayName status connections { id isDefault status consentGranted credentialFingerprint } } }";
    let data = c
        .eventually(q, json!({"t": tenant}), |d| {
            d["tenant"]["connections"][0]["status"] == "connected"
        })
        .await;
    let connection = &data["tenant"]["connections"][0];
    assert_eq!(connection["id"], conn.as_str());
    assert_eq!(connection["isDefault"], true);
    assert!(connection["credentialFingerprint"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));

    // Subscribe to the tenant's runs before starting one, then watch it to the end.
    let mut updates = Box::pin(
        subscribe(
            &server.base_url,
            &c.token,
            "subscription($t: String) { runUpdated(tenantId: $t) { id status outcome } }",
            json!({"t": tenant}),
        )
        .await,
    );
    let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    assert_eq!(started["status"], "QUEUED");
    let run_id = started["runId"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    loop {
        let update = next_within(&mut updates).await;
        assert_eq!(update["runUpdated"]["id"], run_id.as_str());
        seen.push(update["runUpdated"]["status"].as_str().unwrap().to_owned());
        if update["runUpdated"]["status"] == "completed" {
            assert_eq!(update["runUpdated"]["outcome"], "succeeded", "{update}");
            break;
        }
    }
    assert!(seen.len() >= 2, "progress arrived live: {seen:?}");

    let steps = c
        .ok(
            "query($r: String!) { run(id: $r) { steps { step attempt status } } }",
            json!({"r": run_id}),
        )
        .await;
    assert!(steps.to_string().contains("snapshot_policies"), "{steps}");

    // The snapshot and the licenses it found, from their read models.
    let q = "query($t: String!) { snapshots(tenantId: $t) { edges { node { id hash policyCount diff source runId } } } \
               licenses(tenantId: $t) { caP1 caP2 } }";
    let data = c
        .eventually(q, json!({"t": tenant}), |d| {
            d["snapshots"]["edges"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
                && !d["licenses"].is_null()
        })
        .await;
    let snapshot = &data["snapshots"]["edges"][0]["node"];
    assert!(snapshot["policyCount"].as_i64().unwrap() > 0);
    assert_eq!(snapshot["hash"].as_str().unwrap().len(), 64);
    assert!(snapshot["diff"].is_null(), "the first snapshot has no diff");
    assert_eq!(snapshot["runId"], run_id.as_str());

    // The audit log says who did what; nothing anywhere shows the secret.
    let audit = c
        .eventually(
            "{ auditLog(first: 100) { edges { node { action actor tenantId } } } }",
            json!({}),
            |d| {
                d["auditLog"]["edges"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|x| x["node"]["action"] == "PolicySnapshotted"))
            },
        )
        .await;
    assert!(audit.to_string().contains("CredentialSet"));
    let everything = c
        .ok(
            "{ tenants { edges { node { id connections { id credentialFingerprint lastErrorMessage } } } } \
               events(first: 100) { edges { node { eventType payload metadata } } } }",
            json!({}),
        )
        .await;
    assert!(!everything.to_string().contains(&secret));
    assert!(!server.log_text().contains(&secret));
    let pool = db.pool().await;
    let dump: Vec<String> = sqlx::query_scalar("SELECT row_to_json(e)::text FROM events e")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(dump.iter().all(|e| !e.contains(&secret)));
}

#[tokio::test]
async fn a_dashboard_imports_a_tenants_policies_as_its_intent_and_audits_each_resync() {
    let (server, _db, sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let (tenant, _) = ready_sim_tenant(&c, &sim.tenants().remove(0)).await;

    // An import: a `policy.import` run whose snapshot becomes the tenant's intent.
    let started = c.ok(IMPORT, json!({"t": tenant})).await["resyncTenant"].clone();
    assert_eq!(started["status"], "QUEUED", "{started}");
    let import = completed_run(&c, started["runId"].as_str().unwrap()).await;
    assert_eq!(import["type"], "policy.import");
    assert_eq!(import["outcome"], "succeeded", "{import}");
    let policy_count = import["summaryCounts"]["policy_count"].as_i64().unwrap();
    assert!(policy_count > 0, "{import}");
    assert_eq!(import["summaryCounts"]["unchanged"], 0);

    let q = "query($t: String!) { tenant(id: $t) { policyIntent { snapshotId hash seededAt \
               snapshot { id source policyCount } } } }";
    let data = c
        .eventually(q, json!({"t": tenant}), |d| {
            !d["tenant"]["policyIntent"]["snapshot"].is_null()
        })
        .await;
    let intent = &data["tenant"]["policyIntent"];
    assert_eq!(intent["snapshot"]["id"], intent["snapshotId"]);
    assert_eq!(intent["snapshot"]["source"], "import");
    assert_eq!(intent["snapshot"]["policyCount"], policy_count);
    assert_eq!(intent["hash"].as_str().map(str::len), Some(64));
    assert!(intent["seededAt"].is_string());

    // A plain resync (the default source) finds the same policies: unchanged, and the
    // intent stays as the import left it.
    let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    let resync = completed_run(&c, started["runId"].as_str().unwrap()).await;
    assert_eq!(resync["type"], "policy.resync");
    assert_eq!(resync["summaryCounts"]["policy_count"], policy_count);
    assert_eq!(resync["summaryCounts"]["unchanged"], 1);
    let again = c.ok(q, json!({"t": tenant})).await;
    assert_eq!(
        again["tenant"]["policyIntent"],
        data["tenant"]["policyIntent"]
    );

    // The auditor sees each resync's policy count and whether it changed anything.
    let audit = "query($t: String) { auditLog(tenantId: $t, first: 100) { edges { node { \
                   action aggregateId details } } } }";
    let ended = |d: &Value| -> Vec<Value> {
        d["auditLog"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"].clone())
            .filter(|n| n["action"] == "RunSucceeded")
            .collect()
    };
    let data = c
        .eventually(audit, json!({"t": tenant}), |d| ended(d).len() == 2)
        .await;
    for (run, unchanged) in [(&import, 0), (&resync, 1)] {
        let entry = ended(&data)
            .into_iter()
            .find(|n| n["aggregateId"] == run["id"])
            .unwrap_or_else(|| panic!("no audit entry for {run}"));
        let counts = &entry["details"]["summary_counts"];
        assert_eq!(counts["policy_count"], policy_count, "{entry}");
        assert_eq!(counts["unchanged"], unchanged, "{entry}");
    }
    let intent_seeded = data["auditLog"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["node"]["action"] == "PolicyIntentSeeded");
    assert!(intent_seeded, "the intent's seeding is in the audit log");
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_with_a_clear_message() {
    let (server, _db, _sim) = start_server().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/graphql", server.base_url))
        .json(&json!({"query": "{ me { workspace } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("missing bearer token"));
    let r = http
        .post(format!("{}/graphql", server.base_url))
        .bearer_auth("not-a-token")
        .json(&json!({"query": "{ me { workspace } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // People get the console's query page, served by the binary itself (GraphiQL's
    // page loaded its code from a CDN), under a policy that allows only this origin.
    let page = http
        .get(format!("{}/graphql", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("default-src 'self'"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/main.js"), "{html}");
    assert_eq!(api::console::external_urls(&html), Vec::<String>::new());
}

#[tokio::test]
async fn every_mutation_is_allowed_or_denied_by_role() {
    let (server, db, _sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (tenant, conn) = ready_tenant(&owner, CONTOSO, SECRET).await;

    // (mutation, variables, roles allowed)
    let other = "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1";
    let archivable = "44444444-4444-4444-8444-444444444444";
    let archivable = owner
        .ok(REGISTER, json!({"e": archivable, "n": "Old"}))
        .await["registerTenant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = owner.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let schedule = owner.ok(SET_SCHEDULE, json!({"i": 60})).await["setSchedule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases: Vec<(&str, Value, &[Role])> = vec![
        (REGISTER, json!({"e": other, "n": "X"}), &[Role::Owner, Role::Manager]),
        ("mutation($t: String!) { archiveTenant(id: $t) { id } }", json!({"t": archivable}), &[Role::Owner, Role::Manager]),
        ("mutation($c: String!) { revokeConsent(id: $c) { id } }", json!({"c": conn}), &[Role::Owner, Role::Manager]),
        (CANCEL, json!({"r": run}), &[Role::Owner, Role::Manager, Role::Operator]),
        ("mutation($r: String!) { retryRun(id: $r) { runId } }", json!({"r": run}), &[Role::Owner, Role::Manager, Role::Operator]),
        ("mutation($t: String!) { renameTenant(id: $t, displayName: \"Renamed\") { id } }", json!({"t": tenant}), &[Role::Owner, Role::Manager]),
        (CREATE_CONNECTION, json!({"t": tenant, "e": other}), &[Role::Owner, Role::Manager]),
        (SET_CREDENTIAL, json!({"c": conn, "s": "another-secret"}), &[Role::Owner, Role::Manager]),
        ("mutation($c: String!) { makeDefaultConnection(id: $c) { id } }", json!({"c": conn}), &[Role::Owner, Role::Manager]),
        (GRANT, json!({"c": conn}), &[Role::Owner, Role::Manager]),
        (RESYNC, json!({"t": tenant}), &[Role::Owner, Role::Manager, Role::Operator]),
        ("mutation($t: String!) { startOperation(tenantId: $t, type: \"policy.resync\", module: \"conditional_access\") { runId } }", json!({"t": tenant}), &[Role::Owner, Role::Manager, Role::Operator]),
        (SET_SCHEDULE, json!({"i": 120}), &[Role::Owner, Role::Manager]),
        (DISABLE_SCHEDULE, json!({"s": schedule}), &[Role::Owner, Role::Manager]),
    ];
    let roles = [
        Role::Readonly,
        Role::Auditor,
        Role::Operator,
        Role::Manager,
        Role::Owner,
    ];
    for role in roles {
        let c = server.client("acme", role);
        for (mutation, vars, allowed) in &cases {
            let before = event_count(&db).await;
            let body = c.post(mutation, vars.clone()).await;
            let code = body["errors"][0]["extensions"]["code"]
                .as_str()
                .map(str::to_owned);
            if allowed.contains(&role) {
                // Allowed: never refused for the role (it may still be a no-op or a dedupe).
                assert_ne!(
                    code.as_deref(),
                    Some("forbidden"),
                    "{role:?} should be allowed: {mutation}: {body}"
                );
            } else {
                assert_eq!(
                    code.as_deref(),
                    Some("forbidden"),
                    "{role:?} should be denied: {mutation}: {body}"
                );
                assert_eq!(
                    event_count(&db).await,
                    before,
                    "a denied mutation wrote nothing"
                );
            }
        }
    }
    // Everyone may read, the event streams and a run's past included.
    let everything =
        "query($r: String!) { tenants { edges { node { id } } } runs { edges { node { id } } } \
        events { edges { node { eventType } } } auditLog { edges { node { action } } } \
        run(id: $r) { history { type } } runAt(id: $r, asOf: {position: 1}) { id } }";
    for role in roles {
        server
            .client("acme", role)
            .ok(everything, json!({"r": run}))
            .await;
    }
}

#[tokio::test]
async fn one_workspace_never_sees_another_workspaces_data() {
    let (server, _db, _sim) = start_server().await;
    let acme = server.client("acme", Role::Owner);
    let globex = server.client("globex", Role::Owner);
    let (acme_tenant, acme_conn) = ready_tenant(&acme, CONTOSO, SECRET).await;
    let acme_run = acme.ok(RESYNC, json!({"t": acme_tenant})).await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (globex_tenant, _) =
        ready_tenant(&globex, "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1", "g-secret").await;

    let lists = "{ tenants { edges { node { id } } } connections { edges { node { id tenantId } } } \
                   runs { edges { node { id tenantId } } } auditLog { edges { node { aggregateId tenantId } } } \
                   events { edges { node { aggregateId metadata } } } }";
    let seen = acme
        .eventually(lists, json!({}), |d| {
            d["runs"]["edges"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    globex
        .eventually(lists, json!({}), |d| {
            d["connections"]["edges"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .await;
    let theirs = globex.ok(lists, json!({})).await.to_string();
    assert!(seen.to_string().contains(&acme_tenant));
    assert!(
        !seen.to_string().contains(&globex_tenant),
        "acme sees nothing of globex"
    );
    assert!(
        !theirs.contains(&acme_tenant)
            && !theirs.contains(&acme_conn)
            && !theirs.contains(&acme_run)
    );
    assert!(!theirs.contains("\"acme\""));

    // Direct lookups by id and filters naming the other workspace's ids find nothing.
    let by_id = globex
        .ok(
            "query($t: String!, $r: String!) { tenant(id: $t) { id } run(id: $r) { id } \
               runs(filter: {tenantId: $t}) { edges { node { id } } } connections(tenantId: $t) { edges { node { id } } } \
               events(filter: {aggregateId: $t}) { edges { node { aggregateId } } } }",
            json!({"t": acme_tenant, "r": acme_run}),
        )
        .await;
    assert!(
        by_id["tenant"].is_null() && by_id["run"].is_null(),
        "{by_id}"
    );
    assert_eq!(by_id["runs"]["edges"], json!([]));
    assert_eq!(by_id["connections"]["edges"], json!([]));
    assert_eq!(by_id["events"]["edges"], json!([]));
    // And mutations on the other workspace's objects are refused as not found.
    assert_eq!(
        globex.error_code(RESYNC, json!({"t": acme_tenant})).await,
        "not_found"
    );
    assert_eq!(
        globex.error_code(CANCEL, json!({"r": acme_run})).await,
        "not_found"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (server, db, _sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let before = event_count(&db).await;

    let body = c
        .post(REGISTER, json!({"e": "contoso.com", "n": "Contoso"}))
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "validation_failed");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("GUID"));
    assert_eq!(
        c.error_code(RESYNC, json!({"t": "not-a-tenant"})).await,
        "validation_failed"
    );
    assert_eq!(
        c.error_code(CANCEL, json!({"r": "123"})).await,
        "validation_failed"
    );
    assert_eq!(
        c.error_code("{ runs(first: 1000) { edges { node { id } } } }", json!({}))
            .await,
        "validation_failed"
    );
    assert_eq!(
        c.error_code(
            "{ runs(filter: {status: \"bogus\"}) { edges { node { id } } } }",
            json!({})
        )
        .await,
        "validation_failed"
    );
    assert_eq!(
        c.error_code(
            "{ tenants(after: \"!!notacursor\") { edges { cursor } } }",
            json!({})
        )
        .await,
        "validation_failed"
    );
    assert_eq!(
        c.error_code(REGISTER, json!({"e": CONTOSO, "n": "   "}))
            .await,
        "validation_failed"
    );

    // Past even the depth introspection is allowed (the standard query's nine `ofType`s
    // fit; twenty do not).
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(20),
        "} ".repeat(20)
    );
    let body = c.post(&deep, json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("nested too deep"),
        "{body}"
    );
    let unknown_field = c
        .post("{ tenants { edges { node { secret } } } }", json!({}))
        .await;
    assert!(unknown_field["errors"].is_array());

    assert_eq!(event_count(&db).await, before, "nothing was written");
}

#[tokio::test]
async fn lists_page_with_cursors() {
    let (server, _db, _sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let guids = [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    ];
    for (i, g) in guids.iter().enumerate() {
        c.ok(REGISTER, json!({"e": g, "n": format!("Tenant {i}")}))
            .await;
    }
    let q = "query($a: String) { tenants(first: 2, after: $a) { edges { cursor node { displayName } } pageInfo { hasNextPage endCursor } } }";
    let first = c
        .eventually(q, json!({"a": null}), |d| {
            d["tenants"]["pageInfo"]["hasNextPage"] == true
        })
        .await;
    assert_eq!(first["tenants"]["edges"].as_array().unwrap().len(), 2);
    let cursor = first["tenants"]["pageInfo"]["endCursor"].clone();
    let second = c.ok(q, json!({"a": cursor})).await;
    let names: Vec<_> = second["tenants"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["displayName"].clone())
        .collect();
    assert_eq!(names, vec![json!("Tenant 2")]);
    assert_eq!(second["tenants"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn rebuild_replays_every_read_model_to_the_same_rows() {
    let (server, db, _sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let (tenant, _) = ready_tenant(&c, CONTOSO, SECRET).await;
    let run = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = "query($r: String!) { run(id: $r) { status } }";
    c.eventually(q, json!({"r": run}), |d| d["run"]["status"] == "completed")
        .await;

    let printed = crate::common::read_models::assert_rebuild_reproduces_read_models(&db).await;
    assert!(
        printed.contains("rebuilding in one pass")
            && printed.contains("runs, audit_log")
            && printed.contains("swapped in"),
        "{printed}"
    );

    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_tenantflow"))
        .args(["rebuild", "nonsense"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown read model"));
}

#[tokio::test]
async fn a_dashboard_sets_a_schedule_lists_it_and_sees_it_start_a_run_per_tenant() {
    let (server, _db, sim) = start_server_with(&[("TENANTFLOW_SCHEDULER_POLL_SECONDS", "1")]).await;
    let c = server.client("acme", Role::Owner);
    let mut tenants = Vec::new();
    for t in sim.tenants() {
        tenants.push(ready_sim_tenant(&c, &t).await.0);
    }

    // Bad input is refused with the rule, and changes nothing.
    assert_eq!(
        c.error_code(SET_SCHEDULE, json!({"i": 1})).await,
        "validation_failed"
    );
    let unknown =
        "mutation { setSchedule(input: {runType: \"mail.sync\", intervalMinutes: 60}) { id } }";
    assert_eq!(c.error_code(unknown, json!({})).await, "validation_failed");

    let first_run = chrono::Utc::now();
    let id = c
        .ok(SET_SCHEDULE, json!({"i": 60, "f": first_run.to_rfc3339()}))
        .await["setSchedule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id, "acme:policy.resync");

    // The scheduler fires it and starts a resync on each tenant.
    let q = "{ schedules { edges { node { id runType intervalMinutes enabled firstRunAt nextDueAt \
               lastFiredAt lastFanOut { started deduplicated busy blocked skipped tenants } } } } }";
    let fanned_out = || async {
        let data = c.ok(q, json!({})).await;
        let node = data["schedules"]["edges"][0]["node"].clone();
        (!node["lastFanOut"].is_null()).then_some(node)
    };
    let within = std::time::Duration::from_secs(60);
    let Some(schedule) = testkit::within(within, fanned_out).await else {
        panic!("the schedule never ran:\n{}", server.log_text())
    };
    assert_eq!(schedule["id"], id.as_str());
    assert_eq!(schedule["runType"], "policy.resync");
    assert_eq!(schedule["intervalMinutes"], 60);
    assert_eq!(schedule["enabled"], true);
    assert_eq!(
        schedule["lastFanOut"],
        json!({"started": 2, "deduplicated": 0, "busy": 0, "blocked": 0, "skipped": 0, "tenants": 2})
    );
    let next: chrono::DateTime<chrono::Utc> =
        schedule["nextDueAt"].as_str().unwrap().parse().unwrap();
    let first: chrono::DateTime<chrono::Utc> =
        schedule["firstRunAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(next - first, chrono::Duration::minutes(60));

    let runs = c
        .eventually(
            "{ runs(filter: {type: \"policy.resync\"}) { edges { node { tenantId initiator } } } }",
            json!({}),
            |d| d["runs"]["edges"].as_array().is_some_and(|e| e.len() == 2),
        )
        .await;
    let mut started: Vec<String> = runs["runs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["node"]["initiator"], "schedule:acme:policy.resync");
            e["node"]["tenantId"].as_str().unwrap().to_owned()
        })
        .collect();
    started.sort();
    tenants.sort();
    assert_eq!(started, tenants, "one run per tenant");

    // Readers see it; another workspace does not.
    let reader = server.client("acme", Role::Readonly);
    assert_eq!(
        reader
            .ok("{ schedules { edges { node { id } } } }", json!({}))
            .await["schedules"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let globex = server.client("globex", Role::Owner);
    assert_eq!(
        globex.error_code(DISABLE_SCHEDULE, json!({"s": id})).await,
        "not_found"
    );
    assert!(globex.ok(q, json!({})).await["schedules"]["edges"]
        .as_array()
        .is_some_and(|e| e.is_empty()));

    c.ok(DISABLE_SCHEDULE, json!({"s": id})).await;
    c.eventually(q, json!({}), |d| {
        let node = &d["schedules"]["edges"][0]["node"];
        node["enabled"] == false && node["nextDueAt"].is_null()
    })
    .await;
}

#[tokio::test]
async fn a_tenant_resynced_many_times_is_loaded_from_snapshots_the_service_writes() {
    let (server, db, sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let (tenant, _) = ready_sim_tenant(&c, &sim.tenants().remove(0)).await;
    // Each resync adds one event (its resync record) to the tenant's stream (issue 13: its
    // scope lock is a row, unchanged policies and licenses write nothing): 100 resyncs
    // take the tenant's stream past a snapshot's 100 events.
    let mut policy_count = None;
    for _ in 0..100 {
        let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
        let run = completed_run(&c, started["runId"].as_str().unwrap()).await;
        assert_eq!(run["outcome"], "succeeded", "{run}");
        policy_count.get_or_insert(run["summaryCounts"]["policy_count"].clone());
    }
    let pool = db.pool().await;
    let stream_lengths: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, max(sequence) FROM events \
         WHERE aggregate_type IN ('tenant', 'scope_lock') GROUP BY aggregate_type ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let tenant_length = stream_lengths
        .iter()
        .find(|(t, _)| t == "tenant")
        .map(|(_, n)| *n)
        .unwrap();
    assert!(tenant_length >= 100, "{stream_lengths:?}");
    // The service's snapshot writer catches up with the log on its own.
    testkit::caught_up(&pool, store::snapshots::WRITER).await;
    let snapshots: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_type, version FROM aggregate_snapshots ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<&str> = stream_lengths
        .iter()
        .filter(|(_, n)| *n >= 100)
        .map(|(t, _)| t.as_str())
        .collect();
    let taken: Vec<&str> = snapshots.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(taken, expected, "streams: {stream_lengths:?}");
    for (t, version) in &snapshots {
        let length = stream_lengths.iter().find(|(s, _)| s == t).unwrap().1;
        assert!(
            *version >= 100 && *version <= length,
            "{t}: {version} of {length}"
        );
    }
    // Runs go on from the snapshots: the next resync finds the same policies unchanged.
    let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    let run = completed_run(&c, started["runId"].as_str().unwrap()).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["summaryCounts"]["unchanged"], 1);
    assert_eq!(
        Some(run["summaryCounts"]["policy_count"].clone()),
        policy_count
    );
}

#[tokio::test]
async fn a_blocked_run_offers_its_next_step_as_a_link_into_the_product() {
    let (server, _db, _sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let entra = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let tenant = c.ok(REGISTER, json!({"e": entra, "n": "Contoso"})).await["registerTenant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    assert_eq!(started["status"], "BLOCKED", "{started}");
    assert_eq!(started["reasonCode"], "provider_connection_missing");
    let q = "query($r: String!) { run(id: $r) { outcome reasonCode nextSteps } }";
    let run = c
        .eventually(q, json!({"r": started["runId"]}), |d| {
            d["run"]["outcome"] == "blocked"
        })
        .await;
    assert_eq!(
        run["run"]["nextSteps"],
        json!([{
            "label": "Add a Microsoft connection",
            "href": format!("/tenants/{tenant}/connections/new"),
        }])
    );
}
