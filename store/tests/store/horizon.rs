//! The watch over the log's visibility horizon: a transaction left open is found and named.

use std::time::Duration;
use store::horizon;
use store::Metrics;
use testkit::TestDb;

#[tokio::test]
async fn a_transaction_left_open_is_named_by_its_backend_until_it_ends() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // Someone's transaction that wrote (it has a transaction id) and stays open.
    let mut forgotten = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *forgotten)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *forgotten)
        .await
        .unwrap();

    // The cluster is shared with other tests: ours is among the holders, not always first.
    let found = horizon::holders(&pool, Duration::ZERO).await.unwrap();
    let ours = found
        .iter()
        .find(|h| h.pid == pid)
        .expect("our transaction is found");
    assert_eq!(ours.state.as_deref(), Some("idle in transaction"));
    assert!(ours.to_string().contains(&format!("backend pid {pid}")));

    let metrics = Metrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(horizon::watch(
        pool.clone(),
        metrics.clone(),
        Duration::ZERO,
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let warning = testkit::eventually("a readiness warning", testkit::CATCH_UP, || async {
        metrics.horizon_warning()
    })
    .await;
    assert!(warning.contains("held a transaction open"), "{warning}");
    assert!(metrics
        .render()
        .contains("tenantflow_log_horizon_held_seconds"));

    forgotten.rollback().await.unwrap();
    let gone = horizon::holders(&pool, Duration::ZERO).await.unwrap();
    assert!(gone.iter().all(|h| h.pid != pid), "{gone:?}");
    shutdown.cancel();
    watch.await.unwrap();
}
