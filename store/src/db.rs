//! Connecting to PostgreSQL and applying the migrations in `migrations/` (R10.2).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;

/// The schema: every table of tenantflow is defined by these migrations and nowhere else.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A pooled connection idle for longer than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens a pool; fails fast (10 s) if the server cannot be reached.
///
/// sqlx pings every idle connection before handing it out by default: a round trip before
/// every statement run on the pool, which doubled the round trips of the hot paths (a
/// command's append, an engine's claim, a consumer's batch) and showed as a tenth of the
/// process's CPU in a profile of the fleet resync. A connection that was in use within the
/// last [`PING_AFTER_IDLE`] is handed out as it is; one idle for longer (where a server
/// restart or a dropped network would have left it dead) is still pinged and replaced when
/// the ping fails.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// Applies pending migrations, then makes sure the event log has its partitions ahead
/// (start-up's partition maintenance). Safe to run from several processes at once (sqlx
/// takes an advisory lock, and so does partition maintenance).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    crate::partitions::ensure(pool, 0).await?;
    Ok(())
}

/// Whether every migration this binary knows has been applied (readiness).
pub async fn migrations_current(pool: &PgPool) -> Result<bool, DbError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .all(|m| applied.contains(&m.version)))
}

/// A read-only transaction confined to `workspace`: as `tenantflow_reader`, whose
/// row-level security policies admit only rows of the workspace set in `app.workspace`
/// (read models, and events by their metadata), so a query whose own filter is wrong still
/// sees no other workspace's data (R8.3).
///
/// A workspace that is a slug (`domain::WorkspaceId`: lower-case letters, digits and `-`,
/// nothing that can close a literal) is set in the `BEGIN` itself, so the transaction costs
/// one round trip before its first query instead of three; anything else is bound as a
/// parameter.
pub async fn workspace_reader(
    pool: &PgPool,
    workspace: &str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    confined(pool, workspace, "BEGIN").await
}

/// [`workspace_reader`] in one snapshot: every statement sees the log and read models as
/// they were at its first (`REPEATABLE READ`; read-only, so it never fails to serialise).
pub async fn workspace_snapshot(
    pool: &PgPool,
    workspace: &str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    confined(
        pool,
        workspace,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await
}

async fn confined(
    pool: &PgPool,
    workspace: &str,
    begin: &str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    if workspace.parse::<domain::WorkspaceId>().is_ok() {
        return pool
            .begin_with(format!(
                "{begin}; SET LOCAL ROLE tenantflow_reader; \
                 SELECT set_config('app.workspace', '{workspace}', true)"
            ))
            .await;
    }
    let mut tx = pool
        .begin_with(format!("{begin}; SET LOCAL ROLE tenantflow_reader"))
        .await?;
    sqlx::query("SELECT set_config('app.workspace', $1, true)")
        .bind(workspace)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Creates a database if it does not exist (embedded mode, bench scratch databases).
pub async fn ensure_database(admin: &PgPool, name: &str) -> Result<(), DbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
            .execute(admin)
            .await?;
    }
    Ok(())
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
