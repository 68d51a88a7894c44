//! A dashboard checks a connection's health and sees what the check found (R1.3).

use crate::common::graphql::*;
use domain::Role;
use serde_json::json;

#[tokio::test]
async fn a_dashboard_starts_a_health_check_and_sees_the_connection_healthy_then_down() {
    let (server, _db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(&owner, &t).await;
    let check = format!(
        "mutation {{ startOperation(tenantId: \"{tenant}\", type: \"provider.health_check\") {{ runId status }} }}"
    );
    let health = format!(
        "{{ tenant(id: \"{tenant}\") {{ connections {{ status healthStatus lastHealthCheckAt lastErrorReasonCode graphEndpoint }} }} }}"
    );

    let started = owner.ok(&check, json!({})).await;
    let run_id = started["startOperation"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = completed_run(&owner, &run_id).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");

    let seen = owner
        .eventually(&health, json!({}), |d| {
            d["tenant"]["connections"][0]["healthStatus"] == "healthy"
        })
        .await;
    let connection = &seen["tenant"]["connections"][0];
    assert_eq!(connection["status"], "connected");
    assert!(connection["lastHealthCheckAt"].is_string(), "{connection}");
    // The connection says which Graph it talks to: here the test's simulator.
    assert_eq!(connection["graphEndpoint"], sim.graph_base().to_string());

    // Microsoft stops taking the secret: the next check finds the connection down.
    sim.rotate_secret(t.tenant_id).unwrap();
    let started = owner.ok(&check, json!({})).await;
    let run_id = started["startOperation"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    completed_run(&owner, &run_id).await;
    let seen = owner
        .eventually(&health, json!({}), |d| {
            d["tenant"]["connections"][0]["healthStatus"] == "down"
        })
        .await;
    let connection = &seen["tenant"]["connections"][0];
    assert_eq!(connection["status"], "error");
    assert_eq!(connection["lastErrorReasonCode"], "provider_auth_failed");
}
