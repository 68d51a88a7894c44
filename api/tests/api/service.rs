//! The service in this process (API, runtime, Graph simulator) over HTTP: what a dashboard
//! sees without the binary around it.

use domain::Role;
use serde_json::json;
use testkit::{ReadyTenant, TestApp};

#[tokio::test]
async fn the_service_answers_health_readiness_and_metrics_on_its_port() {
    let app = TestApp::start().await;
    assert!(app.url().ends_with(&format!(":{}", app.port())));
    let get = |path: &'static str| {
        let url = format!("{}{path}", app.url());
        async move {
            let r = reqwest::get(url).await.expect("a response");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tenantflow_http_requests_total"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_resync_started_over_graphql_runs_against_the_simulator_to_success() {
    let app = TestApp::start().await;
    let simulated = app.sim().tenants().remove(0);
    let (tenant, _) = ReadyTenant::simulated(&app.bus, &simulated).build().await;
    let c = app.client("acme", Role::Operator);

    let started = c
        .ok(
            "mutation($t: String!) { resyncTenant(id: $t) { runId status } }",
            json!({ "t": tenant.to_string() }),
        )
        .await["resyncTenant"]
        .clone();
    assert_eq!(started["status"], "QUEUED", "{started}");
    let q = "query($r: String!) { run(id: $r) { status outcome summaryCounts context failureSummary } }";
    let run = c
        .eventually(q, json!({ "r": started["runId"] }), |d| {
            d["run"]["status"] == "completed"
        })
        .await["run"]
        .clone();
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["summaryCounts"]["policy_count"].as_i64() > Some(0),
        "{run}"
    );
    // The row's JSON columns, parsed only when asked for.
    assert!(run["context"].is_object(), "{run}");
    assert!(run["failureSummary"].is_null(), "{run}");

    // Another workspace's token finds nothing of it.
    let globex = app.client("globex", Role::Owner);
    let theirs = globex
        .ok("{ runs { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(theirs["runs"]["edges"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_stopped_service_no_longer_answers() {
    let app = TestApp::start().await;
    let url = format!("{}/healthz", app.url());
    assert!(reqwest::get(&url).await.is_ok());
    app.stop().await;
    assert!(reqwest::get(&url).await.is_err(), "still answering");
}

#[tokio::test]
async fn an_instance_whose_read_models_wait_for_a_newer_version_is_not_ready() {
    let app = TestApp::start().await;
    let ready = || async {
        let r = reqwest::get(format!("{}/readyz", app.url()))
            .await
            .expect("a response");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    assert_eq!(ready().await.0, 200);
    // A newer version appended an event type this one does not know.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('tenant', 'acme:00000000-0000-4000-8000-000000000001', 1, 'TenantMerged', '1.0', \
                 '{\"TenantMerged\": {}}', '{\"workspace\": \"acme\"}')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Every read model of tenants stops at it (each in its own time): readiness names them.
    let tenants_named = |body: &serde_json::Value| {
        body["consumers"].as_array().is_some_and(|consumers| {
            consumers.iter().any(|c| {
                c["consumer"] == "tenants"
                    && c["why"]
                        .as_str()
                        .is_some_and(|w| w.contains("TenantMerged"))
            })
        })
    };
    let body = testkit::eventually("readiness to say why", testkit::CATCH_UP, || async {
        let (status, body) = ready().await;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 503 && tenants_named(&body)).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "not_ready");
    let metrics = reqwest::get(format!("{}/metrics", app.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenantflow_consumer_blocked{consumer=\"tenants\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_console_is_served_with_its_types_entity_tags_and_security_headers() {
    let app = TestApp::start().await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/main.js", "text/javascript; charset=utf-8"),
        ("/console/pages/runs.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = http
            .get(format!("{}{path}", app.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(
            h["content-security-policy"],
            api::security::CONTENT_SECURITY_POLICY
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        // The browser's copy is current: 304 without a body.
        let etag = h["etag"].clone();
        let again = http
            .get(format!("{}{path}", app.url()))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let missing = http
        .get(format!("{}/console/nothing.js", app.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The API's answers carry the headers too.
    let api = http
        .post(format!("{}/graphql", app.url()))
        .json(&json!({"query": "{ me { role } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(api.headers()["x-frame-options"], "DENY");
    app.stop().await;
}
