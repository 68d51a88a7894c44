//! The audit hash chain (R9.4) as an auditor meets it: the running service seals the log,
//! `auditChain` shows the workspace's head, `tenantflow verify` checks it and records the
//! outcome, `tenantflow export` writes it out, and after someone rewrites an event behind
//! the trigger's back, verify fails naming it.

use crate::common::graphql::*;
use crate::common::run_cli;
use domain::Role;
use serde_json::{json, Value};

const AUDIT_CHAIN: &str = "{ auditChain { sealedPosition sealedEvents headHash \
    lastVerification { at ok firstBad eventsChecked throughPosition } } }";

#[tokio::test]
async fn an_auditor_checks_the_sealed_log_exports_it_and_verify_names_a_rewritten_event() {
    let (server, db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (_, run) = resynced_sim_tenant(&owner, &sim).await;
    completed_run(&owner, &run).await;
    let pool = db.pool().await;
    testkit::caught_up(&pool, "audit_sealer").await;

    // The workspace's chain: every acme event sealed, nothing verified yet.
    let auditor = server.client("acme", Role::Auditor);
    let chain = auditor.ok(AUDIT_CHAIN, json!({})).await["auditChain"].clone();
    let acme_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata ->> 'workspace' = 'acme'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(chain["sealedEvents"], acme_events, "{chain}");
    assert_eq!(chain["headHash"].as_str().unwrap().len(), 64);
    assert_eq!(chain["lastVerification"], Value::Null);
    // Another workspace sees a chain of its own: empty.
    let other = server.client("globex", Role::Owner);
    let theirs = other.ok(AUDIT_CHAIN, json!({})).await["auditChain"].clone();
    assert_eq!(
        (&theirs["sealedPosition"], &theirs["sealedEvents"]),
        (&Value::Null, &json!(0))
    );

    // Verified: exit 0, the head printed, the outcome recorded for the workspace.
    let (ok, out, err) = run_cli(&db, &["verify"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("head: "), "{out}");
    let checked =
        auditor.ok(AUDIT_CHAIN, json!({})).await["auditChain"]["lastVerification"].clone();
    assert_eq!(
        (&checked["ok"], &checked["firstBad"]),
        (&json!(true), &Value::Null),
        "{checked}"
    );

    // The export leads to the head the API shows.
    let file = std::env::temp_dir().join(format!("acme-{}.ndjson", uuid::Uuid::new_v4()));
    let file_arg = file.to_string_lossy().to_string();
    let (ok, _, err) = run_cli(&db, &["export", "--workspace", "acme", "--out", &file_arg]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, acme_events);
    let last = lines.last().unwrap();
    assert_eq!(last["hash"], chain["headHash"]);
    assert_eq!(last["global_position"], chain["sealedPosition"]);

    // Someone drops the trigger and rewrites the snapshot the resync recorded.
    let (position, stream): (i64, String) = sqlx::query_as(
        "SELECT global_position, aggregate_id FROM events WHERE event_type = 'PolicySnapshotted'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for statement in [
        "ALTER TABLE events DISABLE TRIGGER events_append_only".to_owned(),
        format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{PolicySnapshotted,hash}}', '\"forged\"') \
             WHERE global_position = {position}"
        ),
        "ALTER TABLE events ENABLE TRIGGER events_append_only".to_owned(),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }

    let (ok, out, err) = run_cli(&db, &["verify", "--workspace", "acme"]);
    assert!(!ok, "verify passed a rewritten log:\n{out}");
    let named = format!("altered event at position {position} (tenant {stream} #");
    assert!(out.contains(&named), "{out}");
    assert!(err.contains(&named), "the failure names it too:\n{err}");
    let broken = auditor.ok(AUDIT_CHAIN, json!({})).await["auditChain"]["lastVerification"].clone();
    assert_eq!(broken["ok"], false);
    assert!(
        broken["firstBad"].as_str().unwrap().contains(&named),
        "{broken}"
    );
}
