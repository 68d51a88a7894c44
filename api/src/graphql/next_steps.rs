//! A blocked or failed run's next steps as links. A blocked run records which steps apply
//! ([`NextStep`]); a failed run's follow from its reason code
//! ([`NextStep::after_failure`]), so runs that failed before this existed get them too.
//! Their wording and paths belong to the UI, so they are rendered here, where the API
//! answers.

use domain::run::{NextStep, RunOutcome};
use domain::ReasonCode;
use serde_json::{json, Value};

/// The next steps of a run: those it recorded (a blocked run's), else those its failure's
/// reason calls for.
pub(crate) fn of_run(recorded: &[NextStep], outcome: &str, reason: Option<&str>) -> Vec<NextStep> {
    if !recorded.is_empty() || outcome != RunOutcome::Failed.as_str() {
        return recorded.to_vec();
    }
    reason
        .and_then(|r| serde_json::from_value::<ReasonCode>(Value::String(r.to_owned())).ok())
        .map(|r| NextStep::after_failure(r).to_vec())
        .unwrap_or_default()
}

/// The links for a run's next steps, on its tenant's pages: `[{ "label", "href" }]`, each
/// href a path of this site. A run without a tenant has nowhere to send a person: none.
pub(crate) fn links(steps: &[NextStep], tenant_key: Option<&str>) -> Value {
    let Some(tenant) = tenant_key else {
        return json!([]);
    };
    let connections = format!("/tenants/{tenant}/connections");
    let links: Vec<Value> = steps
        .iter()
        .map(|step| {
            let (label, href) = match step {
                NextStep::AddConnection => {
                    ("Add a Microsoft connection", format!("{connections}/new"))
                }
                NextStep::EnableConnection => ("Enable the connection", connections.clone()),
                NextStep::SetCredential => ("Set the connection's credential", connections.clone()),
                NextStep::GrantConsent => ("Grant admin consent", connections.clone()),
                NextStep::CheckServiceStatus => (
                    "Check Microsoft's service status",
                    format!("/tenants/{tenant}/service-status"),
                ),
                NextStep::FixPermissions => {
                    ("Fix the app's Graph permissions", connections.clone())
                }
                NextStep::ProvideNewSecret => ("Provide a new client secret", connections.clone()),
            };
            json!({ "label": label, "href": href })
        })
        .collect();
    Value::Array(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_next_step_links_to_its_tenants_connections() {
        let tenant = "acme:72f988bf-86f1-41af-91ab-2d7cd011db47";
        let rendered = links(
            &[NextStep::AddConnection, NextStep::GrantConsent],
            Some(tenant),
        );
        assert_eq!(
            rendered,
            json!([
                { "label": "Add a Microsoft connection",
                  "href": format!("/tenants/{tenant}/connections/new") },
                { "label": "Grant admin consent",
                  "href": format!("/tenants/{tenant}/connections") },
            ])
        );
    }

    #[test]
    fn a_failed_run_gets_the_steps_its_reason_calls_for() {
        assert_eq!(
            of_run(&[], "failed", Some("provider_auth_failed")),
            vec![NextStep::ProvideNewSecret]
        );
        assert_eq!(
            of_run(&[], "failed", Some("graph_unavailable")),
            vec![NextStep::CheckServiceStatus]
        );
        assert_eq!(
            of_run(&[], "failed", Some("provider_permission_missing")),
            vec![NextStep::FixPermissions, NextStep::GrantConsent]
        );
        // Our own failures and other outcomes have none; a blocked run keeps its own.
        assert_eq!(of_run(&[], "failed", Some("internal_error")), vec![]);
        assert_eq!(of_run(&[], "succeeded", Some("graph_unavailable")), vec![]);
        assert_eq!(
            of_run(
                &[NextStep::AddConnection],
                "blocked",
                Some("provider_connection_missing")
            ),
            vec![NextStep::AddConnection]
        );
    }

    #[test]
    fn a_run_without_a_tenant_links_nowhere() {
        assert_eq!(links(&[NextStep::SetCredential], None), json!([]));
    }
}
