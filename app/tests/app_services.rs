//! The use cases against a real database: R1 and R2 rules that span aggregates, their
//! behaviour under concurrency, and the secret never leaking.

use app::{AppError, Started};
use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::run::{NextStep, OperationRun, RunOutcome, RunStatus};
use domain::tenant::{Tenant, TenantCommand};
use domain::{EntraTenantId, Provider, ReasonCode, Role, Services, TenantKey};
use secrecy::SecretString;
use std::sync::Arc;
use store::{CommandBus, Metrics};
use testkit::{guid, meta, owner, vault, ReadyTenant, TestDb};
use testkit::{CONTOSO, FABRIKAM, TAILSPIN};

/// A bus with connections enough for twenty concurrent callers.
async fn bus(db: &TestDb) -> CommandBus {
    CommandBus::new(db.pool_of(25).await, Services::system(), Metrics::new())
}

async fn setup(db: &TestDb) -> (CommandBus, TenantKey) {
    let bus = bus(db).await;
    let key = app::register_tenant(&bus, &owner(), guid(CONTOSO), "Contoso", "contoso.com")
        .await
        .unwrap();
    (bus, key)
}

/// A tenant with a connection that has a credential and consent.
async fn ready(db: &TestDb) -> (CommandBus, TenantKey, domain::ConnectionId) {
    let bus = bus(db).await;
    let (key, c) = ReadyTenant::new(&bus, CONTOSO).build().await;
    (bus, key, c)
}

async fn count(bus: &CommandBus, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(bus.pool()).await.unwrap()
}

#[tokio::test]
async fn a_tenant_id_that_is_not_a_guid_is_refused_before_anything_is_written() {
    let err = "contoso.onmicrosoft.com"
        .parse::<EntraTenantId>()
        .unwrap_err();
    assert!(err.to_string().contains("GUID"));
}

#[tokio::test]
async fn the_first_connection_is_the_default_and_duplicates_are_refused() {
    let db = TestDb::new().await;
    let (bus, key) = setup(&db).await;
    let c1 = app::create_connection(
        &bus,
        &owner(),
        &key,
        Provider::Microsoft,
        guid(CONTOSO),
        "Main",
    )
    .await
    .unwrap();
    let c2 = app::create_connection(
        &bus,
        &owner(),
        &key,
        Provider::Microsoft,
        guid(TAILSPIN),
        "Second",
    )
    .await
    .unwrap();
    let t = bus
        .load::<Tenant>(&key.to_string())
        .await
        .unwrap()
        .aggregate;
    assert_eq!(t.default_connection(Provider::Microsoft), Some(c1));
    assert!(
        bus.load::<ProviderConnection>(&c1.to_string())
            .await
            .unwrap()
            .aggregate
            .is_default
    );
    assert!(
        !bus.load::<ProviderConnection>(&c2.to_string())
            .await
            .unwrap()
            .aggregate
            .is_default
    );

    let before = count(&bus, "SELECT count(*) FROM events").await;
    let err = app::create_connection(
        &bus,
        &owner(),
        &key,
        Provider::Microsoft,
        guid(TAILSPIN),
        "Again",
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::AlreadyExists);
    assert_eq!(
        count(&bus, "SELECT count(*) FROM events").await,
        before,
        "a refusal writes nothing"
    );
}

#[tokio::test]
async fn concurrent_make_default_leaves_exactly_one_default() {
    let db = TestDb::new().await;
    let (bus, key) = setup(&db).await;
    let mut ids = Vec::new();
    for (g, n) in [(CONTOSO, "A"), (TAILSPIN, "B"), (FABRIKAM, "C")] {
        ids.push(
            app::create_connection(&bus, &owner(), &key, Provider::Microsoft, guid(g), n)
                .await
                .unwrap(),
        );
    }
    let bus = Arc::new(bus);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let bus = bus.clone();
            let id = ids[i % 3];
            tokio::spawn(async move { app::make_default(&bus, &owner(), id).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let t = bus
        .load::<Tenant>(&key.to_string())
        .await
        .unwrap()
        .aggregate;
    let mut defaults = Vec::new();
    for id in &ids {
        if bus
            .load::<ProviderConnection>(&id.to_string())
            .await
            .unwrap()
            .aggregate
            .is_default
        {
            defaults.push(*id);
        }
    }
    assert_eq!(defaults.len(), 1, "exactly one default connection");
    assert_eq!(t.default_connection(Provider::Microsoft), Some(defaults[0]));
}

#[tokio::test]
async fn twenty_concurrent_starts_for_one_scope_yield_exactly_one_run() {
    let db = TestDb::new().await;
    let (bus, key, _) = ready(&db).await;
    let bus = Arc::new(bus);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (bus, key) = (bus.clone(), key.clone());
            tokio::spawn(async move {
                app::start_operation(&bus, &owner(), &key, "policy.resync", "policies").await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let queued: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Started::Queued(_)))
        .collect();
    assert_eq!(queued.len(), 1, "{results:?}");
    let run = queued[0].run_id();
    assert!(
        results.iter().all(|r| r.run_id() == run),
        "every caller got the one active run"
    );
    assert_eq!(
        count(
            &bus,
            "SELECT count(*) FROM events WHERE event_type = 'RunQueued'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn concurrent_starts_of_different_types_admit_one_and_name_it_to_the_others() {
    let db = TestDb::new().await;
    let (bus, key, _) = ready(&db).await;
    let bus = Arc::new(bus);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (bus, key) = (bus.clone(), key.clone());
            let ty = if i % 2 == 0 {
                "policy.resync"
            } else {
                "license.refresh"
            };
            tokio::spawn(async move { app::start_operation(&bus, &owner(), &key, ty, "m").await })
        })
        .collect();
    let mut runs = std::collections::BTreeSet::new();
    let mut busy = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => {
                runs.insert(s.run_id());
            }
            Err(AppError::ScopeBusy { active_run_id, .. }) => {
                busy += 1;
                runs.insert(active_run_id);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(runs.len(), 1, "one active run, named to every caller");
    assert!(busy > 0);
    assert_eq!(
        count(
            &bus,
            "SELECT count(*) FROM events WHERE event_type = 'RunQueued'"
        )
        .await,
        1
    );
}

/// Starts a resync that must be blocked; its reason and the next steps it recorded.
async fn blocked_start(bus: &CommandBus, key: &TenantKey) -> (ReasonCode, Vec<NextStep>) {
    let started = app::start_operation(bus, &owner(), key, "policy.resync", "policies")
        .await
        .unwrap();
    let Started::Blocked(run_id, reason) = started else {
        panic!("expected blocked, got {started:?}")
    };
    let run = bus
        .load::<OperationRun>(&run_id.to_string())
        .await
        .unwrap()
        .aggregate;
    assert_eq!(
        (run.status, run.outcome, run.blocked_reason),
        (RunStatus::Completed, RunOutcome::Blocked, Some(reason))
    );
    (reason, run.next_steps)
}

#[tokio::test]
async fn a_tenant_that_is_not_ready_gets_a_blocked_run_with_the_next_step_to_take() {
    let db = TestDb::new().await;
    let (bus, key) = setup(&db).await;
    assert_eq!(
        blocked_start(&bus, &key).await,
        (
            ReasonCode::ProviderConnectionMissing,
            vec![NextStep::AddConnection]
        )
    );
    // A blocked run holds no scope: a real start can follow once fixed.
    let c = app::create_connection(
        &bus,
        &owner(),
        &key,
        Provider::Microsoft,
        guid(CONTOSO),
        "G",
    )
    .await
    .unwrap();
    assert_eq!(
        blocked_start(&bus, &key).await,
        (
            ReasonCode::ProviderCredentialMissing,
            vec![NextStep::SetCredential]
        )
    );
    app::set_credential(
        &bus,
        &vault(),
        &owner(),
        c,
        "client",
        &SecretString::from("x".to_owned()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        blocked_start(&bus, &key).await,
        (
            ReasonCode::ProviderConsentMissing,
            vec![NextStep::GrantConsent]
        )
    );
    let consent = ConnectionCommand::GrantConsent {
        scopes: vec!["Policy.Read.All".into()],
    };
    app::change_connection(&bus, &owner(), c, consent)
        .await
        .unwrap();
    app::change_connection(&bus, &owner(), c, ConnectionCommand::Disable)
        .await
        .unwrap();
    assert_eq!(
        blocked_start(&bus, &key).await,
        (
            ReasonCode::ProviderConnectionDisabled,
            vec![NextStep::EnableConnection]
        )
    );
}

#[tokio::test]
async fn cancelling_a_queued_run_frees_its_scope() {
    let db = TestDb::new().await;
    let (bus, key, _) = ready(&db).await;
    let first = app::start_operation(&bus, &owner(), &key, "policy.resync", "p")
        .await
        .unwrap();
    let op = meta("acme", Role::Operator);
    let run = app::cancel_run(&bus, &op, first.run_id()).await.unwrap();
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    let second = app::start_operation(&bus, &owner(), &key, "license.refresh", "l")
        .await
        .unwrap();
    assert!(matches!(second, Started::Queued(_)));
}

#[tokio::test]
async fn roles_are_enforced_and_refusals_write_nothing() {
    let db = TestDb::new().await;
    let (bus, key, c) = ready(&db).await;
    let before = count(&bus, "SELECT count(*) FROM events").await;
    let vault_before = count(&bus, "SELECT count(*) FROM credential_vault").await;
    let readonly = meta("acme", Role::Readonly);
    let operator = meta("acme", Role::Operator);

    let e = app::create_connection(
        &bus,
        &operator,
        &key,
        Provider::Microsoft,
        guid(TAILSPIN),
        "x",
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::Forbidden);
    let e = app::set_credential(
        &bus,
        &vault(),
        &operator,
        c,
        "id",
        &SecretString::from("s".to_owned()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::Forbidden);
    let e = app::make_default(&bus, &operator, c).await.unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::Forbidden);
    let e = app::start_operation(&bus, &readonly, &key, "policy.resync", "p")
        .await
        .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::Forbidden);
    let e = app::register_tenant(&bus, &operator, guid(TAILSPIN), "X", "x.example")
        .await
        .unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::Forbidden);

    assert_eq!(count(&bus, "SELECT count(*) FROM events").await, before);
    assert_eq!(
        count(&bus, "SELECT count(*) FROM credential_vault").await,
        vault_before
    );
    // An operator may start operations.
    assert!(
        app::start_operation(&bus, &operator, &key, "policy.resync", "p")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn another_workspace_finds_none_of_our_objects_and_changes_nothing() {
    let db = TestDb::new().await;
    let (bus, key, c) = ready(&db).await;
    let run = app::start_operation(&bus, &owner(), &key, "policy.resync", "p")
        .await
        .unwrap()
        .run_id();
    let schedule = app::set_schedule(&bus, &owner(), "policy.resync", 60, true, None)
        .await
        .unwrap();
    let before = count(&bus, "SELECT count(*) FROM events").await;
    let intruder = meta("evil", Role::Owner);
    let not_found = |result: Result<(), AppError>| match result {
        Err(AppError::NotFound(what)) => what,
        other => panic!("expected not found, got {other:?}"),
    };
    let secret = SecretString::from("s".to_owned());
    let answers = [
        not_found(
            app::start_operation(&bus, &intruder, &key, "policy.resync", "p")
                .await
                .map(drop),
        ),
        not_found(app::change_tenant(&bus, &intruder, &key, TenantCommand::Archive).await),
        not_found(
            app::create_connection(
                &bus,
                &intruder,
                &key,
                Provider::Microsoft,
                guid(TAILSPIN),
                "X",
            )
            .await
            .map(drop),
        ),
        not_found(app::make_default(&bus, &intruder, c).await),
        not_found(
            app::set_credential(&bus, &vault(), &intruder, c, "id", &secret, None)
                .await
                .map(drop),
        ),
        not_found(
            app::change_connection(&bus, &intruder, c, ConnectionCommand::Disable)
                .await
                .map(drop),
        ),
        not_found(app::cancel_run(&bus, &intruder, run).await.map(drop)),
        not_found(app::disable_schedule(&bus, &intruder, &schedule).await),
    ];
    assert_eq!(
        answers,
        [
            "tenant",
            "tenant",
            "tenant",
            "connection",
            "connection",
            "connection",
            "run",
            "schedule"
        ]
    );
    assert_eq!(count(&bus, "SELECT count(*) FROM events").await, before);
}

#[tokio::test]
async fn a_fleet_start_answers_each_tenant_as_a_single_start_would_and_repeats_start_nothing() {
    let db = TestDb::new().await;
    // Ready: Contoso. Blocked: Tailspin (no connection). Archived: Fabrikam.
    let (bus, ready_key, _) = ready(&db).await;
    let unready = app::register_tenant(&bus, &owner(), guid(TAILSPIN), "Tailspin", "tailspin.com")
        .await
        .unwrap();
    let archived = app::register_tenant(&bus, &owner(), guid(FABRIKAM), "Fabrikam", "fabrikam.com")
        .await
        .unwrap();
    app::change_tenant(&bus, &owner(), &archived, TenantCommand::Archive)
        .await
        .unwrap();
    let elsewhere = TenantKey::new("other-ws".parse().unwrap(), guid(CONTOSO));
    let ids: Vec<domain::RunId> = (0..5).map(|_| domain::RunId::new()).collect();
    let requests: Vec<app::StartRequest> =
        [&ready_key, &unready, &archived, &elsewhere, &ready_key]
            .into_iter()
            .zip(&ids)
            .map(|(tenant, id)| app::StartRequest {
                tenant: tenant.clone(),
                run_id: Some(*id),
            })
            .collect();
    let started = app::start_operations(&bus, &owner(), &requests, "policy.resync", "ca")
        .await
        .unwrap();
    assert_eq!(started.len(), 5);
    assert_eq!(started[0].as_ref().unwrap(), &Started::Queued(ids[0]));
    assert!(
        matches!(started[1], Ok(Started::Blocked(id, ReasonCode::ProviderConnectionMissing)) if id == ids[1])
    );
    assert!(
        matches!(&started[2], Err(AppError::Refused { .. })),
        "{:?}",
        started[2]
    );
    assert!(
        matches!(&started[3], Err(AppError::NotFound("tenant"))),
        "{:?}",
        started[3]
    );
    // The same tenant again in the same fleet start dedupes to the run just queued.
    assert_eq!(started[4].as_ref().unwrap(), &Started::Deduplicated(ids[0]));
    let runs = "SELECT count(*) FROM events WHERE event_type = 'RunQueued'";
    assert_eq!(count(&bus, runs).await, 2);

    // Repeating the start (a fan-out after a crash) starts nothing new.
    let again = app::start_operations(&bus, &owner(), &requests[..2], "policy.resync", "ca")
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap(), &Started::Queued(ids[0]));
    assert!(matches!(again[1], Ok(Started::Blocked(id, _)) if id == ids[1]));
    assert_eq!(count(&bus, runs).await, 2);

    // A readonly caller is refused before anything is decided.
    let readonly = meta("acme", Role::Readonly);
    let refused = app::start_operations(&bus, &readonly, &requests, "policy.resync", "ca").await;
    assert!(matches!(refused, Err(AppError::Forbidden(Role::Readonly))));
    assert_eq!(count(&bus, runs).await, 2);
}
