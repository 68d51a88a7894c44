//! Secrets and tokens never reach a log line, an error or Debug output.
//!
//! Its own test binary: it installs a global subscriber that records every event at TRACE.

use std::io::Write;
use std::sync::{Arc, Mutex};

use graph::models::NewSubscription;
use graph::sim::{self, Fault, SimConfig};
use graph::{AppCredentials, Endpoint, GraphApi, GraphClient};
use secrecy::{ExposeSecret, SecretString};

/// Everything written by the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_secrets_nor_tokens_appear_in_logs_errors_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let sim = sim::spawn(SimConfig::default()).await;
    let client = GraphClient::new(sim.graph_config()).unwrap();
    let tenants = sim.tenants();
    let contoso = &tenants[0];
    let wrong_secret = SecretString::from("wrong-secret-do-not-log");
    let impostor = AppCredentials::new(
        contoso.tenant_id,
        contoso.client_id.clone(),
        wrong_secret.clone(),
    );
    let subscription = NewSubscription::inbox_messages(
        &contoso.mailboxes[0].user_id,
        url::Url::parse("http://127.0.0.1:9/unreachable").unwrap(),
        chrono::Utc::now() + chrono::Duration::minutes(30),
        SecretString::from("client-state-do-not-log"),
    );

    let mut outputs = Vec::new();
    let mut tokens = Vec::new();
    outputs.push(format!(
        "{:?}",
        client.list_users(&contoso.credentials()).await
    ));
    tokens.extend(sim.issued_tokens());
    sim.inject(
        Fault::Unauthorized
            .on(Endpoint::ListSubscribedSkus)
            .times(1),
    );
    outputs.push(format!(
        "{:?}",
        client.list_subscribed_skus(&contoso.credentials()).await
    ));
    tokens.extend(sim.issued_tokens());
    outputs.push(format!("{:?}", client.verify_credentials(&impostor).await));
    outputs.push(format!(
        "{:?}",
        client
            .create_subscription(&contoso.credentials(), &subscription)
            .await
    ));
    outputs.push(format!(
        "{:?}",
        client.cipp_list_tenants(&sim.cipp_credentials()).await
    ));
    tokens.extend(sim.issued_tokens());
    sim.revoke_consent(contoso.tenant_id).unwrap();
    outputs.push(format!(
        "{:?}",
        client.list_users(&contoso.credentials()).await
    ));
    outputs.push(format!(
        "{client:?} {:?} {:?}",
        contoso.credentials(),
        sim.cipp_credentials()
    ));
    outputs.push(format!(
        "{impostor:?} {subscription:?} {:?}",
        sim.graph_config()
    ));

    let logs = captured.text();
    assert!(
        logs.contains("graph_call"),
        "the subscriber captured the client's spans"
    );
    assert!(logs.contains("retrying") || logs.contains("Microsoft answered"));
    let mut secrets: Vec<String> = tenants
        .iter()
        .map(|t| t.client_secret.expose_secret().to_owned())
        .collect();
    secrets.push(sim.partner().client_secret.expose_secret().to_owned());
    secrets.push(wrong_secret.expose_secret().to_owned());
    secrets.push("client-state-do-not-log".to_owned());
    assert!(tokens.len() >= 3, "tokens were issued: {}", tokens.len());
    for needle in secrets.iter().chain(&tokens) {
        assert!(
            !logs.contains(needle.as_str()),
            "a secret or token was logged"
        );
        for output in &outputs {
            assert!(
                !output.contains(needle.as_str()),
                "a secret or token was printed: {output}"
            );
        }
    }
}
