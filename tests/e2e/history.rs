//! Looking back (R9.2, R9.3) as an auditor does: a run's history and earlier states over
//! GraphQL, the same from the command line, and nothing of another workspace.

use crate::common::graphql::*;
use crate::common::run_cli;
use domain::Role;
use serde_json::{json, Value};

const HISTORY: &str = "query($r: String!) { run(id: $r) { status history { position recordedAt at \
    elapsedMs type step attempt reasonCode actor role details } } }";
const RUN_AT: &str = "query($r: String!, $p: Int!) { runAt(id: $r, asOf: {position: $p}) \
    { id version position state } }";
const TENANT_AT: &str = "query($t: String!, $at: DateTime!) { tenantAt(id: $t, asOf: {time: $at}) \
    { id version state } }";

#[tokio::test]
async fn an_auditor_reads_a_runs_history_and_earlier_states_and_changes_nothing() {
    let (server, db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (tenant, run) = resynced_sim_tenant(&owner, &sim).await;

    let auditor = server.client("acme", Role::Auditor);
    let data = auditor
        .eventually(HISTORY, json!({"r": run}), |d| {
            d["run"]["status"] == "completed"
        })
        .await;
    let history = data["run"]["history"].as_array().unwrap().clone();
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "RunQueued",
            "RunStarted",
            "RunStepCompleted",
            "RunStepCompleted",
            "RunStepCompleted",
            "RunSucceeded"
        ]
    );
    let steps: Vec<&Value> = history[2..5].iter().map(|e| &e["step"]).collect();
    assert_eq!(
        steps,
        [
            &json!("snapshot_policies"),
            &json!("refresh_licenses"),
            &json!("record_resync")
        ]
    );
    assert!(history[2..5].iter().all(|e| e["attempt"] == 1));
    assert_eq!(
        (&history[0]["role"], &history[0]["elapsedMs"]),
        (&json!("owner"), &json!(0))
    );
    assert!(history[1..].iter().all(|e| e["role"] == "system"
        && e["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("workflow:"))));
    assert!(
        history[2]["details"]["summary"]["policy_count"]
            .as_i64()
            .unwrap()
            > 0
    );
    // The run's start and steps are carried by its end (issue 13): they share its place in
    // the log, and keep their own times.
    assert!(history
        .windows(2)
        .all(|w| w[0]["position"].as_i64() <= w[1]["position"].as_i64()));
    assert!(history[1..]
        .iter()
        .all(|e| e["position"] == history[5]["position"]));
    assert!(history
        .windows(2)
        .all(|w| w[0]["elapsedMs"].as_i64() <= w[1]["elapsedMs"].as_i64()));

    // The run as it stood when queued and at its end, and the tenant as it stood when the
    // run was queued.
    let queued = history[0]["position"].as_i64().unwrap();
    let then = auditor.ok(RUN_AT, json!({"r": run, "p": queued})).await["runAt"].clone();
    assert_eq!(
        (&then["version"], &then["position"]),
        (&json!(1), &json!(queued))
    );
    assert_eq!(then["state"]["status"], "queued");
    assert_eq!(then["state"]["steps"], json!([]));
    let ended = history[5]["position"].as_i64().unwrap();
    let end = auditor.ok(RUN_AT, json!({"r": run, "p": ended})).await["runAt"].clone();
    assert_eq!(end["state"]["status"], "completed");
    assert_eq!(end["state"]["steps"].as_array().map(Vec::len), Some(3));
    let queued_at = history[0]["recordedAt"].clone();
    let tenant_then = auditor
        .ok(TENANT_AT, json!({"t": tenant, "at": queued_at}))
        .await;
    let tenant_then = &tenant_then["tenantAt"]["state"];
    assert_eq!(
        tenant_then["display_name"],
        sim.tenants()[0].display_name.as_str()
    );
    assert!(
        tenant_then["last_resynced_at"].is_null(),
        "not resynced yet"
    );

    // Nothing of acme is found from another workspace.
    let globex = server.client("globex", Role::Auditor);
    let q = "query($r: String!, $p: Int!, $t: String!, $at: DateTime!) { run(id: $r) { id } \
             runAt(id: $r, asOf: {position: $p}) { id } tenantAt(id: $t, asOf: {time: $at}) { id } }";
    let vars = json!({"r": run, "p": queued, "t": tenant, "at": queued_at});
    let nothing = globex.ok(q, vars).await;
    assert_eq!(
        nothing,
        json!({"run": null, "runAt": null, "tenantAt": null})
    );

    // An auditor changes nothing.
    assert_eq!(
        auditor.error_code(RESYNC, json!({"t": tenant})).await,
        "forbidden"
    );

    // The same from the command line: the timeline, and the run's state then.
    let (ok, timeline, err) = run_cli(&db, &["runs", "show", &run]);
    assert!(ok, "{err}");
    assert!(
        timeline.starts_with(&format!("run {run}: 6 events")),
        "{timeline}"
    );
    assert!(
        timeline.contains("RunStepCompleted       snapshot_policies attempt 1"),
        "{timeline}"
    );
    let (ok, state, err) = run_cli(
        &db,
        &["state", &format!("run/{run}"), "--at", &queued.to_string()],
    );
    assert!(ok, "{err}");
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        (&state["version"], &state["state"]["status"]),
        (&json!(1), &json!("queued"))
    );
    let (ok, _, err) = run_cli(&db, &["runs", "show", &run, "--workspace", "globex"]);
    assert!(!ok && err.contains("not found"), "{err}");
}
