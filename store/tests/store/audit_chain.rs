//! The audit hash chain (R9.4) against a real database: the sealer seals every event into
//! the global chain and its workspace's chain; verify recomputes them from `events` and
//! names the first altered, deleted, inserted or reordered event; an export checks out
//! with nothing but SHA-256.

use domain::tenant::{Tenant, TenantCommand};
use domain::{Role, TenantKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use store::audit::{
    self, AuditSealer, BreakKind, ExportOptions, KeptHead, Verification, VerifyOptions,
};
use store::{CommandBus, Consumer};
use testkit::{SteppedConsumer, TestDb};

/// A stored seal: seal_no, position, workspace, workspace_seq, workspace hash, global hash.
type Seal = (i64, i64, String, i64, Vec<u8>, Vec<u8>);
/// A recorded verification: workspace, ok, first bad kind and position.
type Recorded = (Option<String>, bool, Option<String>, Option<i64>);

const ACME: &str = "acme";
const GLOBEX: &str = "globex";

struct World {
    _db: TestDb,
    pool: PgPool,
    bus: CommandBus,
    sealer: SteppedConsumer,
}

async fn world() -> World {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    let sealer = SteppedConsumer::new(&pool, Arc::new(AuditSealer));
    World {
        _db: db,
        pool,
        bus,
        sealer,
    }
}

fn guid(workspace_no: u32, n: u32) -> String {
    format!("{workspace_no:08x}-0000-4000-8000-{n:012x}")
}

/// A world whose two-workspace history is sealed.
async fn sealed_history() -> World {
    let w = world().await;
    w.history().await;
    w.seal().await;
    w
}

impl World {
    /// Registers tenant `n` of `workspace` and renames it `renames` times: 1 + renames
    /// events, each command its own transaction.
    async fn tenant(&self, workspace: &str, n: u32, renames: u32) {
        let workspace_no = if workspace == ACME { 1 } else { 2 };
        let entra: domain::EntraTenantId = guid(workspace_no, n).parse().unwrap();
        let ws: domain::WorkspaceId = workspace.parse().unwrap();
        let key = TenantKey::new(ws.clone(), entra).to_string();
        let meta = testkit::meta(workspace, Role::Owner);
        let register = TenantCommand::Register {
            workspace: ws,
            entra_tenant_id: entra,
            display_name: format!("Tenant {n}"),
            primary_domain: format!("t{n}.{workspace}.example"),
        };
        self.bus
            .execute::<Tenant>(&key, register, &meta)
            .await
            .unwrap();
        for r in 0..renames {
            let rename = TenantCommand::Rename {
                display_name: format!("Tenant {n} (renamed {r})"),
            };
            self.bus
                .execute::<Tenant>(&key, rename, &meta)
                .await
                .unwrap();
        }
    }

    /// A history in two workspaces, interleaved: 12 events of acme, 9 of globex.
    async fn history(&self) {
        for n in 0..3 {
            self.tenant(ACME, n, 3).await;
            self.tenant(GLOBEX, n, 2).await;
        }
    }

    /// Runs the sealer until it has read every event in the log.
    async fn seal(&self) {
        self.sealer.catch_up().await;
    }

    /// Hands the whole log to the sealer again (its checkpoint reset), until it has read it.
    async fn seal_again_from_the_start(&self) {
        sqlx::query(
            "UPDATE consumer_checkpoints SET transaction_id = '0', global_position = 0, \
             events_consumed = 0 WHERE name = $1",
        )
        .bind(audit::SEALER)
        .execute(&self.pool)
        .await
        .unwrap();
        self.seal().await;
    }

    async fn verify(&self, options: VerifyOptions) -> Verification {
        audit::verify(&self.pool, &options, &()).await.unwrap()
    }

    async fn verify_all(&self) -> Verification {
        self.verify(VerifyOptions::default()).await
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The nth event (1-based) in the consumers' order: (position, stream id, sequence).
    async fn nth_event(&self, n: i64) -> (i64, String, i64) {
        sqlx::query_as(
            "SELECT global_position, aggregate_id, sequence FROM events \
             ORDER BY transaction_id, global_position OFFSET $1 LIMIT 1",
        )
        .bind(n - 1)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// What someone who drops the append-only trigger can do.
    async fn tamper(&self, statements: &[&str]) {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
            .execute(&mut *tx)
            .await
            .unwrap();
        for s in statements {
            sqlx::query(s).execute(&mut *tx).await.unwrap();
        }
        sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn seals(&self) -> Vec<Seal> {
        sqlx::query_as(
            "SELECT seal_no, global_position, workspace_id, workspace_seq, workspace_hash, global_hash \
             FROM audit_seals ORDER BY seal_no",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

fn first_bad(v: &Verification) -> (BreakKind, i64, String) {
    let b = v.first_bad().expect("verification names a bad event");
    (b.kind, b.position, b.stream.aggregate_id.clone())
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let w = sealed_history().await;

    let v = w.verify_all().await;
    assert!(v.ok(), "{:?}", v.first_bad());
    assert_eq!(v.checked(), 21);
    let chains: Vec<(Option<String>, u64)> = v
        .chains
        .iter()
        .map(|c| (c.workspace.clone(), c.checked))
        .collect();
    assert_eq!(
        chains,
        vec![
            (None, 21),
            (Some(ACME.to_owned()), 12),
            (Some(GLOBEX.to_owned()), 9)
        ]
    );
    // The head verify reports is the last seal's global hash.
    let last = w.seals().await.pop().unwrap();
    assert_eq!(
        v.head,
        Some(KeptHead {
            position: last.1,
            hash: last.5.try_into().unwrap()
        })
    );
    assert_eq!(audit::unsealed(&w.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn a_changed_payload_is_named_as_altered() {
    let w = sealed_history().await;
    let (position, stream, _) = w.nth_event(9).await; // acme's second tenant, renamed

    w.tamper(&[&format!(
        "UPDATE events SET payload = jsonb_set(payload, '{{TenantRenamed,display_name}}', '\"Mallory\"') \
         WHERE global_position = {position}"
    )])
    .await;

    let v = w.verify_all().await;
    assert!(!v.ok());
    assert_eq!(first_bad(&v), (BreakKind::Altered, position, stream));
    assert_eq!(
        v.chains[0].checked, 8,
        "the eight events before it are good"
    );
}

#[tokio::test]
async fn a_deleted_event_is_named() {
    let w = sealed_history().await;
    let (position, stream, _) = w.nth_event(5).await;

    w.tamper(&[&format!(
        "DELETE FROM events WHERE global_position = {position}"
    )])
    .await;

    let v = w.verify_all().await;
    assert!(!v.ok());
    assert_eq!(first_bad(&v), (BreakKind::Deleted, position, stream));
}

#[tokio::test]
async fn a_forged_event_inside_the_sealed_log_is_named_as_inserted() {
    let w = sealed_history().await;
    // Slipped in with an early transaction's id: it sorts among the sealed events.
    let (early, _, _) = w.nth_event(3).await;
    w.tamper(&[&format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, transaction_id) \
         SELECT 'tenant', 'acme:forged', 1, 'TenantRenamed', '1.0', '{{\"TenantRenamed\": {{\"display_name\": \"Forged\"}}}}', \
             '{{\"workspace\": \"acme\", \"actor\": \"mallory\"}}', transaction_id \
         FROM events WHERE global_position = {early}"
    )])
    .await;
    let forged = w
        .count("SELECT global_position FROM events WHERE aggregate_id = 'acme:forged'")
        .await;

    let v = w.verify_all().await;
    assert!(!v.ok());
    assert_eq!(
        first_bad(&v),
        (BreakKind::Inserted, forged, "acme:forged".to_owned())
    );
    // The workspace it claims: broken there too; the other workspace's chain is intact.
    let globex = v
        .chains
        .iter()
        .find(|c| c.workspace.as_deref() == Some(GLOBEX))
        .unwrap();
    assert!(globex.first_bad.is_none());
}

#[tokio::test]
async fn swapped_events_are_named_as_reordered() {
    let w = sealed_history().await;
    let (p1, first_stream, _) = w.nth_event(4).await;
    let (p2, _, _) = w.nth_event(9).await;

    // Each takes the other's place in the order: identity and transaction id.
    w.tamper(&[
        "ALTER TABLE events ALTER COLUMN global_position SET GENERATED BY DEFAULT",
        "CREATE TEMP TABLE swap AS SELECT global_position, transaction_id FROM events",
        &format!("UPDATE events SET global_position = -1 WHERE global_position = {p1}"),
        &format!(
            "UPDATE events SET global_position = {p1}, \
             transaction_id = (SELECT transaction_id FROM swap WHERE global_position = {p1}) \
             WHERE global_position = {p2}"
        ),
        &format!(
            "UPDATE events SET global_position = {p2}, \
             transaction_id = (SELECT transaction_id FROM swap WHERE global_position = {p2}) \
             WHERE global_position = -1"
        ),
    ])
    .await;

    let v = w.verify_all().await;
    assert!(!v.ok());
    let b = v.first_bad().unwrap();
    assert_eq!(
        (b.kind, b.position, b.stream.aggregate_id.as_str()),
        (BreakKind::Reordered, p1, first_stream.as_str())
    );
    assert!(b.detail.contains(&format!("position {p2}")), "{b}");
}

#[tokio::test]
async fn sealing_a_batch_twice_changes_nothing() {
    let w = sealed_history().await;
    let sealed = w.seals().await;
    assert_eq!(sealed.len(), 21);

    // The same batch handed over again, directly ...
    let mut tx = w.pool.begin().await.unwrap();
    let batch = store::log::read_batch(&mut tx, store::Position::default(), 1000)
        .await
        .unwrap();
    assert_eq!(batch.len(), 21);
    AuditSealer.handle(&mut tx, &batch).await.unwrap();
    AuditSealer.handle(&mut tx, &batch[5..9]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(w.seals().await, sealed);

    // ... and the whole log again from a reset checkpoint.
    w.seal_again_from_the_start().await;
    assert_eq!(w.seals().await, sealed);

    // New events continue the chains where they ended.
    w.tenant(ACME, 9, 0).await;
    w.seal().await;
    let now = w.seals().await;
    assert_eq!(now.len(), 22);
    assert_eq!(now[..21], sealed[..]);
    assert_eq!((now[21].0, now[21].2.as_str(), now[21].3), (22, ACME, 13));
    assert!(w.verify_all().await.ok());
}

#[tokio::test]
async fn each_workspace_has_a_chain_of_its_own() {
    let w = sealed_history().await;
    let seals = w.seals().await;

    // Numbered 1, 2, ... within each workspace, in the order sealed.
    for ws in [ACME, GLOBEX] {
        let seqs: Vec<i64> = seals.iter().filter(|s| s.2 == ws).map(|s| s.3).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{ws}");
    }
    // A workspace's hashes link its own events only: recomputed from acme's events
    // alone, they are the stored ones.
    let events: Vec<(i64, Vec<u8>)> = canonical_events(&w.pool, ACME).await;
    let mut previous = audit::GENESIS;
    let acme: Vec<&Seal> = seals.iter().filter(|s| s.2 == ACME).collect();
    assert_eq!(events.len(), acme.len());
    for ((position, bytes), seal) in events.iter().zip(acme) {
        previous = audit::chain::link(&previous, bytes);
        assert_eq!((*position, previous.to_vec()), (seal.1, seal.4.clone()));
    }

    // Tampering in globex breaks globex's chain, not acme's.
    w.tamper(&["UPDATE events SET metadata = metadata || '{\"actor\": \"mallory\"}' \
                WHERE global_position = (SELECT max(global_position) FROM events WHERE metadata ->> 'workspace' = 'globex')"])
        .await;
    let only = |ws: &str| VerifyOptions {
        workspace: Some(ws.to_owned()),
        ..VerifyOptions::default()
    };
    let acme = w.verify(only(ACME)).await;
    assert!(acme.ok(), "{:?}", acme.first_bad());
    assert_eq!(acme.checked(), 12);
    let globex = w.verify(only(GLOBEX)).await;
    assert_eq!(globex.first_bad().unwrap().kind, BreakKind::Altered);
    let all = w.verify_all().await;
    let broken: Vec<Option<&str>> = all
        .chains
        .iter()
        .filter(|c| c.first_bad.is_some())
        .map(|c| c.workspace.as_deref())
        .collect();
    assert_eq!(broken, vec![None, Some(GLOBEX)]);
}

/// A workspace's events as the sealer saw them: (position, canonical bytes).
async fn canonical_events(pool: &PgPool, workspace: &str) -> Vec<(i64, Vec<u8>)> {
    let mut tx = pool.begin().await.unwrap();
    let events = store::log::read_batch(&mut tx, store::Position::default(), 1000)
        .await
        .unwrap();
    events
        .iter()
        .filter(|e| e.workspace() == Some(workspace))
        .map(|e| {
            let fields = audit::SealedFields::from(e);
            (
                e.position.global_position,
                fields.canonical_bytes().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn verify_from_a_kept_head_checks_what_follows_it() {
    let w = sealed_history().await;
    let head = w.verify_all().await.head.unwrap();
    w.tenant(ACME, 7, 2).await;
    w.tenant(GLOBEX, 7, 0).await;
    w.seal().await;

    let from = |head: KeptHead, workspace: Option<&str>| VerifyOptions {
        workspace: workspace.map(str::to_owned),
        from: Some(head),
        expect: None,
    };
    let v = w.verify(from(head, None)).await;
    assert!(v.ok(), "{:?}", v.first_bad());
    assert_eq!(v.checked(), 4);

    // A head of acme's chain, from auditChain's view of it (the workspace's last seal).
    let (position, hash): (i64, Vec<u8>) = sqlx::query_as(
        "SELECT global_position, workspace_hash FROM audit_seals WHERE workspace_id = 'acme' \
         AND workspace_seq = 12",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    let acme_head = KeptHead {
        position,
        hash: hash.try_into().unwrap(),
    };
    let v = w.verify(from(acme_head, Some(ACME))).await;
    assert!(v.ok(), "{:?}", v.first_bad());
    assert_eq!(v.checked(), 3);

    // A head that the stored chain no longer leads to.
    let wrong = KeptHead {
        hash: audit::chain::link(&head.hash, b"x"),
        ..head
    };
    let v = w.verify(from(wrong, None)).await;
    assert_eq!(v.first_bad().unwrap().kind, BreakKind::HeadMismatch);

    // An event changed after the head is found; one before it is not the suffix's business.
    let (after, stream, _) = w.nth_event(23).await;
    w.tamper(&[&format!(
        "UPDATE events SET metadata = metadata || '{{\"request_id\": \"forged\"}}' WHERE global_position = {after}"
    )])
    .await;
    let v = w.verify(from(head, None)).await;
    assert_eq!(first_bad(&v), (BreakKind::Altered, after, stream));
}

#[tokio::test]
async fn verifications_are_recorded_and_each_workspace_reads_only_its_own() {
    let w = sealed_history().await;
    let (position, _, _) = w.nth_event(5).await; // globex's first event
    w.tamper(&[&format!(
        "UPDATE events SET recorded_at = recorded_at + interval '1 microsecond' WHERE global_position = {position}"
    )])
    .await;
    let v = w.verify_all().await;
    audit::record(&w.pool, &v).await.unwrap();

    let seen = |workspace: &'static str| {
        let pool = w.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL ROLE tenantflow_reader")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("SELECT set_config('app.workspace', $1, true)")
                .bind(workspace)
                .execute(&mut *tx)
                .await
                .unwrap();
            let rows: Vec<Recorded> = sqlx::query_as(
                "SELECT workspace_id, ok, first_bad_kind, first_bad_position FROM audit_verifications",
            )
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_seals")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            (rows, seals)
        }
    };
    assert_eq!(
        seen(ACME).await,
        (vec![(Some(ACME.to_owned()), true, None, None)], 12)
    );
    assert_eq!(
        seen(GLOBEX).await,
        (
            vec![(
                Some(GLOBEX.to_owned()),
                false,
                Some("altered".to_owned()),
                Some(position)
            )],
            9
        )
    );
    // The global chain's row is the operators' (no workspace reads it).
    assert_eq!(
        w.count("SELECT count(*) FROM audit_verifications WHERE workspace_id IS NULL AND NOT ok")
            .await,
        1
    );
}

#[tokio::test]
async fn an_exported_chain_checks_out_with_sha256_alone() {
    let w = sealed_history().await;
    let mut out = Vec::new();
    let exported = audit::export(
        &w.pool,
        &ExportOptions {
            workspace: ACME.to_owned(),
            since: None,
            until: None,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(exported.lines, 12);

    // The auditor's check: nothing of tenantflow's, only SHA-256 and the file.
    let text = String::from_utf8(out).unwrap();
    let mut previous = "0".repeat(64);
    for (n, line) in text.lines().enumerate() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["prev_hash"].as_str().unwrap(), previous);
        assert_eq!(line["workspace_seq"].as_u64().unwrap(), n as u64 + 1);
        let mut h = Sha256::new();
        h.update(hex::decode(&previous).unwrap());
        h.update(line["canonical"].as_str().unwrap().as_bytes());
        assert_eq!(hex::encode(h.finalize()), line["hash"].as_str().unwrap());
        // The canonical bytes are the event's fields.
        let canonical: serde_json::Value =
            serde_json::from_str(line["canonical"].as_str().unwrap()).unwrap();
        assert_eq!(canonical["metadata"]["workspace"], ACME);
        assert_eq!(canonical["global_position"], line["global_position"]);
        previous = line["hash"].as_str().unwrap().to_owned();
    }
    // The file leads to the chain's head as auditChain shows it.
    let head: String = sqlx::query_scalar(
        "SELECT encode(workspace_hash, 'hex') FROM audit_seals WHERE workspace_id = 'acme' \
         ORDER BY workspace_seq DESC LIMIT 1",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(previous, head);

    // A stretch of it starts from the hash before it.
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT e.recorded_at FROM audit_seals s JOIN events e USING (global_position) \
         WHERE s.workspace_id = 'acme' AND s.workspace_seq = 5",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    let part = audit::export(
        &w.pool,
        &ExportOptions {
            workspace: ACME.to_owned(),
            since: Some(since),
            until: None,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!((part.first_seq, part.last_seq), (Some(5), Some(12)));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    let fourth: String = sqlx::query_scalar(
        "SELECT encode(workspace_hash, 'hex') FROM audit_seals WHERE workspace_id = 'acme' AND workspace_seq = 4",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(first["prev_hash"].as_str().unwrap(), fourth);
}

#[tokio::test]
async fn every_thousandth_seal_of_a_chain_is_kept_as_a_head() {
    let w = world().await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'tenant', 'acme:bulk', i, 'TenantRenamed', '1.0', jsonb_build_object('n', i), \
             jsonb_build_object('workspace', CASE WHEN i % 4 = 0 THEN 'globex' ELSE 'acme' END) \
         FROM generate_series(1, 1400) AS i",
    )
    .execute(&w.pool)
    .await
    .unwrap();
    w.seal().await;

    let heads: Vec<(String, Option<String>, i64, i64, bool)> = sqlx::query_as(
        "SELECT h.chain, h.workspace_id, h.chain_seq, h.seal_no, \
             h.hash = CASE WHEN h.chain = 'global' THEN s.global_hash ELSE s.workspace_hash END \
         FROM audit_heads h JOIN audit_seals s USING (seal_no) ORDER BY h.seal_no, h.chain",
    )
    .fetch_all(&w.pool)
    .await
    .unwrap();
    // acme has 1050 events: its 1000th is the 1333rd seal.
    assert_eq!(
        heads,
        vec![
            ("global".to_owned(), None, 1000, 1000, true),
            (
                "workspace".to_owned(),
                Some(ACME.to_owned()),
                1000,
                1333,
                true
            ),
        ]
    );
    assert!(w.verify_all().await.ok());
}

#[tokio::test]
async fn only_a_kept_head_shows_history_rewritten_together_with_its_seals() {
    let w = sealed_history().await;
    // The auditor keeps the global chain's hash at the 10th event.
    let (kept_at, _, _) = w.nth_event(10).await;
    let kept: Vec<u8> =
        sqlx::query_scalar("SELECT global_hash FROM audit_seals WHERE global_position = $1")
            .bind(kept_at)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let kept = KeptHead {
        position: kept_at,
        hash: kept.try_into().unwrap(),
    };
    let expecting = VerifyOptions {
        expect: Some(kept),
        ..VerifyOptions::default()
    };
    assert!(w.verify(expecting.clone()).await.ok());

    // Someone rewrites an earlier event and seals everything again.
    let (rewritten, _, _) = w.nth_event(4).await;
    w.tamper(&[&format!(
        "UPDATE events SET metadata = metadata || '{{\"actor\": \"mallory\"}}' WHERE global_position = {rewritten}"
    )])
    .await;
    sqlx::query("DELETE FROM audit_seals")
        .execute(&w.pool)
        .await
        .unwrap();
    w.seal_again_from_the_start().await;

    // The stored chain is consistent again; only the kept head tells.
    assert!(w.verify_all().await.ok());
    let v = w.verify(expecting).await;
    let b = v.first_bad().unwrap();
    assert_eq!((b.kind, b.position), (BreakKind::HeadMismatch, kept_at));
    let v = w
        .verify(VerifyOptions {
            from: Some(kept),
            ..VerifyOptions::default()
        })
        .await;
    assert_eq!(v.first_bad().unwrap().kind, BreakKind::HeadMismatch);
}
