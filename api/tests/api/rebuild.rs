//! Rebuilding read models over GraphQL: owners only, one at a time, followed to its end.

use domain::Role;
use serde_json::{json, Value};
use testkit::{ReadyTenant, TestApp};

const STATUS: &str =
    "{ rebuildStatus { state readModels eventsApplied eventsTotal finishedAt error } }";

#[tokio::test]
async fn only_an_owner_may_start_or_follow_a_rebuild() {
    let app = TestApp::start().await;
    for role in [Role::Manager, Role::Operator, Role::Auditor, Role::Readonly] {
        let c = app.client("acme", role);
        assert_eq!(
            c.error_code("mutation { startRebuild { state } }", json!({}))
                .await,
            "forbidden",
            "{role:?}"
        );
        assert_eq!(
            c.error_code(STATUS, json!({})).await,
            "forbidden",
            "{role:?}"
        );
    }
    let owner = app.client("acme", Role::Owner);
    assert_eq!(
        owner.ok(STATUS, json!({})).await["rebuildStatus"],
        Value::Null
    );
    assert_eq!(
        owner
            .error_code(
                r#"mutation { startRebuild(readModels: ["tenants", "nope"]) { state } }"#,
                json!({})
            )
            .await,
        "validation_failed"
    );
    assert_eq!(
        owner.ok(STATUS, json!({})).await["rebuildStatus"],
        Value::Null,
        "nothing started"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_owner_rebuilds_read_models_in_the_background_and_follows_it_to_its_end() {
    let app = TestApp::start().await;
    let simulated = app.sim().tenants().remove(0);
    ReadyTenant::simulated(&app.bus, &simulated).build().await;
    let owner = app.client("acme", Role::Owner);
    let before = owner
        .eventually(
            "{ tenants(first: 10) { edges { node { id displayName } } } }",
            json!({}),
            |d| {
                d["tenants"]["edges"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
            },
        )
        .await;
    // A rebuild reads below the oldest running transaction of the shared cluster.
    testkit::log_below_horizon(&app.pool).await;

    let started = owner
        .ok(
            r#"mutation { startRebuild(readModels: ["runs", "tenants"]) { state readModels eventsTotal } }"#,
            json!({}),
        )
        .await["startRebuild"]
        .clone();
    assert_eq!(
        started["readModels"],
        json!(["tenants", "runs"]),
        "{started}"
    );
    assert!(started["eventsTotal"].as_i64() > Some(0), "{started}");
    let done = owner
        .eventually(STATUS, json!({}), |d| {
            d["rebuildStatus"]["state"] != "RUNNING"
        })
        .await["rebuildStatus"]
        .clone();
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["eventsApplied"], done["eventsTotal"], "{done}");
    assert!(
        done["finishedAt"].is_string() && done["error"].is_null(),
        "{done}"
    );
    let after = owner
        .ok(
            "{ tenants(first: 10) { edges { node { id displayName } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        after, before,
        "the rebuilt read model shows the same tenants"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_is_refused_while_another_runs() {
    let app = TestApp::start().await;
    // Another instance's rebuild, as far as this one can tell: it holds the rebuild lock.
    let mut elsewhere = app.pool.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(0x5245_4255_i64)
        .fetch_one(&mut *elsewhere)
        .await
        .unwrap();
    assert!(locked);
    let owner = app.client("acme", Role::Owner);
    assert_eq!(
        owner
            .error_code("mutation { startRebuild { state } }", json!({}))
            .await,
        "rebuild_running"
    );
    elsewhere.rollback().await.unwrap();
    let started = owner
        .ok("mutation { startRebuild { state } }", json!({}))
        .await;
    assert!(started["startRebuild"]["state"].is_string(), "{started}");
    owner
        .eventually(STATUS, json!({}), |d| {
            d["rebuildStatus"]["state"] == "SUCCEEDED"
        })
        .await;
    app.stop().await;
}
