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
