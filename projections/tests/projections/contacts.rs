//! The contact sync read models (`contacts` projection) against a [`ContactBook`] written
//! through the command bus: what each table shows, that it matches the aggregates, never
//! holds a secret or the delta link, stays in its workspace, and that replays and rebuilds
//! leave the same rows.

use std::sync::Arc;

use domain::contact::{Contact, ContactField};
use domain::contact_settings::FeatureFlag;
use serde_json::{json, Value};
use sqlx::PgPool;
use store::log::read_batch;
use store::{CommandBus, Position};
use testkit::{set_field_sync, set_flag, ContactBook, TestDb};
use testkit::{CIPP_FINGERPRINT, CIPP_URL, CONTOSO, DELTA_LINK, TAILSPIN};

use crate::support::*;

/// The tables of the `contacts` projection.
fn contact_tables() -> &'static [&'static str] {
    projections::Projection::tables(&projections::Contacts)
}

/// acme's and globex's contact books, acme's flags and field sync set, projected.
async fn projected_books() -> (TestDb, CommandBus, ContactBook, ContactBook) {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let acme = ContactBook::seed(&bus, "acme").await;
    let globex = ContactBook::seed(&bus, "globex").await;
    set_flag(&bus, "acme", FeatureFlag::Ui, true).await;
    set_flag(&bus, "acme", FeatureFlag::AmbiguousQueue, true).await;
    set_flag(&bus, "acme", FeatureFlag::Cipp, true).await;
    set_flag(&bus, "acme", FeatureFlag::Cipp, false).await;
    set_field_sync(&bus, "acme", &[ContactField::JobTitle, ContactField::Name]).await;
    catch_up(bus.pool(), Arc::new(projections::Contacts)).await;
    (db, bus, acme, globex)
}

async fn contact_rows(pool: &PgPool) -> Vec<Vec<Value>> {
    let mut conn = pool.acquire().await.unwrap();
    let mut all = Vec::new();
    for table in contact_tables() {
        all.push(rows(&mut conn, table).await);
    }
    all
}

#[tokio::test]
async fn the_contacts_read_models_show_connection_clients_mappings_contacts_queue_results_and_settings(
) {
    let (_db, bus, acme, _globex) = projected_books().await;
    let pool = bus.pool();

    let partner = row(pool, "rm_partner_connections", "workspace_id", "acme").await;
    assert_eq!(partner["kind"], "cipp");
    assert_eq!(
        partner["cipp_base_url"], CIPP_URL,
        "stored without its slash"
    );
    assert_eq!(partner["cipp_api_client_id"], "cipp-api");
    assert_eq!(partner["partner_tenant_id"], TAILSPIN);
    assert_eq!(partner["credential_fingerprint"], CIPP_FINGERPRINT);
    assert_eq!(partner["status"], "connected");
    assert!(partner["validated_at"].is_string() && partner["configured_at"].is_string());

    let northwind = row(pool, "rm_clients", "client_id", &acme.northwind.to_string()).await;
    assert_eq!(northwind["name"], "Northwind Traders");
    assert_eq!(northwind["domains"], json!(["nw.example"]));
    assert_eq!(northwind["status"], "inactive");
    assert_eq!(northwind["workspace_id"], "acme");

    let contoso = row(
        pool,
        "rm_tenant_mappings",
        "mapping_key",
        &acme.contoso_mapping,
    )
    .await;
    assert_eq!(contoso["entra_tenant_id"], CONTOSO);
    assert_eq!(contoso["display_name"], "Contoso Ltd");
    assert_eq!(contoso["source"], "cipp");
    assert_eq!(contoso["state"], "confirmed");
    assert_eq!(contoso["proposed_client_id"], acme.contoso.to_string());
    assert_eq!(contoso["proposal_reason"], "domain_match");
    assert_eq!(contoso["confirmed_client_id"], acme.contoso.to_string());
    assert_eq!(contoso["confirmed_by"], "alice");
    assert_eq!(contoso["last_sync_run_id"], acme.run.to_string());
    assert_eq!(
        (
            contoso["last_sync_created"].clone(),
            contoso["last_sync_queued"].clone()
        ),
        (json!(2), json!(2))
    );
    assert_eq!(contoso["has_delta_link"], true);
    let fabrikam = row(
        pool,
        "rm_tenant_mappings",
        "mapping_key",
        &acme.fabrikam_mapping,
    )
    .await;
    assert_eq!(fabrikam["state"], "needs_review");
    assert_eq!(fabrikam["proposal_reason"], "name_similarity");
    assert_eq!(
        fabrikam["proposal_candidates"],
        json!([acme.fabrikam.to_string()])
    );
    assert!(fabrikam["proposed_client_id"].is_null() && fabrikam["confirmed_client_id"].is_null());
    let tailspin = row(
        pool,
        "rm_tenant_mappings",
        "mapping_key",
        &acme.tailspin_mapping,
    )
    .await;
    assert_eq!(tailspin["state"], "skipped");
    assert_eq!(tailspin["has_delta_link"], false);

    let result = row(
        pool,
        "rm_contact_sync_results",
        "run_id",
        &acme.run.to_string(),
    )
    .await;
    assert_eq!(result["entra_tenant_id"], CONTOSO);
    assert_eq!(result["client_id"], acme.contoso.to_string());
    assert_eq!(
        [
            &result["created"],
            &result["linked"],
            &result["updated"],
            &result["inactivated"],
            &result["reactivated"],
            &result["queued"]
        ],
        [
            &json!(2),
            &json!(1),
            &json!(1),
            &json!(1),
            &json!(0),
            &json!(2)
        ]
    );
    assert!(result["failed_reason"].is_null());

    let alice = row(pool, "rm_contacts", "contact_id", &acme.alice.to_string()).await;
    assert_eq!(alice["email"], "alice@contoso.com", "normalized");
    assert_eq!(
        alice["entra_object_id"],
        acme.alice_user.object_id.to_string()
    );
    assert_eq!(alice["entra_tenant_id"], CONTOSO);
    let carol = row(pool, "rm_contacts", "contact_id", &acme.carol.to_string()).await;
    assert_eq!(carol["job_title"], "CFO");
    assert_eq!(carol["department"], "Finance");
    assert_eq!(
        carol["phone"], "+1 555 0100",
        "a field no event changed stays"
    );
    assert_eq!(carol["status"], "inactive");
    assert_eq!(carol["inactive_reason"], "disabled");
    let bob = row(pool, "rm_contacts", "contact_id", &acme.bob.to_string()).await;
    assert_eq!(bob["entra_object_id"], acme.bob_user.object_id.to_string());
    for id in [
        acme.alice, acme.bob, acme.carol, acme.pat, acme.sam, acme.dora,
    ] {
        let loaded = bus.load::<Contact>(&id.to_string()).await.unwrap();
        let c = loaded.aggregate;
        let r = row(pool, "rm_contacts", "contact_id", &id.to_string()).await;
        assert_eq!(r["version"], loaded.version, "{id}");
        assert_eq!(r["name"], c.details.name);
        assert_eq!(r["email"], json!(c.details.email));
        assert_eq!(r["status"], c.status.as_str());
        assert_eq!(r["client_id"], json!(c.client_id));
    }

    let open = row(
        pool,
        "rm_reconciliation_items",
        "item_id",
        &acme.open_item.to_string(),
    )
    .await;
    assert_eq!(open["status"], "open");
    assert_eq!(open["upstream_display_name"], "Chris Smith");
    assert_eq!(open["upstream_emails"], json!(["chris.smith@contoso.com"]));
    let mut candidates = vec![acme.pat.to_string(), acme.sam.to_string()];
    candidates.sort();
    assert_eq!(open["candidates"], json!(candidates));
    assert_eq!(open["queued_run_id"], acme.run.to_string());
    assert!(open["resolution"].is_null());
    let resolved = row(
        pool,
        "rm_reconciliation_items",
        "item_id",
        &acme.resolved_item.to_string(),
    )
    .await;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolution"], "linked_existing");
    assert_eq!(resolved["resolution_contact_id"], acme.bob.to_string());
    assert_eq!(resolved["resolved_by"], "alice");

    let settings = row(pool, "rm_contact_settings", "workspace_id", "acme").await;
    assert_eq!(settings["enabled_flags"], json!(["ambiguous_queue", "ui"]));
    assert_eq!(settings["field_sync"], json!(["name", "job_title"]));
}

#[tokio::test]
async fn the_contacts_read_models_hold_no_secret_nor_delta_link_and_each_row_its_workspace() {
    let (_db, bus, _acme, _globex) = projected_books().await;
    let pool = bus.pool();
    let refs: Vec<String> = sqlx::query_scalar(
        "SELECT payload #>> '{PartnerConnectionConfigured,secret,credential_ref}' FROM events \
         WHERE event_type = 'PartnerConnectionConfigured'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(refs.len(), 4);
    let everything = json!(contact_rows(pool).await).to_string();
    assert!(!everything.contains("deltatoken") && !everything.contains(DELTA_LINK));
    for r in refs {
        assert!(
            !everything.contains(&r),
            "a credential reference in a read model"
        );
    }

    // A reader confined to acme sees acme's rows only, and some of every table.
    let mut reader = store::db::workspace_reader(pool, "acme").await.unwrap();
    for table in contact_tables() {
        let (mine, others): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE workspace_id = 'acme'), \
             count(*) FILTER (WHERE workspace_id <> 'acme') FROM {table}"
        ))
        .fetch_one(&mut *reader)
        .await
        .unwrap();
        assert!(mine > 0, "{table}");
        assert_eq!(others, 0, "{table}");
    }
    reader.rollback().await.unwrap();
    let globex: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_contacts WHERE workspace_id = 'globex'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(globex, 6);
}

#[tokio::test]
async fn contact_events_applied_again_twice_over_or_rebuilt_leave_the_same_rows() {
    let (_db, bus, _acme, _globex) = projected_books().await;
    let pool = bus.pool().clone();
    let live = contact_rows(&pool).await;
    let contacts = projections::Contacts;

    let mut tx = pool.begin().await.unwrap();
    let events = read_batch(&mut tx, Position::default(), 10_000)
        .await
        .unwrap();
    assert_eq!(events.len() as i64, log_length(&pool).await);
    // Old events over up-to-date rows, all again and then each alone, newest first.
    store::Consumer::handle(&contacts, &mut tx, &events)
        .await
        .unwrap();
    for event in events.iter().rev() {
        store::Consumer::handle(&contacts, &mut tx, std::slice::from_ref(event))
            .await
            .unwrap();
    }
    let mut again = Vec::new();
    for table in contact_tables() {
        again.push(rows(&mut tx, table).await);
    }
    assert_eq!(again, live);
    // From empty tables, the whole log applied twice.
    sqlx::query(&format!("TRUNCATE {}", contact_tables().join(", ")))
        .execute(&mut *tx)
        .await
        .unwrap();
    for _ in 0..2 {
        store::Consumer::handle(&contacts, &mut tx, &events)
            .await
            .unwrap();
    }
    let mut twice = Vec::new();
    for table in contact_tables() {
        twice.push(rows(&mut tx, table).await);
    }
    assert_eq!(twice, live);
    tx.rollback().await.unwrap();

    log_below_horizon(&pool).await;
    // A rebuild, one event per batch and all at once, reproduces the live rows.
    for batch_size in [1, 1000] {
        let replayed = projections::rebuild(
            &pool,
            &[Arc::new(projections::Contacts)],
            batch_size,
            &Quiet,
        )
        .await
        .unwrap();
        assert_eq!(replayed as i64, log_length(&pool).await);
        assert_eq!(contact_rows(&pool).await, live, "batches of {batch_size}");
    }
}
