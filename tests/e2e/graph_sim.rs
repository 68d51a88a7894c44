//! `tenantflow graph-sim` on its own: a token from its token endpoint gets Graph-shaped
//! policies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The JSON body of the answer to `request`.
async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let answer = request.send().await.expect("an answer");
    answer.json().await.expect("a JSON body")
}

#[tokio::test]
async fn the_standalone_simulator_issues_tokens_and_serves_policies() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantflow"))
        .args(["graph-sim", "--port", "0", "--tenants", "2", "--seed", "7"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("fleet=") {
                let url: String = line[i + 6..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(url);
            }
        }
    });
    let fleet_url = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the simulator starts");
    let http = reqwest::Client::new();
    let fleet = json_of(http.get(&fleet_url)).await;
    let t = &fleet["tenants"][0];
    let login = fleet["loginBase"].as_str().unwrap();
    let graph = fleet["graphBase"].as_str().unwrap();
    let token_url = format!(
        "{login}/{}/oauth2/v2.0/token",
        t["tenantId"].as_str().unwrap()
    );
    let token = json_of(http.post(token_url).form(&[
        ("client_id", t["clientId"].as_str().unwrap()),
        ("client_secret", t["clientSecret"].as_str().unwrap()),
        ("scope", "https://graph.microsoft.com/.default"),
        ("grant_type", "client_credentials"),
    ]))
    .await;
    assert_eq!(token["token_type"], "Bearer");
    let access = token["access_token"].as_str().unwrap();
    let r = http
        .get(format!("{graph}/identity/conditionalAccess/policies"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["@odata.context"]
        .as_str()
        .unwrap()
        .contains("$metadata#identity/conditionalAccess/policies"));
    let first = &body["value"][0];
    for field in ["id", "displayName", "state", "conditions", "grantControls"] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    // Without a token: Graph's 401 envelope.
    let r = http
        .get(format!("{graph}/identity/conditionalAccess/policies"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let _ = child.kill();
    let _ = child.wait();
}
