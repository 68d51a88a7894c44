//! Inbound mail end to end (R6): the real binary's webhook, the Graph simulator's
//! subscriptions and notifications, and what a dashboard sees.

use crate::common::graphql::*;
use domain::Role;
use graph::models::MessageHeader;
use graph::sim::{Fault, FaultSpec, NewAttachment, NewMail};
use graph::Endpoint;
use serde_json::{json, Value};
use testkit::GraphqlClient;

const ADD: &str = "mutation($t: String!, $a: String!) { addMailbox(input: {tenantId: $t, address: $a}) { mailboxId } }";
const MAILBOX: &str = "query($id: ID!) { mailbox(id: $id) { id address status degradedReasonCode subscriptionId subscriptionExpiresAt lastNotificationAt notifications received fetchFailures lastTest { ok reasonCode message } } }";
const EMAILS: &str = "query($m: ID!) { inboundEmails(filter: {mailboxId: $m}, first: 50) { edges { node { id messageId status failureReasonCode subject fromAddress threadId internetMessageId inReplyTo references to { address } cc { address } headers { name value } attachments { name contentType size inline } processedCategory bodyText } } } }";

/// Adds a mailbox for the first mailbox user of the simulator's first tenant and waits
/// until its subscription is live; returns (mailbox id, tenant, mailbox user, subscription).
async fn active_mailbox(
    owner: &GraphqlClient,
    sim: &graph::sim::SimHandle,
) -> (String, graph::sim::SimTenant, String, String) {
    let t = sim.tenants().remove(0);
    let (tenant, _) = ready_sim_tenant(owner, &t).await;
    let user = t.mailboxes[0].user_principal_name.clone();
    let added = owner.ok(ADD, json!({"t": tenant, "a": user})).await;
    let id = added["addMailbox"]["mailboxId"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = owner
        .eventually(MAILBOX, json!({"id": id}), |d| {
            d["mailbox"]["status"] == "ACTIVE"
        })
        .await;
    let subscription = seen["mailbox"]["subscriptionId"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, t, user, subscription)
}

fn emails(d: &Value) -> Vec<Value> {
    d["inboundEmails"]["edges"]
        .as_array()
        .map(|e| e.iter().map(|e| e["node"].clone()).collect())
        .unwrap_or_default()
}

async fn inbound_events(db: &testkit::TestDb) -> (i64, i64) {
    let pool = db.pool().await;
    sqlx::query_as(
        "SELECT count(*), COALESCE(sum(pg_column_size(payload) + pg_column_size(metadata)), 0)::bigint \
         FROM events WHERE aggregate_type = 'inbound_email'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn mail_delivered_to_a_mailbox_becomes_one_enriched_event_and_is_categorised() {
    let (server, db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (id, t, user, subscription) = active_mailbox(&owner, &sim).await;

    // The subscription is Graph's, pointed at the service's webhook.
    let subs = sim.subscriptions(t.tenant_id).unwrap();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0]["id"], subscription.as_str());
    assert!(subs[0]["notificationUrl"]
        .as_str()
        .unwrap()
        .ends_with("/webhooks/graph/mail"));

    let mail = NewMail {
        subject: "Re: Printer on floor 2".into(),
        cc: vec!["boss@customer.example".into()],
        headers: vec![
            MessageHeader {
                name: "In-Reply-To".into(),
                value: "<first@customer.example>".into(),
            },
            MessageHeader {
                name: "References".into(),
                value: "<zero@customer.example> <first@customer.example>".into(),
            },
        ],
        attachments: vec![NewAttachment::default()],
        ..NewMail::default()
    };
    let report = sim.deliver_mail(t.tenant_id, &user, &mail).await.unwrap();
    assert_eq!(report.deliveries[0].status, Some(202), "{report:?}");

    let seen = owner
        .eventually(EMAILS, json!({"m": id}), |d| {
            emails(d).first().is_some_and(|e| e["status"] == "received")
        })
        .await;
    let email = &emails(&seen)[0];
    assert_eq!(email["messageId"], report.message_id.as_str());
    assert_eq!(email["subject"], "Re: Printer on floor 2");
    assert_eq!(email["fromAddress"], "pat@customer.example");
    assert!(email["threadId"].is_string(), "{email}");
    assert!(email["internetMessageId"]
        .as_str()
        .unwrap()
        .starts_with('<'));
    assert_eq!(email["inReplyTo"], "<first@customer.example>");
    assert_eq!(email["references"].as_array().unwrap().len(), 2);
    assert_eq!(email["cc"][0]["address"], "boss@customer.example");
    assert_eq!(email["attachments"][0]["name"], "screenshot.png");
    assert_eq!(email["attachments"][0]["contentType"], "image/png");
    assert!(email["headers"].as_array().unwrap().len() >= 2);
    assert_eq!(email["bodyText"], "Hello, the printer is jammed again.");
    assert_eq!(email["processedCategory"], "tenantflow/processed");

    // Marked processed in the mailbox itself, not only read.
    let stored = sim.messages(t.tenant_id, &user).unwrap();
    let message = stored
        .iter()
        .find(|m| m["id"] == report.message_id.as_str())
        .unwrap();
    assert!(message["categories"]
        .as_array()
        .unwrap()
        .contains(&json!("tenantflow/processed")));

    // Two events, a few kilobytes at most, per message.
    let (events, bytes) = inbound_events(&db).await;
    assert_eq!(events, 2);
    assert!(bytes < 8 * 1024, "{bytes} bytes for one message");

    // Graph delivers it again: nothing new.
    let again = sim
        .notify_message(t.tenant_id, &subscription, &report.message_id, None)
        .await
        .unwrap();
    assert_eq!(again.status, Some(202));
    // A forger with a wrong clientState: acknowledged, nothing recorded.
    let forged = sim
        .notify_message(t.tenant_id, &subscription, "AAMkADforged", Some("guess"))
        .await
        .unwrap();
    assert_eq!(forged.status, Some(202));
    // An unknown subscription: the same.
    let unknown = reqwest::Client::new()
        .post(format!("{}/webhooks/graph/mail", server.base_url))
        .json(&json!({"value": [{"subscriptionId": "nope", "clientState": "x", "changeType": "created", "resource": "r", "resourceData": {"id": "AAMkADx"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 202);
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenantflow_mail_notifications_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenantflow_mail_notifications_total{outcome=\"wrong_client_state\"} 1")
    );
    assert!(
        metrics.contains("tenantflow_mail_notifications_total{outcome=\"unknown_subscription\"} 1")
    );
    assert_eq!(inbound_events(&db).await.0, 2);
    let mailbox = owner.ok(MAILBOX, json!({"id": id})).await;
    assert_eq!(mailbox["mailbox"]["notifications"], 1);
    assert_eq!(mailbox["mailbox"]["received"], 1);

    // Both refetch by their global ids (Relay's `node`); another workspace sees neither.
    let node = "query($id: ID!) { node(id: $id) { __typename id ... on Mailbox { address } ... on InboundEmail { subject } } }";
    let mailbox_node = owner.ok(node, json!({"id": id})).await;
    assert_eq!(mailbox_node["node"]["__typename"], "Mailbox");
    assert_eq!(mailbox_node["node"]["address"], user.as_str());
    let email_node = owner.ok(node, json!({"id": email["id"]})).await;
    assert_eq!(email_node["node"]["__typename"], "InboundEmail");
    assert_eq!(email_node["node"]["id"], email["id"]);
    assert_eq!(email_node["node"]["subject"], "Re: Printer on floor 2");
    let stranger = server.client("globex", Role::Owner);
    for other in [json!(id), email["id"].clone()] {
        let seen = stranger.ok(node, json!({"id": other})).await;
        assert!(seen["node"].is_null(), "{seen}");
    }
}

#[tokio::test]
async fn a_message_that_cannot_be_fetched_still_yields_its_minimal_event() {
    let (server, _db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (id, t, user, _) = active_mailbox(&owner, &sim).await;
    sim.inject(FaultSpec {
        tenant: Some(t.tenant_id),
        endpoint: Some(Endpoint::GetMessage),
        fault: Fault::Forbidden,
        times: None,
    });
    let report = sim
        .deliver_mail(t.tenant_id, &user, &NewMail::default())
        .await
        .unwrap();
    assert_eq!(report.deliveries[0].status, Some(202));
    let seen = owner
        .eventually(EMAILS, json!({"m": id}), |d| {
            emails(d).first().is_some_and(|e| e["status"] == "failed")
        })
        .await;
    let email = &emails(&seen)[0];
    assert_eq!(email["messageId"], report.message_id.as_str());
    assert_eq!(email["failureReasonCode"], "provider_permission_missing");
    assert!(email["subject"].is_null());
    let mailbox = owner
        .eventually(MAILBOX, json!({"id": id}), |d| {
            d["mailbox"]["fetchFailures"] == 1
        })
        .await;
    assert_eq!(mailbox["mailbox"]["received"], 1);
}

#[tokio::test]
async fn bad_webhook_input_is_refused_with_a_typed_error_and_the_handshake_echoes() {
    let (server, db, _sim) = start_server().await;
    let http = reqwest::Client::new();
    let url = format!("{}/webhooks/graph/mail", server.base_url);
    let handshake = http
        .post(format!(
            "{url}?validationToken=Validation%3A%20hello%20world"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    assert!(handshake.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(handshake.text().await.unwrap(), "Validation: hello world");

    let pool = db.pool().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = count().await;
    let bad = http.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");
    let huge = http
        .post(&url)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(count().await, before);
}

#[tokio::test]
async fn a_dashboard_sees_inbound_email_arrive_live() {
    let (server, _db, sim) = start_server().await;
    let owner = server.client("acme", Role::Owner);
    let (id, t, user, _) = active_mailbox(&owner, &sim).await;
    let token = testkit::token("acme", Role::Owner);
    let mut live = Box::pin(
        crate::graphql_api::subscribe(
            &server.base_url,
            &token,
            "subscription($m: ID) { inboundEmailReceived(mailboxId: $m) { messageId subject status threadId } }",
            json!({"m": id}),
        )
        .await,
    );
    let report = sim
        .deliver_mail(t.tenant_id, &user, &NewMail::default())
        .await
        .unwrap();
    let seen = crate::graphql_api::next_within(&mut live).await;
    let email = &seen["inboundEmailReceived"];
    assert_eq!(email["messageId"], report.message_id.as_str());
    assert_eq!(email["status"], "received");
    assert_eq!(email["subject"], "Printer on floor 2 is jammed");
}
