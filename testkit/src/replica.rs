//! A primary and its streaming replica, both embedded and both thrown away afterwards: for
//! tests of reading from a replica. A cluster of its own (not the shared test cluster), so
//! the base backup copies one small database.

use sqlx::{Connection, PgConnection};
use std::time::Duration;
use store::{EmbeddedOptions, EmbeddedPostgres};

/// The database the service uses on both.
pub const DATABASE: &str = "tenantflow";

pub struct Replicated {
    pub primary: EmbeddedPostgres,
    pub replica: EmbeddedPostgres,
}

impl Replicated {
    /// Starts a primary with an empty `tenantflow` database, then a replica made from it.
    pub async fn start() -> Self {
        let dir = |what: &str| EmbeddedOptions {
            data_dir: std::env::temp_dir().join(format!(
                "tenantflow-{what}-{}",
                uuid::Uuid::new_v4().simple()
            )),
            ephemeral: true,
            remove_on_exit: true,
        };
        let (primary_dir, replica_dir) = (dir("primary"), dir("replica"));
        let primary = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&primary_dir))
            .await
            .expect("primary start-up")
            .unwrap_or_else(|e| panic!("cannot start the primary: {e}"));
        let mut admin = PgConnection::connect_with(&primary.connect_options("postgres"))
            .await
            .expect("connect to the primary");
        sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut admin)
            .await
            .expect("create the database");
        let _ = admin.close().await;
        let (primary, replica) = tokio::task::spawn_blocking(move || {
            let replica = EmbeddedPostgres::start_replica_of(&primary, &replica_dir);
            (primary, replica)
        })
        .await
        .expect("replica start-up");
        let replica = replica.unwrap_or_else(|e| panic!("cannot start the replica: {e}"));
        Self { primary, replica }
    }

    /// Waits (at most 30 s) until the replica has replayed everything the primary had
    /// written when called.
    pub async fn caught_up(&self) {
        let mut primary = PgConnection::connect_with(&self.primary.connect_options(DATABASE))
            .await
            .expect("connect to the primary");
        let written: i64 =
            sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(&mut primary)
                .await
                .expect("the primary's position");
        let _ = primary.close().await;
        let replica = sqlx::PgPool::connect_with(self.replica.connect_options(DATABASE))
            .await
            .expect("connect to the replica");
        crate::eventually("the replica to catch up", Duration::from_secs(30), || {
            let replica = replica.clone();
            async move {
                let replayed: Option<i64> =
                    sqlx::query_scalar("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
                        .fetch_one(&replica)
                        .await
                        .expect("the replica's position");
                replayed.filter(|r| *r >= written)
            }
        })
        .await;
        replica.close().await;
    }

    /// Pauses the replica's replay and waits until it has paused (WAL written on the
    /// primary meanwhile makes it reach the point where it stops).
    pub async fn pause_replay(&self) {
        let mut replica = self.replica_admin().await;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut replica)
            .await
            .expect("pause the replay");
        let primary = sqlx::PgPool::connect_with(self.primary.connect_options(DATABASE))
            .await
            .expect("connect to the primary");
        let replica = sqlx::PgPool::connect_with(self.replica.connect_options(DATABASE))
            .await
            .expect("connect to the replica");
        crate::eventually(
            "the replica's replay to pause",
            Duration::from_secs(30),
            || {
                let (primary, replica) = (primary.clone(), replica.clone());
                async move {
                    sqlx::query(
                        "SELECT pg_logical_emit_message(false, 'tenantflow-test', 'pause')",
                    )
                    .execute(&primary)
                    .await
                    .expect("WAL on the primary");
                    let state: String =
                        sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                            .fetch_one(&replica)
                            .await
                            .expect("the replay's state");
                    (state == "paused").then_some(())
                }
            },
        )
        .await;
        primary.close().await;
        replica.close().await;
    }

    /// Resumes the replica's replay.
    pub async fn resume_replay(&self) {
        let mut replica = self.replica_admin().await;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut replica)
            .await
            .expect("resume the replay");
        let _ = replica.close().await;
    }

    /// A superuser connection to the replica's database (to pause and resume its replay).
    pub async fn replica_admin(&self) -> PgConnection {
        PgConnection::connect_with(&self.replica.connect_options(DATABASE))
            .await
            .expect("connect to the replica")
    }
}
