use domain::ReasonCode;
use graph::sim::Fault;
use graph::{Endpoint, GraphApi};

use crate::helpers::{client, client_for, quick_config, simulator, tenant};

#[tokio::test]
async fn all_policies_are_read_across_pages() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let expected = sim.policies(contoso.tenant_id).unwrap();
    assert!(
        expected.len() > 2,
        "the fleet seeds more policies than fit on one page"
    );

    let policies = client(&sim)
        .list_conditional_access_policies(&contoso.credentials())
        .await
        .unwrap();

    let ids: Vec<&str> = policies.iter().map(|p| p.id.as_str()).collect();
    let expected_ids: Vec<&str> = expected.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, expected_ids);
    let pages = sim.requests_to(Endpoint::ListConditionalAccessPolicies);
    assert_eq!(pages.len(), expected.len().div_ceil(2));
    assert!(pages[1].query.as_deref().unwrap().contains("skiptoken"));
}

#[tokio::test]
async fn policies_keep_their_nested_conditions() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);

    let policies = client(&sim)
        .list_conditional_access_policies(&contoso.credentials())
        .await
        .unwrap();

    let stored = sim.policies(contoso.tenant_id).unwrap();
    for (policy, stored) in policies.iter().zip(&stored) {
        assert_eq!(&serde_json::to_value(policy).unwrap(), stored);
    }
    assert!(policies[0].json["conditions"]["users"]["includeRoles"].is_array());
}

#[tokio::test]
async fn a_next_link_to_a_vanished_page_is_a_malformed_response() {
    let sim = simulator().await;
    sim.inject(
        Fault::PagingNotFound
            .on(Endpoint::ListConditionalAccessPolicies)
            .times(1),
    );

    let error = client(&sim)
        .list_conditional_access_policies(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphMalformedResponse);
    assert_eq!(error.status, Some(404));
}

#[tokio::test]
async fn a_cut_page_list_yields_only_the_first_page_as_the_client_cannot_know() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    sim.inject(
        Fault::PagingCut
            .on(Endpoint::ListConditionalAccessPolicies)
            .times(1),
    );

    let policies = client(&sim)
        .list_conditional_access_policies(&contoso.credentials())
        .await
        .unwrap();

    assert_eq!(policies.len(), 2);
    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        1
    );
}

#[tokio::test]
async fn paging_stops_at_the_configured_page_limit() {
    let sim = simulator().await;
    let mut config = quick_config(&sim);
    config.max_pages = 1;

    let error = client_for(config)
        .list_conditional_access_policies(&tenant(&sim, 0).credentials())
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::GraphMalformedResponse);
    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        1
    );
}

#[tokio::test]
async fn a_larger_page_size_means_fewer_requests() {
    let sim = simulator().await;
    sim.set_page_size(100);

    client(&sim)
        .list_conditional_access_policies(&tenant(&sim, 0).credentials())
        .await
        .unwrap();

    assert_eq!(
        sim.requests_to(Endpoint::ListConditionalAccessPolicies)
            .len(),
        1
    );
}
