//! Persisted queries over HTTP: the automatic persisted query protocol, and a service that
//! accepts only its known queries.

use api::graphql::{persisted_query_hash as hash, PersistedQueries};
use domain::Role;
use serde_json::{json, Value};
use testkit::TestApp;

use crate::dashboard::readme_queries;

/// Posts a request with `extensions.persistedQuery` naming `sha256`, and `query` unless
/// empty; returns the whole answer.
async fn post(app: &TestApp, query: &str, sha256: Option<&str>, variables: Value) -> Value {
    let mut body = json!({ "variables": variables });
    if !query.is_empty() {
        body["query"] = json!(query);
    }
    if let Some(h) = sha256 {
        body["extensions"] = json!({ "persistedQuery": { "version": 1, "sha256Hash": h } });
    }
    reqwest::Client::new()
        .post(format!("{}/graphql", app.url()))
        .bearer_auth(app.token("acme", Role::Readonly))
        .json(&body)
        .send()
        .await
        .expect("a response")
        .json()
        .await
        .expect("a JSON answer")
}

fn code(answer: &Value) -> &str {
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

#[tokio::test]
async fn a_query_sent_once_with_its_hash_is_then_asked_for_by_hash_alone() {
    let app = TestApp::start().await;
    let q = "query Me { me { workspace role } }";
    let h = hash(q);
    let unknown = post(&app, "", Some(&h), json!({})).await;
    assert_eq!(code(&unknown), "PERSISTED_QUERY_NOT_FOUND", "{unknown}");
    assert_eq!(unknown["errors"][0]["message"], "PersistedQueryNotFound");

    let registered = post(&app, q, Some(&h), json!({})).await;
    assert_eq!(registered["data"]["me"]["role"], "readonly", "{registered}");
    let by_hash = post(&app, "", Some(&h), json!({})).await;
    assert_eq!(by_hash["data"], registered["data"], "{by_hash}");

    let wrong = post(&app, q, Some(&hash("{ me { role } }")), json!({})).await;
    assert_eq!(code(&wrong), "validation_failed", "{wrong}");
    app.stop().await;
}

#[tokio::test]
async fn a_service_restricted_to_its_known_queries_refuses_any_other() {
    // The README's dashboard queries are the known ones.
    let operations: Vec<Value> = readme_queries()
        .into_iter()
        .map(|(name, body)| json!({ "id": hash(&body), "name": name, "type": "query", "body": body }))
        .collect();
    let manifest = json!({ "format": "apollo-persisted-query-manifest", "version": 1, "operations": operations });
    let known = PersistedQueries::only_known(&manifest.to_string()).expect("a valid manifest");
    let app = TestApp::start_with_persisted(known).await;

    let (_, tenant_list) = readme_queries()
        .into_iter()
        .find(|(name, _)| name == "TenantList")
        .expect("the TenantList query");
    let by_hash = post(&app, "", Some(&hash(&tenant_list)), json!({})).await;
    assert_eq!(by_hash["data"]["tenants"]["edges"], json!([]), "{by_hash}");
    let by_text = post(&app, &tenant_list, None, json!({})).await;
    assert!(by_text.get("errors").is_none(), "{by_text}");

    let other = "{ me { role } }";
    let refused = post(&app, other, None, json!({})).await;
    assert_eq!(code(&refused), "forbidden", "{refused}");
    assert!(refused.get("data").is_none_or(Value::is_null), "{refused}");
    let not_learnt = post(&app, other, Some(&hash(other)), json!({})).await;
    assert_eq!(code(&not_learnt), "forbidden", "{not_learnt}");
    app.stop().await;
}
