//! The scheduler against a real database: due schedules fan out to one run per tenant,
//! respecting dedupe; a tick fires once however many schedulers tick; a fan-out cut short
//! by a crash is completed without starting anything twice. Time is a parameter: no test
//! waits for an interval.

use app::Started;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use domain::schedule_tick::{tick_key, tick_run_id, FanOutCounts, ScheduleTick, TickCommand};
use domain::tenant::TenantCommand;
use domain::{FixedClock, Role, TenantKey};
use std::sync::Arc;
use store::{CommandBus, Metadata};
use testkit::{guid, meta, owner, ReadyTenant, SteppedConsumer, TestDb};
use testkit::{CONTOSO, FABRIKAM, NORTHWIND, TAILSPIN};
use workflows::scheduler::FAN_OUT_GRACE;
use workflows::{Pass, Scheduler};

const RESYNC: &str = "policy.resync";
const SCHEDULE: &str = "acme:policy.resync";

struct World {
    _db: TestDb,
    clock: FixedClock,
    bus: CommandBus,
    schedules: SteppedConsumer,
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
    let clock = FixedClock::at(Utc::now().trunc_subsecs(0));
    let bus = db.bus_on(&clock).await;
    let ready = [
        ReadyTenant::new(&bus, CONTOSO).build().await.0,
        ReadyTenant::new(&bus, TAILSPIN).build().await.0,
    ];
    let unconnected = app::register_tenant(&bus, &owner(), guid(FABRIKAM), "Fabrikam", "f.com")
        .await
        .unwrap();
    let (archived, _) = ReadyTenant::new(&bus, NORTHWIND).build().await;
    app::change_tenant(&bus, &owner(), &archived, TenantCommand::Archive)
        .await
        .unwrap();
    let (foreign, _) = ReadyTenant::new(&bus, CONTOSO)
        .workspace("globex")
        .build()
        .await;
    let schedules = SteppedConsumer::new(bus.pool(), Arc::new(projections::Schedules));
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

    /// Runs the schedules projection until it has read every event.
    async fn catch_up(&self) {
        self.schedules.catch_up().await
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
    let globex = meta("globex", Role::Owner);
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
