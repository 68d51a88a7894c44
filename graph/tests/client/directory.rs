use domain::ReasonCode;
use graph::models::{RemovedReason, UserChange, AAD_PREMIUM_P1_PLAN, AAD_PREMIUM_P2_PLAN};
use graph::sim::{NewSimUser, SimHandle};
use graph::{AppCredentials, GraphApi, GraphClient};

use crate::helpers::{client, simulator, tenant};

#[tokio::test]
async fn users_come_with_their_account_state() {
    let sim = simulator().await;

    let users = client(&sim)
        .list_users(&tenant(&sim, 0).credentials())
        .await
        .unwrap();

    assert!(users.len() >= 5);
    assert!(users.iter().all(|u| u.account_enabled.is_some()));
    assert!(users.iter().any(|u| u.account_enabled == Some(false)));
    assert!(users.iter().any(|u| u.mail.is_none()));
}

#[tokio::test]
async fn a_user_is_found_by_user_principal_name() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let helpdesk = &contoso.mailboxes[0];

    let user = client(&sim)
        .get_user(&contoso.credentials(), &helpdesk.user_principal_name)
        .await
        .unwrap();

    assert_eq!(user.id, helpdesk.user_id);
    assert_eq!(
        user.mail.as_deref(),
        Some(helpdesk.user_principal_name.as_str())
    );
}

#[tokio::test]
async fn the_inbox_probe_tells_a_mailbox_from_none() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let client = client(&sim);
    let users = client.list_users(&contoso.credentials()).await.unwrap();
    let without_mailbox = users.iter().find(|u| u.mail.is_none()).unwrap();

    let inbox = client
        .get_inbox(
            &contoso.credentials(),
            &contoso.mailboxes[0].user_principal_name,
        )
        .await;
    let missing = client
        .get_inbox(&contoso.credentials(), &without_mailbox.id)
        .await;

    assert_eq!(inbox.unwrap().display_name.as_deref(), Some("Inbox"));
    let error = missing.unwrap_err();
    assert_eq!(error.reason, ReasonCode::GraphNotFound);
    assert_eq!(
        error.graph_code.as_deref(),
        Some("MailboxNotEnabledForRESTAPI")
    );
}

async fn delta(
    client: &GraphClient,
    app: &AppCredentials,
    from: Option<&graph::models::DeltaLink>,
) -> graph::models::UsersDelta {
    client.users_delta(app, from).await.unwrap()
}

#[tokio::test]
async fn users_delta_reports_changes_and_removals_since_the_last_round() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let app = contoso.credentials();
    let client = client(&sim);
    let first = delta(&client, &app, None).await;
    let users = client.list_users(&app).await.unwrap();
    assert_eq!(first.changes.len(), users.len());

    sim.disable_user(contoso.tenant_id, &users[1].id).unwrap();
    sim.delete_user(contoso.tenant_id, &users[3].id, false)
        .unwrap();
    sim.delete_user(contoso.tenant_id, &users[4].id, true)
        .unwrap();
    let second = delta(&client, &app, Some(&first.next)).await;
    let third = delta(&client, &app, Some(&second.next)).await;

    assert_eq!(
        second.changes,
        vec![
            UserChange::Upserted(Box::new(graph::models::User {
                account_enabled: Some(false),
                ..users[1].clone()
            })),
            UserChange::Removed {
                id: users[3].id.clone(),
                reason: RemovedReason::Changed
            },
            UserChange::Removed {
                id: users[4].id.clone(),
                reason: RemovedReason::Deleted
            },
        ]
    );
    assert!(third.changes.is_empty());
}

#[tokio::test]
async fn a_new_user_appears_in_the_next_delta_round() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let app = contoso.credentials();
    let client = client(&sim);
    let first = delta(&client, &app, None).await;

    sim.add_user(
        contoso.tenant_id,
        &NewSimUser {
            display_name: "Nora New".to_owned(),
            user_principal_name: format!("nora@{}", contoso.default_domain),
            given_name: Some("Nora".to_owned()),
            surname: Some("New".to_owned()),
            job_title: None,
            department: None,
            account_enabled: true,
            has_mailbox: true,
        },
    )
    .unwrap();
    let second = delta(&client, &app, Some(&first.next)).await;

    assert!(
        matches!(&second.changes[..], [UserChange::Upserted(user)] if user.display_name.as_deref() == Some("Nora New"))
    );
}

fn provides(skus: &[graph::models::SubscribedSku], plan: uuid::Uuid) -> bool {
    skus.iter().any(|s| s.provides(plan))
}

async fn skus_of(sim: &SimHandle, index: usize) -> Vec<graph::models::SubscribedSku> {
    client(sim)
        .list_subscribed_skus(&tenant(sim, index).credentials())
        .await
        .unwrap()
}

#[tokio::test]
async fn license_profiles_differ_across_the_fleet() {
    let sim = simulator().await;

    let (e5, e3, p2_addon, basic) = (
        skus_of(&sim, 0).await,
        skus_of(&sim, 1).await,
        skus_of(&sim, 2).await,
        skus_of(&sim, 3).await,
    );

    assert!(provides(&e5, AAD_PREMIUM_P2_PLAN));
    assert!(provides(&e3, AAD_PREMIUM_P1_PLAN) && !provides(&e3, AAD_PREMIUM_P2_PLAN));
    assert!(provides(&p2_addon, AAD_PREMIUM_P2_PLAN));
    assert!(!provides(&basic, AAD_PREMIUM_P1_PLAN));
}

#[tokio::test]
async fn the_partner_tenant_lists_the_fleet_as_customers() {
    let sim = simulator().await;
    let partner = sim.partner().credentials();
    let client = client(&sim);
    let mut fleet: Vec<uuid::Uuid> = sim.tenants().iter().map(|t| t.tenant_id).collect();
    fleet.sort();

    let mut contracts: Vec<uuid::Uuid> = client
        .list_contracts(&partner)
        .await
        .unwrap()
        .iter()
        .map(|c| c.customer_id)
        .collect();
    let mut customers: Vec<uuid::Uuid> = client
        .list_delegated_admin_customers(&partner)
        .await
        .unwrap()
        .iter()
        .map(|c| c.tenant_id)
        .collect();
    contracts.sort();
    customers.sort();

    assert_eq!(contracts, fleet);
    assert_eq!(customers, fleet);
}

#[tokio::test]
async fn cipp_lists_the_fleet_with_its_own_token() {
    let sim = simulator().await;

    let tenants = client(&sim)
        .cipp_list_tenants(&sim.cipp_credentials())
        .await
        .unwrap();

    let domains: Vec<String> = tenants
        .iter()
        .filter_map(|t| t.default_domain_name.clone())
        .collect();
    let fleet: Vec<String> = sim
        .tenants()
        .iter()
        .map(|t| t.default_domain.clone())
        .collect();
    assert_eq!(domains, fleet);
}

#[tokio::test]
async fn a_customer_app_cannot_get_a_cipp_token() {
    let sim = simulator().await;
    let mut cipp = sim.cipp_credentials();
    cipp.app = tenant(&sim, 0).credentials();

    let error = client(&sim).cipp_list_tenants(&cipp).await.unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    assert_eq!(error.graph_code.as_deref(), Some("invalid_scope"));
}
