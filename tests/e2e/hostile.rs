//! A hostile client against the real binary: bodies that never end, queries whose
//! fragments explode, NUL characters. Each is answered quickly with a typed refusal, the
//! process keeps its memory, and `/healthz` answers meanwhile. The bounds asserted are
//! generous (a loaded CI machine); each test prints what it measured.

// The measured figures are printed for the issue notes and CI logs.
#![allow(clippy::print_stderr)]

use crate::common::graphql::start_server;
use domain::Role;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The server's resident memory, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// POSTs `total` bytes of body to /graphql over a raw connection (headers as given),
/// stopping when the server stops reading; returns the status line it answered, if any.
fn post_raw(host: &str, headers: &str, total: usize) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}Content-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0;
    while sent < total {
        if stream
            .write_all(&chunk[..chunk.len().min(total - sent)])
            .is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .map(str::to_owned)
}

#[tokio::test]
async fn huge_bodies_are_refused_before_they_are_read_and_cost_no_memory() {
    let (server, _db, _sim) = start_server().await;
    let pid = server.child.id();
    let host = server.base_url.trim_start_matches("http://").to_owned();
    let token = testkit::token("acme", Role::Owner);
    let before = rss_mb(pid);

    // Three unauthenticated 300 MB bodies at once: refused on their headers.
    let started = Instant::now();
    let unauthenticated: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            tokio::task::spawn_blocking(move || post_raw(&host, "", 300 << 20))
        })
        .collect();
    for answer in unauthenticated {
        if let Some(status) = answer.await.unwrap() {
            assert!(status.contains(" 401 "), "{status}");
        }
    }
    // Authenticated, but over the body limit: 413, having read no more than the limit.
    let h = host.clone();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let oversized = tokio::task::spawn_blocking(move || post_raw(&h, &auth, 50 << 20))
        .await
        .unwrap();
    if let Some(status) = oversized {
        assert!(status.contains(" 413 "), "{status}");
    }
    let took = started.elapsed();
    let after = rss_mb(pid);
    eprintln!("hostile bodies: refused in {took:?}; RSS {before:.1} MB -> {after:.1} MB");
    assert!(
        after - before < 50.0,
        "memory grew from {before:.1} MB to {after:.1} MB"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let health = reqwest::get(format!("{}/healthz", server.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Fragments each spreading the next one twice, `levels` deep (2^levels selections).
fn exploding_fragments(levels: usize) -> String {
    let mut q = String::from("query { ...F0 }\n");
    for i in 0..levels {
        q.push_str(&format!(
            "fragment F{i} on QueryRoot {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    q.push_str(&format!(
        "fragment F{levels} on QueryRoot {{ me {{ workspace }} }}\n"
    ));
    q
}

#[tokio::test]
async fn exploding_fragments_are_refused_before_validation_and_health_answers_meanwhile() {
    let (server, _db, _sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let attacks: Vec<_> = (0..2)
        .map(|_| {
            let owner = owner.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = owner.post(&exploding_fragments(30), json!({})).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let health = reqwest::get(format!("{}/healthz", server.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for attack in attacks {
        let (answer, took) = attack.await.unwrap();
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "validation_failed",
            "{answer}"
        );
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("selections"),
            "{answer}"
        );
        // The check is linear in the query's 1.5 KB; generous for a loaded machine.
        eprintln!("exploding fragments: refused in {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}

#[tokio::test]
async fn a_nul_character_in_a_filter_is_a_validation_failure_not_an_internal_error() {
    let (server, db, _sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let events_before = testkit::count_events(&db.pool().await, "TenantRegistered").await;
    let code = owner
        .error_code(
            "query($s: String) { tenants(search: $s) { edges { node { id } } } }",
            json!({ "s": "con\u{0}toso" }),
        )
        .await;
    assert_eq!(code, "validation_failed");
    let code = owner
        .error_code(
            "mutation($n: String!) { registerTenant(input: {entraTenantId: \"72f988bf-86f1-41af-91ab-2d7cd011db47\", displayName: $n, primaryDomain: \"contoso.com\"}) { id } }",
            json!({ "n": "Con\u{0}toso" }),
        )
        .await;
    assert_eq!(code, "validation_failed");
    assert_eq!(
        testkit::count_events(&db.pool().await, "TenantRegistered").await,
        events_before,
        "a refusal changes nothing"
    );
}

/// Opens a graphql-transport-ws socket and sends `connection_init` with `payload`; returns
/// the close code the server answers with, if it closes.
async fn init_close_code(base_url: &str, payload: serde_json::Value) -> Option<u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = crate::common::graphql::websocket(base_url).await;
    let init = json!({ "type": "connection_init", "payload": payload });
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
                Message::Text(t) if t.contains("connection_ack") => return Some(0),
                _ => {}
            }
        }
        None
    })
    .await;
    answer.ok().flatten()
}

#[tokio::test]
async fn a_socket_with_a_missing_or_bad_token_is_closed_4403_forbidden() {
    let (server, _db, _sim) = start_server().await;
    assert_eq!(
        init_close_code(&server.base_url, json!({})).await,
        Some(4403)
    );
    assert_eq!(
        init_close_code(
            &server.base_url,
            json!({ "Authorization": "Bearer not-a-token" })
        )
        .await,
        Some(4403)
    );
    // A good token is acknowledged (0 here), not closed.
    let token = testkit::token("acme", Role::Readonly);
    assert_eq!(
        init_close_code(
            &server.base_url,
            json!({ "Authorization": format!("Bearer {token}") })
        )
        .await,
        Some(0)
    );
}

#[tokio::test]
async fn a_variable_of_the_wrong_type_is_refused_and_never_reaches_a_mutation() {
    let (server, db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (_, connection) = crate::common::graphql::ready_sim_tenant(&owner, &t).await;
    let pool = db.pool().await;
    let before = testkit::count_events(&pool, "CredentialSet").await
        + testkit::count_events(&pool, "CredentialRotated").await;
    // Declared Int!, given a string, used where a String! is expected.
    let answer = owner
        .post(
            "mutation($c: String!, $x: Int!) { setCredential(input: {connectionId: $c, clientId: \"app\", clientSecret: $x}) { connectionId } }",
            json!({ "c": connection, "x": "s3cret-value" }),
        )
        .await;
    assert!(answer["data"].is_null(), "{answer}");
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "validation_failed",
        "{answer}"
    );
    // Declared String!, given a number.
    let answer = owner
        .post(
            "mutation($c: String!, $x: String!) { setCredential(input: {connectionId: $c, clientId: \"app\", clientSecret: $x}) { connectionId } }",
            json!({ "c": connection, "x": 12345 }),
        )
        .await;
    assert!(answer["data"].is_null(), "{answer}");
    assert!(!answer["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("s3cret"));
    let after = testkit::count_events(&pool, "CredentialSet").await
        + testkit::count_events(&pool, "CredentialRotated").await;
    assert_eq!(after, before, "no credential was set");
}

#[tokio::test]
async fn a_subscription_whose_fragments_explode_is_refused_before_validation() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (server, _db, _sim) = start_server().await;
    let url = format!(
        "{}/graphql/ws",
        server.base_url.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let token = testkit::token("acme", Role::Readonly);
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    let mut query = String::from("subscription { ...F0 }\n");
    for i in 0..30 {
        query.push_str(&format!(
            "fragment F{i} on SubscriptionRoot {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    query.push_str("fragment F30 on SubscriptionRoot { runUpdated { id } }\n");
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    let started = Instant::now();
    let refusal = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                if t.contains("selections") {
                    return Some(t.to_string());
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the subscription is refused with a message");
    assert!(refusal.contains("validation_failed"), "{refusal}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
