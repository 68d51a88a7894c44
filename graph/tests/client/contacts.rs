//! What contact sync reads: users that change upstream (renamed, given a second address),
//! CIPP's user list, and fleets whose users share a surname.

use std::collections::BTreeSet;

use domain::contact_sync::{decide, tally};
use domain::{
    BookContact, ClientId, ContactField, ContactStatus, FieldSyncConfig, InactiveReason,
    ReasonCode, SyncAction, SyncScope, WorkspaceId,
};
use graph::models::UserChange;
use graph::sim::{self, Fault, SimConfig, SimHandle, UserRename};
use graph::{Endpoint, GraphApi};
use serde_json::json;

use crate::helpers::{client, simulator, statuses, tenant};

/// The users of the first tenant, as the directory lists them.
async fn users(sim: &SimHandle) -> Vec<graph::models::User> {
    client(sim)
        .list_users(&tenant(sim, 0).credentials())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_renamed_user_appears_renamed_in_the_next_delta_round() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let app = contoso.credentials();
    let client = client(&sim);
    let first = client.users_delta(&app, None).await.unwrap();
    let adele = users(&sim).await.swap_remove(1);

    sim.rename_user(
        contoso.tenant_id,
        &adele.id,
        &UserRename {
            display_name: "Adele Vance-Lorenz".to_owned(),
            given_name: None,
            surname: Some("Vance-Lorenz".to_owned()),
        },
    )
    .unwrap();
    let second = client.users_delta(&app, Some(&first.next)).await.unwrap();

    let [UserChange::Upserted(renamed)] = &second.changes[..] else {
        panic!("{:?}", second.changes)
    };
    assert_eq!(renamed.id, adele.id);
    assert_eq!(renamed.display_name.as_deref(), Some("Adele Vance-Lorenz"));
    assert_eq!(renamed.surname.as_deref(), Some("Vance-Lorenz"));
    assert_eq!(renamed.given_name, adele.given_name);
}

#[tokio::test]
async fn a_second_address_appears_as_an_smtp_proxy_address_in_the_next_delta_round() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let app = contoso.credentials();
    let client = client(&sim);
    let first = client.users_delta(&app, None).await.unwrap();
    let user = users(&sim).await.swap_remove(1);
    let alias = format!("alias@{}", contoso.default_domain);

    sim.add_user_address(contoso.tenant_id, &user.id, &alias)
        .unwrap();
    let second = client.users_delta(&app, Some(&first.next)).await.unwrap();

    let [UserChange::Upserted(changed)] = &second.changes[..] else {
        panic!("{:?}", second.changes)
    };
    assert!(
        changed.proxy_addresses.contains(&format!("smtp:{alias}")),
        "{:?}",
        changed.proxy_addresses
    );
    assert!(changed.proxy_addresses.len() >= 2, "the primary stays");
}

#[tokio::test]
async fn mailbox_users_list_their_primary_smtp_address_and_a_department() {
    let sim = simulator().await;

    let listed = users(&sim).await;

    let helpdesk = &listed[0];
    let upn = helpdesk.user_principal_name.clone().unwrap();
    assert_eq!(helpdesk.proxy_addresses, [format!("SMTP:{upn}")]);
    let no_mailbox = listed.iter().find(|u| u.mail.is_none()).unwrap();
    assert!(no_mailbox.proxy_addresses.is_empty());
    assert!(listed[1].department.is_some());
}

#[tokio::test]
async fn the_admin_api_renames_a_user_and_adds_an_address_over_http() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let user = users(&sim).await.swap_remove(1);
    let base = format!(
        "{}_sim/tenants/{}/users/{}",
        sim.base_url(),
        contoso.tenant_id,
        user.id
    );
    let http = reqwest::Client::new();

    let renamed = http
        .post(format!("{base}/rename"))
        .json(&json!({"displayName": "Renamed Person"}))
        .send()
        .await
        .unwrap();
    let aliased = http
        .post(format!("{base}/addresses"))
        .json(&json!({"address": "second@contoso.example"}))
        .send()
        .await
        .unwrap();
    let refused = http
        .post(format!("{base}/addresses"))
        .json(&json!({"address": "not an address"}))
        .send()
        .await
        .unwrap();

    assert_eq!(renamed.status(), 204);
    assert_eq!(aliased.status(), 204);
    assert_eq!(refused.status(), 400);
    let now = client(&sim)
        .get_user(&contoso.credentials(), &user.id)
        .await
        .unwrap();
    assert_eq!(now.display_name.as_deref(), Some("Renamed Person"));
    assert!(now
        .proxy_addresses
        .contains(&"smtp:second@contoso.example".to_owned()));
}

#[tokio::test]
async fn cipp_lists_the_users_of_one_tenant_by_id_or_by_domain() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let client = client(&sim);
    let directory: BTreeSet<String> = users(&sim).await.into_iter().map(|u| u.id).collect();

    let by_id = client
        .cipp_list_users(&sim.cipp_credentials(), &contoso.tenant_id.to_string())
        .await
        .unwrap();
    let by_domain = client
        .cipp_list_users(&sim.cipp_credentials(), &contoso.default_domain)
        .await
        .unwrap();

    assert_eq!(by_id, by_domain);
    let ids: BTreeSet<String> = by_id.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids, directory);
    assert!(by_id.iter().all(|u| u.account_enabled.is_some()));
    let request = sim.requests_to(Endpoint::CippListUsers).remove(0);
    assert!(request.path.contains("ListUsers"), "{}", request.path);
}

#[tokio::test]
async fn cipp_leaves_removed_users_out() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let gone = users(&sim).await.swap_remove(4);
    sim.delete_user(contoso.tenant_id, &gone.id, true).unwrap();

    let listed = client(&sim)
        .cipp_list_users(&sim.cipp_credentials(), &contoso.default_domain)
        .await
        .unwrap();

    assert!(listed.iter().all(|u| u.id != gone.id));
}

#[tokio::test]
async fn cipp_refuses_a_tenant_it_does_not_manage() {
    let sim = simulator().await;
    let client = client(&sim);

    let unknown = client
        .cipp_list_users(&sim.cipp_credentials(), "nowhere.example")
        .await
        .unwrap_err();
    let partner = client
        .cipp_list_users(&sim.cipp_credentials(), &sim.partner().default_domain)
        .await
        .unwrap_err();

    assert_eq!(unknown.reason, ReasonCode::GraphBadRequest);
    assert_eq!(partner.reason, ReasonCode::GraphBadRequest);
}

#[tokio::test]
async fn the_cipp_user_list_needs_a_cipp_token() {
    let sim = simulator().await;
    let mut cipp = sim.cipp_credentials();
    cipp.app = tenant(&sim, 0).credentials();

    let error = client(&sim)
        .cipp_list_users(&cipp, &tenant(&sim, 0).default_domain)
        .await
        .unwrap_err();

    assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
}

#[tokio::test]
async fn faults_on_the_cipp_user_list_end_in_their_reason_codes() {
    let sim = simulator().await;
    let cipp = sim.cipp_credentials();
    let domain = tenant(&sim, 0).default_domain;
    let client = client(&sim);

    sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(0),
        }
        .on(Endpoint::CippListUsers)
        .times(1),
    );
    let after_throttling = client.cipp_list_users(&cipp, &domain).await;
    sim.inject(Fault::Malformed.on(Endpoint::CippListUsers).times(1));
    let malformed = client.cipp_list_users(&cipp, &domain).await.unwrap_err();
    sim.inject(Fault::Forbidden.on(Endpoint::CippListUsers));
    let forbidden = client.cipp_list_users(&cipp, &domain).await.unwrap_err();

    assert!(after_throttling.is_ok_and(|users| !users.is_empty()));
    assert_eq!(&statuses(&sim, Endpoint::CippListUsers)[..2], [429, 200]);
    assert_eq!(malformed.reason, ReasonCode::GraphMalformedResponse);
    assert_eq!(forbidden.reason, ReasonCode::ProviderPermissionMissing);
}

#[tokio::test]
async fn a_fleet_can_give_several_users_one_surname_with_unique_addresses() {
    let sim = sim::spawn(SimConfig {
        tenants: 1,
        users_per_tenant: Some(130),
        shared_surname_users: 5,
        ..SimConfig::default()
    })
    .await;

    let listed = users(&sim).await;

    assert_eq!(listed.len(), 130);
    let surname = listed[1].surname.clone();
    let sharing: Vec<_> = listed[1..=5]
        .iter()
        .map(|u| (u.surname.clone(), u.given_name.clone()))
        .collect();
    assert!(sharing.iter().all(|(s, _)| *s == surname), "{sharing:?}");
    let given: BTreeSet<_> = sharing.iter().map(|(_, g)| g.clone()).collect();
    assert_eq!(given.len(), 5, "sharers have different given names");
    let upns: BTreeSet<_> = listed
        .iter()
        .map(|u| u.user_principal_name.clone())
        .collect();
    assert_eq!(upns.len(), listed.len(), "every UPN is unique");
}

/// The contact book after applying `actions` the way the aggregates would.
fn apply(book: &mut Vec<BookContact>, actions: &[SyncAction]) {
    for action in actions {
        match action {
            SyncAction::Create {
                contact_id,
                details,
                entra_user,
            } => book.push(BookContact {
                contact_id: *contact_id,
                details: details.clone(),
                status: ContactStatus::Active,
                entra_user: Some(*entra_user),
            }),
            SyncAction::MarkInactive { contact_id, .. } => {
                if let Some(c) = book.iter_mut().find(|c| c.contact_id == *contact_id) {
                    c.status = ContactStatus::Inactive;
                }
            }
            other => panic!("not expected here: {other:?}"),
        }
    }
}

/// One delta round through the rules: every action, in the order decided.
async fn sync_round(
    sim: &SimHandle,
    from: Option<&graph::models::DeltaLink>,
    book: &[BookContact],
    field_sync: &FieldSyncConfig,
) -> (Vec<SyncAction>, graph::models::DeltaLink) {
    let contoso = tenant(sim, 0);
    let delta = client(sim)
        .users_delta(&contoso.credentials(), from)
        .await
        .unwrap();
    let workspace: WorkspaceId = "acme".parse().unwrap();
    let scope = SyncScope {
        workspace: &workspace,
        client_id: ClientId(uuid::Uuid::from_u128(1)),
        entra_tenant_id: contoso.tenant_id.into(),
        field_sync,
        ignored: &BTreeSet::new(),
    };
    let actions = delta
        .changes
        .iter()
        .filter_map(UserChange::to_upstream)
        .flat_map(|change| decide(&change, book, &scope))
        .collect();
    (actions, delta.next)
}

#[tokio::test]
async fn the_simulators_users_drive_the_sync_rules_through_a_first_and_a_second_round() {
    let sim = simulator().await;
    let contoso = tenant(&sim, 0);
    let listed = users(&sim).await;
    let enabled = listed
        .iter()
        .filter(|u| u.account_enabled == Some(true))
        .count();
    let names = FieldSyncConfig::allowing([ContactField::Name]);

    let (first, link) = sync_round(&sim, None, &[], &names).await;
    let mut book = Vec::new();
    apply(&mut book, &first);
    sim.disable_user(contoso.tenant_id, &listed[1].id).unwrap();
    sim.delete_user(contoso.tenant_id, &listed[4].id, false)
        .unwrap();
    sim.rename_user(
        contoso.tenant_id,
        &listed[0].id,
        &UserRename {
            display_name: "Service Desk".to_owned(),
            given_name: None,
            surname: None,
        },
    )
    .unwrap();
    let (second, link) = sync_round(&sim, Some(&link), &book, &names).await;
    let (third, _) = sync_round(&sim, Some(&link), &book, &names).await;

    assert_eq!(
        tally(&first).created as usize,
        enabled,
        "disabled users create nothing"
    );
    let contact_of = |user: &graph::models::User| {
        book.iter()
            .find(|c| {
                c.entra_user
                    .is_some_and(|e| e.object_id.to_string() == user.id)
            })
            .map(|c| c.contact_id)
            .unwrap()
    };
    assert_eq!(
        second,
        [
            SyncAction::UpdateFields {
                contact_id: contact_of(&listed[0]),
                changes: vec![(ContactField::Name, Some("Service Desk".to_owned()))],
            },
            SyncAction::MarkInactive {
                contact_id: contact_of(&listed[1]),
                reason: InactiveReason::Disabled,
            },
            SyncAction::MarkInactive {
                contact_id: contact_of(&listed[4]),
                reason: InactiveReason::Deleted,
            },
        ]
    );
    assert_eq!(third, [], "no upstream change, nothing to do");
}
