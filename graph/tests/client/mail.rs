use chrono::{Duration, Utc};
use domain::ReasonCode;
use graph::models::{MessageHeader, MoveDestination, NewSubscription};
use graph::sim::{NewAttachment, NewMail};
use graph::GraphApi;
use secrecy::SecretString;

use crate::helpers::{client, receiver, simulator, tenant, Handshake};

fn inbox_subscription(user: &str, url: &url::Url, minutes: i64) -> NewSubscription {
    NewSubscription::inbox_messages(
        user,
        url.clone(),
        Utc::now() + Duration::minutes(minutes),
        SecretString::from("verification-token-123"),
    )
}

#[tokio::test]
async fn a_subscription_is_created_after_the_validation_handshake() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let hooks = receiver(Handshake::Echo).await;
    let helpdesk = &contoso.mailboxes[0].user_id;

    let subscription = client(&sim)
        .create_subscription(
            &contoso.credentials(),
            &inbox_subscription(helpdesk, &hooks.url, 60),
        )
        .await
        .unwrap();

    assert_eq!(subscription.change_type, "created");
    assert_eq!(subscription.notification_url, hooks.url.as_str());
    let stored = sim.subscriptions(contoso.tenant_id).unwrap();
    assert_eq!(stored[0]["id"], subscription.id.as_str());
}

#[tokio::test]
async fn a_failed_handshake_refuses_the_subscription() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let hooks = receiver(Handshake::WrongToken).await;

    let error = client(&sim)
        .create_subscription(
            &contoso.credentials(),
            &inbox_subscription(&contoso.mailboxes[0].user_id, &hooks.url, 60),
        )
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphBadRequest);
    assert!(sim.subscriptions(contoso.tenant_id).unwrap().is_empty());
}

#[tokio::test]
async fn a_subscription_beyond_the_lifetime_cap_is_refused() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let hooks = receiver(Handshake::Echo).await;

    let error = client(&sim)
        .create_subscription(
            &contoso.credentials(),
            &inbox_subscription(&contoso.mailboxes[0].user_id, &hooks.url, 4300),
        )
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphBadRequest);
    assert_eq!(error.graph_code.as_deref(), Some("ExtensionError"));
}

#[tokio::test]
async fn delivered_mail_is_notified_with_the_client_state() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let hooks = receiver(Handshake::Echo).await;
    let helpdesk = contoso.mailboxes[0].user_id.clone();
    let subscription = client(&sim)
        .create_subscription(
            &contoso.credentials(),
            &inbox_subscription(&helpdesk, &hooks.url, 60),
        )
        .await
        .unwrap();

    let report = sim
        .deliver_mail(contoso.tenant_id, &helpdesk, &NewMail::default())
        .await
        .unwrap();

    assert_eq!(report.deliveries[0].status, Some(202));
    let batches = hooks.notifications.lock().unwrap().clone();
    let notification = &batches[0].value[0];
    assert_eq!(notification.subscription_id, subscription.id);
    assert_eq!(
        notification.client_state.as_deref(),
        Some("verification-token-123")
    );
    assert_eq!(notification.tenant_id, Some(contoso.tenant_id));
    assert_eq!(
        notification.resource_data.as_ref().unwrap().id,
        report.message_id
    );
}

#[tokio::test]
async fn a_message_is_read_with_its_headers_participants_and_text_body() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let helpdesk = contoso.mailboxes[0].user_id.clone();
    let mail = NewMail {
        subject: "VPN down".to_owned(),
        body_html: Some("<p>The <b>VPN</b> is down.</p>".to_owned()),
        cc: vec!["boss@customer.example".to_owned()],
        headers: vec![MessageHeader {
            name: "X-Ticket".to_owned(),
            value: "4711".to_owned(),
        }],
        attachments: vec![NewAttachment::default()],
        ..NewMail::default()
    };
    let delivered = sim
        .deliver_mail(contoso.tenant_id, &helpdesk, &mail)
        .await
        .unwrap();
    let client = client(&sim);

    let message = client
        .get_message(&contoso.credentials(), &helpdesk, &delivered.message_id)
        .await
        .unwrap();
    let attachments = client
        .list_attachments(&contoso.credentials(), &helpdesk, &delivered.message_id)
        .await
        .unwrap();

    assert_eq!(message.subject.as_deref(), Some("VPN down"));
    assert_eq!(message.body.unwrap().content, "The VPN is down.");
    assert_eq!(
        message.from.unwrap().email_address.address.as_deref(),
        Some("pat@customer.example")
    );
    assert_eq!(message.cc_recipients.len(), 1);
    assert!(message
        .internet_message_headers
        .iter()
        .any(|h| h.name == "X-Ticket" && h.value == "4711"));
    assert_eq!(message.has_attachments, Some(true));
    assert_eq!(attachments[0].name.as_deref(), Some("screenshot.png"));
    assert_eq!(attachments[0].size, 2048);
    // The message came with the same metadata expanded (`$expand=attachments`), and no
    // content.
    assert_eq!(message.attachments.as_deref(), Some(&attachments[..]));
    let asked = sim.requests_to(graph::Endpoint::GetMessage);
    let query = asked[0].query.clone().unwrap_or_default();
    assert!(query.contains("expand=attachments"), "{query}");
}

#[tokio::test]
async fn categories_are_replaced_and_a_move_gives_the_message_a_new_id() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let helpdesk = contoso.mailboxes[0].user_id.clone();
    let app = contoso.credentials();
    let client = client(&sim);
    let delivered = sim
        .deliver_mail(contoso.tenant_id, &helpdesk, &NewMail::default())
        .await
        .unwrap();

    client
        .set_message_categories(&app, &helpdesk, &delivered.message_id, &["Seen".to_owned()])
        .await
        .unwrap();
    let categorised = client
        .set_message_categories(
            &app,
            &helpdesk,
            &delivered.message_id,
            &["Processed".to_owned()],
        )
        .await
        .unwrap();
    let moved = client
        .move_message(
            &app,
            &helpdesk,
            &delivered.message_id,
            &MoveDestination::Archive,
        )
        .await
        .unwrap();
    let old = client
        .get_message(&app, &helpdesk, &delivered.message_id)
        .await;

    assert_eq!(categorised.categories, ["Processed"]);
    assert_ne!(moved.id, delivered.message_id);
    assert_eq!(moved.categories, ["Processed"]);
    assert_eq!(old.unwrap_err().reason, ReasonCode::GraphNotFound);
}

#[tokio::test]
async fn subscriptions_are_renewed_within_the_cap_and_deleted_once() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let app = contoso.credentials();
    let hooks = receiver(Handshake::Echo).await;
    let client = client(&sim);
    let subscription = client
        .create_subscription(
            &app,
            &inbox_subscription(&contoso.mailboxes[0].user_id, &hooks.url, 60),
        )
        .await
        .unwrap();

    let later = Utc::now() + Duration::minutes(4000);
    let renewed = client
        .renew_subscription(&app, &subscription.id, later)
        .await
        .unwrap();
    let too_far = client
        .renew_subscription(&app, &subscription.id, Utc::now() + Duration::days(30))
        .await;
    client
        .delete_subscription(&app, &subscription.id)
        .await
        .unwrap();
    let again = client.delete_subscription(&app, &subscription.id).await;

    assert_eq!(renewed.expiration_date_time.timestamp(), later.timestamp());
    assert_eq!(too_far.unwrap_err().reason, ReasonCode::GraphBadRequest);
    assert_eq!(again.unwrap_err().reason, ReasonCode::GraphNotFound);
}
