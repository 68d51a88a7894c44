//! Connection lifecycle over the API (disable, enable), and operations through a connection
//! the caller names.

use domain::Role;
use serde_json::{json, Value};
use testkit::TestApp;

use crate::dashboard::{add_connection, completed, event_count, ready};

const DISABLE: &str = "mutation($c: String!) { disableConnection(id: $c) { id } }";
const REMOVE: &str = "mutation($c: String!) { removeConnection(id: $c) { id } }";
const RENAME: &str =
    "mutation($c: String!, $n: String!) { renameConnection(id: $c, displayName: $n) { id } }";
const NAMES: &str = "query($t: String!) { tenant(id: $t) { connections { id displayName } } }";
const ENABLE: &str = "mutation($c: String!) { enableConnection(id: $c) { id } }";
const CONNECTION_STATUS: &str =
    "query($t: String!) { tenant(id: $t) { connections { id status } } }";
const RESYNC_THROUGH: &str = "mutation($t: String!, $c: String) { resyncTenant(id: $t, connectionId: $c) { runId status reasonCode } }";
const START_THROUGH: &str = "mutation($t: String!, $c: String) { startOperation(tenantId: $t, type: \"policy.resync\", connectionId: $c) { runId status reasonCode } }";

fn status_of(data: &Value, connection: &str) -> Value {
    data["tenant"]["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == connection))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_disabled_connection_blocks_runs_through_it_until_it_is_enabled() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Manager);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, connection) = ready(&c, &sim_tenant).await;

    c.ok(DISABLE, json!({"c": connection})).await;
    c.eventually(CONNECTION_STATUS, json!({"t": tenant}), |d| {
        status_of(d, &connection) == "disabled"
    })
    .await;
    // Disabling twice is refused, and changes nothing.
    let before = event_count(&app).await;
    assert_eq!(
        c.error_code(DISABLE, json!({"c": connection})).await,
        "provider_connection_disabled"
    );
    assert_eq!(event_count(&app).await, before);

    let blocked = c.ok(RESYNC_THROUGH, json!({"t": tenant, "c": null})).await;
    assert_eq!(
        blocked["resyncTenant"]["reasonCode"], "provider_connection_disabled",
        "{blocked}"
    );

    c.ok(ENABLE, json!({"c": connection})).await;
    c.eventually(CONNECTION_STATUS, json!({"t": tenant}), |d| {
        status_of(d, &connection) == "connected"
    })
    .await;
    let started = c
        .ok(RESYNC_THROUGH, json!({"t": tenant, "c": connection}))
        .await;
    assert_eq!(started["resyncTenant"]["status"], "QUEUED", "{started}");
    app.stop().await;
}

#[tokio::test]
async fn a_connection_is_removed_but_the_default_only_as_the_last_one() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let (tenant, primary) = ready(&c, &app.sim().tenants().remove(0)).await;
    let entra = app.sim().tenants()[1].tenant_id.to_string();
    let second = add_connection(&c, &tenant, &entra, "Second").await;

    let before = event_count(&app).await;
    assert_eq!(
        c.error_code(REMOVE, json!({"c": primary})).await,
        "invalid_transition"
    );
    assert_eq!(event_count(&app).await, before);

    c.ok(REMOVE, json!({"c": second})).await;
    c.eventually(NAMES, json!({"t": tenant}), |d| {
        d["tenant"]["connections"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(
        c.error_code(REMOVE, json!({"c": second})).await,
        "not_found"
    );

    // The default as the last connection: the tenant has none, and runs are blocked.
    c.ok(REMOVE, json!({"c": primary})).await;
    c.eventually(NAMES, json!({"t": tenant}), |d| {
        d["tenant"]["connections"] == json!([])
    })
    .await;
    let blocked = c.ok(RESYNC_THROUGH, json!({"t": tenant, "c": null})).await;
    assert_eq!(
        blocked["resyncTenant"]["reasonCode"], "provider_connection_missing",
        "{blocked}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_connection_is_renamed_and_a_bad_name_changes_nothing() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Manager);
    let (tenant, connection) = ready(&c, &app.sim().tenants().remove(0)).await;
    c.ok(RENAME, json!({"c": connection, "n": "Contoso (partner)"}))
        .await;
    let renamed = c
        .eventually(NAMES, json!({"t": tenant}), |d| {
            d["tenant"]["connections"][0]["displayName"] == "Contoso (partner)"
        })
        .await;
    assert_eq!(
        renamed["tenant"]["connections"][0]["id"],
        connection.as_str()
    );
    let before = event_count(&app).await;
    assert_eq!(
        c.error_code(RENAME, json!({"c": connection, "n": ""}))
            .await,
        "validation_failed"
    );
    assert_eq!(event_count(&app).await, before);
    app.stop().await;
}

#[tokio::test]
async fn readonly_and_auditor_may_not_disable_enable_rename_or_remove_a_connection() {
    let app = TestApp::start().await;
    let owner = app.client("acme", Role::Owner);
    let (_, connection) = ready(&owner, &app.sim().tenants().remove(0)).await;
    let before = event_count(&app).await;
    for role in [Role::Readonly, Role::Auditor] {
        let c = app.client("acme", role);
        for mutation in [DISABLE, ENABLE, RENAME, REMOVE] {
            assert_eq!(
                c.error_code(mutation, json!({"c": connection, "n": "x"}))
                    .await,
                "forbidden",
                "{role:?}"
            );
        }
    }
    assert_eq!(event_count(&app).await, before);
    app.stop().await;
}

#[tokio::test]
async fn an_operation_goes_through_the_connection_it_names() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, primary) = ready(&c, &sim_tenant).await;
    // A second connection (to another Entra tenant, as one per Entra tenant is allowed)
    // without credential or consent: a run through it is blocked, though the default is
    // ready.
    let entra = app.sim().tenants()[1].tenant_id.to_string();
    let second = add_connection(&c, &tenant, &entra, "Second").await;
    let blocked =
        c.ok(START_THROUGH, json!({"t": tenant, "c": second})).await["startOperation"].clone();
    assert_eq!(
        (&blocked["status"], &blocked["reasonCode"]),
        (&json!("BLOCKED"), &json!("provider_credential_missing")),
        "{blocked}"
    );
    let run = completed(&c, blocked["runId"].as_str().unwrap()).await;
    assert_eq!(run["outcome"], "blocked");

    // Through the default, named, it runs.
    let started = c
        .ok(START_THROUGH, json!({"t": tenant, "c": primary}))
        .await["startOperation"]
        .clone();
    assert_eq!(started["status"], "QUEUED", "{started}");
    let run = completed(&c, started["runId"].as_str().unwrap()).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");

    // A connection that is not the tenant's is not found; one that is no id is bad input.
    // Neither writes anything.
    let before = event_count(&app).await;
    let stranger = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        c.error_code(START_THROUGH, json!({"t": tenant, "c": stranger}))
            .await,
        "not_found"
    );
    assert_eq!(
        c.error_code(START_THROUGH, json!({"t": tenant, "c": "not-a-uuid"}))
            .await,
        "validation_failed"
    );
    assert_eq!(event_count(&app).await, before);
    app.stop().await;
}
