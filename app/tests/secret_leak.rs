//! A secret never leaks: the only test in this binary, because it installs a log capture
//! and other tests' threads must not race its callsite registration.

use secrecy::SecretString;
use std::sync::Arc;
use testkit::{guid, owner, vault, ReadyTenant, TestDb, CONTOSO, TAILSPIN};

/// Captures every log line the process writes while `f` runs.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_secret_never_reaches_events_logs_debug_output_or_errors() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false),
        );
    let _guard = tracing::subscriber::set_default(subscriber);

    const SECRET: &str = "Sup3r-S3cret~Value.0123456789abcdef";
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let (_, c) = ReadyTenant::new(&bus, CONTOSO)
        .client_secret(SECRET)
        .build()
        .await;
    // Rotation naming the tenant, and a refused attempt (wrong tenant id) with the same
    // secret.
    let secret = SecretString::from(SECRET.to_owned());
    let stored = app::set_credential(
        &bus,
        &vault(),
        &owner(),
        c,
        "client-1",
        &secret,
        Some(guid(CONTOSO)),
    )
    .await
    .unwrap();
    let refused = app::set_credential(
        &bus,
        &vault(),
        &owner(),
        c,
        "client-1",
        &secret,
        Some(guid(TAILSPIN)),
    )
    .await
    .unwrap_err();

    let all_events: Vec<String> = sqlx::query_scalar("SELECT row_to_json(e)::text FROM events e")
        .fetch_all(bus.pool())
        .await
        .unwrap();
    assert!(
        all_events.iter().any(|e| e.contains(&stored.fingerprint)),
        "events carry the fingerprint"
    );
    assert!(all_events.iter().any(|e| e.contains("CredentialRotated")));
    for e in &all_events {
        assert!(!e.contains(SECRET), "secret in an event: {e}");
    }
    let vault_rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(v)::text FROM credential_vault v")
            .fetch_all(bus.pool())
            .await
            .unwrap();
    assert_eq!(vault_rows.len(), 2, "rotation keeps history");
    assert!(
        vault_rows.iter().all(|r| !r.contains(SECRET)),
        "stored encrypted"
    );

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("command applied"),
        "the capture saw the commands"
    );
    assert!(logs.contains("command refused"), "and the refusal");
    assert!(!logs.contains(SECRET), "secret in the logs");
    assert!(!refused.to_string().contains(SECRET));
    assert!(!format!("{refused:?}").contains(SECRET));
    let decrypted = vault()
        .fetch(bus.pool(), stored.credential_ref)
        .await
        .unwrap();
    assert!(!format!("{decrypted:?}").contains(SECRET));
    use secrecy::ExposeSecret;
    assert_eq!(
        decrypted.client_secret.expose_secret(),
        SECRET,
        "the vault round-trips"
    );
}
