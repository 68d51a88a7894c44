//! Dashboard toolchains (GraphiQL, code generators, Apollo, Relay) load the schema with the
//! standard introspection query and build a client schema from the answer; ordinary
//! queries keep their depth and complexity limits meanwhile.

use domain::Role;
use serde_json::json;
use testkit::TestApp;

use crate::dashboard::readme_queries;
use crate::graphql_js;

/// The names the committed SDL declares (types, inputs, enums, interfaces, unions, scalars).
fn committed_type_names() -> Vec<String> {
    include_str!("../../schema.graphql")
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next() {
                Some("type" | "input" | "enum" | "interface" | "union" | "scalar") => {
                    words.next().map(str::to_owned)
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test]
async fn the_standard_introspection_query_succeeds_and_rebuilds_the_whole_schema() {
    let app = TestApp::start().await;
    let query = graphql_js::introspection_query();
    // Type references nine `ofType`s deep: past the ordinary depth limit.
    assert!(query.matches("ofType").count() >= 8, "{query}");
    let answer = app
        .client("acme", Role::Readonly)
        .post(&query, json!({}))
        .await;
    assert!(answer.get("errors").is_none(), "{answer}");

    let operations: Vec<_> = readme_queries()
        .into_iter()
        .map(|(name, document)| json!({ "name": name, "document": document }))
        .collect();
    let report = graphql_js::client_schema(&answer, &json!(operations));
    let rebuilt: Vec<&str> = report["types"]
        .as_array()
        .expect("type names")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let committed = committed_type_names();
    assert!(committed.len() > 40, "{committed:?}");
    for name in &committed {
        assert!(
            rebuilt.contains(&name.as_str()),
            "`{name}` missing from the client schema"
        );
    }
    assert!(
        report["sdl"]
            .as_str()
            .is_some_and(|s| s.contains("type QueryRoot")),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn introspection_mixed_with_data_keeps_the_ordinary_depth_limit() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Readonly);
    let deep_types = "__schema { types { fields { type { ofType { ofType { ofType { ofType { \
                      ofType { ofType { ofType { ofType { name } } } } } } } } } } } }";
    // Alone it is introspection, and within its limits.
    let alone = c.post(&format!("{{ {deep_types} }}"), json!({})).await;
    assert!(alone.get("errors").is_none(), "{alone}");
    // Beside a data field it is an ordinary query, held to the ordinary depth.
    let mixed = c
        .post(&format!("{{ me {{ role }} {deep_types} }}"), json!({}))
        .await;
    assert_eq!(
        mixed["errors"][0]["message"], "Query is nested too deep.",
        "{mixed}"
    );
    assert!(mixed["data"].is_null(), "{mixed}");
    app.stop().await;
}

#[tokio::test]
async fn introspection_that_nests_the_schemas_lists_three_deep_is_refused() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Readonly);
    let code = c
        .error_code(
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "validation_failed");
    app.stop().await;
}

/// What a node subscriber printed, once it ended (bounded).
async fn output_of(mut child: std::process::Child) -> serde_json::Value {
    let ended = testkit::within(std::time::Duration::from_secs(30), || {
        let done = matches!(child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(ended.is_some(), "the graphql-ws client did not finish");
    let out = child.wait_with_output().expect("the client's output");
    assert!(
        out.status.success(),
        "graphql-ws client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the graphql-ws client")
}

#[tokio::test]
async fn the_reference_graphql_ws_client_follows_runs_live_and_is_refused_without_a_token() {
    let app = TestApp::start().await;
    let simulated = app.sim().tenants().remove(0);
    let (tenant, _) = testkit::ReadyTenant::simulated(&app.bus, &simulated)
        .build()
        .await;
    let ws_url = format!("{}/graphql/ws", app.url().replacen("http://", "ws://", 1));
    let subscription =
        "subscription($t: String!) { runUpdated(tenantId: $t) { id type status outcome } }";
    let token = app.token("acme", Role::Readonly);
    let subscriber = graphql_js::subscribe(
        &ws_url,
        &token,
        subscription,
        &json!({ "t": tenant.to_string() }),
        1,
    );
    // Runs are started until the subscriber has seen one change (it connects on its own
    // time; each round waits for its run to end, so the loop is bounded by the client).
    let operator = app.client("acme", Role::Operator);
    let mut subscriber = Some(subscriber);
    for _ in 0..20 {
        let child = subscriber.as_mut().expect("the subscriber");
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        let run = operator
            .ok(
                "mutation($t: String!) { resyncTenant(id: $t) { runId } }",
                json!({ "t": tenant.to_string() }),
            )
            .await["resyncTenant"]["runId"]
            .clone();
        operator
            .eventually(
                "query($r: String!) { run(id: $r) { status } }",
                json!({ "r": run }),
                |d| d["run"]["status"] == "completed",
            )
            .await;
    }
    let seen = output_of(subscriber.take().expect("the subscriber")).await;
    let first = &seen[0]["data"]["runUpdated"];
    assert_eq!(first["type"], "policy.resync", "{seen}");
    assert!(first["id"].is_string(), "{seen}");

    let refused = output_of(graphql_js::subscribe(
        &ws_url,
        "not-a-token",
        subscription,
        &json!({ "t": tenant.to_string() }),
        1,
    ))
    .await;
    assert_eq!(refused["closed"], 4403, "{refused}");
    app.stop().await;
}
