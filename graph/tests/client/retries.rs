use std::time::Duration;

use domain::ReasonCode;
use graph::models::MoveDestination;
use graph::sim::{Fault, NewMail};
use graph::{Endpoint, GraphApi};

use crate::helpers::{client, client_for, quick_config, simulator, statuses, tenant};

#[tokio::test]
async fn retry_after_is_honoured_before_the_retry() {
    let sim = simulator().await;
    sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(1),
        }
        .on(Endpoint::ListSubscribedSkus)
        .times(1),
    );

    let skus = client(&sim)
        .list_subscribed_skus(&tenant(&sim, 0).credentials())
        .await;

    assert!(skus.is_ok());
    assert_eq!(statuses(&sim, Endpoint::ListSubscribedSkus), [429, 200]);
    let calls = sim.requests_to(Endpoint::ListSubscribedSkus);
    let waited = calls[1].received_at - calls[0].received_at;
    assert!(
        waited >= chrono::Duration::seconds(1),
        "retried after {waited}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_graph_answers() {
    let sim = simulator().await;
    sim.inject(
        Fault::ServerError { status: 503 }
            .on(Endpoint::ListUsers)
            .times(2),
    );

    let users = client(&sim)
        .list_users(&tenant(&sim, 0).credentials())
        .await;

    assert!(users.is_ok());
    assert_eq!(statuses(&sim, Endpoint::ListUsers)[..3], [503, 503, 200]);
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_ends_the_call_as_throttled() {
    let sim = simulator().await;
    sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(1),
        }
        .on(Endpoint::ListUsers),
    );
    let mut config = quick_config(&sim);
    config.retry.budget = Duration::from_millis(500);

    let error = client_for(config)
        .list_users(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphThrottled);
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(sim.requests_to(Endpoint::ListUsers).len(), 1);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError { status: 502 }.on(Endpoint::ListUsers));
    let mut config = quick_config(&sim);
    config.retry.max_attempts = 3;

    let error = client_for(config)
        .list_users(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphUnavailable);
    assert_eq!(sim.requests_to(Endpoint::ListUsers).len(), 3);
}

#[tokio::test]
async fn a_move_is_not_repeated_after_a_server_error_but_is_after_throttling() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let helpdesk = contoso.mailboxes[0].user_id.clone();
    let client = client(&sim);
    let delivered = sim
        .deliver_mail(contoso.tenant_id, &helpdesk, &NewMail::default())
        .await
        .unwrap();

    let app = contoso.credentials();
    let archive = || {
        client.move_message(
            &app,
            &helpdesk,
            &delivered.message_id,
            &MoveDestination::Archive,
        )
    };

    sim.inject(
        Fault::ServerError { status: 500 }
            .on(Endpoint::MoveMessage)
            .times(1),
    );
    let failed = archive().await;
    sim.inject(
        Fault::Throttled {
            retry_after_secs: None,
        }
        .on(Endpoint::MoveMessage)
        .times(1),
    );
    let moved = archive().await;

    assert_eq!(failed.unwrap_err().reason, ReasonCode::GraphUnavailable);
    assert!(moved.is_ok());
    assert_eq!(statuses(&sim, Endpoint::MoveMessage), [500, 429, 201]);
}
