//! The task table against a real database: fed from the log, claimed once, leases expire.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use testkit::{owner, queued_resync, ReadyTenant, SteppedConsumer, TestDb, CONTOSO};
use uuid::Uuid;
use workflows::tasks::{claim, claim_with_streams, release, Claimed, TaskFeed};

/// Runs the task feed until it has read every event.
async fn feed(pool: &sqlx::PgPool) {
    SteppedConsumer::new(pool, Arc::new(TaskFeed))
        .catch_up()
        .await
}

#[tokio::test]
async fn a_queued_run_gets_a_task_and_a_cancelled_run_loses_it() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    let run = queued_resync(&bus, &tenant).await.as_uuid();
    feed(&pool).await;
    let task = claim(
        &pool,
        "runner-a",
        Duration::from_secs(30),
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .expect("a due task");
    assert_eq!(task.run_id, run);
    assert_eq!(task.run_type, "policy.resync");
    assert!(release(&pool, run, "runner-a", chrono::Utc::now())
        .await
        .unwrap());

    app::cancel_run(&bus, &owner(), domain::RunId(run))
        .await
        .unwrap();
    feed(&pool).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "a completed run needs no more work");
}

/// A queued resync of a ready tenant, its task fed and claimed by `runner-a`.
async fn claimed_resync(bus: &store::CommandBus) -> (domain::RunId, Claimed) {
    let (tenant, _) = ReadyTenant::new(bus, CONTOSO).build().await;
    let run = queued_resync(bus, &tenant).await;
    feed(bus.pool()).await;
    let claimed = claim_with_streams(
        bus.pool(),
        "runner-a",
        Duration::from_secs(30),
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .expect("a due task");
    (run, claimed)
}

/// Runner A's write of `run`'s checkpoint at `version`, without a notification.
fn checkpoint_write<'a>(
    run: domain::RunId,
    version: i32,
    progress: &'a [domain::run::RunEvent],
    releasing: Option<&'a str>,
) -> store::checkpoints::Write<'a> {
    store::checkpoints::Write {
        run_id: run,
        owner: "runner-a",
        version,
        progress,
        releasing,
        notify: None,
    }
}

/// The claim returns the run's checkpoint from the task row it takes, as a separate read
/// of it would: the engine decides on it without reading it again.
#[tokio::test]
async fn a_claim_returns_the_checkpoint_its_task_row_holds() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let (run, first) = claimed_resync(&bus).await;
    assert_eq!(first.checkpoint, store::checkpoints::Checkpoint::default());
    let started = domain::run::RunEvent::RunStarted {
        at: chrono::Utc::now(),
    };
    let mut conn = pool.acquire().await.unwrap();
    let write = checkpoint_write(run, 0, std::slice::from_ref(&started), None);
    assert!(bus.append_checkpointed(&mut [], &write).await.unwrap());
    assert!(
        release(&pool, run.as_uuid(), "runner-a", chrono::Utc::now())
            .await
            .unwrap()
    );
    let lease = Duration::from_secs(30);
    let again = claim_with_streams(&pool, "runner-b", lease, chrono::Utc::now())
        .await
        .unwrap()
        .expect("the released task");
    assert_eq!(again.task.run_id, run.as_uuid());
    let read = store::checkpoints::read(&mut conn, run).await.unwrap();
    assert_eq!(again.checkpoint, read);
    assert_eq!(again.checkpoint.progress, vec![started]);
    assert_eq!(again.checkpoint.version, 1);
}

/// The checkpoint write that ends a run frees the run's scope in the same statement; a
/// write refused for a stale version leaves the scope held (the statement rolls back).
#[tokio::test]
async fn the_checkpoint_write_that_ends_a_run_frees_its_scope_and_a_refused_one_does_not() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let (run, claimed) = claimed_resync(&bus).await;
    let held = || async {
        sqlx::query_scalar::<_, String>("SELECT lock_id FROM scope_locks WHERE run_id = $1")
            .bind(run.as_uuid())
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    let lock_id = held().await.expect("the run holds its scope");
    // A refused write takes the events decided with it back too.
    let mut streams = claimed.streams;
    let mut staged = streams
        .stage::<domain::run::OperationRun>(&run.to_string())
        .unwrap();
    let workspace = staged.state().workspace.clone().unwrap().to_string();
    let meta = store::Metadata::new(workspace, "workflow:runner-a", domain::Role::System);
    let start = domain::run::RunCommand::Start;
    staged.decide(bus.services(), start, &meta).await.unwrap();
    let logged = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(run.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = logged().await;
    let stale = checkpoint_write(run, 7, &[], Some(&lock_id));
    let refused = bus.append_checkpointed(&mut [&mut staged], &stale).await;
    assert!(!refused.unwrap(), "a stale version is refused");
    assert_eq!(staged.pending_count(), 1, "the decision is still pending");
    assert_eq!(
        logged().await,
        before,
        "nothing of the refused write is logged"
    );
    assert_eq!(held().await.as_deref(), Some(lock_id.as_str()));
    let ending = checkpoint_write(run, 0, &[], Some(&lock_id));
    assert!(bus.append_checkpointed(&mut [], &ending).await.unwrap());
    assert_eq!(held().await, None, "the scope is free");
    let version = store::checkpoints::read(&mut pool.acquire().await.unwrap(), run)
        .await
        .unwrap()
        .version;
    assert_eq!(version, 1);
}

async fn insert_tasks(pool: &sqlx::PgPool, n: usize, due_in_secs: i64) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO workflow_tasks (run_id, workspace_id, run_type, due_at) \
             VALUES ($1, 'acme', 'policy.resync', now() + make_interval(secs => $2))",
        )
        .bind(id)
        .bind(due_in_secs as f64)
        .execute(pool)
        .await
        .unwrap();
        ids.insert(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runners_never_claim_the_same_task() {
    let db = TestDb::new().await;
    let pool = db.pool_of(12).await;
    let ids = insert_tasks(&pool, 40, -1).await;
    let runners: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(t) = claim(
                    &pool,
                    &format!("runner-{i}"),
                    Duration::from_secs(60),
                    chrono::Utc::now(),
                )
                .await
                .unwrap()
                {
                    mine.push(t.run_id);
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for r in runners {
        claimed.extend(r.await.unwrap());
    }
    let unique: BTreeSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "no task was claimed twice");
    assert_eq!(unique, ids, "every task was claimed");
}

#[tokio::test]
async fn a_task_is_not_claimed_before_it_is_due() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    insert_tasks(&pool, 1, 3600).await;
    assert!(claim(
        &pool,
        "runner-a",
        Duration::from_secs(30),
        chrono::Utc::now()
    )
    .await
    .unwrap()
    .is_none());
}

#[tokio::test]
async fn an_expired_lease_is_claimed_by_another_runner_and_the_old_holder_cannot_release_it() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let ids = insert_tasks(&pool, 1, -1).await;
    let id = *ids.iter().next().unwrap();
    let first = claim(
        &pool,
        "crashed",
        Duration::from_secs(30),
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(first.run_id, id);
    // While the lease holds, nobody else gets the task.
    assert!(
        claim(&pool, "other", Duration::from_secs(30), chrono::Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    // The holder crashed; its lease runs out.
    sqlx::query("UPDATE workflow_tasks SET lease_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let second = claim(&pool, "other", Duration::from_secs(30), chrono::Utc::now())
        .await
        .unwrap()
        .expect("reclaimed");
    assert_eq!(second.run_id, id);
    assert!(!release(&pool, id, "crashed", chrono::Utc::now())
        .await
        .unwrap());
    assert!(release(&pool, id, "other", chrono::Utc::now())
        .await
        .unwrap());
}

/// A fresh database, its bus, and a listener on `channels`.
async fn listening_to(
    channels: &[&str],
) -> (TestDb, store::CommandBus, sqlx::postgres::PgListener) {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(bus.pool())
        .await
        .unwrap();
    listener.listen_all(channels.iter().copied()).await.unwrap();
    (db, bus, listener)
}

#[tokio::test]
async fn the_feed_wakes_the_engines_only_when_it_made_work_due() {
    let (_db, bus, mut listener) = listening_to(&[store::log::TASKS_CHANNEL]).await;
    let pool = bus.pool().clone();

    // A tenant and its connection: appends that give the engines nothing to do.
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    feed(&pool).await;
    // Notifications arrive in commit order: had the feed notified, its would come first.
    marker(&pool, store::log::TASKS_CHANNEL).await;
    assert_eq!(
        next_on(&mut listener, store::log::TASKS_CHANNEL).await,
        "marker",
        "no wakeup without work"
    );

    // A queued run: the feed's commit wakes the engines.
    queued_resync(&bus, &tenant).await;
    feed(&pool).await;
    assert_eq!(
        next_on(&mut listener, store::log::TASKS_CHANNEL).await,
        "",
        "the feed's wakeup"
    );
}

/// Mail workers wake when mail work was committed (announced on their channel after the
/// commit), not on every append, as they did when they asked for due mail work after each
/// commit of the log.
#[tokio::test]
async fn committed_mail_work_wakes_the_mail_workers_and_other_appends_do_not() {
    let channels = [store::log::MAIL_CHANNEL, store::log::EVENTS_CHANNEL];
    let (_db, bus, mut listener) = listening_to(&channels).await;
    let pool = bus.pool().clone();
    // Appends that queue no mail work: announced on the events' channel only.
    let (tenant, _) = ReadyTenant::new(&bus, CONTOSO).build().await;
    queued_resync(&bus, &tenant).await;
    next_on(&mut listener, store::log::EVENTS_CHANNEL).await;
    marker(&pool, store::log::MAIL_CHANNEL).await;
    let first = next_on(&mut listener, store::log::MAIL_CHANNEL).await;
    assert_eq!(first, "marker", "no mail wakeup without mail work");

    // Mail work queued: announced once its transaction commits.
    let mut uow = bus.begin().await.unwrap();
    let mailbox = domain::mailbox::MailboxId::new();
    let now = chrono::Utc::now();
    app::mailboxes::schedule_work(&mut uow, "subscription", mailbox, "acme", None, now)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(
        next_on(&mut listener, store::log::MAIL_CHANNEL).await,
        "",
        "the mail workers' wakeup"
    );
}

/// The payload of the next notification on `channel` (others skipped; at most 30 s).
async fn next_on(listener: &mut sqlx::postgres::PgListener, channel: &str) -> String {
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), listener.recv())
            .await
            .expect("a notification within 30 s")
            .unwrap();
        if n.channel() == channel {
            return n.payload().to_owned();
        }
    }
}

/// Sends a notification with payload `marker` on `channel`: notifications arrive in commit
/// order, so one sent earlier by what a test watches comes before it.
async fn marker(pool: &sqlx::PgPool, channel: &str) {
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(channel)
        .execute(pool)
        .await
        .unwrap();
}
