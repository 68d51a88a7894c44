//! The stream index (`stream_index`): the streams a command path lists by owner without a
//! read model, which may lag behind the log. A row is written in the transaction of the
//! event that creates its stream, so the index holds exactly the streams the log holds.

use sqlx::PgConnection;

/// Lists `aggregate_id` (of `aggregate_type`) under `parent` in `workspace` (`""`: no
/// parent). Listing a stream again changes nothing.
pub async fn index_stream(
    conn: &mut PgConnection,
    workspace: &str,
    aggregate_type: &str,
    parent: &str,
    aggregate_id: &str,
) -> Result<(), sqlx::Error> {
    index_streams(conn, workspace, aggregate_type, parent, &[aggregate_id]).await
}

/// [`index_stream`] for many streams of one type under one parent, in one statement (a
/// contact sync lists a tenant's new contacts together: one round trip, not one each).
/// Nothing is sent for none.
pub async fn index_streams<S: AsRef<str>>(
    conn: &mut PgConnection,
    workspace: &str,
    aggregate_type: &str,
    parent: &str,
    aggregate_ids: &[S],
) -> Result<(), sqlx::Error> {
    if aggregate_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = aggregate_ids.iter().map(AsRef::as_ref).collect();
    sqlx::query(
        "INSERT INTO stream_index (workspace_id, aggregate_type, parent_id, aggregate_id) \
         SELECT $1, $2, $3, id FROM UNNEST($4::text[]) AS id \
         ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING",
    )
    .bind(workspace)
    .bind(aggregate_type)
    .bind(parent)
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ids of the streams of `aggregate_type` in `workspace`, under `parent` when given,
/// in id order.
pub async fn indexed_streams(
    conn: &mut PgConnection,
    workspace: &str,
    aggregate_type: &str,
    parent: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM stream_index \
         WHERE workspace_id = $1 AND aggregate_type = $2 AND ($3::text IS NULL OR parent_id = $3) \
         ORDER BY aggregate_id",
    )
    .bind(workspace)
    .bind(aggregate_type)
    .bind(parent)
    .fetch_all(conn)
    .await
}
