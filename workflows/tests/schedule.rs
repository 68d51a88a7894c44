//! The scheduler against a real database: due schedules fan out to one run per tenant,
//! respecting dedupe; a tick fires once however many schedulers tick; a fan-out cut short
//! by a crash is completed without starting anything twice. Time is a parameter: no test
//! waits for an interval.

use app::Started;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use domain::connection::ConnectionCommand;
use domain::schedule_tick::{tick_key, tick_run_id, FanOutCounts, ScheduleTick, TickCommand};
use domain::tenant::TenantCommand;
use domain::{FixedClock, Provider, Role, Services, TenantKey};
use secrecy::SecretString;
use std::sync::Arc;
use store::log::{ConsumerRunner, RunnerOptions};
use store::{CommandBus, Metadata, Metrics, Progress};
use testkit::{guid, TestDb};
use workflows::scheduler::FAN_OUT_GRACE;
use workflows::{Pass, Scheduler};

const RESYNC: &str = "policy.resync";
const SCHEDULE: &str = "acme:policy.resync";

fn owner() -> Metadata {
    Metadata::new("acme", "olivia", Role::Owner)
}

struct World {
    _db: TestDb,
    clock: FixedClock,
    bus: CommandBus,
    schedules: ConsumerRunner,
    /// Two tenants with a usable default connection.
    ready: [TenantKey; 2],
    /// A tenant without a connection: its runs are blocked.
    unconnected: TenantKey,
    /// An archived tenant: not part of the fleet.
    archived: TenantKey,
    /// A ready tenant of another workspace.
    foreign: TenantKey,
}

/// acme's fleet (two ready tenants, one without a connection, one archived) and a globex
/// tenant, on a bus whose clock only moves when told to.
async fn world() -> World {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let clock = FixedClock::at(Utc::now().trunc_subsecs(0));
    let bus = CommandBus::new(
        pool.clone(),
        Services::new(Arc::new(clock.clone())),
        Metrics::new(),
    );
    let ready = [
        ready_tenant(&bus, &owner(), "72f988bf-86f1-41af-91ab-2d7cd011db47").await,
        ready_tenant(&bus, &owner(), "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1").await,
    ];
    let unconnected = register(&bus, &owner(), "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f").await;
    let archived = ready_tenant(&bus, &owner(), "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a").await;
    app::change_tenant(&bus, &owner(), &archived, TenantCommand::Archive)
        .await
        .unwrap();
    let globex = Metadata::new("globex", "gina", Role::Owner);
    let foreign = ready_tenant(&bus, &globex, "72f988bf-86f1-41af-91ab-2d7cd011db47").await;
    let schedules = ConsumerRunner::new(
        pool,
        Arc::new(projections::Schedules),
        RunnerOptions::default(),
        Metrics::new(),
    );
    World {
        _db: db,
        clock,
        bus,
        schedules,
        ready,
        unconnected,
        archived,
        foreign,
    }
}

async fn register(bus: &CommandBus, meta: &Metadata, entra: &str) -> TenantKey {
    app::register_tenant(bus, meta, guid(entra), "Tenant", "tenant.example.com")
        .await
        .unwrap()
}

async fn ready_tenant(bus: &CommandBus, meta: &Metadata, entra: &str) -> TenantKey {
    let vault = testkit::vault();
    let key = register(bus, meta, entra).await;
    let c = app::create_connection(bus, meta, &key, Provider::Microsoft, guid(entra), "Graph")
        .await
        .unwrap();
    let secret = SecretString::from("secret".to_owned());
    app::set_credential(bus, &vault, meta, c, "client", &secret, None)
        .await
        .unwrap();
    let consent = ConnectionCommand::GrantConsent {
        scopes: vec!["Policy.Read.All".into()],
    };
    app::change_connection(bus, meta, c, consent).await.unwrap();
    key
}

impl World {
    fn now(&self) -> DateTime<Utc> {
        use domain::Clock;
        self.clock.now()
    }

    fn scheduler(&self) -> Scheduler {
        Scheduler {
            workflows: workflows::Registry::standard(),
            bus: self.bus.clone(),
            poll: std::time::Duration::from_secs(1),
        }
    }

    /// Sets acme's resync schedule (hourly unless said otherwise) and lets the read model
    /// catch up.
    async fn set_schedule(&self, interval_minutes: u32, first_run: DateTime<Utc>) {
        app::set_schedule(
            &self.bus,
            &owner(),
            RESYNC,
            interval_minutes,
            true,
            Some(first_run),
        )
        .await
        .unwrap();
        self.catch_up().await;
    }

    /// Runs the schedules projection until it has consumed every event. (Idle alone is not
    /// enough: other tests' open transactions on the shared cluster hold the log back.)
    async fn catch_up(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if self.schedules.step().await.unwrap() == Progress::Idle {
                let (consumed, total): (i64, i64) = sqlx::query_as(
                    "SELECT COALESCE((SELECT events_consumed FROM consumer_checkpoints WHERE name = 'schedules'), 0), \
                            (SELECT count(*) FROM events)",
                )
                .fetch_one(self.bus.pool())
                .await
                .unwrap();
                if consumed == total {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        panic!("the schedules projection did not catch up");
    }

    /// A pass at the clock's time, then the read model catches up.
    async fn tick(&self) -> Pass {
        let pass = self.scheduler().tick(self.now()).await.unwrap();
        self.catch_up().await;
        pass
    }

    async fn count(&self, event_type: &str) -> i64 {
        testkit::count_events(self.bus.pool(), event_type).await
    }

    /// The runs queued for `tenant`: (run id, initiator, metadata role).
    async fn runs_of(&self, tenant: &TenantKey) -> Vec<(String, String, String)> {
        sqlx::query_as(
            "SELECT aggregate_id, payload -> 'RunQueued' ->> 'initiator', metadata ->> 'role' FROM events \
             WHERE event_type = 'RunQueued' AND payload -> 'RunQueued' -> 'context' ->> 'tenant_key' = $1 \
             ORDER BY global_position",
        )
        .bind(tenant.to_string())
        .fetch_all(self.bus.pool())
        .await
        .unwrap()
    }

    async fn next_due_at(&self) -> Option<DateTime<Utc>> {
        sqlx::query_scalar("SELECT next_due_at FROM rm_schedules WHERE schedule_id = $1")
            .bind(SCHEDULE)
            .fetch_one(self.bus.pool())
            .await
            .unwrap()
    }

    async fn tick_state(&self, tick: &str) -> ScheduleTick {
        self.bus.load::<ScheduleTick>(tick).await.unwrap().aggregate
    }
}

fn counts(started: u32, deduplicated: u32, busy: u32, blocked: u32) -> FanOutCounts {
    FanOutCounts {
        started,
        deduplicated,
        busy,
        blocked,
        skipped: 0,
    }
}

#[tokio::test]
async fn a_due_schedule_starts_one_run_per_tenant_of_its_workspace_once() {
    let w = world().await;
    let due = w.now();
    w.set_schedule(60, due).await;

    let pass = w.tick().await;
    let tick = tick_key(SCHEDULE, due);
    assert_eq!(pass.fired, vec![tick.clone()]);
    assert_eq!(pass.fanned_out, vec![(tick.clone(), counts(2, 0, 0, 1))]);
    assert_eq!(pass.failed, 0);

    for tenant in &w.ready {
        let runs = w.runs_of(tenant).await;
        assert_eq!(runs.len(), 1, "{tenant}");
        let (run_id, initiator, role) = &runs[0];
        assert_eq!(run_id, &tick_run_id(&tick, tenant).to_string());
        assert_eq!(initiator, "schedule:acme:policy.resync");
        assert_eq!(role, "system");
    }
    assert_eq!(
        w.runs_of(&w.unconnected).await.len(),
        1,
        "a blocked run is recorded"
    );
    assert_eq!(w.count("RunBlocked").await, 1);
    assert!(
        w.runs_of(&w.archived).await.is_empty(),
        "archived: left out"
    );
    assert!(
        w.runs_of(&w.foreign).await.is_empty(),
        "another workspace's tenants are not touched"
    );
    assert_eq!(w.tick_state(&tick).await.fan_out, Some(counts(2, 0, 0, 1)));
    assert_eq!(w.next_due_at().await, Some(due + Duration::minutes(60)));

    // The same instant again: the tick has fired; nothing more happens.
    assert_eq!(w.tick().await, Pass::default());
    assert_eq!(w.count("RunQueued").await, 3);
}

#[tokio::test]
async fn a_tenant_with_an_active_resync_is_deduplicated_and_one_busy_with_another_type_is_counted_busy(
) {
    let w = world().await;
    let active = app::start_operation(&w.bus, &owner(), &w.ready[0], RESYNC, "ca")
        .await
        .unwrap();
    assert!(matches!(active, Started::Queued(_)));
    let other = app::start_operation(&w.bus, &owner(), &w.ready[1], "license.refresh", "lic")
        .await
        .unwrap();
    assert!(matches!(other, Started::Queued(_)));
    w.set_schedule(60, w.now()).await;

    let pass = w.tick().await;
    assert_eq!(pass.fanned_out[0].1, counts(0, 1, 1, 1));
    assert_eq!(
        w.runs_of(&w.ready[0]).await.len(),
        1,
        "the active run stands"
    );
    assert_eq!(w.runs_of(&w.ready[1]).await.len(), 1, "nothing new");
}

#[tokio::test]
async fn two_schedulers_ticking_at_once_fire_once_and_start_each_run_once() {
    let w = world().await;
    w.set_schedule(60, w.now()).await;

    let (a, b) = (w.scheduler(), w.scheduler());
    let (a, b) = tokio::join!(a.tick(w.now()), b.tick(w.now()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.fired.len() + b.fired.len(), 1, "{a:?} {b:?}");
    assert_eq!(a.fanned_out.len() + b.fanned_out.len(), 1);
    assert_eq!(a.failed + b.failed, 0);
    assert_eq!(w.count("ScheduleFired").await, 1);
    assert_eq!(w.count("ScheduleFannedOut").await, 1);
    assert_eq!(w.count("RunQueued").await, 3);
}

#[tokio::test]
async fn a_tick_fired_without_its_fan_out_is_fanned_out_again_without_duplicate_runs() {
    let w = world().await;
    let due = w.now();
    w.set_schedule(60, due).await;
    // A scheduler fires the tick and starts the first tenant's run, then dies.
    let tick = tick_key(SCHEDULE, due);
    let system = Metadata::new("acme", "schedule:acme:policy.resync", Role::System);
    let fire = TickCommand::Fire {
        workspace: "acme".parse().unwrap(),
        schedule_id: SCHEDULE.into(),
        run_type: RESYNC.into(),
        due_at: due,
    };
    w.bus
        .execute::<ScheduleTick>(&tick, fire, &system)
        .await
        .unwrap();
    let first = tick_run_id(&tick, &w.ready[0]);
    let started = app::start_operation_with_id(&w.bus, &system, &w.ready[0], RESYNC, "ca", first)
        .await
        .unwrap();
    assert_eq!(started, Started::Queued(first));
    w.catch_up().await;

    // Within the grace period the fan-out may still be under way elsewhere.
    assert_eq!(w.tick().await, Pass::default());

    w.clock.advance(FAN_OUT_GRACE + Duration::seconds(1));
    let pass = w.tick().await;
    assert!(pass.fired.is_empty(), "the tick fired before");
    assert_eq!(pass.fanned_out, vec![(tick.clone(), counts(2, 0, 0, 1))]);
    assert_eq!(w.runs_of(&w.ready[0]).await.len(), 1, "no second run");
    assert_eq!(w.runs_of(&w.ready[1]).await.len(), 1);
    assert_eq!(w.count("RunQueued").await, 3);
    assert!(!w.tick_state(&tick).await.needs_fan_out());

    assert_eq!(w.tick().await, Pass::default(), "done once and for all");
}

#[tokio::test]
async fn a_schedule_that_is_not_due_yet_fires_nothing_until_it_is() {
    let w = world().await;
    let first_run = w.now() + Duration::minutes(10);
    w.set_schedule(60, first_run).await;

    assert_eq!(w.tick().await, Pass::default());
    assert_eq!(w.count("ScheduleFired").await, 0);

    w.clock.advance(Duration::minutes(10));
    assert_eq!(w.tick().await.fired, vec![tick_key(SCHEDULE, first_run)]);
}

#[tokio::test]
async fn a_disabled_schedule_fires_nothing_even_before_the_read_model_knows() {
    let w = world().await;
    w.set_schedule(60, w.now()).await;
    // Disabled after the read model listed it as due: the schedule's stream decides.
    app::disable_schedule(&w.bus, &owner(), SCHEDULE)
        .await
        .unwrap();
    let pass = w.scheduler().tick(w.now()).await.unwrap();
    assert_eq!(pass, Pass::default());
    w.catch_up().await;
    assert_eq!(w.next_due_at().await, None);
    w.clock.advance(Duration::hours(5));
    assert_eq!(w.tick().await, Pass::default());
    assert_eq!(w.count("ScheduleFired").await, 0);
    assert_eq!(w.count("RunQueued").await, 0);
}

#[tokio::test]
async fn after_downtime_a_schedule_fires_once_not_once_per_missed_interval() {
    let w = world().await;
    let first = w.now();
    w.set_schedule(60, first).await;
    assert_eq!(w.tick().await.fired.len(), 1);

    w.clock.advance(Duration::minutes(5 * 60 + 20));
    let pass = w.tick().await;
    let latest = first + Duration::hours(5);
    assert_eq!(pass.fired, vec![tick_key(SCHEDULE, latest)]);
    // The first tick's runs are still queued (no engine runs here): they stand.
    assert_eq!(pass.fanned_out[0].1, counts(0, 2, 0, 1));
    assert_eq!(w.count("ScheduleFired").await, 2);
    assert_eq!(w.next_due_at().await, Some(first + Duration::hours(6)));
    assert_eq!(w.tick().await, Pass::default());
}

#[tokio::test]
async fn starting_with_an_id_that_names_a_run_returns_that_run_as_first_started() {
    let w = world().await;
    let id = domain::RunId::new();
    let first = app::start_operation_with_id(&w.bus, &owner(), &w.unconnected, RESYNC, "ca", id)
        .await
        .unwrap();
    assert!(
        matches!(first, Started::Blocked(r, _) if r == id),
        "{first:?}"
    );
    let again = app::start_operation_with_id(&w.bus, &owner(), &w.unconnected, RESYNC, "ca", id)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(w.runs_of(&w.unconnected).await.len(), 1);
    // Another workspace cannot reach it by its id.
    let globex = Metadata::new("globex", "gina", Role::Owner);
    let foreign = app::start_operation_with_id(&w.bus, &globex, &w.foreign, RESYNC, "ca", id).await;
    assert!(
        matches!(foreign, Err(app::AppError::NotFound("run"))),
        "{foreign:?}"
    );
}

#[tokio::test]
async fn an_archived_tenant_refuses_new_operations() {
    let w = world().await;
    let refused = app::start_operation(&w.bus, &owner(), &w.archived, RESYNC, "ca").await;
    let Err(e) = refused else {
        panic!("started on an archived tenant: {refused:?}")
    };
    assert_eq!(e.reason_code(), domain::ReasonCode::InvalidTransition);
    assert!(w.runs_of(&w.archived).await.is_empty());
}
