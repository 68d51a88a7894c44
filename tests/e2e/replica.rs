//! Reading from a streaming replica (`database_read_url`): queries are served by the
//! replica, row-level security holds there, a mutation's caller reads its own write while
//! the replica lags, and a replica further behind than the bound is not read.

use serde_json::json;
use testkit::{GraphqlClient, Replicated, JWT_SECRET, VAULT_KEY};

use crate::common::Server;

const TENANTS: &str = "{ tenants(first: 50) { edges { node { id displayName } } } }";
const REGISTER: &str = "mutation($e: String!, $n: String!) { registerTenant(input: {entraTenantId: $e, displayName: $n, primaryDomain: \"contoso.com\"}) { id } }";

fn names(data: &serde_json::Value) -> Vec<String> {
    data["tenants"]["edges"]
        .as_array()
        .map(|edges| {
            edges
                .iter()
                .filter_map(|e| e["node"]["displayName"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn serve(dbs: &Replicated, max_lag_ms: &str) -> Server {
    use secrecy::ExposeSecret;
    let dir =
        std::env::temp_dir().join(format!("tenantflow-e2e-{}", uuid::Uuid::new_v4().simple()));
    let primary = dbs.primary.url(testkit::REPLICATED_DATABASE);
    let replica = dbs.replica.url(testkit::REPLICATED_DATABASE);
    Server::start(
        &["--data-dir", &dir.to_string_lossy()],
        &[
            ("DATABASE_URL", primary.expose_secret()),
            ("TENANTFLOW_DATABASE_READ_URL", replica.expose_secret()),
            ("TENANTFLOW_DATABASE_READ_MAX_LAG_MS", max_lag_ms),
            ("TENANTFLOW_JWT_SECRET", JWT_SECRET),
            ("TENANTFLOW_VAULT_KEY", VAULT_KEY),
            ("TENANTFLOW_DEMO", "false"),
        ],
    )
}

async fn metrics(base_url: &str) -> String {
    reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_from_the_replica_and_a_writer_reads_its_own_writes() {
    let _turn = crate::common::shared().await;
    let dbs = Replicated::start().await;
    // A bound no test run reaches: only the caller's own writes send reads to the primary.
    let server = serve(&dbs, "600000");
    let url = server.base_url.clone();
    let writer = GraphqlClient::as_subject(&url, "writer", "acme", domain::Role::Owner);
    let watcher = GraphqlClient::as_subject(&url, "watcher", "acme", domain::Role::Readonly);
    let other = GraphqlClient::as_subject(&url, "auditor", "globex", domain::Role::Readonly);

    writer
        .ok(
            REGISTER,
            json!({"e": "11111111-1111-4111-8111-111111111111", "n": "Before the pause"}),
        )
        .await;
    watcher
        .eventually(TENANTS, json!({}), |d| names(d) == ["Before the pause"])
        .await;

    // The replica has everything so far (the tenant's row included), then stops replaying:
    // the writer's next tenant is on the primary only.
    dbs.caught_up().await;
    // ...and the service has seen it fresh (it samples both positions a few times a
    // second): the watcher's reads are the replica's.
    testkit::eventually(
        "a query served by the replica",
        std::time::Duration::from_secs(30),
        || async {
            watcher.ok(TENANTS, json!({})).await;
            metrics(&url)
                .await
                .contains("tenantflow_replica_reads_total{outcome=\"replica\"}")
                .then_some(())
        },
    )
    .await;
    dbs.pause_replay().await;
    writer
        .ok(
            REGISTER,
            json!({"e": "22222222-2222-4222-8222-222222222222", "n": "During the pause"}),
        )
        .await;
    // The writer sees it (its reads go to the primary until the replica has its write)...
    let seen = testkit::within(std::time::Duration::from_secs(30), || async {
        let names = names(&writer.ok(TENANTS, json!({})).await);
        (names.len() == 2).then_some(names)
    })
    .await;
    assert!(
        seen.is_some(),
        "metrics:\n{}\nlog:\n{}",
        metrics(&url).await,
        server.log_text()
    );
    // ...while someone else, reading the replica, still sees the tenant list as it was.
    let seen = names(&watcher.ok(TENANTS, json!({})).await);
    assert_eq!(
        seen,
        ["Before the pause"],
        "metrics:\n{}\nlog:\n{}",
        metrics(&url).await,
        server.log_text()
    );
    let m = metrics(&url).await;
    assert!(
        m.contains("tenantflow_replica_reads_total{outcome=\"replica\"}")
            && m.contains("tenantflow_replica_reads_total{outcome=\"primary_own_write\"}"),
        "reads by route in the metrics:\n{m}"
    );

    // Replaying again, the replica catches up for everyone; row-level security holds there.
    dbs.resume_replay().await;
    watcher
        .eventually(TENANTS, json!({}), |d| names(d).len() == 2)
        .await;
    assert!(names(&other.ok(TENANTS, json!({})).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_further_behind_than_the_bound_is_not_read() {
    let _turn = crate::common::shared().await;
    let dbs = Replicated::start().await;
    let server = serve(&dbs, "500");
    let url = server.base_url.clone();
    let writer = GraphqlClient::as_subject(&url, "writer", "acme", domain::Role::Owner);
    let watcher = GraphqlClient::as_subject(&url, "watcher", "acme", domain::Role::Readonly);
    dbs.pause_replay().await;
    writer
        .ok(
            REGISTER,
            json!({"e": "33333333-3333-4333-8333-333333333333", "n": "Behind a stale replica"}),
        )
        .await;
    // Once the replica is more than 0.5 s behind, the watcher's reads go to the primary.
    watcher
        .eventually(TENANTS, json!({}), |d| {
            names(d) == ["Behind a stale replica"]
        })
        .await;
    let m = metrics(&url).await;
    assert!(
        m.contains("tenantflow_replica_reads_total{outcome=\"primary_stale\"}"),
        "stale reads counted:\n{m}"
    );
    dbs.resume_replay().await;
}
