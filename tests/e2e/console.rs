//! The operator console in a real headless Chromium, against the real binary running the
//! demo (its own Graph simulator, the demo workspace's tenants, runs, contacts and mail).

use std::path::PathBuf;

use domain::Role;
use serde_json::{json, Value};
use testkit::Browser;

use crate::common::{shared, Server};

/// The binary with the demo on a fresh database, and the demo simulator's base URL.
struct Demo {
    server: Server,
    sim: String,
    _db: testkit::TestDb,
}

impl Demo {
    async fn start() -> Self {
        let turn = shared().await;
        let db = testkit::TestDb::new().await;
        let dir = std::env::temp_dir()
            .join(format!("tenantflow-e2e-{}", uuid::Uuid::new_v4().simple()))
            .to_string_lossy()
            .to_string();
        let url = db.url();
        let mut server = tokio::task::spawn_blocking(move || {
            Server::start(
                &["--data-dir", &dir],
                &[
                    ("DATABASE_URL", url.as_str()),
                    ("TENANTFLOW_JWT_SECRET", testkit::JWT_SECRET),
                    ("TENANTFLOW_VAULT_KEY", testkit::VAULT_KEY),
                    ("TENANTFLOW_DEMO", "true"),
                    ("TENANTFLOW_DEMO_TENANTS", "3"),
                ],
            )
        })
        .await
        .expect("the server starts");
        server.turn = Some(turn);
        // The demo logs where its simulator listens (`graph_base=http://.../graph/v1.0/`).
        let sim = server
            .log_text()
            .lines()
            .find_map(|l| l.split("graph_base=").nth(1))
            .and_then(|rest| rest.split("/graph").next())
            .map(str::to_owned)
            .expect("the demo logs its simulator's address");
        let demo = Self {
            server,
            sim,
            _db: db,
        };
        demo.settled().await;
        demo
    }

    fn url(&self) -> &str {
        &self.server.base_url
    }

    fn client(&self, role: Role) -> testkit::GraphqlClient {
        self.server.client("demo", role)
    }

    /// Waits until the demo's resyncs and first contact sync have ended.
    async fn settled(&self) {
        let q = "{ runs(first: 50) { edges { node { type outcome } } } }";
        self.client(Role::Readonly)
            .eventually(q, json!({}), |d| {
                let succeeded = |t: &str| crate::common::graphql::succeeded_runs(d, t);
                succeeded("policy.resync") == 3 && succeeded("contacts.sync") == 1
            })
            .await;
    }

    /// The demo's tenants: (tenant id, Entra tenant id), by display name.
    async fn tenants(&self) -> Vec<(String, String)> {
        let d = self
            .client(Role::Readonly)
            .ok(
                "{ tenants(first: 10) { edges { node { id entraTenantId displayName } } } }",
                json!({}),
            )
            .await;
        let mut tenants: Vec<(String, String, String)> = d["tenants"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let n = &e["node"];
                (
                    n["displayName"].as_str().unwrap().to_owned(),
                    n["id"].as_str().unwrap().to_owned(),
                    n["entraTenantId"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        tenants.sort();
        tenants.into_iter().map(|(_, id, e)| (id, e)).collect()
    }

    /// Makes the simulator answer `tenant`'s policy reads slowly once, so a resync of it
    /// is seen under way.
    async fn slow_policies(&self, entra: &str) {
        let fault = json!({"tenant": entra, "endpoint": "list_conditional_access_policies",
            "fault": {"kind": "slow", "delay_ms": 1500}, "times": 1});
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/faults", self.sim))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// An admin changes a policy in the portal: its first policy's state flips.
    async fn portal_edit(&self, entra: &str) -> (String, String) {
        let http = reqwest::Client::new();
        let url = format!("{}/_sim/tenants/{entra}/policies", self.sim);
        let policies: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let mut policy = policies
            .as_array()
            .and_then(|p| p.first())
            .cloned()
            .expect("the simulated tenant has a policy");
        let before = policy["state"].as_str().unwrap().to_owned();
        let after = if before == "disabled" {
            "enabled"
        } else {
            "disabled"
        };
        policy["state"] = json!(after);
        let r = http.post(&url).json(&policy).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        (before, after.to_owned())
    }
}

/// Signs in by pasting `token` and waits for the tenants page.
async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await;
    browser.find("#token").await.send_keys(token).await.unwrap();
    browser.click("form.signin button[type=submit]").await;
    rendered(browser, "tenants").await;
}

/// Waits until the console says it rendered `page`.
async fn rendered(browser: &Browser, page: &str) {
    browser
        .wait_until(
            &format!("the {page} page is rendered"),
            &format!("return document.body.dataset.rendered === '{page}'"),
        )
        .await;
}

/// Opens `#/<route>` in the same document (no reload) and waits for `page` to render.
async fn open(browser: &Browser, route: &str, page: &str) {
    browser
        .eval(&format!(
            "document.body.dataset.rendered = ''; location.hash = '#/{route}'; return true"
        ))
        .await;
    rendered(browser, page).await;
}

/// Fails when the page requested anything from another origin.
async fn only_own_origin(browser: &Browser, base: &str, page: &str) {
    let foreign = browser.foreign_requests(base).await;
    assert!(
        foreign.is_empty(),
        "the {page} page requested other origins: {foreign:?}"
    );
}

/// Where the screenshots go: `docs/console/` when `UPDATE_CONSOLE_SCREENSHOTS=1` (to refresh
/// the committed ones), else the test's scratch directory.
fn screenshot_path(name: &str) -> PathBuf {
    let dir = if std::env::var_os("UPDATE_CONSOLE_SCREENSHOTS").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")
    };
    dir.join(format!("{name}.png"))
}

/// Fails when the page shows a refusal or an error (the owner sees everything).
async fn no_problem(browser: &Browser, page: &str) {
    if browser.has("[data-problem]").await {
        panic!("the {page} page shows a problem:\n{}", browser.text().await);
    }
}

/// Reports the page load figures (they are measured, not asserted: machines differ).
#[allow(clippy::print_stderr)]
fn report_timing(page: &str, timing: &Value) {
    eprintln!("console page load ({page}, ms since navigation start): {timing}");
}

/// Whether the document that `mark_document` marked is still the one shown (no reload).
async fn same_document(browser: &Browser) -> bool {
    browser
        .eval("return window.tenantflowTestMark === true")
        .await
        == json!(true)
}

async fn mark_document(browser: &Browser) {
    browser
        .eval("window.tenantflowTestMark = true; return true")
        .await;
}

#[tokio::test]
async fn console_signs_in_lists_the_demo_tenants_and_follows_a_resync_live() {
    let demo = Demo::start().await;
    let base = demo.url().to_owned();
    let tenants = demo.tenants().await;
    let browser = Browser::start(1280, 900).await;
    sign_in(&browser, &base, &testkit::token("demo", Role::Owner)).await;
    let rows = browser
        .eval("return document.querySelectorAll('#tenant-list tr[data-tenant]').length")
        .await;
    assert_eq!(rows, json!(3), "{}", browser.text().await);
    only_own_origin(&browser, &base, "tenants").await;

    // A fresh load of the page with the token in session storage: Navigation Timing.
    browser.goto(&format!("{base}/")).await;
    rendered(&browser, "tenants").await;
    let timing = browser.navigation_timing().await;
    report_timing("tenants", &timing);
    assert!(timing["rendered"].is_number(), "{timing}");
    browser.screenshot(&screenshot_path("tenants")).await;

    // Resync the first tenant from its row: the run's page follows it to success live.
    mark_document(&browser).await;
    let (tenant, entra) = &tenants[0];
    demo.slow_policies(entra).await;
    browser
        .click(&format!(
            "tr[data-tenant=\"{tenant}\"] button[data-action=resync]"
        ))
        .await;
    // The run's page shows it once the read model has it (the subscription says when). Read
    // in one script: the element is redrawn as the run moves, so a handle found first can
    // be stale by the time its attribute is asked for.
    browser
        .wait_until(
            "the run's page shows its outcome",
            "return document.querySelector('#run-outcome [data-status]') !== null",
        )
        .await;
    let first = browser
        .eval("return document.querySelector('#run-outcome [data-status]').getAttribute('data-status')")
        .await;
    assert_eq!(
        first,
        json!("pending"),
        "the run is under way when its page opens"
    );
    browser
        .wait_until(
            "the run turns succeeded",
            "return document.querySelector('#run-outcome [data-status=succeeded]') !== null",
        )
        .await;
    assert!(same_document(&browser).await, "no reload");
    browser
        .wait_until(
            "the timeline shows the run's end",
            "return document.querySelector('#timeline li[data-type=RunSucceeded]') !== null",
        )
        .await;
    let steps = browser
        .eval("return document.querySelectorAll('#timeline li').length")
        .await;
    assert!(
        steps.as_u64().unwrap() >= 3,
        "queued, started, steps, end: {steps}"
    );
    only_own_origin(&browser, &base, "run").await;
    browser.screenshot(&screenshot_path("run")).await;

    // The run list: a resync started elsewhere appears and turns succeeded, live.
    open(&browser, "runs", "runs").await;
    browser
        .wait_until(
            "the run list is subscribed",
            "return document.querySelector('.live[data-state=live]') !== null",
        )
        .await;
    let (other, other_entra) = &tenants[1];
    demo.slow_policies(other_entra).await;
    let run = demo
        .client(Role::Operator)
        .ok(
            "mutation($t: String!) { resyncTenant(id: $t) { runId } }",
            json!({"t": other}),
        )
        .await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .wait_until(
            "the new run appears in the list",
            &format!("return document.querySelector('tr[data-run=\"{run}\"]') !== null"),
        )
        .await;
    browser
        .wait_until(
            "the new run turns succeeded in the list",
            &format!(
                "return document.querySelector('tr[data-run=\"{run}\"][data-outcome=succeeded]') !== null"
            ),
        )
        .await;
    assert!(same_document(&browser).await, "no reload");
    assert!(browser.has("#runs-chart svg rect.bar.succeeded").await);
    only_own_origin(&browser, &base, "runs").await;
    browser.screenshot(&screenshot_path("runs")).await;
    browser.close().await;
}

#[tokio::test]
async fn console_shows_a_snapshot_diff_after_a_portal_edit_and_resolves_a_reconciliation_item() {
    let demo = Demo::start().await;
    let base = demo.url().to_owned();
    let (tenant, entra) = demo.tenants().await.remove(0);
    let (before, after) = demo.portal_edit(&entra).await;
    let owner = demo.client(Role::Owner);
    let run = owner
        .ok(
            "mutation($t: String!) { resyncTenant(id: $t) { runId } }",
            json!({"t": tenant}),
        )
        .await["resyncTenant"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::common::graphql::completed_run(&owner, &run).await;

    let browser = Browser::start(1280, 900).await;
    sign_in(&browser, &base, &testkit::token("demo", Role::Owner)).await;
    open(
        &browser,
        &format!("tenants/{}", tenant.replace(':', "%3A")),
        "tenant",
    )
    .await;
    only_own_origin(&browser, &base, "tenant").await;
    browser.click("button[data-action=diff]").await;
    rendered(&browser, "diff").await;
    let cells = browser
        .eval(
            "const r = document.querySelector('#diff tr[data-field=state]');
             return r ? [...r.cells].map(c => c.innerText) : null",
        )
        .await;
    assert_eq!(
        cells[2],
        json!(format!("\"{before}\"")),
        "before, side by side: {cells}"
    );
    assert_eq!(cells[3], json!(format!("\"{after}\"")), "after: {cells}");
    browser.screenshot(&screenshot_path("tenant-diff")).await;

    // The demo's first contact sync queued one person to reconcile.
    open(&browser, "contacts", "contacts").await;
    only_own_origin(&browser, &base, "contacts").await;
    no_problem(&browser, "contacts").await;
    browser.screenshot(&screenshot_path("contacts")).await;
    browser
        .click("#reconciliation tr[data-item] button[data-action=create_new]")
        .await;
    browser
        .wait_until(
            "the item is resolved",
            "return document.querySelector('#reconciliation tr[data-resolved=created_new]') !== null",
        )
        .await;
    // The read model catches up with the decision (it is written behind the log).
    owner
        .eventually(
            "{ reconciliationItems(status: open) { edges { node { id } } } }",
            json!({}),
            |d| d["reconciliationItems"]["edges"] == json!([]),
        )
        .await;

    // Mail, events (with the chain's status) and the query page load, from this origin only.
    for (route, page) in [("mail", "mail"), ("events", "events"), ("query", "query")] {
        open(&browser, route, page).await;
        only_own_origin(&browser, &base, page).await;
        no_problem(&browser, page).await;
        browser.screenshot(&screenshot_path(page)).await;
        if page == "events" {
            assert!(
                browser.has("#chain[data-chain]").await,
                "the chain's status"
            );
        }
    }
    browser.close().await;
}

#[tokio::test]
async fn console_for_a_readonly_token_shows_no_action_and_the_api_refuses_one() {
    let demo = Demo::start().await;
    let base = demo.url().to_owned();
    let (tenant, _) = demo.tenants().await.remove(0);
    // A phone-sized window in dark mode.
    let browser = Browser::start_with(
        420,
        800,
        &[
            "--force-dark-mode",
            "--blink-settings=preferredColorScheme=0",
        ],
    )
    .await;

    // A token that is not one is refused on the sign-in page.
    browser.goto(&format!("{base}/")).await;
    browser
        .find("#token")
        .await
        .send_keys("not-a-token")
        .await
        .unwrap();
    browser.click("form.signin button[type=submit]").await;
    browser.find("[data-problem=signin]").await;

    // An expired one says so.
    let expired =
        api::auth::Authenticator::new(&secrecy::SecretString::from(testkit::JWT_SECRET.to_owned()))
            .mint("ann", "demo", Role::Owner, chrono::Duration::hours(-1))
            .unwrap();
    browser.goto(&format!("{base}/")).await;
    browser
        .find("#token")
        .await
        .send_keys(&expired)
        .await
        .unwrap();
    browser.click("form.signin button[type=submit]").await;
    let notice = browser
        .find("[data-problem=signin]")
        .await
        .text()
        .await
        .unwrap();
    assert!(notice.contains("expired"), "{notice}");

    sign_in(&browser, &base, &testkit::token("demo", Role::Readonly)).await;
    assert!(!browser.has("button[data-action]").await, "no resync");
    let run = demo
        .client(Role::Readonly)
        .ok("{ runs(first: 1) { edges { node { id } } } }", json!({}))
        .await["runs"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    open(&browser, &format!("runs/{run}"), "run").await;
    assert!(
        !browser.has("button[data-action]").await,
        "no cancel or retry"
    );
    open(&browser, "contacts", "contacts").await;
    assert!(!browser.has("button[data-action]").await, "no resolve");
    let dark = browser
        .eval("return matchMedia('(prefers-color-scheme: dark)').matches")
        .await;
    assert_eq!(dark, json!(true), "the window prefers dark");
    browser
        .screenshot(&screenshot_path("narrow-dark-readonly"))
        .await;

    // ... and the API refuses what the buttons would have done.
    let refused = demo
        .client(Role::Readonly)
        .error_code(
            "mutation($t: String!) { resyncTenant(id: $t) { runId } }",
            json!({"t": tenant}),
        )
        .await;
    assert_eq!(refused, "forbidden");

    // The policy holds: a script's request to another origin is blocked and reported,
    // and the origin check sees the attempt (the check can fail).
    only_own_origin(&browser, &base, "contacts").await;
    browser
        .eval(
            "window.blocked = [];
             document.addEventListener('securitypolicyviolation', e => window.blocked.push(e.blockedURI));
             const img = document.createElement('img');
             img.src = 'http://127.0.0.2:9/tracker.png';
             document.body.append(img);
             return true",
        )
        .await;
    browser
        .wait_until(
            "the policy blocks another origin",
            "return window.blocked.some(u => u.startsWith('http://127.0.0.2:9'))",
        )
        .await;
    let foreign = browser.foreign_requests(&base).await;
    assert_eq!(foreign, ["http://127.0.0.2:9/tracker.png"]);
    browser.close().await;
}
