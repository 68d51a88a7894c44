//! Retrying a run through the API (`retryRun`): the real binary, the Graph simulator with an
//! injected fault, and the start rules (R2.2) a retry obeys like any start.

use crate::common::graphql::*;
use crate::common::run_cli;
use domain::Role;
use graph::sim::Fault;
use graph::Endpoint;
use serde_json::{json, Value};

const RETRY: &str = "mutation($r: String!) { retryRun(id: $r) { runId status reasonCode } }";

/// The id of the run a start answered in `field`.
fn run_id(data: &Value, field: &str) -> String {
    data[field]["runId"].as_str().expect("a run id").to_owned()
}

#[tokio::test]
async fn a_failed_resync_retried_after_the_fault_is_cleared_succeeds_linked_to_it_and_obeys_scope_busy(
) {
    let (server, db, sim) = start_server().await;
    let c = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(&c, &t).await;

    // Microsoft refuses the app: the resync fails for good.
    sim.inject(Fault::Unauthorized.on(Endpoint::Token));
    let failed = run_id(&c.ok(RESYNC, json!({"t": tenant})).await, "resyncTenant");
    let run = completed_run(&c, &failed).await;
    assert_eq!(
        (&run["outcome"], &run["reasonCode"]),
        (&json!("failed"), &json!("provider_auth_failed"))
    );
    sim.clear_faults();

    // While an import holds the tenant, the retry is refused and names it.
    sim.inject(Fault::Slow { delay_ms: 3_000 }.on(Endpoint::ListConditionalAccessPolicies));
    let import = run_id(&c.ok(IMPORT, json!({"t": tenant})).await, "resyncTenant");
    let busy = c.post(RETRY, json!({"r": failed})).await;
    assert_eq!(
        busy["errors"][0]["extensions"]["code"], "scope_busy",
        "{busy}"
    );
    assert_eq!(
        busy["errors"][0]["extensions"]["activeRunId"],
        import.as_str()
    );
    completed_run(&c, &import).await;

    // Retried: a new run; asked again while it is active, the same run.
    let retried = c.ok(RETRY, json!({"r": failed})).await["retryRun"].clone();
    assert_eq!(retried["status"], "QUEUED", "{retried}");
    let retry = retried["runId"].as_str().unwrap().to_owned();
    assert_ne!(retry, failed);
    let again = c.ok(RETRY, json!({"r": failed})).await["retryRun"].clone();
    assert_eq!(
        (&again["status"], &again["runId"]),
        (&json!("DEDUPLICATED"), &json!(retry))
    );
    sim.clear_faults();
    let run = completed_run(&c, &retry).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["retryOf"], failed.as_str());
    assert_eq!(run["type"], "policy.resync");

    // The link is in the log: the new run's first event names the old one, and its
    // metadata gives it as the cause.
    let q = "query($r: String!) { events(filter: {aggregateId: $r, eventType: \"RunQueued\"}) \
             { edges { node { payload metadata } } } }";
    let queued = c.ok(q, json!({"r": retry})).await["events"]["edges"][0]["node"].clone();
    assert_eq!(queued["payload"]["RunQueued"]["retry_of"], failed.as_str());
    assert_eq!(queued["metadata"]["causation_id"], failed.as_str());

    // Only failed, blocked or cancelled runs are retried; roles as for starting.
    assert_eq!(
        c.error_code(RETRY, json!({"r": retry})).await,
        "invalid_transition"
    );
    let reader = server.client("acme", Role::Readonly);
    assert_eq!(
        reader.error_code(RETRY, json!({"r": failed})).await,
        "forbidden"
    );
    let stranger = server.client("globex", Role::Owner);
    assert_eq!(
        stranger.error_code(RETRY, json!({"r": failed})).await,
        "not_found"
    );

    // Today's workflow decides as the log recorded, for the failed run and its retry.
    let (ok, printed, err) = run_cli(&db, &["replay", "--all"]);
    assert!(ok, "{printed}\n{err}");
    assert!(
        printed.contains("replayed 3 finished runs: 0 diverge"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_blocked_run_retried_stays_blocked_until_its_tenant_is_ready() {
    let (server, _db, sim) = start_server().await;
    let c = server.client("acme", Role::Operator);
    let owner = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (tenant, conn) = ready_sim_tenant(&owner, &t).await;
    let revoke = "mutation($c: String!) { revokeConsent(id: $c) { id } }";
    owner.ok(revoke, json!({"c": conn})).await;

    let blocked = c.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"].clone();
    assert_eq!(blocked["status"], "BLOCKED");
    let blocked = blocked["runId"].as_str().unwrap().to_owned();

    // Still without consent: the retry is recorded, blocked for the same reason.
    let again = c.ok(RETRY, json!({"r": blocked})).await["retryRun"].clone();
    assert_eq!(
        (&again["status"], &again["reasonCode"]),
        (&json!("BLOCKED"), &json!("provider_consent_missing"))
    );
    let second = again["runId"].as_str().unwrap().to_owned();
    assert_eq!(
        completed_run(&c, &second).await["retryOf"],
        blocked.as_str()
    );

    // Consent granted: the retry runs.
    owner.ok(GRANT, json!({"c": conn})).await;
    let third = run_id(&c.ok(RETRY, json!({"r": second})).await, "retryRun");
    let run = completed_run(&c, &third).await;
    assert_eq!(
        (&run["outcome"], &run["retryOf"]),
        (&json!("succeeded"), &json!(second))
    );
}
