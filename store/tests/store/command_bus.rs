use crate::counter::{Counter, CounterCommand, CounterError};
use domain::{Role, Services};
use std::sync::Arc;
use store::{BusError, CommandBus, Metadata};
use testkit::TestDb;

fn meta(role: Role) -> Metadata {
    testkit::meta("acme", role)
}

async fn event_count(bus: &CommandBus) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(bus.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_command_appends_its_events_with_the_callers_metadata() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let m = meta(Role::Operator).caused_by("cause-1");
    let done = bus
        .execute::<Counter>("c1", CounterCommand::Add(2), &m)
        .await
        .unwrap();
    assert_eq!(done.version, 1);
    assert_eq!(done.aggregate.value, 2);

    let (seq, ty, version, metadata): (i64, String, String, serde_json::Value) = sqlx::query_as(
        "SELECT sequence, event_type, event_version, metadata FROM events WHERE aggregate_id = 'c1'",
    )
    .fetch_one(bus.pool())
    .await
    .unwrap();
    assert_eq!((seq, ty.as_str(), version.as_str()), (1, "Added", "1.0"));
    assert_eq!(metadata["workspace"], "acme");
    assert_eq!(metadata["actor"], "oscar");
    assert_eq!(metadata["role"], "operator");
    assert_eq!(metadata["causation_id"], "cause-1");
    assert_eq!(metadata["correlation_id"], m.correlation_id.as_str());
    assert_eq!(metadata["request_id"], m.request_id.as_str());
    // Every metadata value is a string (postgres-es fails to load anything else).
    assert!(metadata
        .as_object()
        .unwrap()
        .values()
        .all(|v| v.is_string()));
}

#[tokio::test]
async fn a_role_without_the_permission_is_refused_and_nothing_is_written() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let err = bus
        .execute::<Counter>("c1", CounterCommand::Add(1), &meta(Role::Readonly))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::Forbidden {
                role: Role::Readonly,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.reason_code(), domain::ReasonCode::Forbidden);
    let err = bus
        .execute::<Counter>("c1", CounterCommand::Reset, &meta(Role::Owner))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Forbidden { .. }));
    assert_eq!(event_count(&bus).await, 0);
}

#[tokio::test]
async fn a_refused_command_writes_nothing() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let err = bus
        .execute::<Counter>("c1", CounterCommand::Add(0), &meta(Role::Owner))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Domain(CounterError::NotPositive)));
    assert_eq!(err.reason_code(), domain::ReasonCode::ValidationFailed);
    assert_eq!(event_count(&bus).await, 0);
}

#[tokio::test]
async fn a_repeated_idempotency_key_succeeds_without_new_events() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let m = meta(Role::System).with_idempotency_key("run-1:step-2");
    let first = bus
        .execute::<Counter>("c1", CounterCommand::Add(5), &m)
        .await
        .unwrap();
    let again = bus
        .execute::<Counter>("c1", CounterCommand::Add(5), &m)
        .await
        .unwrap();
    assert!(!first.repeated);
    assert!(again.repeated);
    assert!(again.events.is_empty());
    assert_eq!(again.aggregate.value, 5);
    assert_eq!(event_count(&bus).await, 1);
}

#[tokio::test]
async fn concurrent_commands_on_one_aggregate_all_apply_without_gaps() {
    let db = TestDb::new().await;
    let bus = Arc::new(db.bus().await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.execute::<Counter>("c1", CounterCommand::Add(1), &meta(Role::Operator))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_id = 'c1' ORDER BY sequence",
    )
    .fetch_all(bus.pool())
    .await
    .unwrap();
    assert_eq!(sequences, (1..=20).collect::<Vec<_>>());
    assert_eq!(bus.load::<Counter>("c1").await.unwrap().aggregate.value, 20);
}

#[tokio::test]
async fn a_unit_of_work_appends_to_several_aggregates_or_to_none() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let m = meta(Role::Operator);

    let mut uow = bus.begin().await.unwrap();
    uow.execute::<Counter>("a", CounterCommand::Add(1), &m)
        .await
        .unwrap();
    uow.execute::<Counter>("b", CounterCommand::Add(1), &m)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(event_count(&bus).await, 2);

    let mut uow = bus.begin().await.unwrap();
    uow.execute::<Counter>("a", CounterCommand::Add(1), &m)
        .await
        .unwrap();
    let err = uow
        .execute::<Counter>("b", CounterCommand::Add(-1), &m)
        .await;
    assert!(err.is_err());
    drop(uow); // rolled back
    assert_eq!(event_count(&bus).await, 2);
    let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT transaction_id::text FROM events")
        .fetch_all(bus.pool())
        .await
        .unwrap();
    assert_eq!(
        ids.len(),
        1,
        "both events of the first unit share one transaction id"
    );
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let m = meta(Role::Operator);
    bus.execute::<Counter>("c1", CounterCommand::Add(1), &m)
        .await
        .unwrap();
    let mut uow = bus.begin().await.unwrap();
    let err = uow
        .execute_expecting::<Counter>("c1", Some(0), CounterCommand::Add(1), &m)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Conflict { .. }), "{err}");
    let ok = uow
        .execute_expecting::<Counter>("c1", Some(1), CounterCommand::Add(1), &m)
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
}

#[tokio::test]
async fn events_are_append_only() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    bus.execute::<Counter>("c1", CounterCommand::Add(1), &meta(Role::Operator))
        .await
        .unwrap();
    let update = sqlx::query("UPDATE events SET payload = '{}'::jsonb")
        .execute(bus.pool())
        .await;
    assert!(update.is_err());
    let delete = sqlx::query("DELETE FROM events").execute(bus.pool()).await;
    assert!(delete.is_err());
    assert_eq!(event_count(&bus).await, 1);
}

/// Our schema stays what postgres-es expects: its repository loads what the bus wrote, and
/// its framework can append to the same stream.
#[tokio::test]
async fn postgres_es_reads_and_extends_streams_written_by_the_bus() {
    use cqrs_es::persist::PersistedEventRepository;
    let db = TestDb::new().await;
    let bus = db.bus().await;
    bus.execute::<Counter>("c1", CounterCommand::Add(3), &meta(Role::Operator))
        .await
        .unwrap();

    let repo = postgres_es::PostgresEventRepository::new(bus.pool().clone());
    let events = repo.get_events::<Counter>("c1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "Added");

    let cqrs =
        postgres_es::postgres_cqrs::<Counter>(bus.pool().clone(), vec![], Services::system());
    cqrs.execute("c1", CounterCommand::Add(4)).await.unwrap();
    assert_eq!(bus.load::<Counter>("c1").await.unwrap().aggregate.value, 7);
}

#[tokio::test]
async fn a_command_that_would_start_a_stream_another_process_started_is_decided_on_its_state() {
    let db = TestDb::new().await;
    // Two processes: neither knows what the other wrote.
    let (first, second) = (db.bus().await, db.bus().await);
    let one = first
        .execute::<Counter>("c1", CounterCommand::Add(1), &meta(Role::Operator))
        .await
        .unwrap();
    assert_eq!((one.version, one.aggregate.value), (1, 1));
    // On the empty state `Add(2)` would be the stream's first event; the stream has one,
    // so it is decided again on the loaded state.
    let two = second
        .execute::<Counter>("c1", CounterCommand::Add(2), &meta(Role::Operator))
        .await
        .unwrap();
    assert_eq!((two.version, two.aggregate.value), (2, 3));
    // And the same, a second time, for a process that now knows the stream.
    let three = second
        .execute::<Counter>("c1", CounterCommand::Add(4), &meta(Role::Operator))
        .await
        .unwrap();
    assert_eq!((three.version, three.aggregate.value), (3, 7));
    assert_eq!(event_count(&first).await, 3);
    assert_eq!(
        first.load::<Counter>("c1").await.unwrap().aggregate.value,
        7
    );
    // A repeated idempotency key is recognised from another process too.
    let keyed = meta(Role::Operator).with_idempotency_key("k1");
    first
        .execute::<Counter>("c2", CounterCommand::Add(1), &keyed)
        .await
        .unwrap();
    let again = db
        .bus()
        .await
        .execute::<Counter>("c2", CounterCommand::Add(1), &keyed)
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(event_count(&first).await, 4);
}
