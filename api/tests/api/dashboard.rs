//! The README's dashboard queries, one per screen, run as written against the service with
//! a resynced tenant (and, for the screens that show failures, a failed run).

use domain::run::RunCommand;
use domain::Role;
use graph::sim::Fault;
use graph::Endpoint;
use serde_json::{json, Value};
use testkit::{GraphqlClient, TestApp};

/// The README's dashboard queries: every `graphql` block of its "Dashboard queries"
/// section, by operation name.
pub fn readme_queries() -> Vec<(String, String)> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("### Dashboard queries")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("a Dashboard queries section in the README");
    section
        .split("```graphql\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|document| {
            let name = document
                .strip_prefix("query ")
                .and_then(|rest| rest.split(|c: char| !c.is_alphanumeric()).next())
                .expect("a named query");
            (name.to_owned(), document.to_owned())
        })
        .collect()
}

/// The README's query for `screen`.
fn query(screen: &str) -> String {
    readme_queries()
        .into_iter()
        .find(|(name, _)| name == screen)
        .unwrap_or_else(|| panic!("no `{screen}` query in the README"))
        .1
}

const REGISTER: &str =
    "mutation($e: String!, $n: String!, $d: String!) { registerTenant(input: {entraTenantId: $e, displayName: $n, primaryDomain: $d}) { id } }";
const CREATE_CONNECTION: &str = "mutation($t: String!, $e: String!, $n: String!) { createConnection(input: {tenantId: $t, entraTenantId: $e, displayName: $n}) { id } }";
const SET_CREDENTIAL: &str = "mutation($c: String!, $id: String!, $s: String!) { setCredential(input: {connectionId: $c, clientId: $id, clientSecret: $s}) { fingerprint } }";
const GRANT: &str =
    "mutation($c: String!) { grantConsent(id: $c, scopes: [\"Policy.Read.All\"]) { id } }";
const RESYNC: &str = "mutation($t: String!) { resyncTenant(id: $t) { runId status reasonCode } }";

/// One of the simulator's tenants registered over GraphQL with a ready connection:
/// (tenant id, connection id).
pub async fn ready(c: &GraphqlClient, t: &graph::sim::SimTenant) -> (String, String) {
    use secrecy::ExposeSecret;
    let entra = t.tenant_id.to_string();
    let tenant = c
        .ok(
            REGISTER,
            json!({"e": entra, "n": t.display_name, "d": t.default_domain}),
        )
        .await["registerTenant"]["id"]
        .as_str()
        .expect("a tenant id")
        .to_owned();
    let connection = add_connection(c, &tenant, &entra, "Primary").await;
    c.ok(
        SET_CREDENTIAL,
        json!({"c": connection, "id": t.client_id, "s": t.client_secret.expose_secret()}),
    )
    .await;
    c.ok(GRANT, json!({"c": connection})).await;
    (tenant, connection)
}

/// A connection added to `tenant`, without credential or consent.
pub async fn add_connection(c: &GraphqlClient, tenant: &str, entra: &str, name: &str) -> String {
    c.ok(
        CREATE_CONNECTION,
        json!({"t": tenant, "e": entra, "n": name}),
    )
    .await["createConnection"]["id"]
        .as_str()
        .expect("a connection id")
        .to_owned()
}

/// Starts a resync of `tenant`; returns its run id.
pub async fn resync(c: &GraphqlClient, tenant: &str) -> String {
    let started = c.ok(RESYNC, json!({"t": tenant})).await;
    started["resyncTenant"]["runId"]
        .as_str()
        .expect("a run id")
        .to_owned()
}

/// The run once it has completed, and the snapshot it names is readable too (each read
/// model catches up on its own).
pub async fn completed(c: &GraphqlClient, run: &str) -> Value {
    c.eventually(&query("RunDetail"), json!({"id": run}), |d| {
        let run = &d["run"];
        run["status"] == "completed" && (run["snapshotId"].is_null() || !run["snapshot"].is_null())
    })
    .await["run"]
        .clone()
}

/// The nodes of a page (`{ edges { node } }`).
pub fn nodes(connection: &Value) -> Vec<Value> {
    connection["edges"]
        .as_array()
        .map(|edges| edges.iter().map(|e| e["node"].clone()).collect())
        .unwrap_or_default()
}

/// Every event in the log: a refusal must add none.
pub async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("a count of events")
}

#[tokio::test]
async fn the_readme_has_one_dashboard_query_per_screen() {
    let names: Vec<String> = readme_queries().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "TenantList",
            "TenantDetail",
            "RunList",
            "RunDetail",
            "AuditLog"
        ]
    );
}

#[tokio::test]
async fn each_screens_query_answers_after_a_resync() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Operator);
    let owner = app.client("acme", Role::Owner);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, connection) = ready(&owner, &sim_tenant).await;
    let run_id = resync(&c, &tenant).await;
    let run = completed(&c, &run_id).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");

    // Tenant list: search finds it by part of its name, in any case, and nothing else.
    let part = sim_tenant.display_name[1..4].to_uppercase();
    let list = c.ok(&query("TenantList"), json!({"search": part})).await;
    let found = nodes(&list["tenants"]);
    assert_eq!(found.len(), 1, "{list}");
    assert_eq!(found[0]["id"], tenant.as_str());
    assert_eq!(found[0]["connections"][0]["id"], connection.as_str());
    let none = c
        .ok(&query("TenantList"), json!({"search": "no such tenant %"}))
        .await;
    assert_eq!(nodes(&none["tenants"]), Vec::<Value>::new(), "{none}");

    // Run detail: the snapshot the resync wrote, its steps with summaries and starts.
    let snapshot_id = run["snapshotId"]
        .as_str()
        .expect("a snapshot id")
        .to_owned();
    assert_eq!(run["snapshot"]["id"], snapshot_id.as_str(), "{run}");
    assert!(run["snapshot"]["policyCount"].as_i64() > Some(0), "{run}");
    assert_eq!(run["cancelRequested"], false);
    let steps = run["steps"].as_array().expect("steps");
    assert!(
        steps
            .iter()
            .any(|s| s["summary"]["snapshot_id"] == snapshot_id.as_str()),
        "{run}"
    );
    assert!(steps.iter().all(|s| !s["recordedAt"].is_null()), "{run}");
    assert_eq!(run["nextSteps"], json!([]));

    // Tenant detail: the same snapshot, found by the time it was taken.
    let taken = c
        .ok(
            &query("TenantDetail"),
            json!({"id": tenant, "since": run["queuedAt"]}),
        )
        .await;
    assert_eq!(
        taken["tenant"]["displayName"],
        sim_tenant.display_name.as_str()
    );
    let snapshots = nodes(&taken["snapshots"]);
    assert_eq!(snapshots.len(), 1, "{taken}");
    assert_eq!(snapshots[0]["id"], snapshot_id.as_str());
    assert_eq!(snapshots[0]["runId"], run_id.as_str());
    let later = c
        .ok(
            &query("TenantDetail"),
            json!({"id": tenant, "since": run["completedAt"]}),
        )
        .await;
    assert!(
        nodes(&later["snapshots"]).is_empty(),
        "a snapshot taken after the run ended: {later}"
    );

    // Run list: the tenant's runs, by filter.
    let runs = c
        .ok(
            &query("RunList"),
            json!({"filter": {"tenantId": tenant, "outcome": "succeeded"}}),
        )
        .await;
    let listed = nodes(&runs["runs"]);
    assert_eq!(listed.len(), 1, "{runs}");
    assert_eq!(listed[0]["id"], run_id.as_str());

    // Audit log: by action and by actor.
    let succeeded = c
        .ok(
            &query("AuditLog"),
            json!({"filter": {"tenantId": tenant, "action": "RunSucceeded"}}),
        )
        .await;
    let entries = nodes(&succeeded["auditLog"]);
    assert_eq!(entries.len(), 1, "{succeeded}");
    assert_eq!(entries[0]["aggregateId"], run_id.as_str());
    let by_person = c
        .ok(
            &query("AuditLog"),
            json!({"filter": {"actor": "test-user"}}),
        )
        .await;
    let entries = nodes(&by_person["auditLog"]);
    assert!(!entries.is_empty(), "{by_person}");
    assert!(
        entries.iter().all(|e| e["actor"] == "test-user"),
        "{by_person}"
    );
    let future = c
        .ok(
            &query("AuditLog"),
            json!({"filter": {"recordedAfter": "2999-01-01T00:00:00Z"}}),
        )
        .await;
    assert!(nodes(&future["auditLog"]).is_empty(), "{future}");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_resync_links_to_its_recovery_and_its_audit_entry_says_why() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, _) = ready(&c, &sim_tenant).await;
    // Microsoft refuses the app's secret.
    app.sim().inject(Fault::Unauthorized.on(Endpoint::Token));
    let run_id = resync(&c, &tenant).await;
    let run = completed(&c, &run_id).await;
    assert_eq!(
        (&run["outcome"], &run["reasonCode"]),
        (&json!("failed"), &json!("provider_auth_failed")),
        "{run}"
    );
    assert_eq!(
        run["nextSteps"],
        json!([{ "label": "Provide a new client secret",
                 "href": format!("/tenants/{tenant}/connections") }])
    );
    assert!(run["snapshotId"].is_null(), "{run}");
    // The run's JSON columns, read as the database sent them and parsed when asked for.
    assert_eq!(
        run["failureSummary"],
        json!([{ "message": "step snapshot_policies failed",
                 "reason": "provider_auth_failed", "step": "snapshot_policies" }]),
        "{run}"
    );
    assert!(run["summaryCounts"].is_object(), "{run}");

    let failed = c
        .eventually(
            &query("AuditLog"),
            json!({"filter": {"tenantId": tenant, "action": "RunFailed"}}),
            |d| !nodes(&d["auditLog"]).is_empty(),
        )
        .await;
    let details = &nodes(&failed["auditLog"])[0]["details"];
    assert_eq!(details["reason"], "provider_auth_failed", "{failed}");
    assert!(
        details["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{failed}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_step_recorded_as_started_shows_when_it_started() {
    // No engines: the test records the run's progress itself, as an engine would.
    let options = runtime::Options {
        workers: 0,
        ..TestApp::options()
    };
    let app = TestApp::start_with(graph::sim::SimConfig::default(), options).await;
    let (tenant, _) = testkit::ReadyTenant::new(&app.bus, testkit::CONTOSO)
        .build()
        .await;
    let run = testkit::queued_resync(&app.bus, &tenant).await;
    let step = RunCommand::StartStep {
        step: "snapshot_policies".into(),
        attempt: 1,
    };
    testkit::record_progress(&app.bus, run, [RunCommand::Start, step]).await;
    let c = app.client("acme", Role::Readonly);
    let shown = c
        .eventually(&query("RunDetail"), json!({"id": run.to_string()}), |d| {
            d["run"]["steps"][0]["status"] == "started"
        })
        .await;
    let step = &shown["run"]["steps"][0];
    assert_eq!(step["step"], "snapshot_policies", "{shown}");
    assert!(step["startedAt"].is_string(), "{shown}");
    assert!(shown["run"]["snapshotId"].is_null(), "{shown}");
    app.stop().await;
}

#[tokio::test]
async fn a_running_run_asked_to_cancel_shows_it() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, _) = ready(&c, &sim_tenant).await;
    // The policy fetch answers slowly, so the run is still running when it is cancelled.
    app.sim()
        .inject(Fault::Slow { delay_ms: 3_000 }.on(Endpoint::ListConditionalAccessPolicies));
    let run_id = resync(&c, &tenant).await;
    c.eventually(&query("RunDetail"), json!({"id": run_id}), |d| {
        d["run"]["status"] == "running"
    })
    .await;
    let cancel = c
        .ok(
            "mutation($r: String!) { cancelRun(id: $r) { cancelled cancelRequested } }",
            json!({"r": run_id}),
        )
        .await;
    assert_eq!(
        cancel["cancelRun"],
        json!({"cancelled": false, "cancelRequested": true})
    );
    let run = c
        .eventually(&query("RunDetail"), json!({"id": run_id}), |d| {
            d["run"]["cancelRequested"] == true
        })
        .await;
    assert_eq!(run["run"]["id"], run_id.as_str());
    app.stop().await;
}
