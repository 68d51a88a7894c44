//! The simulator itself: determinism, wire formats, the admin API.

use graph::sim::{self, SimConfig};
use graph::{Endpoint, GraphApi};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::helpers::{client, simulator, tenant};

#[tokio::test]
async fn the_same_seed_yields_the_same_fleet() {
    let config = SimConfig {
        tenants: 5,
        seed: 42,
        ..SimConfig::default()
    };
    let (one, two) = (sim::spawn(config.clone()).await, sim::spawn(config).await);
    let other = sim::spawn(SimConfig {
        tenants: 5,
        seed: 43,
        ..SimConfig::default()
    })
    .await;

    let fingerprint = |sim: &sim::SimHandle| -> Vec<(uuid::Uuid, String, String)> {
        sim.tenants()
            .into_iter()
            .map(|t| {
                (
                    t.tenant_id,
                    t.client_id,
                    t.client_secret.expose_secret().to_owned(),
                )
            })
            .collect()
    };

    assert_eq!(fingerprint(&one), fingerprint(&two));
    assert_ne!(fingerprint(&one), fingerprint(&other));
    let first = one.tenants()[0].tenant_id;
    assert_eq!(one.policies(first).unwrap(), two.policies(first).unwrap());
}

#[tokio::test]
async fn graph_errors_carry_graphs_envelope_and_request_id() {
    let sim = simulator().await;
    let url = format!("{}/users", sim.graph_base());

    let response = reqwest::Client::new()
        .get(url)
        .header("client-request-id", "mine-123")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let request_id = response.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.headers()["client-request-id"], "mine-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(body["error"]["message"], "Access token is empty.");
    assert_eq!(
        body["error"]["innerError"]["request-id"],
        request_id.as_str()
    );
    assert_eq!(body["error"]["innerError"]["client-request-id"], "mine-123");
}

#[tokio::test]
async fn an_unknown_segment_is_a_bad_request() {
    let sim = simulator().await;

    let response = reqwest::get(format!("{}/nonsense", sim.graph_base()))
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Resource not found for the segment 'nonsense'."
    );
}

#[tokio::test]
async fn the_admin_api_serves_the_fleet_with_its_credentials() {
    let sim = simulator().await;

    let fleet: Value = reqwest::get(format!("{}_sim/fleet", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let contoso = tenant(&sim, 0);
    assert_eq!(
        fleet["tenants"][0]["tenantId"],
        contoso.tenant_id.to_string()
    );
    assert_eq!(
        fleet["tenants"][0]["clientSecret"],
        contoso.client_secret.expose_secret()
    );
    assert_eq!(fleet["graphBase"], sim.graph_base().as_str());
    assert_eq!(
        fleet["partner"]["tenantId"],
        sim.partner().tenant_id.to_string()
    );
}

#[tokio::test]
async fn faults_injected_over_http_apply_and_show_in_the_request_log() {
    let sim = simulator().await;
    let admin = reqwest::Client::new();
    let contoso = tenant(&sim, 0);
    let spec = json!({"tenant": contoso.tenant_id, "endpoint": "list_subscribed_skus",
                      "fault": {"kind": "forbidden"}, "times": 1});

    let injected = admin
        .post(format!("{}_sim/faults", sim.base_url()))
        .json(&spec)
        .send()
        .await
        .unwrap();
    let refused = client(&sim)
        .list_subscribed_skus(&contoso.credentials())
        .await;
    let log: Vec<Value> = admin
        .get(format!("{}_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(injected.status(), 201);
    assert!(refused.is_err());
    let call = log
        .iter()
        .find(|r| r["endpoint"] == "list_subscribed_skus")
        .unwrap();
    assert_eq!(call["status"], 403);
    assert_eq!(call["tenant"], contoso.tenant_id.to_string());
    assert!(sim.faults().is_empty(), "a fault applied once is gone");
}

#[tokio::test]
async fn edited_policies_show_on_the_next_read() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let mut policies = sim.policies(contoso.tenant_id).unwrap();
    let removed = policies.pop().unwrap();
    let mut edited = policies[0].clone();
    edited["state"] = json!("disabled");

    sim.upsert_policy(contoso.tenant_id, edited).unwrap();
    sim.remove_policy(contoso.tenant_id, removed["id"].as_str().unwrap())
        .unwrap();
    sim.upsert_policy(
        contoso.tenant_id,
        json!({"displayName": "New in portal", "state": "enabled", "conditions": {}}),
    )
    .unwrap();
    let read = client(&sim)
        .list_conditional_access_policies(&contoso.credentials())
        .await
        .unwrap();

    assert_eq!(read[0].state, graph::models::PolicyState::Disabled);
    assert!(read[0].json["modifiedDateTime"].is_string());
    assert!(read.iter().all(|p| p.json["id"] != removed["id"]));
    assert_eq!(read.last().unwrap().display_name, "New in portal");
}

#[tokio::test]
async fn every_registered_graph_endpoint_is_served() {
    let sim = simulator().await;

    for endpoint in Endpoint::ALL {
        let template = endpoint.path_template();
        let path = template
            .replace("{tenant}", &tenant(&sim, 0).tenant_id.to_string())
            .replace("{user}", "someone")
            .replace("{message}", "m1")
            .replace("{subscription}", "s1");
        let base = match endpoint.host() {
            graph::Host::Login => sim.login_base(),
            graph::Host::Graph => sim.graph_base(),
            graph::Host::Cipp => sim.cipp_base(),
        };
        let method = match endpoint.method() {
            graph::Method::Get => reqwest::Method::GET,
            graph::Method::Post => reqwest::Method::POST,
            graph::Method::Patch => reqwest::Method::PATCH,
            graph::Method::Delete => reqwest::Method::DELETE,
        };
        let response = reqwest::Client::new()
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), 405, "{endpoint} is routed");
        let logged = sim.requests().last().cloned().unwrap();
        assert_eq!(logged.endpoint, Some(endpoint), "{endpoint} is recognised");
    }
}
