//! Filters and orders the screens need beyond the README's queries: events by actor and
//! correlation id, newest first; alerts by time.

use domain::Role;
use serde_json::{json, Value};
use testkit::TestApp;

use crate::dashboard::{completed, event_count, ready, resync};

const EVENTS: &str =
    "query($f: EventFilter, $o: EventOrder, $n: Int) { events(filter: $f, order: $o, first: $n) { \
     edges { node { globalPosition eventType metadata } } } }";
const ALERTS: &str = "query($t: String, $r: TimeRange, $a: Boolean) { alerts(tenantId: $t, raised: $r, acknowledged: $a) { \
     edges { node { snapshotId kind raisedAt acknowledgedAt acknowledgedBy } } } }";
const ACKNOWLEDGE: &str = "mutation($t: String!, $s: String!) { acknowledgeAlert(tenantId: $t, snapshotId: $s) { snapshotId } }";

fn nodes(data: &Value, field: &str) -> Vec<Value> {
    crate::dashboard::nodes(&data[field])
}

/// List pages the service has answered without async-graphql's validation and execution,
/// as its metrics count them.
async fn own_pages(app: &TestApp) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", app.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("their text");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenantflow_graphql_own_pages_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no own pages counter in {metrics}"))
}

fn positions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["globalPosition"].as_i64().expect("a position"))
        .collect()
}

#[tokio::test]
async fn events_filter_by_actor_and_correlation_id_and_list_newest_first() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let (tenant, _) = ready(&c, &app.sim().tenants().remove(0)).await;
    let run = resync(&c, &tenant).await;
    completed(&c, &run).await;
    let auditor = app.client("acme", Role::Auditor);

    // Everything the test's person did, and nothing else.
    let mine = auditor
        .ok(EVENTS, json!({"f": {"actor": "test-user"}, "n": 100}))
        .await;
    let mine = nodes(&mine, "events");
    assert!(mine.len() >= 4, "{mine:?}");
    assert!(mine.iter().all(|e| e["metadata"]["actor"] == "test-user"));
    let nobody = auditor.ok(EVENTS, json!({"f": {"actor": "nobody"}})).await;
    assert!(nodes(&nobody, "events").is_empty(), "{nobody}");

    // One request's events share its correlation id.
    let registered = &mine[0];
    let correlation = registered["metadata"]["correlation_id"].clone();
    let together = auditor
        .ok(
            EVENTS,
            json!({"f": {"correlationId": correlation}, "n": 100}),
        )
        .await;
    let together = nodes(&together, "events");
    assert!(!together.is_empty());
    assert!(together
        .iter()
        .all(|e| e["metadata"]["correlation_id"] == correlation));
    assert!(together
        .iter()
        .any(|e| e["eventType"] == "TenantRegistered"));

    // Newest first is the log's order reversed.
    let oldest = auditor.ok(EVENTS, json!({"n": 100})).await;
    let newest = auditor
        .ok(EVENTS, json!({"o": "NEWEST_FIRST", "n": 100}))
        .await;
    let mut reversed = positions(&nodes(&oldest, "events"));
    reversed.reverse();
    assert!(reversed.len() > 4);
    assert_eq!(positions(&nodes(&newest, "events")), reversed);
    app.stop().await;
}

#[tokio::test]
async fn alerts_filter_by_the_time_they_were_raised_and_are_acknowledged_once() {
    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let sim_tenant = app.sim().tenants().remove(0);
    let (tenant, _) = ready(&c, &sim_tenant).await;
    let first = completed(&c, &resync(&c, &tenant).await).await;
    // Someone changes a policy in the portal; the next resync finds the drift.
    let policies = app.sim().policies(sim_tenant.tenant_id).expect("policies");
    let id = policies[0]["id"].as_str().expect("a policy id");
    app.sim()
        .remove_policy(sim_tenant.tenant_id, id)
        .expect("a removed policy");
    let second = completed(&c, &resync(&c, &tenant).await).await;
    assert_eq!(second["outcome"], "succeeded", "{second}");

    let raised = c
        .eventually(
            ALERTS,
            json!({"t": tenant, "r": {"after": first["completedAt"]}}),
            |d| !nodes(d, "alerts").is_empty(),
        )
        .await;
    let alerts = nodes(&raised, "alerts");
    assert_eq!(alerts.len(), 1, "{raised}");
    assert_eq!(alerts[0]["snapshotId"], second["snapshotId"]);
    let before = c
        .ok(
            ALERTS,
            json!({"t": tenant, "r": {"before": first["completedAt"]}}),
        )
        .await;
    assert!(nodes(&before, "alerts").is_empty(), "{before}");
    let after = c
        .ok(
            ALERTS,
            json!({"t": tenant, "r": {"after": second["completedAt"]}}),
        )
        .await;
    assert!(nodes(&after, "alerts").is_empty(), "{after}");

    // Readers may not acknowledge it; an operator does, once.
    let alert = json!({"t": tenant, "s": alerts[0]["snapshotId"]});
    let before = event_count(&app).await;
    for role in [Role::Readonly, Role::Auditor] {
        let refused = app
            .client("acme", role)
            .error_code(ACKNOWLEDGE, alert.clone())
            .await;
        assert_eq!(refused, "forbidden", "{role:?}");
    }
    assert_eq!(event_count(&app).await, before);
    let operator = app.client("acme", Role::Operator);
    let done = operator.ok(ACKNOWLEDGE, alert.clone()).await;
    assert_eq!(
        done["acknowledgeAlert"]["snapshotId"],
        alerts[0]["snapshotId"]
    );
    let acknowledged = c
        .eventually(ALERTS, json!({"t": tenant, "a": true}), |d| {
            !nodes(d, "alerts").is_empty()
        })
        .await;
    let shown = &nodes(&acknowledged, "alerts")[0];
    assert_eq!(shown["acknowledgedBy"], "test-user", "{shown}");
    assert!(shown["acknowledgedAt"].is_string(), "{shown}");
    let open = c.ok(ALERTS, json!({"t": tenant, "a": false})).await;
    assert!(nodes(&open, "alerts").is_empty(), "{open}");
    assert_eq!(operator.error_code(ACKNOWLEDGE, alert).await, "not_found");
    app.stop().await;
}

const RUN: &str = "query($id: String!) { run(id: $id) { status } }";
const RUNS: &str =
    "query($f: RunFilter, $n: Int, $a: String) { runs(filter: $f, first: $n, after: $a) { \
     edges { node { id status outcome } } pageInfo { hasNextPage endCursor } } }";

/// The ids of a `runs` page, in order.
fn run_ids(data: &Value) -> Vec<String> {
    nodes(data, "runs")
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn runs_filter_on_the_status_shown_and_merge_outcomes_newest_first() {
    use domain::reason::ReasonCode;
    use domain::run::{FailureSummary, RunCommand};

    // No engines: the test records each run's life itself, as an engine would.
    let options = runtime::Options {
        workers: 0,
        ..TestApp::options()
    };
    let app = TestApp::start_with(graph::sim::SimConfig::default(), options).await;
    let (contoso, _) = testkit::ReadyTenant::new(&app.bus, testkit::CONTOSO)
        .build()
        .await;
    let (fabrikam, _) = testkit::ReadyTenant::new(&app.bus, testkit::FABRIKAM)
        .named("Fabrikam", "fabrikam.com")
        .build()
        .await;
    let failure = FailureSummary {
        reason: ReasonCode::ProviderAuthFailed,
        message: "refused".into(),
        step: None,
    };
    // Contoso's runs one after the other: failed, blocked, cancelled, then one running.
    let mut ran = Vec::new();
    for end in [
        vec![RunCommand::Start, RunCommand::Fail { failure }],
        vec![RunCommand::Block {
            reason: ReasonCode::ProviderConsentMissing,
            next_steps: vec![],
        }],
        vec![RunCommand::Start, RunCommand::Cancel],
    ] {
        let run = testkit::queued_resync(&app.bus, &contoso).await;
        testkit::record_progress(&app.bus, run, end).await;
        testkit::release_scope(&app.bus, run).await;
        ran.push(run.to_string());
    }
    let running = testkit::queued_resync(&app.bus, &contoso).await;
    testkit::record_progress(&app.bus, running, [RunCommand::Start]).await;
    let queued = testkit::queued_resync(&app.bus, &fabrikam).await;
    let [failed, blocked, cancelled] = [ran[0].as_str(), ran[1].as_str(), ran[2].as_str()];
    let (running, queued) = (running.to_string(), queued.to_string());
    let (running, queued) = (running.as_str(), queued.as_str());

    let c = app.client("acme", Role::Readonly);
    let all = c
        .eventually(RUNS, json!({"n": 10}), |d| {
            let shown = nodes(d, "runs");
            shown.len() == 5 && shown[1]["status"] == "running"
        })
        .await;
    assert_eq!(
        run_ids(&all),
        [queued, running, cancelled, blocked, failed],
        "{all}"
    );
    let listed = |filter: Value| {
        let c = &c;
        async move { run_ids(&c.ok(RUNS, json!({ "f": filter, "n": 10 })).await) }
    };

    // A list page is answered in one pass when its selection is flat (api::graphql::fast):
    // the page, its pageInfo, edges and rows. A fragment on the page sends the page
    // async-graphql's own way with its rows still flat; one on the rows sends both the own
    // way. All three answer the same, field for field, for runs in every state here.
    let page = |on_page: &str, id: &str| {
        format!(
            "{{ runs(first: 4) {{ {on_page} __typename pageInfo {{ __typename hasNextPage \
             hasPreviousPage startCursor endCursor }} more: pageInfo {{ hasNextPage }} \
             edges {{ __typename cursor node {{ __typename {id} type tenantId status outcome \
             cancelRequested initiator reasonCode queuedAt startedAt completedAt retryOf \
             again: status }} }} rows: nodes {{ {id} status }} }} }}"
        )
    };
    let flat = c.ok(&page("", "id"), json!({})).await;
    assert_eq!(nodes(&flat, "runs").len(), 4, "{flat}");
    assert_eq!(
        flat["runs"]["rows"].as_array().map(Vec::len),
        Some(4),
        "{flat}"
    );
    assert_eq!(flat["runs"]["pageInfo"]["hasNextPage"], true, "{flat}");
    for own_way in [
        page("... on RunConnection { __typename }", "id"),
        page("", "... on Run { id }"),
    ] {
        assert_eq!(flat, c.ok(&own_way, json!({})).await, "{own_way}");
    }
    let first_page = flat.clone();
    // And on the last page, whose cursors come from an `after`.
    let after = flat["runs"]["pageInfo"]["endCursor"].clone();
    let rest =
        |on_page: &str, id: &str| page(on_page, id).replace("first: 4", "first: 4, after: $a");
    let ask = |q: String| {
        let c = &c;
        let after = after.clone();
        async move {
            c.ok(&format!("query($a: String) {q}"), json!({ "a": after }))
                .await
        }
    };
    let flat = ask(rest("", "id")).await;
    assert_eq!(nodes(&flat, "runs").len(), 1, "{flat}");
    assert_eq!(flat["runs"]["pageInfo"]["hasPreviousPage"], true, "{flat}");
    assert_eq!(
        flat,
        ask(rest("... on RunConnection { __typename }", "id")).await
    );
    assert_eq!(flat, ask(rest("", "... on Run { id }")).await);

    // A page whose document async-graphql has validated (the requests above ran without
    // errors) is answered without its validation and execution (api::graphql::fast::answer):
    // the same answer, with variables and their defaults, a named operation, and an `after`.
    let own = || async { own_pages(&app).await };
    let before = own().await;
    assert_eq!(c.ok(&page("", "id"), json!({})).await, first_page);
    assert_eq!(own().await, before + 1, "answered its own way");
    let named = format!(
        "query RunsPage($n: Int = 4, $a: String) {}",
        page("", "id").replacen("runs(first: 4)", "runs(first: $n, after: $a)", 1)
    );
    let with = |vars: Value| {
        let (c, named) = (&c, &named);
        async move { c.post(named, vars).await }
    };
    // The first asks async-graphql (which validates it), the next are answered here.
    for _ in 0..2 {
        assert_eq!(with(json!({})).await["data"], first_page);
        assert_eq!(with(json!({ "a": after.clone() })).await["data"], flat);
    }
    assert_eq!(
        own().await,
        before + 4,
        "the named document, after its first time"
    );
    // Refusals are async-graphql's, word for word, whichever way the document has gone.
    let refused = with(json!({ "n": 0 })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "validation_failed",
        "{refused}"
    );
    assert_eq!(with(json!({ "n": 0 })).await, refused);
    let bad_cursor = with(json!({ "a": "not a cursor" })).await;
    assert_eq!(
        bad_cursor["errors"][0]["message"], "invalid cursor",
        "{bad_cursor}"
    );
    assert_eq!(own().await, before + 4, "no refusal is answered here");
    // And over HTTP the same: status, headers (but the date) and body.
    let text = format!("{named} ");
    let raw = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/graphql", app.url()))
            .bearer_auth(&c.token)
            .json(&json!({ "query": text, "variables": {} }))
            .send()
            .await
            .expect("an answer");
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        headers.sort();
        (
            r.status().as_u16(),
            headers,
            r.text().await.expect("a body"),
        )
    };
    let ordinary = raw().await;
    assert_eq!(
        own().await,
        before + 4,
        "a new text goes the ordinary way first"
    );
    assert_eq!(raw().await, ordinary);
    assert_eq!(own().await, before + 5);

    // The status filters find a running run by the status it shows, though its row in the
    // read model says queued until it ends.
    assert_eq!(listed(json!({"statusIn": ["running"]})).await, [running]);
    assert_eq!(listed(json!({"status": "running"})).await, [running]);
    assert_eq!(listed(json!({"statusIn": ["queued"]})).await, [queued]);
    assert_eq!(
        listed(json!({"statusIn": ["queued", "running"]})).await,
        [queued, running]
    );
    assert_eq!(
        listed(json!({"statusIn": ["completed"]})).await,
        [cancelled, blocked, failed]
    );
    // Both status filters: what both name.
    assert_eq!(
        listed(json!({"status": "queued", "statusIn": ["running"]})).await,
        Vec::<String>::new()
    );

    // Several unsuccessful outcomes are merged newest first, and page on as one list.
    let first = c
        .ok(
            RUNS,
            json!({"f": {"outcomeIn": ["failed", "blocked", "cancelled"]}, "n": 2}),
        )
        .await;
    assert_eq!(run_ids(&first), [cancelled, blocked], "{first}");
    assert_eq!(first["runs"]["pageInfo"]["hasNextPage"], true, "{first}");
    let rest = c
        .ok(
            RUNS,
            json!({"f": {"outcomeIn": ["failed", "blocked", "cancelled"]}, "n": 2,
                   "a": first["runs"]["pageInfo"]["endCursor"]}),
        )
        .await;
    assert_eq!(run_ids(&rest), [failed], "{rest}");
    assert_eq!(rest["runs"]["pageInfo"]["hasNextPage"], false, "{rest}");
    assert_eq!(
        listed(json!({"outcomeIn": ["failed", "blocked"], "tenantId": contoso.to_string()})).await,
        [blocked, failed]
    );
    assert_eq!(
        listed(json!({"outcomeIn": ["failed", "blocked"], "tenantId": fabrikam.to_string()})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(json!({"outcomeIn": ["pending"]})).await,
        [queued, running]
    );
    assert_eq!(
        listed(json!({"outcomeIn": ["succeeded", "cancelled"]})).await,
        [cancelled]
    );
    // A hostile list names the same outcomes thousands of times: each is read once.
    let many = ["failed", "blocked", "cancelled"].repeat(2_000);
    assert_eq!(
        listed(json!({ "outcomeIn": many })).await,
        [cancelled, blocked, failed]
    );
    assert_eq!(
        listed(json!({"outcomeIn": ["failed"], "statusIn": ["running"]})).await,
        Vec::<String>::new()
    );

    // The tenant list's rows likewise, with one tenant archived.
    let owner = app.client("acme", Role::Owner);
    owner
        .ok(
            "mutation($id: String!) { archiveTenant(id: $id) { id } }",
            json!({ "id": fabrikam.to_string() }),
        )
        .await;
    let tenants = |on_page: &str, id: &str| {
        format!(
            "{{ tenants(first: 10) {{ {on_page} __typename pageInfo {{ endCursor startCursor }} \
             edges {{ cursor node {{ __typename {id} entraTenantId displayName primaryDomain \
             status registeredAt archivedAt lastResyncedAt name: displayName }} }} \
             nodes {{ {id} }} }} }}"
        )
    };
    let flat = c
        .eventually(&tenants("", "id"), json!({}), |d| {
            nodes(d, "tenants")
                .iter()
                .any(|t| t["status"] == "archived")
        })
        .await;
    assert_eq!(nodes(&flat, "tenants").len(), 2, "{flat}");
    for own_way in [
        tenants("... on TenantConnection { __typename }", "id"),
        tenants("", "... on Tenant { id }"),
    ] {
        assert_eq!(flat, c.ok(&own_way, json!({})).await, "{own_way}");
    }
    // A validated tenant page, answered without async-graphql's execution; and a search.
    let before = own_pages(&app).await;
    assert_eq!(c.ok(&tenants("", "id"), json!({})).await, flat);
    assert_eq!(own_pages(&app).await, before + 1);
    let search =
        tenants("", "id").replacen("tenants(first: 10)", "tenants(first: 10, search: $s)", 1);
    let search = format!("query($s: String) {search}");
    for _ in 0..2 {
        let found = c.ok(&search, json!({ "s": "FABRIKAM" })).await;
        assert_eq!(nodes(&found, "tenants").len(), 1, "{found}");
        assert_eq!(nodes(&found, "tenants")[0]["status"], "archived", "{found}");
        assert_eq!(c.ok(&search, json!({ "s": null })).await, flat);
    }
    assert_eq!(own_pages(&app).await, before + 4);
    app.stop().await;
}

#[tokio::test]
async fn a_run_an_engine_is_running_is_listed_as_running() {
    use graph::sim::Fault;
    use graph::Endpoint;

    let app = TestApp::start().await;
    let c = app.client("acme", Role::Owner);
    let (tenant, _) = ready(&c, &app.sim().tenants().remove(0)).await;
    // The policy fetch answers slowly, so the run is still running while it is listed.
    app.sim()
        .inject(Fault::Slow { delay_ms: 3_000 }.on(Endpoint::ListConditionalAccessPolicies));
    let run = resync(&c, &tenant).await;
    // Its start is in the engine's checkpoint; its row in the read model still says queued.
    c.eventually(RUN, json!({"id": run}), |d| d["run"]["status"] == "running")
        .await;
    let listed = |filter: Value| {
        let c = &c;
        async move { run_ids(&c.ok(RUNS, json!({ "f": filter })).await) }
    };
    assert_eq!(
        listed(json!({"statusIn": ["running"]})).await,
        [run.as_str()]
    );
    assert_eq!(listed(json!({"status": "running"})).await, [run.as_str()]);
    assert_eq!(
        listed(json!({"statusIn": ["queued"]})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(json!({"outcomeIn": ["pending"]})).await,
        [run.as_str()]
    );
    app.stop().await;
}

const AUDIT: &str =
    "query($f: AuditFilter, $n: Int, $a: String) { auditLog(filter: $f, first: $n, after: $a) { \
     edges { node { globalPosition recordedAt } } pageInfo { hasNextPage endCursor } } }";

#[tokio::test]
async fn an_audit_time_window_lists_its_rows_newest_first_however_many_it_holds() {
    // No engines, no projections: the rows are written straight into the audit log, one a
    // minute for 25,000 minutes, beside another workspace's, at positions no event has.
    let options = runtime::Options {
        workers: 0,
        projections: false,
        ..TestApp::options()
    };
    let app = TestApp::start_with(graph::sim::SimConfig::default(), options).await;
    let base: chrono::DateTime<chrono::Utc> = "2024-01-01T00:00:00Z".parse().expect("a time");
    sqlx::query(
        "INSERT INTO rm_audit_log (global_position, workspace_id, recorded_at, actor, role, action, \
             aggregate_type, aggregate_id, tenant_key) \
         SELECT 10000000 + g, CASE WHEN g % 4 = 3 THEN 'other' ELSE 'acme' END, \
             $1 + g * interval '1 minute', 'system', 'system', 'RunQueued', 'OperationRun', g::text, \
             'tenant-' || (g % 3) \
         FROM generate_series(1, 25000) g",
    )
    .bind(base)
    .execute(&app.pool)
    .await
    .expect("audit rows");
    // A row that committed late: recorded at minute 100, after every other row in the log.
    sqlx::query(
        "INSERT INTO rm_audit_log (global_position, workspace_id, recorded_at, actor, role, action, \
             aggregate_type, aggregate_id, tenant_key) \
         VALUES (10030000, 'acme', $1 + interval '100 minutes 30 seconds', 'system', 'system', 'RunQueued', \
             'OperationRun', 'late', 'tenant-1')",
    )
    .bind(base)
    .execute(&app.pool)
    .await
    .expect("the late row");

    let c = app.client("acme", Role::Auditor);
    let minute = |m: i64| (base + chrono::Duration::minutes(m)).to_rfc3339();
    // Every page of a filter, by cursor, and the positions the table holds for it.
    let listed = |filter: Value| {
        let c = &c;
        async move {
            let mut shown = Vec::new();
            let mut after = Value::Null;
            loop {
                let page = c
                    .ok(AUDIT, json!({ "f": filter, "n": 100, "a": after }))
                    .await;
                let entries = nodes(&page, "auditLog");
                shown.extend(
                    entries
                        .iter()
                        .map(|e| e["globalPosition"].as_i64().expect("a position")),
                );
                let info = &page["auditLog"]["pageInfo"];
                if info["hasNextPage"] != true {
                    return shown;
                }
                after = info["endCursor"].clone();
            }
        }
    };
    let expected = |from: i64, to: i64, tenant: Option<&str>| {
        let (pool, tenant) = (&app.pool, tenant.map(str::to_owned));
        let (from, to) = (
            base + chrono::Duration::minutes(from),
            base + chrono::Duration::minutes(to),
        );
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT global_position FROM rm_audit_log WHERE workspace_id = 'acme' \
                 AND recorded_at >= $1 AND recorded_at < $2 AND ($3::text IS NULL OR tenant_key = $3) \
                 ORDER BY global_position DESC",
            )
            .bind(from)
            .bind(to)
            .bind(tenant)
            .fetch_all(pool)
            .await
            .expect("the expected rows")
        }
    };

    // A narrow window, read by itself: the late row is its newest.
    let narrow = listed(json!({"recordedAfter": minute(50), "recordedBefore": minute(150)})).await;
    assert_eq!(narrow, expected(50, 150, None).await);
    assert_eq!(
        narrow.len(),
        76,
        "75 of the 100 minutes are acme's, and the late row"
    );
    assert_eq!(narrow[0], 10030000);
    // The same window for one tenant.
    let tenant = listed(json!({
        "recordedAfter": minute(50), "recordedBefore": minute(150), "tenantId": "tenant-1"
    }))
    .await;
    assert_eq!(tenant, expected(50, 150, Some("tenant-1")).await);
    assert!(tenant.contains(&10030000) && tenant.len() < narrow.len());
    // A window of 20,000 minutes holds more rows than are read by themselves (10,000): it
    // is read in the page's order, with the same answer.
    let wide = listed(json!({"recordedAfter": minute(0), "recordedBefore": minute(20000)})).await;
    assert!(wide.len() > 10_000, "{}", wide.len());
    assert_eq!(wide, expected(0, 20000, None).await);
    // An empty window, and the other workspace's rows never.
    assert!(
        listed(json!({"recordedAfter": minute(30000), "recordedBefore": minute(40000)}))
            .await
            .is_empty()
    );
    app.stop().await;
}
