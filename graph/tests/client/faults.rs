//! Every injected fault ends in its reason code.

use std::time::Duration;

use domain::ReasonCode;
use graph::sim::{Fault, SimHandle};
use graph::{Endpoint, GraphApi, GraphError};

use crate::helpers::{client, client_for, quick_config, simulator, tenant};

/// Lists policies of the first tenant while `fault` persists.
async fn policies_failing_with(sim: &SimHandle, fault: Fault) -> GraphError {
    sim.inject(fault.on(Endpoint::ListConditionalAccessPolicies));
    client(sim)
        .list_conditional_access_policies(&tenant(sim, 0).credentials())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn graph_refusing_the_token_is_an_auth_failure_after_one_fresh_token() {
    let sim = simulator().await;

    let error = policies_failing_with(&sim, Fault::Unauthorized).await;

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    assert_eq!(error.status, Some(401));
    assert_eq!(
        error.graph_code.as_deref(),
        Some("InvalidAuthenticationToken")
    );
    assert_eq!(sim.requests_to(Endpoint::Token).len(), 2);
    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        2
    );
}

#[tokio::test]
async fn a_forbidden_call_is_a_missing_permission() {
    let sim = simulator().await;

    let error = policies_failing_with(&sim, Fault::Forbidden).await;

    assert_eq!(error.reason, ReasonCode::ProviderPermissionMissing);
    assert_eq!(error.graph_code.as_deref(), Some("AccessDenied"));
    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_revoked_license_permission_can_be_remapped_by_the_caller() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    sim.revoke_permission(contoso.tenant_id, "Organization.Read.All")
        .unwrap();

    let error = client(&sim)
        .list_subscribed_skus(&contoso.credentials())
        .await
        .unwrap_err()
        .remap(
            ReasonCode::ProviderPermissionMissing,
            ReasonCode::LicensePermissionMissing,
        );

    assert_eq!(error.reason, ReasonCode::LicensePermissionMissing);
    assert_eq!(
        error.graph_code.as_deref(),
        Some("Authorization_RequestDenied")
    );
}

#[tokio::test]
async fn persistent_throttling_ends_in_graph_throttled() {
    let sim = simulator().await;

    let error = policies_failing_with(
        &sim,
        Fault::Throttled {
            retry_after_secs: None,
        },
    )
    .await;

    assert_eq!(error.reason, ReasonCode::GraphThrottled);
    assert_eq!(error.status, Some(429));
    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        4
    );
}

#[tokio::test]
async fn persistent_server_errors_end_in_graph_unavailable() {
    for status in [500, 502, 503, 504] {
        let sim = simulator().await;

        let error = policies_failing_with(&sim, Fault::ServerError { status }).await;

        assert_eq!(error.reason, ReasonCode::GraphUnavailable, "HTTP {status}");
        assert_eq!(error.status, Some(status));
    }
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_a_graph_timeout() {
    let sim = simulator().await;
    sim.inject(Fault::Slow { delay_ms: 1_000 }.on(Endpoint::ListSubscribedSkus));
    let mut config = quick_config(&sim);
    config.request_timeout = Duration::from_millis(150);
    config.retry.max_attempts = 2;

    let error = client_for(config)
        .list_subscribed_skus(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphTimeout);
    assert_eq!(error.status, None);
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_succeeds() {
    let sim = simulator().await;
    sim.inject(
        Fault::Slow { delay_ms: 50 }
            .on(Endpoint::ListSubscribedSkus)
            .times(1),
    );

    let skus = client(&sim)
        .list_subscribed_skus(&tenant(&sim, 0).credentials())
        .await;

    assert!(skus.is_ok());
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_malformed_response() {
    let sim = simulator().await;

    let error = policies_failing_with(&sim, Fault::Malformed).await;

    assert_eq!(error.reason, ReasonCode::GraphMalformedResponse);
}

#[tokio::test]
async fn a_collection_without_value_is_a_malformed_response() {
    let sim = simulator().await;

    let error = policies_failing_with(&sim, Fault::MissingValue).await;

    assert_eq!(error.reason, ReasonCode::GraphMalformedResponse);
    assert!(error.message.contains("value"));
}

#[tokio::test]
async fn an_unknown_user_is_not_found() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);

    let error = client(&sim)
        .get_user(&contoso.credentials(), "nobody@nowhere.example")
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphNotFound);
    assert_eq!(
        error.graph_code.as_deref(),
        Some("Request_ResourceNotFound")
    );
}

#[tokio::test]
async fn a_token_service_outage_is_graph_unavailable() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError { status: 503 }.on(Endpoint::Token));

    let error = client(&sim)
        .verify_credentials(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphUnavailable);
    assert_eq!(sim.requests_to(Endpoint::Token).len(), 4);
}

#[tokio::test]
async fn a_token_answer_without_a_token_is_a_malformed_response() {
    let sim = simulator().await;
    sim.inject(Fault::MissingValue.on(Endpoint::Token));

    let error = client(&sim)
        .verify_credentials(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphMalformedResponse);
}

#[tokio::test]
async fn faults_for_one_tenant_spare_the_others() {
    let sim = simulator().await;
    let (contoso, fabrikam) = (tenant(&sim, 0), tenant(&sim, 1));
    sim.inject(
        Fault::Forbidden
            .on(Endpoint::ListUsers)
            .for_tenant(contoso.tenant_id),
    );
    let client = client(&sim);

    let refused = client.list_users(&contoso.credentials()).await;
    let served = client.list_users(&fabrikam.credentials()).await;

    assert_eq!(
        refused.unwrap_err().reason,
        ReasonCode::ProviderPermissionMissing
    );
    assert!(served.is_ok());
}
