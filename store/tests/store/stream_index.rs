//! The stream index: streams listed by owner, one at a time or many in one statement.

use store::index::{index_stream, index_streams, indexed_streams};
use testkit::TestDb;

#[tokio::test]
async fn streams_listed_together_or_alone_are_listed_once_under_their_parent() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let none: [&str; 0] = [];
    index_streams(&mut conn, "acme", "contact", "client-1", &none)
        .await
        .unwrap();
    index_streams(
        &mut conn,
        "acme",
        "contact",
        "client-1",
        &["c", "a", "b", "a"],
    )
    .await
    .unwrap();
    // Again, and one of them alone: nothing changes.
    index_streams(&mut conn, "acme", "contact", "client-1", &["b".to_owned()])
        .await
        .unwrap();
    index_stream(&mut conn, "acme", "contact", "client-1", "c")
        .await
        .unwrap();
    index_stream(&mut conn, "acme", "contact", "client-2", "d")
        .await
        .unwrap();
    index_streams(&mut conn, "other", "contact", "client-9", &["e"])
        .await
        .unwrap();

    let listed = |parent: Option<&'static str>| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            indexed_streams(&mut conn, "acme", "contact", parent)
                .await
                .unwrap()
        }
    };
    assert_eq!(listed(Some("client-1")).await, ["a", "b", "c"]);
    assert_eq!(listed(Some("client-2")).await, ["d"]);
    assert_eq!(listed(None).await, ["a", "b", "c", "d"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stream_index")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 5, "one row per stream");
}
