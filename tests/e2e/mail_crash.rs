//! R6.3 + R7.1 end to end: change notifications posted while the server is killed -9 and
//! started again. Every notification the webhook acknowledged with 202 becomes exactly one
//! `InboundEmailReceived`; the ones refused while it was down are delivered again, as
//! Graph does, and still count once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::graphql::{ready_sim_tenant, start_server_on};
use domain::Role;
use futures::StreamExt;
use graph::sim::{NewMail, SimConfig};
use serde_json::json;

const MESSAGES: usize = 1000;
const ADD: &str = "mutation($t: String!, $a: String!) { addMailbox(input: {tenantId: $t, address: $a}) { mailboxId } }";
const MAILBOX: &str = "query($id: ID!) { mailbox(id: $id) { status subscriptionId } }";

/// Posts one notification for `message` as Graph would; whether it was acknowledged.
async fn notify(
    http: &reqwest::Client,
    base: &str,
    subscription: &str,
    client_state: &str,
    message: &str,
) -> bool {
    let body = json!({"value": [{
        "subscriptionId": subscription,
        "clientState": client_state,
        "changeType": "created",
        "resource": format!("Users/u/Messages/{message}"),
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": message},
    }]});
    match http
        .post(format!("{base}/webhooks/graph/mail"))
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16() == 202,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_acknowledged_across_a_kill_9_are_each_received_exactly_once() {
    let _alone = crate::common::alone().await;
    let db = testkit::TestDb::new().await;
    let sim = graph::sim::spawn(SimConfig {
        tenants: 1,
        seed: 23,
        ..SimConfig::default()
    })
    .await;
    let env = [("TENANTFLOW_WORKFLOW_WORKERS", "2")];
    let mut first = start_server_on(&db, &sim, &env).await;
    let owner = first.client("acme", Role::Owner);
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(&owner, &t).await;
    let user = t.mailboxes[0].user_principal_name.clone();
    let id = owner.ok(ADD, json!({"t": tenant, "a": user})).await["addMailbox"]["mailboxId"]
        .as_str()
        .unwrap()
        .to_owned();
    owner
        .eventually(MAILBOX, json!({"id": id}), |d| {
            d["mailbox"]["status"] == "ACTIVE"
        })
        .await;
    let sub = sim.subscriptions(t.tenant_id).unwrap().remove(0);
    let subscription = sub["id"].as_str().unwrap().to_owned();
    let client_state = sub["clientState"].as_str().unwrap().to_owned();

    // The messages arrive in the mailbox; the test, standing in for Graph, notifies.
    sim.expire_subscription(t.tenant_id, &subscription).unwrap();
    let mut messages = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let mail = NewMail {
            subject: format!("ticket {i}"),
            ..NewMail::default()
        };
        messages.push(
            sim.deliver_mail(t.tenant_id, &user, &mail)
                .await
                .unwrap()
                .message_id,
        );
    }

    let http = reqwest::Client::new();
    let acked: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
    let posted = Arc::new(AtomicUsize::new(0));
    let base = Arc::new(std::sync::Mutex::new(first.base_url.clone()));
    let send_all = |batch: Vec<String>| {
        let (http, acked, posted, base) =
            (http.clone(), acked.clone(), posted.clone(), base.clone());
        let (subscription, client_state) = (subscription.clone(), client_state.clone());
        async move {
            let refused: Vec<String> = futures::stream::iter(batch)
                .map(|m| {
                    let (http, acked, posted, base) =
                        (http.clone(), acked.clone(), posted.clone(), base.clone());
                    let (subscription, client_state) = (subscription.clone(), client_state.clone());
                    async move {
                        let url = base.lock().unwrap().clone();
                        let ok = notify(&http, &url, &subscription, &client_state, &m).await;
                        posted.fetch_add(1, Ordering::SeqCst);
                        if ok {
                            acked.lock().unwrap().insert(m.clone());
                            None
                        } else {
                            Some(m)
                        }
                    }
                })
                .buffer_unordered(8)
                .filter_map(|m| async move { m })
                .collect()
                .await;
            refused
        }
    };
    // Kill the server once a third of the notifications went out.
    let sender = tokio::spawn(send_all(messages.clone()));
    testkit::eventually(
        "a third of the notifications sent",
        Duration::from_secs(120),
        || {
            let posted = posted.clone();
            async move { posted.load(Ordering::SeqCst) >= MESSAGES / 3 }
        },
    )
    .await;
    let killed = first.signal_and_wait("KILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9)
    );
    let acked_before_restart = acked.lock().unwrap().len();
    let refused = sender.await.unwrap();
    assert!(!refused.is_empty(), "the kill refused no notification");
    assert!(acked_before_restart > 0);

    // Started again (on another port): Graph retries what was refused.
    let second = start_server_on(&db, &sim, &env).await;
    *base.lock().unwrap() = second.base_url.clone();
    let still_refused = send_all(refused).await;
    assert!(
        still_refused.is_empty(),
        "{} refused by the running server",
        still_refused.len()
    );
    // And delivers a few twice.
    let again = send_all(messages[..50].to_vec()).await;
    assert!(again.is_empty());
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), MESSAGES);

    let pool = db.pool().await;
    let received = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT payload->'InboundEmailReceived'->>'message_id', count(*) FROM events \
             WHERE event_type = 'InboundEmailReceived' GROUP BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.into_iter().collect::<HashMap<String, i64>>()
    };
    testkit::eventually(
        "every acknowledged message received",
        Duration::from_secs(180),
        || async { received().await.len() >= MESSAGES },
    )
    .await;
    let received = received().await;
    for m in &acked {
        assert_eq!(received.get(m), Some(&1), "message {m}");
    }
    assert_eq!(received.len(), MESSAGES);
    let notified: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'NotificationRecorded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(notified, MESSAGES as i64);
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'InboundEmailReceived' AND payload->'InboundEmailReceived' ? 'failure'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(failed, 0, "every message was fetched, none only minimally");
    drop(second);
}
