//! The contact sync read side through GraphQL: every query on a [`ContactBook`] written
//! through the command bus, as a readonly caller sees it; feature flags hiding surfaces
//! (and nothing deleted); filters and paging; another workspace's data never shown.

use domain::contact::ContactField;
use domain::contact_settings::FeatureFlag;
use domain::Role;
use serde_json::{json, Value};
use testkit::{caught_up, set_field_sync, set_flag, ContactBook, GraphqlClient, TestApp};
use testkit::{CIPP_FINGERPRINT, CIPP_URL, CONTOSO, FABRIKAM};

use crate::dashboard::nodes;

const PARTNER: &str = "{ partnerConnection { kind status partnerTenantId cippBaseUrl \
    cippApiClientId credentialFingerprint validatedAt lastErrorReasonCode configuredAt } }";
const CLIENTS: &str =
    "query($s: ClientStatus, $n: Int, $a: String) { clients(status: $s, first: $n, after: $a) { \
    pageInfo { hasNextPage endCursor } edges { node { id name domains status createdAt } } } }";
const MAPPINGS: &str = "query($s: MappingState) { tenantMappings(state: $s) { edges { node { \
    id entraTenantId displayName defaultDomain source state confirmedClientId confirmedBy hasDeltaLink \
    confirmedClient { name } proposal { state reason clientId candidateIds client { name } candidates { name } } \
    lastSync { runId created linked updated inactivated reactivated queued failedReason } } } } }";
const PREVIEW: &str = "{ mappingPreview { mappingId entraTenantId displayName currentState \
    proposal { state reason clientId candidateIds client { name } } } }";
const CONTACTS: &str =
    "query($c: String, $s: ContactStatus, $l: Boolean, $q: String, $n: Int, $a: String) { \
    contacts(clientId: $c, status: $s, linked: $l, search: $q, first: $n, after: $a) { \
    pageInfo { hasNextPage endCursor } edges { cursor node { id name email status linked } } } }";
const CONTACT: &str = "query($id: String!) { contact(id: $id) { id name email phone jobTitle department \
    status inactiveReason linked entraUser { entraTenantId objectId } client { name } \
    history { type actor role sequence changes { field old new } inactiveReason entraUser { objectId } } } }";
const ITEMS: &str = "query($s: ReconciliationStatus) { reconciliationItems(status: $s) { edges { node { \
    id status resolution resolutionContactId resolvedBy upstreamDisplayName upstreamEmails candidateIds \
    candidates { name } queuedRunId } } } }";
const RUNS: &str = "{ contactSyncRuns { edges { node { id run { id type } tenantResults { \
    runId entraTenantId clientId created linked updated inactivated reactivated queued failedReason } } } } }";
const SETTINGS: &str =
    "{ contactSyncSettings { fieldSync effectiveFieldSync flags { flag enabled } updatedAt } }";
const NODE: &str = "query($id: ID!) { node(id: $id) { __typename id ... on Client { name } ... on Contact { email } } }";

/// Every gated query, with the variables it needs.
fn gated(book: &ContactBook) -> Vec<(&'static str, Value)> {
    vec![
        (PARTNER, json!({})),
        (CLIENTS, json!({})),
        (MAPPINGS, json!({})),
        (PREVIEW, json!({})),
        (CONTACTS, json!({})),
        (CONTACT, json!({"id": book.alice.to_string()})),
        (ITEMS, json!({})),
        (RUNS, json!({})),
        (NODE, json!({"id": book.alice.to_string()})),
    ]
}

/// How many events the contact sync aggregates have: a read must add none.
async fn contact_sync_events(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type IN ('partner_connection', 'client', \
         'tenant_mapping', 'contact', 'reconciliation_item', 'contact_sync_settings')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Turns flags on or off in `workspace` and waits until the read models show it.
async fn flags(app: &TestApp, workspace: &str, flags: &[FeatureFlag], enabled: bool) {
    for flag in flags {
        set_flag(&app.bus, workspace, *flag, enabled).await;
    }
    caught_up(&app.pool, "contacts").await;
}

/// A service with acme's and globex's contact books projected, every flag of both on.
async fn books() -> (TestApp, ContactBook, ContactBook) {
    let app = TestApp::start().await;
    let acme = ContactBook::seed(&app.bus, "acme").await;
    let globex = ContactBook::seed(&app.bus, "globex").await;
    set_field_sync(&app.bus, "acme", &[ContactField::JobTitle]).await;
    for ws in ["acme", "globex"] {
        flags(&app, ws, &FeatureFlag::ALL, true).await;
    }
    (app, acme, globex)
}

/// The error's code and flag.
async fn refusal(c: &GraphqlClient, query: &str, variables: Value) -> (String, String) {
    let body = c.post(query, variables).await;
    let ext = &body["errors"][0]["extensions"];
    assert!(
        body["data"].is_null() || body["errors"].is_array(),
        "{body}"
    );
    (
        ext["code"].as_str().unwrap_or("<none>").to_owned(),
        ext["flag"].as_str().unwrap_or("<none>").to_owned(),
    )
}

#[tokio::test]
async fn contacts_surfaces_answer_feature_disabled_while_their_flag_is_off_and_show_everything_again(
) {
    let app = TestApp::start().await;
    let book = ContactBook::seed(&app.bus, "acme").await;
    caught_up(&app.pool, "contacts").await;
    let c = app.client("acme", Role::Readonly);
    let before = contact_sync_events(&app).await;

    // Deployed dark: every surface refuses, naming the `ui` flag; the settings answer.
    for (query, variables) in gated(&book) {
        assert_eq!(
            refusal(&c, query, variables).await,
            ("feature_disabled".to_owned(), "ui".to_owned()),
            "{query}"
        );
    }
    let settings = c.ok(SETTINGS, json!({})).await;
    let all_off = settings["contactSyncSettings"]["flags"].as_array().unwrap();
    assert_eq!(all_off.len(), 5);
    assert!(all_off.iter().all(|f| f["enabled"] == false), "{settings}");
    assert_eq!(all_off[0]["flag"], "ui");

    // `ui` on: the surfaces answer, except the queue and the CIPP connection.
    flags(&app, "acme", &[FeatureFlag::Ui], true).await;
    let shown = c.ok(CONTACTS, json!({})).await;
    assert_eq!(nodes(&shown["contacts"]).len(), 6, "{shown}");
    assert_eq!(
        refusal(&c, ITEMS, json!({})).await,
        ("feature_disabled".into(), "ambiguous_queue".into())
    );
    assert_eq!(
        refusal(&c, PARTNER, json!({})).await,
        ("feature_disabled".into(), "cipp".into())
    );
    flags(
        &app,
        "acme",
        &[FeatureFlag::AmbiguousQueue, FeatureFlag::Cipp],
        true,
    )
    .await;
    let mut answers = Vec::new();
    for (query, variables) in gated(&book) {
        answers.push(c.ok(query, variables).await);
    }
    assert_eq!(nodes(&answers[6]["reconciliationItems"]).len(), 2);
    assert_eq!(answers[0]["partnerConnection"]["kind"], "cipp");

    // Off and on again: hidden, then everything as it was; no read wrote anything.
    flags(&app, "acme", &[FeatureFlag::Ui], false).await;
    assert_eq!(refusal(&c, CONTACTS, json!({})).await.0, "feature_disabled");
    flags(&app, "acme", &[FeatureFlag::Ui], true).await;
    for ((query, variables), answer) in gated(&book).into_iter().zip(&answers) {
        assert_eq!(&c.ok(query, variables).await, answer, "{query}");
    }
    let flag_events = 5;
    assert_eq!(contact_sync_events(&app).await, before + flag_events);
    app.stop().await;
}

#[tokio::test]
async fn a_readonly_caller_reads_every_contacts_surface_of_its_workspace_only() {
    let (app, acme, globex) = books().await;
    let c = app.client("acme", Role::Readonly);

    let partner = c.ok(PARTNER, json!({})).await["partnerConnection"].clone();
    assert_eq!(partner["kind"], "cipp");
    assert_eq!(partner["status"], "connected");
    assert_eq!(partner["cippBaseUrl"], CIPP_URL);
    assert_eq!(partner["cippApiClientId"], "cipp-api");
    assert_eq!(partner["credentialFingerprint"], CIPP_FINGERPRINT);

    let clients = nodes(&c.ok(CLIENTS, json!({})).await["clients"]);
    let names: Vec<&str> = clients
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Contoso", "Fabrikam", "Northwind Traders"]);
    assert_eq!(clients[2]["status"], "inactive");
    let active = c.ok(CLIENTS, json!({"s": "active"})).await;
    assert_eq!(nodes(&active["clients"]).len(), 2);

    let mappings = nodes(&c.ok(MAPPINGS, json!({})).await["tenantMappings"]);
    assert_eq!(mappings.len(), 3);
    let contoso = &mappings[0];
    assert_eq!(contoso["id"], acme.contoso_mapping);
    assert_eq!(contoso["entraTenantId"], CONTOSO);
    assert_eq!(contoso["state"], "confirmed");
    assert_eq!(contoso["source"], "cipp");
    assert_eq!(contoso["confirmedClient"]["name"], "Contoso");
    assert_eq!(contoso["confirmedBy"], "alice");
    assert_eq!(contoso["hasDeltaLink"], true);
    assert_eq!(contoso["proposal"]["state"], "auto_matched");
    assert_eq!(contoso["proposal"]["reason"], "domain_match");
    assert_eq!(contoso["proposal"]["client"]["name"], "Contoso");
    assert_eq!(contoso["lastSync"]["runId"], acme.run.to_string());
    assert_eq!(contoso["lastSync"]["created"], 2);
    let fabrikam = &mappings[1];
    assert_eq!(fabrikam["state"], "needs_review");
    assert_eq!(fabrikam["proposal"]["reason"], "name_similarity");
    assert!(fabrikam["proposal"]["client"].is_null());
    assert_eq!(
        fabrikam["proposal"]["candidates"],
        json!([{"name": "Fabrikam"}])
    );
    assert!(fabrikam["lastSync"].is_null());
    let review = c.ok(MAPPINGS, json!({"s": "needs_review"})).await;
    assert_eq!(nodes(&review["tenantMappings"]).len(), 1);

    let preview = c.ok(PREVIEW, json!({})).await["mappingPreview"].clone();
    assert_eq!(preview.as_array().unwrap().len(), 3, "{preview}");
    assert_eq!(preview[0]["currentState"], "confirmed");
    assert_eq!(preview[0]["proposal"]["state"], "auto_matched");
    assert_eq!(preview[1]["proposal"]["state"], "needs_review");
    assert_eq!(preview[2]["proposal"]["state"], "skipped");

    let carol = c.ok(CONTACT, json!({"id": acme.carol.to_string()})).await["contact"].clone();
    assert_eq!(carol["name"], "carol Clark");
    assert_eq!(carol["status"], "inactive");
    assert_eq!(carol["inactiveReason"], "disabled");
    assert_eq!(carol["jobTitle"], "CFO");
    assert_eq!(carol["linked"], true);
    assert_eq!(
        carol["entraUser"]["objectId"],
        acme.carol_user.object_id.to_string()
    );
    assert_eq!(carol["client"]["name"], "Contoso");
    let history = carol["history"].as_array().unwrap();
    let types: Vec<&str> = history
        .iter()
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "ContactCreated",
            "ContactLinked",
            "ContactFieldsUpdated",
            "ContactMarkedInactive"
        ]
    );
    assert_eq!(history[0]["actor"], "engine");
    assert_eq!(
        history[1]["entraUser"]["objectId"],
        acme.carol_user.object_id.to_string()
    );
    assert_eq!(
        history[2]["changes"],
        json!([
            {"field": "job_title", "old": null, "new": "CFO"},
            {"field": "department", "old": null, "new": "Finance"}
        ])
    );
    assert_eq!(history[3]["inactiveReason"], "disabled");

    let open = c.ok(ITEMS, json!({"s": "open"})).await;
    let open = nodes(&open["reconciliationItems"]);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["id"], acme.open_item.to_string());
    assert_eq!(open[0]["upstreamDisplayName"], "Chris Smith");
    assert_eq!(
        open[0]["candidates"],
        json!([{"name": "Pat Smith"}, {"name": "Sam Smith"}])
    );
    assert_eq!(open[0]["queuedRunId"], acme.run.to_string());
    assert!(open[0]["resolution"].is_null());
    let resolved = c.ok(ITEMS, json!({"s": "resolved"})).await;
    let resolved = nodes(&resolved["reconciliationItems"]);
    assert_eq!(resolved[0]["resolution"], "linked_existing");
    assert_eq!(resolved[0]["resolutionContactId"], acme.bob.to_string());
    assert_eq!(resolved[0]["resolvedBy"], "alice");

    let runs = nodes(&c.ok(RUNS, json!({})).await["contactSyncRuns"]);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], acme.run.to_string());
    assert_eq!(runs[0]["run"]["type"], "contacts.sync");
    assert_eq!(
        runs[0]["tenantResults"],
        json!([{
            "runId": acme.run.to_string(), "entraTenantId": CONTOSO,
            "clientId": acme.contoso.to_string(), "created": 2, "linked": 1, "updated": 1,
            "inactivated": 1, "reactivated": 0, "queued": 2, "failedReason": null
        }])
    );

    let settings = c.ok(SETTINGS, json!({})).await["contactSyncSettings"].clone();
    assert_eq!(settings["fieldSync"], json!(["job_title"]));
    assert_eq!(settings["effectiveFieldSync"], json!(["job_title"]));
    assert!(settings["flags"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["enabled"] == true));

    // Client and Contact are nodes.
    let node = c.ok(NODE, json!({"id": acme.contoso.to_string()})).await;
    assert_eq!(
        node["node"],
        json!({"__typename": "Client", "id": acme.contoso.to_string(), "name": "Contoso"})
    );
    let node = c.ok(NODE, json!({"id": acme.alice.to_string()})).await;
    assert_eq!(node["node"]["__typename"], "Contact");
    assert_eq!(node["node"]["email"], "alice@contoso.com");

    // globex's rows exist, and acme's caller sees none of them.
    for id in [globex.contoso.to_string(), globex.alice.to_string()] {
        assert!(c.ok(NODE, json!({"id": id})).await["node"].is_null());
    }
    assert!(c.ok(CONTACT, json!({"id": globex.alice.to_string()})).await["contact"].is_null());
    let all = c.ok(CONTACTS, json!({"n": 100})).await;
    let ids: Vec<String> = nodes(&all["contacts"])
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(!ids.contains(&globex.alice.to_string()));
    let globex_reader = app.client("globex", Role::Auditor);
    let theirs = globex_reader.ok(CONTACTS, json!({"n": 100})).await;
    assert_eq!(nodes(&theirs["contacts"]).len(), 6);
    assert!(!format!("{theirs}").contains(&acme.alice.to_string()));
    app.stop().await;
}

#[tokio::test]
async fn contacts_filter_by_client_status_link_and_search_and_page_in_a_stable_order() {
    let (app, acme, _globex) = books().await;
    let c = app.client("acme", Role::Readonly);
    let names = |data: &Value| -> Vec<String> {
        nodes(&data["contacts"])
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = c.ok(CONTACTS, json!({})).await;
    // By name, case-insensitive ("carol Clark" between Bob and Dora).
    assert_eq!(
        names(&all),
        [
            "Alice Adams",
            "Bob Brown",
            "carol Clark",
            "Dora Diaz",
            "Pat Smith",
            "Sam Smith"
        ]
    );
    let fabrikam = c
        .ok(CONTACTS, json!({"c": acme.fabrikam.to_string()}))
        .await;
    assert_eq!(names(&fabrikam), ["Dora Diaz"]);
    let inactive = c.ok(CONTACTS, json!({"s": "inactive"})).await;
    assert_eq!(names(&inactive), ["carol Clark"]);
    let linked = c.ok(CONTACTS, json!({"l": true})).await;
    assert_eq!(names(&linked), ["Alice Adams", "Bob Brown", "carol Clark"]);
    let unlinked = c
        .ok(CONTACTS, json!({"l": false, "c": acme.contoso.to_string()}))
        .await;
    assert_eq!(names(&unlinked), ["Pat Smith", "Sam Smith"]);
    // Search: an email prefix, a name prefix, a word of the name; LIKE's wildcards are
    // only themselves.
    for (q, expected) in [
        ("ALICE@", vec!["Alice Adams"]),
        ("car", vec!["carol Clark"]),
        ("smith", vec!["Pat Smith", "Sam Smith"]),
        ("%", vec![]),
        ("_", vec![]),
    ] {
        let found = c.ok(CONTACTS, json!({"q": q})).await;
        assert_eq!(names(&found), expected, "search {q}");
    }
    let too_long = c.error_code(CONTACTS, json!({"q": "x".repeat(201)})).await;
    assert_eq!(too_long, "validation_failed");
    let bad_client = c.error_code(CONTACTS, json!({"c": "nope"})).await;
    assert_eq!(bad_client, "validation_failed");

    // Pages of two follow the same order to the end.
    let mut paged = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = c.ok(CONTACTS, json!({"n": 2, "a": after})).await;
        paged.extend(names(&page));
        let info = &page["contacts"]["pageInfo"];
        if info["hasNextPage"] == false {
            break;
        }
        after = info["endCursor"].clone();
    }
    assert_eq!(paged, names(&all));
    let clients_page = c.ok(CLIENTS, json!({"n": 1})).await;
    let next = clients_page["clients"]["pageInfo"]["endCursor"].clone();
    let second = c.ok(CLIENTS, json!({"n": 1, "a": next})).await;
    assert_eq!(nodes(&second["clients"])[0]["name"], "Fabrikam");
    assert_eq!(
        c.error_code(CONTACTS, json!({"a": "not-a-cursor"})).await,
        "validation_failed"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_mapping_preview_follows_the_current_clients_and_writes_nothing() {
    let (app, acme, _globex) = books().await;
    let c = app.client("acme", Role::Readonly);
    // A client gets the domain of Fabrikam's tenant: the preview auto-matches it, the
    // recorded mapping stays as it was.
    let owner = testkit::meta("acme", Role::Owner);
    let set = domain::ClientCommand::SetDomains {
        domains: vec![
            "fabrikam.com".into(),
            "fabrikamtenant.onmicrosoft.com".into(),
        ],
    };
    app.bus
        .execute::<domain::Client>(&acme.fabrikam.to_string(), set, &owner)
        .await
        .unwrap();
    caught_up(&app.pool, "contacts").await;
    let before = contact_sync_events(&app).await;

    let preview = c.ok(PREVIEW, json!({})).await["mappingPreview"].clone();
    let fabrikam = preview
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["entraTenantId"] == FABRIKAM)
        .unwrap()
        .clone();
    assert_eq!(fabrikam["currentState"], "needs_review");
    assert_eq!(fabrikam["proposal"]["state"], "auto_matched");
    assert_eq!(fabrikam["proposal"]["reason"], "domain_match");
    assert_eq!(fabrikam["proposal"]["client"]["name"], "Fabrikam");
    assert_eq!(fabrikam["mappingId"], acme.fabrikam_mapping);
    let recorded = c.ok(MAPPINGS, json!({"s": "needs_review"})).await;
    assert_eq!(nodes(&recorded["tenantMappings"]).len(), 1);
    assert_eq!(
        contact_sync_events(&app).await,
        before,
        "a preview writes nothing"
    );
    app.stop().await;
}
