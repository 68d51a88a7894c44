use std::sync::Arc;

use domain::ReasonCode;
use graph::{AppCredentials, Endpoint, GraphApi};
use secrecy::SecretString;

use crate::helpers::{client, simulator, statuses, tenant};

#[tokio::test]
async fn many_requests_share_one_token() {
    let sim = simulator().await;
    let client = client(&sim);
    let contoso = tenant(&sim, 0).credentials();

    for _ in 0..3 {
        client.list_subscribed_skus(&contoso).await.unwrap();
    }
    let concurrent = (0..10).map(|_| client.list_users(&contoso));
    for result in futures::future::join_all(concurrent).await {
        result.unwrap();
    }

    assert_eq!(sim.requests_to(Endpoint::Token).len(), 1);
    assert_eq!(sim.requests_to(Endpoint::ListSubscribedSkus).len(), 3);
}

#[tokio::test]
async fn concurrent_first_requests_wait_for_one_token_fetch() {
    let sim = simulator().await;
    let client = client(&sim);
    let contoso = tenant(&sim, 0).credentials();

    let concurrent = (0..8).map(|_| client.list_subscribed_skus(&contoso));
    for result in futures::future::join_all(concurrent).await {
        result.unwrap();
    }

    assert_eq!(sim.requests_to(Endpoint::Token).len(), 1);
}

#[tokio::test]
async fn each_connection_gets_its_own_token() {
    let sim = simulator().await;
    let api: Arc<dyn GraphApi> = Arc::new(client(&sim));

    api.verify_credentials(&tenant(&sim, 0).credentials())
        .await
        .unwrap();
    api.verify_credentials(&tenant(&sim, 1).credentials())
        .await
        .unwrap();
    api.verify_credentials(&tenant(&sim, 0).credentials())
        .await
        .unwrap();

    assert_eq!(sim.requests_to(Endpoint::Token).len(), 2);
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_failure() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let wrong = AppCredentials::new(
        contoso.tenant_id,
        contoso.client_id,
        SecretString::from("wrong"),
    );

    let error = client(&sim).verify_credentials(&wrong).await.unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    assert_eq!(error.status, Some(401));
    assert_eq!(error.graph_code.as_deref(), Some("invalid_client"));
    assert!(error.message.contains("AADSTS7000215"));
}

#[tokio::test]
async fn an_app_unknown_to_the_tenant_is_an_auth_failure() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let stranger = AppCredentials::new(contoso.tenant_id, "not-our-app", contoso.client_secret);

    let error = client(&sim)
        .verify_credentials(&stranger)
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    assert_eq!(error.graph_code.as_deref(), Some("unauthorized_client"));
}

#[tokio::test]
async fn revoked_consent_is_reported_as_missing_consent_even_with_a_cached_token() {
    let sim = simulator().await;
    let client = client(&sim);
    let contoso = tenant(&sim, 0);
    client.list_users(&contoso.credentials()).await.unwrap();

    sim.revoke_consent(contoso.tenant_id).unwrap();
    let error = client.list_users(&contoso.credentials()).await.unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderConsentMissing);
    assert_eq!(error.status, Some(400));
    let statuses = statuses(&sim, Endpoint::ListUsers);
    assert_eq!(
        statuses.last(),
        Some(&401),
        "Graph refused the revoked token first"
    );
}

#[tokio::test]
async fn after_a_secret_rotation_only_the_new_secret_gets_tokens() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let new_secret = sim.rotate_secret(contoso.tenant_id).unwrap();

    let old = client(&sim)
        .verify_credentials(&contoso.credentials())
        .await;
    let rotated = AppCredentials::new(contoso.tenant_id, contoso.client_id.clone(), new_secret);
    let new = client(&sim).verify_credentials(&rotated).await;

    assert_eq!(old.unwrap_err().reason, ReasonCode::ProviderAuthFailed);
    assert!(new.is_ok());
}

#[tokio::test]
async fn a_token_obtained_with_one_secret_is_not_handed_to_another() {
    let sim = simulator().await;
    let client = client(&sim);
    let contoso = tenant(&sim, 0);
    client
        .verify_credentials(&contoso.credentials())
        .await
        .unwrap();

    let impostor = AppCredentials::new(
        contoso.tenant_id,
        contoso.client_id,
        SecretString::from("guess"),
    );
    let error = client.list_users(&impostor).await.unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    assert!(sim.requests_to(Endpoint::ListUsers).is_empty());
}

#[tokio::test]
async fn a_connection_test_asks_for_a_new_token_and_finds_a_revoked_secret_despite_the_cache() {
    let sim = simulator().await;
    let client = client(&sim);
    let contoso = tenant(&sim, 0);
    client
        .verify_credentials(&contoso.credentials())
        .await
        .unwrap();
    client
        .test_credentials(&contoso.credentials())
        .await
        .unwrap();
    assert_eq!(
        sim.requests_to(Endpoint::Token).len(),
        2,
        "a test never answers from the cache"
    );
    sim.rotate_secret(contoso.tenant_id).unwrap();
    // The cached token still works (as Microsoft's do until they expire)...
    client
        .verify_credentials(&contoso.credentials())
        .await
        .unwrap();
    // ...but a test asks again, and the old secret is refused.
    let error = client
        .test_credentials(&contoso.credentials())
        .await
        .unwrap_err();
    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
}
