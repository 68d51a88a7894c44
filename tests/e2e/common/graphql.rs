//! Starting the real binary against a Graph simulator, and dashboard steps over GraphQL.

use serde_json::json;
use testkit::{GraphqlClient, JWT_SECRET, VAULT_KEY};

use super::Server;

/// Starts the real binary on a fresh test database, talking to a Graph simulator in this
/// process (never to Microsoft).
pub async fn start_server() -> (Server, testkit::TestDb, graph::sim::SimHandle) {
    start_server_with(&[]).await
}

/// Like [`start_server`], with `env` on top (e.g. `TENANTFLOW_SCHEDULER_POLL_SECONDS`).
pub async fn start_server_with(
    env: &[(&str, &str)],
) -> (Server, testkit::TestDb, graph::sim::SimHandle) {
    let turn = super::shared().await;
    let db = testkit::TestDb::new().await;
    let sim = graph::sim::spawn(graph::sim::SimConfig {
        tenants: 2,
        seed: 11,
        ..graph::sim::SimConfig::default()
    })
    .await;
    let mut server = start_server_on(&db, &sim, env).await;
    server.turn = Some(turn);
    (server, db, sim)
}

/// Starts another `tenantflow serve` on `db`, talking to `sim`, with `env` on top (e.g.
/// `TENANTFLOW_WORKFLOW_WORKERS`). Several may share one database.
pub async fn start_server_on(
    db: &testkit::TestDb,
    sim: &graph::sim::SimHandle,
    env: &[(&str, &str)],
) -> Server {
    let dir =
        std::env::temp_dir().join(format!("tenantflow-e2e-{}", uuid::Uuid::new_v4().simple()));
    let dir = dir.to_string_lossy().to_string();
    let mut vars: Vec<(String, String)> = [
        ("DATABASE_URL", db.url()),
        ("TENANTFLOW_JWT_SECRET", JWT_SECRET.to_owned()),
        ("TENANTFLOW_VAULT_KEY", VAULT_KEY.to_owned()),
        ("TENANTFLOW_LOGIN_BASE_URL", sim.login_base().to_string()),
        ("TENANTFLOW_GRAPH_BASE_URL", sim.graph_base().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    // Blocking (it waits for the "listening" line): off this runtime, which also serves
    // the simulator.
    tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(&["--data-dir", &dir], &vars)
    })
    .await
    .unwrap()
}

pub const REGISTER: &str = "mutation($e: String!, $n: String!) { registerTenant(input: {entraTenantId: $e, displayName: $n, primaryDomain: \"contoso.com\"}) { id } }";
pub const CREATE_CONNECTION: &str = "mutation($t: String!, $e: String!) { createConnection(input: {tenantId: $t, entraTenantId: $e, displayName: \"Graph\"}) { id } }";
pub const SET_CREDENTIAL: &str = "mutation($c: String!, $s: String!) { setCredential(input: {connectionId: $c, clientId: \"app-1\", clientSecret: $s}) { connectionId fingerprint } }";
pub const SET_CREDENTIAL_AS: &str = "mutation($c: String!, $id: String!, $s: String!) { setCredential(input: {connectionId: $c, clientId: $id, clientSecret: $s}) { connectionId fingerprint } }";
pub const GRANT: &str =
    "mutation($c: String!) { grantConsent(id: $c, scopes: [\"Policy.Read.All\"]) { id } }";
pub const RESYNC: &str =
    "mutation($t: String!) { resyncTenant(id: $t) { runId status reasonCode } }";
pub const CANCEL: &str =
    "mutation($r: String!) { cancelRun(id: $r) { runId cancelled cancelRequested } }";
pub const IMPORT: &str =
    "mutation($t: String!) { resyncTenant(id: $t, source: IMPORT) { runId status reasonCode } }";

/// Waits for a run to complete; returns it with its type, outcome, reason, summary counts
/// and the run it retries.
pub async fn completed_run(c: &GraphqlClient, run_id: &str) -> serde_json::Value {
    let q = "query($r: String!) { run(id: $r) { id type status outcome reasonCode summaryCounts retryOf } }";
    c.eventually(q, json!({"r": run_id}), |d| {
        d["run"]["status"] == "completed"
    })
    .await["run"]
        .clone()
}

/// Registers a tenant with a ready connection; returns (tenant id, connection id).
pub async fn ready_tenant(c: &GraphqlClient, entra: &str, secret: &str) -> (String, String) {
    ready_tenant_as(c, entra, "app-1", secret).await
}

/// Registers one of the simulator's tenants with its real (simulated) credentials.
pub async fn ready_sim_tenant(c: &GraphqlClient, t: &graph::sim::SimTenant) -> (String, String) {
    use secrecy::ExposeSecret;
    ready_tenant_as(
        c,
        &t.tenant_id.to_string(),
        &t.client_id,
        t.client_secret.expose_secret(),
    )
    .await
}

async fn ready_tenant_as(
    c: &GraphqlClient,
    entra: &str,
    client_id: &str,
    secret: &str,
) -> (String, String) {
    let t = c.ok(REGISTER, json!({"e": entra, "n": "Contoso"})).await["registerTenant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conn = c.ok(CREATE_CONNECTION, json!({"t": t, "e": entra})).await["createConnection"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.ok(
        SET_CREDENTIAL_AS,
        json!({"c": conn, "id": client_id, "s": secret}),
    )
    .await;
    c.ok(GRANT, json!({"c": conn})).await;
    (t, conn)
}

/// A graphql-transport-ws socket to the server at `base_url` (not yet initialised).
pub async fn websocket(
    base_url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/graphql/ws", base_url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket")
        .0
}

/// One of the simulator's tenants registered ready by `owner` and resynced: (tenant id,
/// the resync's run id; the run may still be going).
pub async fn resynced_sim_tenant(
    owner: &GraphqlClient,
    sim: &graph::sim::SimHandle,
) -> (String, String) {
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(owner, &t).await;
    let run = owner.ok(RESYNC, json!({"t": tenant})).await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    (tenant, run)
}

/// How many runs of `run_type` succeeded in a `runs { edges { node { type outcome } } }`
/// answer.
pub fn succeeded_runs(data: &serde_json::Value, run_type: &str) -> usize {
    data["runs"]["edges"]
        .as_array()
        .map(|edges| {
            edges
                .iter()
                .filter(|e| e["node"]["type"] == run_type && e["node"]["outcome"] == "succeeded")
                .count()
        })
        .unwrap_or(0)
}
