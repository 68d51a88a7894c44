//! A blocked run's next steps as links. The run records only which steps apply
//! ([`NextStep`]); their wording and paths belong to the UI, so they are rendered here,
//! where the API answers.

use domain::run::NextStep;
use serde_json::{json, Value};

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
    fn a_run_without_a_tenant_links_nowhere() {
        assert_eq!(links(&[NextStep::SetCredential], None), json!([]));
    }
}
