//! Tenant discovery and contact sync (R5) against the Graph simulator: the stepped engine
//! runs the real workflows on a real database; the test only starts them and checks what
//! they wrote.

use app::contacts::{self as contacts, MappingConfirmation, PartnerSetup, ResolutionChoice};
use app::Started;
use cqrs_es::Aggregate;
use domain::contact::{ContactDetails, ContactStatus};
use domain::contact_settings::FeatureFlag;
use domain::run::{OperationRun, RunOutcome};
use domain::tenant_mapping::TenantMapping;
use domain::{Contact, ContactField, FieldSyncConfig, ReconciliationItem};
use graph::sim::{NewSimUser, SimConfig, SimHandle, SimTenant, UserRename};
use graph::GraphApi;
use std::collections::BTreeMap;
use store::index::indexed_streams;
use testkit::{count_events, owner, SteppedEngine, TestDb};

struct World {
    _db: TestDb,
    stepped: SteppedEngine,
    sim: SimHandle,
    tenants: Vec<SimTenant>,
}

async fn world(tenants: usize, users: usize) -> World {
    let db = TestDb::new().await;
    let clock = domain::FixedClock::at(chrono::Utc::now());
    let bus = db.bus_on(&clock).await;
    let sim = graph::sim::spawn(SimConfig {
        tenants,
        users_per_tenant: Some(users),
        ..SimConfig::default()
    })
    .await;
    let stepped = SteppedEngine::against(&sim, &bus, &clock);
    let meta = owner();
    for flag in FeatureFlag::ALL {
        contacts::set_feature_flag(&bus, &meta, flag, true)
            .await
            .expect("a flag is set");
    }
    let partner = sim.partner();
    let setup = PartnerSetup::Direct {
        partner_tenant_id: partner.tenant_id.into(),
        client_id: partner.client_id.clone(),
        client_secret: partner.client_secret.clone(),
    };
    contacts::configure_partner_connection(&bus, &testkit::vault(), &meta, &setup)
        .await
        .expect("the partner connection is configured");
    World {
        _db: db,
        stepped,
        tenants: sim.tenants(),
        sim,
    }
}

impl World {
    fn bus(&self) -> &store::CommandBus {
        &self.stepped.bus
    }

    async fn run(&self, started: Result<Started, app::AppError>) -> OperationRun {
        let Ok(Started::Queued(run_id)) = started else {
            panic!("expected a queued run: {started:?}");
        };
        self.stepped.drive(run_id).await
    }

    async fn discover(&self) -> OperationRun {
        self.run(contacts::start_discovery(self.bus(), &owner()).await)
            .await
    }

    async fn sync(&self) -> OperationRun {
        self.run(contacts::start_contact_sync(self.bus(), &owner(), None).await)
            .await
    }

    async fn users(&self, tenant: &SimTenant) -> Vec<graph::models::User> {
        let client = graph::GraphClient::new(self.sim.graph_config()).expect("a client");
        let mut users = client
            .list_users(&tenant.credentials())
            .await
            .expect("users are listed");
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users
    }

    /// Every contact of the workspace, by id.
    async fn contacts(&self) -> BTreeMap<String, Contact> {
        let mut conn = self.bus().pool().acquire().await.expect("a connection");
        let ids = indexed_streams(&mut conn, "acme", Contact::TYPE, None)
            .await
            .expect("the index is read");
        let mut out = BTreeMap::new();
        for id in ids {
            let contact = self.bus().load::<Contact>(&id).await.expect("load");
            out.insert(id, contact.aggregate);
        }
        out
    }

    /// A client for each tenant, by its domain; the confirmations that map them.
    async fn a_client_per_tenant(&self) -> Vec<MappingConfirmation> {
        let mut rows = Vec::new();
        for t in &self.tenants {
            let domains = vec![t.default_domain.clone()];
            let client = contacts::create_client(self.bus(), &owner(), &t.display_name, domains)
                .await
                .unwrap();
            rows.push(MappingConfirmation {
                entra_tenant_id: t.tenant_id.into(),
                client_id: client,
            });
        }
        rows
    }

    async fn contact_events(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type IN ('contact', 'reconciliation_item')",
        )
        .fetch_one(self.bus().pool())
        .await
        .expect("count")
    }
}

/// How many of `users` are enabled: the sync creates contacts for those only.
fn enabled<'a>(users: impl IntoIterator<Item = &'a graph::models::User>) -> usize {
    users
        .into_iter()
        .filter(|u| u.account_enabled != Some(false))
        .count()
}

fn summary(run: &OperationRun, step: &str) -> serde_json::Value {
    run.step(step)
        .and_then(|s| s.summary.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn discovery_proposes_by_domain_and_a_sync_creates_links_updates_and_queues_without_deleting()
{
    let w = world(3, 6).await;
    let meta = owner();
    let bus = w.bus();
    let (a, b) = (&w.tenants[0], &w.tenants[1]);
    let client_a = contacts::create_client(bus, &meta, "Client A", vec![a.default_domain.clone()])
        .await
        .expect("client A");
    let client_b = contacts::create_client(bus, &meta, "Client B", vec![b.default_domain.clone()])
        .await
        .expect("client B");
    let users_a = w.users(a).await;
    // The MSP already has one of A's people in its book, under a differently written
    // address, and a person named like nobody upstream yet.
    let known = users_a
        .iter()
        .find(|u| u.mail.is_some() && u.account_enabled != Some(false))
        .expect("a user with a mail");
    let written = format!("  {}  ", known.mail.clone().expect("a mail").to_uppercase());
    let hand = contacts::create_contact(
        bus,
        &meta,
        client_a,
        ContactDetails {
            name: "Known Person".into(),
            email: domain::normalize_email(&written),
            ..ContactDetails::default()
        },
    )
    .await
    .expect("a contact by hand");
    let zed = contacts::create_contact(
        bus,
        &meta,
        client_a,
        ContactDetails {
            name: "Zed Quill".into(),
            ..ContactDetails::default()
        },
    )
    .await
    .expect("another by hand");

    let discovery = w.discover().await;
    assert_eq!(discovery.outcome, RunOutcome::Succeeded, "{discovery:?}");
    let found = summary(&discovery, workflows::contacts::DISCOVER_STEP);
    assert_eq!(found["found"], 3, "{found}");
    assert_eq!(found["auto_matched"], 2, "{found}");
    assert_eq!(found["skipped"], 1, "{found}");

    let confirmed = contacts::confirm_mappings(
        bus,
        &meta,
        &[
            MappingConfirmation {
                entra_tenant_id: a.tenant_id.into(),
                client_id: client_a,
            },
            MappingConfirmation {
                entra_tenant_id: b.tenant_id.into(),
                client_id: client_b,
            },
        ],
    )
    .await
    .expect("confirmed");
    assert_eq!(confirmed, 2);

    let first = w.sync().await;
    assert_eq!(first.outcome, RunOutcome::Succeeded, "{first:?}");
    let did = summary(&first, workflows::contacts::SYNC_STEP);
    assert_eq!(did["tenants"], 2, "{did}");
    assert_eq!(did["linked"], 1, "{did}");
    let users_b = w.users(b).await;
    let enabled_now = enabled(users_a.iter().chain(&users_b));
    assert_eq!(did["created"], enabled_now as u64 - 1, "{did}");
    let book = w.contacts().await;
    assert_eq!(book.len(), enabled_now + 1, "the enabled users and Zed");
    let linked = &book[&hand.to_string()];
    assert_eq!(
        linked.entra_user.map(|u| u.object_id.to_string()),
        Some(known.id.clone())
    );
    // Each tenant's result is on its mapping, with the delta link the next sync reads from.
    for t in [a, b] {
        let key = TenantMapping::key(&"acme".parse().unwrap(), t.tenant_id.into());
        let mapping = bus.load::<TenantMapping>(&key).await.unwrap().aggregate;
        assert!(mapping.delta_link.is_some());
        assert!(mapping.recorded_runs.len() == 1);
    }

    // Nothing changed upstream: the next sync writes no contact event.
    let before = w.contact_events().await;
    let again = w.sync().await;
    assert_eq!(again.outcome, RunOutcome::Succeeded, "{again:?}");
    assert_eq!(w.contact_events().await, before);

    // Upstream: one disabled, one deleted, one renamed, one new user named like Zed.
    let mut others = users_a
        .iter()
        .filter(|u| u.id != known.id && u.account_enabled != Some(false));
    let (off, gone, renamed) = (
        others.next().unwrap(),
        others.next().unwrap(),
        others.next().unwrap(),
    );
    w.sim.disable_user(a.tenant_id, &off.id).unwrap();
    w.sim.delete_user(a.tenant_id, &gone.id, false).unwrap();
    w.sim
        .rename_user(
            a.tenant_id,
            &renamed.id,
            &UserRename {
                display_name: "Renamed Person".into(),
                given_name: None,
                surname: None,
            },
        )
        .unwrap();
    w.sim
        .add_user(
            a.tenant_id,
            &NewSimUser {
                display_name: "Zed Quill".into(),
                user_principal_name: format!("zed@{}", a.default_domain),
                given_name: None,
                surname: None,
                job_title: None,
                department: None,
                account_enabled: true,
                has_mailbox: true,
            },
        )
        .unwrap();
    // Entra may overwrite names, nothing else.
    contacts::set_field_sync(bus, &meta, FieldSyncConfig::allowing([ContactField::Name]))
        .await
        .unwrap();

    let next = w.sync().await;
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{next:?}");
    let did = summary(&next, workflows::contacts::SYNC_STEP);
    assert_eq!(did["inactivated"], 2, "{did}");
    assert_eq!(did["updated"], 1, "{did}");
    assert_eq!(did["queued"], 1, "{did}");
    assert_eq!(did["created"], 0, "{did}");
    let book = w.contacts().await;
    assert_eq!(
        book.len(),
        enabled_now + 1,
        "sync never deletes and queues instead of creating"
    );
    let by_user = |id: &str| {
        book.values()
            .find(|c| c.entra_user.is_some_and(|u| u.object_id.to_string() == id))
            .cloned()
            .expect("a linked contact")
    };
    assert_eq!(by_user(&off.id).status, ContactStatus::Inactive);
    assert_eq!(by_user(&gone.id).status, ContactStatus::Inactive);
    assert_eq!(by_user(&renamed.id).details.name, "Renamed Person");
    assert!(
        book[&zed.to_string()].entra_user.is_none(),
        "a name never links"
    );

    // A person links the queued user to Zed.
    let mut conn = bus.pool().acquire().await.unwrap();
    let items = indexed_streams(&mut conn, "acme", ReconciliationItem::TYPE, None)
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    let item_id = items[0].parse().unwrap();
    let item = contacts::resolve_reconciliation(bus, &meta, item_id, ResolutionChoice::Link(zed))
        .await
        .expect("resolved");
    assert_eq!(item.resolved_by.as_deref(), Some(meta.actor.as_str()));
    let zed_now = bus
        .load::<Contact>(&zed.to_string())
        .await
        .unwrap()
        .aggregate;
    assert!(zed_now.entra_user.is_some());
    assert_eq!(count_events(bus.pool(), "ReconciliationResolved").await, 1);
}

#[tokio::test]
async fn a_tenant_that_fails_is_recorded_and_the_others_sync() {
    let w = world(2, 3).await;
    let meta = owner();
    let bus = w.bus();
    let rows = w.a_client_per_tenant().await;
    assert_eq!(w.discover().await.outcome, RunOutcome::Succeeded);
    contacts::confirm_mappings(bus, &meta, &rows).await.unwrap();
    w.sim.revoke_consent(w.tenants[1].tenant_id).unwrap();

    let run = w.sync().await;
    assert_eq!(run.outcome, RunOutcome::PartiallySucceeded, "{run:?}");
    let did = summary(&run, workflows::contacts::SYNC_STEP);
    assert_eq!(did["failed_tenants"], 1, "{did}");
    let first = enabled(&w.users(&w.tenants[0]).await);
    assert_eq!(did["created"], first as u64, "{did}");
    let failures = run.failure_summary.clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0]
        .message
        .contains(&w.tenants[1].tenant_id.to_string()));
    // Its failure is on its mapping too, and the next sync tries it again.
    let key = TenantMapping::key(&"acme".parse().unwrap(), w.tenants[1].tenant_id.into());
    let mapping = bus.load::<TenantMapping>(&key).await.unwrap().aggregate;
    assert!(mapping.last_sync.as_ref().unwrap().result.failed.is_some());
    w.sim.grant_consent(w.tenants[1].tenant_id).unwrap();
    let retried = w.sync().await;
    assert_eq!(retried.outcome, RunOutcome::Succeeded, "{retried:?}");
    let second = enabled(&w.users(&w.tenants[1]).await);
    assert_eq!(
        summary(&retried, workflows::contacts::SYNC_STEP)["created"],
        second as u64
    );
}

#[tokio::test]
async fn surfaces_answer_feature_disabled_while_their_flag_is_off_and_keep_their_data() {
    let w = world(1, 2).await;
    let meta = owner();
    let bus = w.bus();
    let client = contacts::create_client(bus, &meta, "Kept", vec!["kept.example".into()])
        .await
        .unwrap();
    contacts::set_feature_flag(bus, &meta, FeatureFlag::Ui, false)
        .await
        .unwrap();
    let refused = contacts::create_client(bus, &meta, "Other", vec![]).await;
    assert_eq!(
        refused.map_err(|e| e.reason_code()).unwrap_err(),
        domain::ReasonCode::FeatureDisabled
    );
    let refused = contacts::start_discovery(bus, &meta).await;
    assert_eq!(
        refused.map_err(|e| e.reason_code()).unwrap_err(),
        domain::ReasonCode::FeatureDisabled
    );
    contacts::set_feature_flag(bus, &meta, FeatureFlag::Ui, true)
        .await
        .unwrap();
    let kept = bus
        .load::<domain::Client>(&client.to_string())
        .await
        .unwrap()
        .aggregate;
    assert_eq!(kept.name, "Kept");
    // A one-client sync needs its own flag.
    contacts::set_feature_flag(bus, &meta, FeatureFlag::ClientSyncAction, false)
        .await
        .unwrap();
    let refused = contacts::start_contact_sync(bus, &meta, Some(client)).await;
    assert_eq!(
        refused.map_err(|e| e.reason_code()).unwrap_err(),
        domain::ReasonCode::FeatureDisabled
    );
}

#[tokio::test]
async fn a_schedule_of_contact_syncs_starts_one_sync_of_the_workspace_and_the_sync_obeys_the_flags()
{
    let w = world(2, 2).await;
    let meta = owner();
    let bus = w.bus();
    let now = {
        use domain::Clock;
        w.stepped.clock.now()
    };
    app::set_schedule(bus, &meta, contacts::SYNC, 60, true, Some(now))
        .await
        .expect("contact syncs can be scheduled");
    let schedules =
        testkit::SteppedConsumer::new(bus.pool(), std::sync::Arc::new(projections::Schedules));
    schedules.catch_up().await;
    let scheduler = workflows::Scheduler {
        workflows: workflows::Registry::standard(),
        bus: bus.clone(),
        poll: std::time::Duration::from_secs(1),
    };
    let pass = scheduler.tick(now).await.expect("a pass");
    let (_, counts) = pass
        .fanned_out
        .first()
        .cloned()
        .expect("the schedule fired");
    assert_eq!(
        counts.started, 1,
        "one run for the workspace, not one per tenant"
    );
    let queued: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'RunQueued' \
         AND payload -> 'RunQueued' ->> 'run_type' = 'contacts.sync'",
    )
    .fetch_all(bus.pool())
    .await
    .unwrap();
    assert_eq!(queued.len(), 1);
    // With the contact sync turned off meanwhile, the scheduled sync refuses to work.
    contacts::set_feature_flag(bus, &meta, FeatureFlag::Ui, false)
        .await
        .unwrap();
    let run = w.stepped.drive(queued[0].parse().unwrap()).await;
    assert_eq!(run.outcome, RunOutcome::Failed, "{run:?}");
    assert_eq!(
        run.failure_summary.first().map(|f| f.reason),
        Some(domain::ReasonCode::FeatureDisabled)
    );
}

#[tokio::test]
async fn through_cipp_discovery_and_sync_work_and_switching_the_kind_shreds_the_old_secret() {
    let w = world(2, 3).await;
    let meta = owner();
    let bus = w.bus();
    let vault_rows = || async {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM credential_vault ORDER BY id")
            .fetch_all(bus.pool())
            .await
            .unwrap()
    };
    let direct_rows = vault_rows().await;
    assert_eq!(direct_rows.len(), 1, "the direct connection's secret");

    let cipp = w.sim.cipp_credentials();
    let partner = w.sim.partner();
    let setup = PartnerSetup::Cipp {
        base_url: cipp.api_url.to_string(),
        api_client_id: cipp.api_client_id.clone(),
        partner_tenant_id: partner.tenant_id.into(),
        client_id: partner.client_id.clone(),
        client_secret: partner.client_secret.clone(),
    };
    let configured = contacts::configure_partner_connection(bus, &testkit::vault(), &meta, &setup)
        .await
        .expect("switched to CIPP");
    assert_eq!(configured.target.as_ref().map(|t| t.kind()), Some("cipp"));
    // The direct secret is gone from the vault, in the same transaction as the switch,
    // and the event says which rows it cleared.
    let rows = vault_rows().await;
    assert_eq!(rows.len(), 1);
    assert!(!rows.contains(&direct_rows[0]));
    let cleared: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload -> 'PartnerConnectionConfigured' -> 'cleared_credential_refs' FROM events \
         WHERE event_type = 'PartnerConnectionConfigured' ORDER BY global_position",
    )
    .fetch_all(bus.pool())
    .await
    .unwrap();
    assert_eq!(cleared.last(), Some(&serde_json::json!([direct_rows[0]])));

    let rows = w.a_client_per_tenant().await;
    let discovery = w.discover().await;
    assert_eq!(discovery.outcome, RunOutcome::Succeeded, "{discovery:?}");
    let found = summary(&discovery, workflows::contacts::DISCOVER_STEP);
    assert_eq!(found["source"], "cipp", "{found}");
    assert_eq!(found["auto_matched"], 2, "{found}");
    contacts::confirm_mappings(bus, &meta, &rows).await.unwrap();
    let sync = w.sync().await;
    assert_eq!(sync.outcome, RunOutcome::Succeeded, "{sync:?}");
    let mut users = Vec::new();
    for t in &w.tenants {
        users.extend(w.users(t).await.into_iter().map(|u| (t.tenant_id, u)));
    }
    assert_eq!(
        summary(&sync, workflows::contacts::SYNC_STEP)["created"],
        enabled(users.iter().map(|(_, u)| u)) as u64
    );
    assert!(!w.sim.requests_to(graph::Endpoint::CippListUsers).is_empty());
    assert!(w.sim.requests_to(graph::Endpoint::UsersDelta).is_empty());

    // A user deleted upstream is missing from CIPP's full list: its contact goes inactive.
    let (tenant, gone) = users
        .iter()
        .find(|(_, u)| u.account_enabled != Some(false))
        .unwrap();
    w.sim.delete_user(*tenant, &gone.id, true).unwrap();
    let next = w.sync().await;
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{next:?}");
    assert_eq!(
        summary(&next, workflows::contacts::SYNC_STEP)["inactivated"],
        1
    );
    let book = w.contacts().await;
    let contact = book
        .values()
        .find(|c| {
            c.entra_user
                .is_some_and(|u| u.object_id.to_string() == gone.id)
        })
        .unwrap();
    assert_eq!(contact.status, ContactStatus::Inactive);
}
