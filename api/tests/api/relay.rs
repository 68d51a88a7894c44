//! Relay conventions: a `Node` interface with global ids, refetched with `node(id:)`; enums
//! for closed sets.

use domain::Role;
use serde_json::{json, Value};
use testkit::TestApp;

use crate::dashboard::{completed, ready, resync};

const NODE: &str = "query($id: ID!) { node(id: $id) { __typename id \
    ... on Tenant { displayName status } ... on Run { type status outcome } \
    ... on ProviderConnection { displayName status healthStatus } \
    ... on PolicySnapshot { policyCount } } }";

#[tokio::test]
async fn every_entity_is_refetched_by_its_global_id_and_only_in_its_workspace() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Readonly);
    let owner = app.client("acme", Role::Owner);
    let (tenant, connection) = ready(&owner, &app.sim().tenants().remove(0)).await;
    let run = completed(&owner, &resync(&owner, &tenant).await).await;
    let snapshot = run["snapshotId"].clone();

    let node = |id: Value| {
        let c = &c;
        async move { c.ok(NODE, json!({ "id": id })).await["node"].clone() }
    };
    let t = node(json!(tenant)).await;
    assert_eq!(
        (&t["__typename"], &t["id"]),
        (&json!("Tenant"), &json!(tenant))
    );
    assert_eq!(t["status"], "active");
    let r = node(run["id"].clone()).await;
    assert_eq!(r["__typename"], "Run");
    assert_eq!(
        (&r["status"], &r["outcome"]),
        (&json!("completed"), &json!("succeeded"))
    );
    let p = node(json!(connection)).await;
    assert_eq!(p["__typename"], "ProviderConnection", "{p}");
    assert_eq!(p["status"], "connected");
    let s = node(snapshot.clone()).await;
    assert_eq!(
        (&s["__typename"], &s["id"]),
        (&json!("PolicySnapshot"), &snapshot)
    );

    // The global id is the aggregate's own: the same after any rebuild of read models.
    let streams = app
        .client("acme", Role::Auditor)
        .ok(
            "query($id: String) { events(filter: {aggregateId: $id}, first: 1) { edges { node { aggregateType } } } }",
            json!({ "id": run["id"] }),
        )
        .await;
    assert_eq!(
        streams["events"]["edges"][0]["node"]["aggregateType"], "operation_run",
        "{streams}"
    );

    // Another workspace finds none of them; a malformed id is bad input.
    let globex = app.client("globex", Role::Owner);
    for id in [
        json!(tenant),
        run["id"].clone(),
        json!(connection),
        snapshot,
    ] {
        let theirs = globex.ok(NODE, json!({ "id": id })).await;
        assert!(theirs["node"].is_null(), "{theirs}");
    }
    assert_eq!(
        c.error_code(NODE, json!({ "id": "nothing" })).await,
        "validation_failed"
    );
    app.stop().await;
}

#[tokio::test]
async fn runs_filter_by_typed_statuses_and_outcomes() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let (tenant, _) = ready(&c, &app.sim().tenants().remove(0)).await;
    let run = completed(&c, &resync(&c, &tenant).await).await;
    let runs = "query($f: RunFilter) { runs(filter: $f) { edges { node { id outcome } } } }";
    let ok = c
        .ok(runs, json!({"f": {"statusIn": ["completed"], "outcomeIn": ["succeeded", "partially_succeeded"]}}))
        .await;
    assert_eq!(ok["runs"]["edges"][0]["node"]["id"], run["id"], "{ok}");
    let none = c
        .ok(runs, json!({"f": {"outcomeIn": ["failed", "blocked"]}}))
        .await;
    assert_eq!(none["runs"]["edges"], json!([]), "{none}");
    // A value outside the enum is refused by the schema itself.
    let refused = c
        .post(runs, json!({"f": {"outcomeIn": ["exploded"]}}))
        .await;
    assert!(refused["errors"].is_array(), "{refused}");
    assert!(refused["data"].is_null(), "{refused}");
    app.stop().await;
}
