//! Inbound mail's subscription lifecycle on a clock only the test moves (R6.2, R7.3): the
//! durable renewal timer across a restart, a removed subscription recreated, a revoked
//! refresh token blocking the mailbox, the connection test, and secrets kept out of
//! everything but the vault.

use chrono::Duration;
use domain::mailbox::MailboxStatus;
use domain::{Clock, ReasonCode, Role};
use graph::sim::NewMail;
use secrecy::ExposeSecret;
use serde_json::json;
use testkit::MailWorld;

#[tokio::test]
async fn a_subscription_is_renewed_before_it_expires_even_after_a_restart() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    world.worker().drain().await.unwrap();
    let first = world.mailbox(id).await;
    assert_eq!(first.status, MailboxStatus::Active);
    let subscription = first.subscription_id.clone().unwrap();
    let expires = first.subscription_expires_at.unwrap();
    let due = world.renewal_due(id).await.unwrap();
    assert!(
        due < expires - Duration::hours(12) + Duration::seconds(1),
        "renewal at {due}, expiry {expires}"
    );
    assert!(
        due > world.clock.now() + Duration::hours(24),
        "renewal at {due} is too early"
    );

    // The service restarts: a new worker, only the database to go on.
    let restarted = world.worker();
    world
        .clock
        .advance(due - world.clock.now() - Duration::minutes(1));
    restarted.drain().await.unwrap();
    assert_eq!(
        world.mailbox(id).await.subscription_expires_at,
        Some(expires),
        "nothing is due yet"
    );

    world.clock.advance(Duration::minutes(2));
    restarted.drain().await.unwrap();
    let renewed = world.mailbox(id).await;
    assert_eq!(renewed.status, MailboxStatus::Active);
    assert_eq!(
        renewed.subscription_id.as_deref(),
        Some(subscription.as_str())
    );
    let new_expiry = renewed.subscription_expires_at.unwrap();
    assert!(new_expiry > expires, "{new_expiry} is not after {expires}");
    assert!(world.clock.now() < expires, "renewed before the old expiry");
    let at_graph = world.sim.subscriptions(world.entra).unwrap();
    assert_eq!(at_graph.len(), 1);
    assert_eq!(at_graph[0]["id"], subscription.as_str());
    // The next renewal is on the timer again.
    assert!(world.renewal_due(id).await.unwrap() > world.clock.now() + Duration::hours(24));
}

#[tokio::test]
async fn a_subscription_graph_removed_is_created_again() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let old = world.mailbox(id).await.subscription_id.unwrap();

    let delivery = world
        .sim
        .remove_subscription(world.entra, &old)
        .await
        .unwrap();
    assert_eq!(delivery.status, Some(202));
    worker.drain().await.unwrap();

    let mailbox = world.mailbox(id).await;
    assert_eq!(mailbox.status, MailboxStatus::Active);
    let new = mailbox.subscription_id.unwrap();
    assert_ne!(new, old);
    let at_graph = world.sim.subscriptions(world.entra).unwrap();
    assert_eq!(at_graph.len(), 1);
    assert_eq!(at_graph[0]["id"], new.as_str());

    // Mail reaches the mailbox through the new subscription.
    let report = world
        .sim
        .deliver_mail(world.entra, &world.user, &NewMail::default())
        .await
        .unwrap();
    assert_eq!(report.deliveries[0].status, Some(202));
    worker.drain().await.unwrap();
    let pool = world.db.pool().await;
    let received: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'InboundEmailReceived'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(received, 1);
}

#[tokio::test]
async fn a_revoked_refresh_token_blocks_the_mailbox_with_its_reason() {
    let world = MailWorld::new().await;
    let refresh = world
        .sim
        .issue_refresh_token(world.entra, &world.user)
        .unwrap();
    let id = world.add_mailbox(Some(refresh.clone())).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    assert_eq!(world.mailbox(id).await.status, MailboxStatus::Active);
    // Refreshed tokens are sealed again at once (the old refresh token was rotated away).
    let sealed = world
        .vault
        .delegated_tokens(&world.db.pool().await, id.as_uuid())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(sealed.refresh_token.expose_secret(), refresh.as_str());
    assert!(!sealed.access_token.expose_secret().is_empty());

    world
        .sim
        .revoke_refresh_tokens(world.entra, &world.user)
        .unwrap();
    let due = world.renewal_due(id).await.unwrap();
    world
        .clock
        .advance(due - world.clock.now() + Duration::seconds(1));
    worker.drain().await.unwrap();
    let blocked = world.mailbox(id).await;
    assert_eq!(blocked.status, MailboxStatus::Degraded);
    assert_eq!(
        blocked.degraded_reason,
        Some(ReasonCode::MailboxRefreshTokenRevoked)
    );
    assert_eq!(
        world.renewal_due(id).await,
        None,
        "a blocked mailbox has no timer"
    );
}

#[tokio::test]
async fn the_connection_test_reports_a_mailbox_mismatch_and_a_match() {
    let world = MailWorld::new().await;
    let t = world.sim.tenants().remove(0);
    let other = t.mailboxes[1].user_principal_name.clone();
    // Tokens of another user than the configured mailbox.
    let wrong = world.sim.issue_refresh_token(world.entra, &other).unwrap();
    let id = world.add_mailbox(Some(wrong)).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let meta = testkit::meta(world.tenant.workspace.as_str(), Role::Operator);
    app::mailboxes::test_mailbox(&world.bus, &meta, id)
        .await
        .unwrap();
    worker.drain().await.unwrap();
    let tested = world.mailbox(id).await.last_test.unwrap();
    assert_eq!(tested.reason, Some(ReasonCode::MailboxMismatch));
    assert!(tested.message.contains(&other.to_lowercase()) || tested.message.contains(&other));

    let right = world
        .sim
        .issue_refresh_token(world.entra, &world.user)
        .unwrap();
    let good = world.add_mailbox(Some(right)).await;
    app::mailboxes::test_mailbox(&world.bus, &meta, good)
        .await
        .unwrap();
    worker.drain().await.unwrap();
    assert_eq!(world.mailbox(good).await.last_test.unwrap().reason, None);

    // A reader may not ask for a test.
    let reader = testkit::meta(world.tenant.workspace.as_str(), Role::Readonly);
    assert!(app::mailboxes::test_mailbox(&world.bus, &reader, good)
        .await
        .is_err());
}

#[tokio::test]
async fn mailbox_secrets_stay_in_the_vault() {
    let world = MailWorld::new().await;
    let refresh = world
        .sim
        .issue_refresh_token(world.entra, &world.user)
        .unwrap();
    let id = world.add_mailbox(Some(refresh.clone())).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    world
        .sim
        .deliver_mail(world.entra, &world.user, &NewMail::default())
        .await
        .unwrap();
    worker.drain().await.unwrap();
    let pool = world.db.pool().await;
    let verification = world
        .vault
        .verification_token(&pool, id.as_uuid())
        .await
        .unwrap()
        .unwrap();
    let tokens = world
        .vault
        .delegated_tokens(&pool, id.as_uuid())
        .await
        .unwrap()
        .unwrap();
    let secrets = [
        verification.expose_secret().to_owned(),
        refresh.clone(),
        tokens.refresh_token.expose_secret().to_owned(),
        tokens.access_token.expose_secret().to_owned(),
        testkit::CLIENT_SECRET.to_owned(),
    ];
    // Graph saw the verification token as clientState: it is the real one.
    let at_graph = world.sim.subscriptions(world.entra).unwrap();
    assert_eq!(at_graph[0]["clientState"], verification.expose_secret());

    let events: Vec<String> =
        sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
            .fetch_all(&pool)
            .await
            .unwrap();
    let subscriptions: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(s)::text FROM mail_subscriptions s")
            .fetch_all(&pool)
            .await
            .unwrap();
    let client =
        testkit::GraphqlClient::new(&world.url(), world.tenant.workspace.as_str(), Role::Owner);
    let answer = client
        .eventually(
            "{ mailboxes { edges { node { id address status subscriptionId lastTest { ok } } } } inboundEmails { edges { node { id subject status headers { name value } } } } }",
            json!({}),
            |d| d["inboundEmails"]["edges"][0]["node"]["status"] == "received",
        )
        .await
        .to_string();
    let read_models: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(m)::text FROM rm_mailboxes m UNION ALL SELECT row_to_json(e)::text FROM rm_inbound_emails e",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for secret in &secrets {
        assert!(!secret.is_empty());
        for text in events
            .iter()
            .chain(&subscriptions)
            .chain(&read_models)
            .chain([&answer])
        {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {text}"
            );
        }
    }
    assert!(!format!("{tokens:?}").contains(tokens.refresh_token.expose_secret()));
}

#[tokio::test]
async fn after_a_missed_notification_the_inbox_is_read_and_nothing_is_lost_or_doubled() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let subscription = world.mailbox(id).await.subscription_id.unwrap();
    // One message notified as usual, then two Graph never announced.
    let told = world
        .sim
        .deliver_mail(world.entra, &world.user, &NewMail::default())
        .await
        .unwrap();
    assert_eq!(told.deliveries.len(), 1);
    worker.drain().await.unwrap();
    world
        .sim
        .expire_subscription(world.entra, &subscription)
        .unwrap();
    for _ in 0..2 {
        let untold = world
            .sim
            .deliver_mail(world.entra, &world.user, &NewMail::default())
            .await
            .unwrap();
        assert!(untold.deliveries.is_empty());
    }
    let missed = world
        .sim
        .notify_lifecycle(world.entra, &subscription, "missed")
        .await
        .unwrap();
    assert_eq!(missed.status, Some(202));
    worker.drain().await.unwrap();
    let pool = world.db.pool().await;
    let received: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM events WHERE event_type = 'InboundEmailReceived' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received.iter().all(|(_, n)| *n == 1));
    // The renewal after it found the expired subscription gone and made a new one.
    let mailbox = world.mailbox(id).await;
    assert_eq!(mailbox.status, MailboxStatus::Active);
    assert_ne!(
        mailbox.subscription_id.as_deref(),
        Some(subscription.as_str())
    );
}

#[tokio::test]
async fn a_legacy_client_state_is_still_accepted_with_a_warning_and_counted() {
    let world = MailWorld::new().await;
    let id = app::mailboxes::add_mailbox(
        &world.bus,
        &world.vault,
        &testkit::meta(world.tenant.workspace.as_str(), Role::Owner),
        app::mailboxes::NewMailbox {
            tenant: world.tenant.clone(),
            address: world.user.clone(),
            delegated: None,
            legacy_client_state: Some("the-old-provider-client-state".to_owned().into()),
        },
    )
    .await
    .unwrap();
    let worker = world.worker();
    worker.drain().await.unwrap();
    let subscription = world.mailbox(id).await.subscription_id.unwrap();
    world
        .sim
        .expire_subscription(world.entra, &subscription)
        .unwrap();
    let message = world
        .sim
        .deliver_mail(world.entra, &world.user, &NewMail::default())
        .await
        .unwrap()
        .message_id;
    let legacy = world
        .sim
        .notify_message(
            world.entra,
            &subscription,
            &message,
            Some("the-old-provider-client-state"),
        )
        .await
        .unwrap();
    assert_eq!(legacy.status, Some(202));
    worker.drain().await.unwrap();
    let pool = world.db.pool().await;
    let received: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'InboundEmailReceived'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(received, 1);
    assert!(world
        .metrics
        .render()
        .contains("tenantflow_mail_notifications_total{outcome=\"accepted_legacy\"} 1"));
    // Any other value is still refused.
    let wrong = world
        .sim
        .notify_message(world.entra, &subscription, "AAMkADother", Some("guess"))
        .await
        .unwrap();
    assert_eq!(wrong.status, Some(202));
    assert!(world
        .metrics
        .render()
        .contains("tenantflow_mail_notifications_total{outcome=\"wrong_client_state\"} 1"));
}

#[tokio::test]
async fn a_disabled_mailbox_loses_its_subscription_and_its_notifications_change_nothing() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let subscription = world.mailbox(id).await.subscription_id.unwrap();
    let owner = testkit::meta(world.tenant.workspace.as_str(), Role::Owner);
    app::mailboxes::disable_mailbox(&world.bus, &owner, id)
        .await
        .unwrap();
    worker.drain().await.unwrap();
    assert_eq!(world.mailbox(id).await.status, MailboxStatus::Disabled);
    assert!(world.sim.subscriptions(world.entra).unwrap().is_empty());
    assert_eq!(world.renewal_due(id).await, None);
    // A late notification for it, genuine clientState and all, is acknowledged and ignored.
    let pool = world.db.pool().await;
    let token = world
        .vault
        .verification_token(&pool, id.as_uuid())
        .await
        .unwrap()
        .unwrap();
    let late = reqwest::Client::new()
        .post(format!("{}/webhooks/graph/mail", world.url()))
        .json(&json!({"value": [{
            "subscriptionId": subscription,
            "clientState": token.expose_secret(),
            "changeType": "created",
            "resource": "Users/u/Messages/AAMkADlate",
            "resourceData": {"id": "AAMkADlate"},
        }]}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 202);
    let notified: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'NotificationRecorded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(notified, 0);
    // A reader may not disable, nor renew.
    let reader = testkit::meta(world.tenant.workspace.as_str(), Role::Readonly);
    assert!(app::mailboxes::renew_mailbox(&world.bus, &reader, id)
        .await
        .is_err());
}

#[tokio::test]
async fn a_reply_is_received_in_the_thread_of_the_message_it_answers() {
    use graph::models::MessageHeader;
    let world = MailWorld::new().await;
    world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let first = NewMail {
        headers: vec![MessageHeader {
            name: "Message-ID".into(),
            value: "<first@customer.example>".into(),
        }],
        ..NewMail::default()
    };
    let reply = NewMail {
        subject: "Re: Printer on floor 2 is jammed".into(),
        headers: vec![MessageHeader {
            name: "In-Reply-To".into(),
            value: "<first@customer.example>".into(),
        }],
        ..NewMail::default()
    };
    for mail in [first, reply, NewMail::default()] {
        world
            .sim
            .deliver_mail(world.entra, &world.user, &mail)
            .await
            .unwrap();
    }
    worker.drain().await.unwrap();
    let pool = world.db.pool().await;
    let threads: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT payload->'InboundEmailReceived'->'email'->>'thread_id', \
                payload->'InboundEmailReceived'->'email'->>'internet_message_id', \
                payload->'InboundEmailReceived'->'email'->>'in_reply_to' \
         FROM events WHERE event_type = 'InboundEmailReceived' ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(threads.len(), 3);
    // The worker fetches in any order: the messages are told apart by their headers.
    let first_id = Some("<first@customer.example>");
    let original = threads
        .iter()
        .find(|t| t.1.as_deref() == first_id)
        .expect("the first message");
    let answer = threads
        .iter()
        .find(|t| t.2.as_deref() == first_id)
        .expect("the reply");
    let unrelated = threads
        .iter()
        .find(|t| t.1.as_deref() != first_id && t.2.as_deref() != first_id)
        .expect("the unrelated message");
    assert_eq!(
        original.0, answer.0,
        "the reply is in the first message's thread"
    );
    assert_ne!(original.0, unrelated.0, "an unrelated message has its own");
}

#[tokio::test]
async fn an_outage_at_graph_backs_the_subscription_off_and_it_is_created_once_graph_is_back() {
    use graph::sim::{Fault, FaultSpec};
    let world = MailWorld::new().await;
    world.sim.inject(FaultSpec {
        tenant: Some(world.entra),
        endpoint: Some(graph::Endpoint::CreateSubscription),
        fault: Fault::ServerError { status: 503 },
        times: None,
    });
    let id = world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let waiting = world.mailbox(id).await;
    assert_eq!(
        waiting.status,
        MailboxStatus::Connecting,
        "not blocked: retried later"
    );
    let retry = world.renewal_due(id).await.unwrap();
    assert!(retry > world.clock.now(), "the retry waits");

    world.sim.clear_faults();
    world
        .clock
        .advance(retry - world.clock.now() + Duration::seconds(1));
    worker.drain().await.unwrap();
    assert_eq!(world.mailbox(id).await.status, MailboxStatus::Active);
}

#[tokio::test]
async fn a_reauthorization_request_renews_the_subscription_it_names_at_once() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    let worker = world.worker();
    worker.drain().await.unwrap();
    let first = world.mailbox(id).await;
    let subscription = first.subscription_id.clone().unwrap();
    let expires = first.subscription_expires_at.unwrap();
    let due = world.renewal_due(id).await.unwrap();

    // Hours before the timer is due, Graph asks for the subscription to be reauthorized.
    world.clock.advance(Duration::hours(2));
    assert!(world.clock.now() < due);
    let asked = world
        .sim
        .notify_lifecycle(world.entra, &subscription, "reauthorizationRequired")
        .await
        .unwrap();
    assert_eq!(asked.status, Some(202));
    worker.drain().await.unwrap();

    let renewed = world.mailbox(id).await;
    assert_eq!(renewed.status, MailboxStatus::Active);
    assert_eq!(
        renewed.subscription_id.as_deref(),
        Some(subscription.as_str()),
        "reauthorizing keeps the subscription"
    );
    let new_expiry = renewed.subscription_expires_at.unwrap();
    assert!(new_expiry > expires, "{new_expiry} is not after {expires}");
    let at_graph = world.sim.subscriptions(world.entra).unwrap();
    assert_eq!(at_graph.len(), 1);
    assert_eq!(at_graph[0]["id"], subscription.as_str());
    let pool = world.db.pool().await;
    let noticed: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'mailbox' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id.to_string())
    .fetch_all(&pool)
    .await
    .unwrap();
    let at = |t: &str| noticed.iter().rposition(|e| e == t);
    assert!(
        at("LifecycleNotified") < at("SubscriptionRenewed") && at("LifecycleNotified").is_some(),
        "the notice is recorded, then the renewal: {noticed:?}"
    );
    // The timer moved with the new expiry: `renew_before` ahead of it, less a jitter of at
    // most a quarter of that (so it need not be later than the first timer, which had its
    // own jitter: the 2 hours advanced here are less than the jitter's 3).
    let renew_before = world.settings().renew_before;
    let moved = world.renewal_due(id).await.unwrap();
    let latest = new_expiry - renew_before;
    let earliest = latest - renew_before / 4;
    assert!(
        (earliest..=latest).contains(&moved),
        "the timer {moved} is not between {earliest} and {latest} (first timer {due})"
    );
}

#[tokio::test]
async fn a_received_message_is_moved_to_the_configured_folder_after_its_event() {
    let world = MailWorld::new().await;
    let id = world.add_mailbox(None).await;
    let worker = world.worker_with(workflows::mail::MailSettings {
        move_to: Some("archive".to_owned()),
        ..world.settings()
    });
    worker.drain().await.unwrap();
    let delivered = world
        .sim
        .deliver_mail(world.entra, &world.user, &NewMail::default())
        .await
        .unwrap();
    assert_eq!(delivered.deliveries[0].status, Some(202));
    let inbox = world.sim.messages(world.entra, &world.user).unwrap()[0]["parentFolderId"].clone();
    worker.drain().await.unwrap();

    let pool = world.db.pool().await;
    let received: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'InboundEmailReceived'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].ends_with(&delivered.message_id),
        "the event names the id the message had when it arrived: {received:?}"
    );
    let messages = world.sim.messages(world.entra, &world.user).unwrap();
    assert_eq!(messages.len(), 1);
    let moved = &messages[0];
    assert_ne!(
        moved["id"],
        delivered.message_id.as_str(),
        "a move gives a new id"
    );
    assert_ne!(moved["parentFolderId"], inbox, "it left the inbox");
    assert!(moved["categories"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "tenantflow/processed"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_work WHERE kind = 'move'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the move's work is done");
    assert_eq!(world.mailbox(id).await.status, MailboxStatus::Active);
}
