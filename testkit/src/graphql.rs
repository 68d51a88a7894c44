//! A dashboard-like GraphQL client, for the in-process service and the real binary alike.

use serde_json::{json, Value};
use std::time::Duration;

use crate::tenants::JWT_SECRET;
use crate::wait::eventually;

/// A bearer token for someone with `role` in `workspace`, signed with [`JWT_SECRET`] and
/// valid for an hour.
pub fn token(workspace: &str, role: domain::Role) -> String {
    token_for("test-user", workspace, role)
}

/// A bearer token as [`token`] makes, for the person `subject`.
pub fn token_for(subject: &str, workspace: &str, role: domain::Role) -> String {
    let auth = api::auth::Authenticator::new(&secrecy::SecretString::from(JWT_SECRET.to_owned()));
    auth.mint(subject, workspace, role, chrono::Duration::hours(1))
        .expect("a token for a person's role")
}

/// A caller of the API at `base_url` with one token.
#[derive(Clone)]
pub struct GraphqlClient {
    pub base_url: String,
    pub token: String,
    http: reqwest::Client,
}

impl GraphqlClient {
    /// A client for someone with `role` in `workspace`.
    pub fn new(base_url: &str, workspace: &str, role: domain::Role) -> Self {
        Self {
            base_url: base_url.to_owned(),
            token: token(workspace, role),
            http: reqwest::Client::new(),
        }
    }

    /// A client for the person `subject` with `role` in `workspace`.
    pub fn as_subject(base_url: &str, subject: &str, workspace: &str, role: domain::Role) -> Self {
        Self {
            token: token_for(subject, workspace, role),
            ..Self::new(base_url, workspace, role)
        }
    }

    /// Posts a query; returns the whole response body (data and errors).
    pub async fn post(&self, query: &str, variables: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/graphql", self.base_url))
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("graphql request");
        assert!(r.status().is_success(), "HTTP {}", r.status());
        r.json().await.expect("graphql json")
    }

    /// Posts and expects no errors; returns `data`.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let body = self.post(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// Posts and expects an error; returns its `code` extension.
    pub async fn error_code(&self, query: &str, variables: Value) -> String {
        let body = self.post(query, variables).await;
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("expected an error: {body}"));
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// Re-runs `query` until `done(data)` holds (read models catch up asynchronously);
    /// returns that data.
    pub async fn eventually(
        &self,
        query: &str,
        variables: Value,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("an answer that holds to {query}");
        eventually(&what, Duration::from_secs(30), || async {
            let data = self.ok(query, variables.clone()).await;
            done(&data).then_some(data)
        })
        .await
    }
}
